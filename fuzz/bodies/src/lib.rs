//! The bodies of the fuzz targets in `fuzz/fuzz_targets/` (each a one-line wrapper), kept
//! here so that `cargo test` runs them on the committed corpus (`fuzz/corpus/<target>/`,
//! `tests/corpus.rs`). Each body panics exactly when an input breaks a rule: never on
//! input it is fine to refuse.

mod gateway_bodies;
mod http;
mod link;
mod tls;
mod token;
mod ws;

pub use gateway_bodies::{broadcast_body, ndjson_batch};
pub use http::http_request;
pub use link::{link_decode, link_roundtrip};
pub use tls::tls_ticket;
pub use token::token;
pub use ws::ws_frames;

/// A target's body.
pub type Body = fn(&[u8]);

/// Every target, by name, as `fuzz/corpus/` and `cargo fuzz run` call them.
pub const TARGETS: &[(&str, Body)] = &[
    ("http_request", http_request),
    ("ws_frames", ws_frames),
    ("link_decode", link_decode),
    ("link_roundtrip", link_roundtrip),
    ("ndjson_batch", ndjson_batch),
    ("broadcast_body", broadcast_body),
    ("token", token),
    ("tls_ticket", tls_ticket),
];

/// Reads structure out of fuzzer bytes; past the end, every read gives zeros.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn u8(&mut self) -> u8 {
        let (&b, rest) = self.data.split_first().unwrap_or((&0, &[]));
        self.data = rest;
        b
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub(crate) fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }

    pub(crate) fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    /// Up to `n` bytes (fewer at the end).
    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// A length-prefixed (one byte) slice.
    pub(crate) fn short_bytes(&mut self) -> &'a [u8] {
        let n = self.u8() as usize;
        self.bytes(n)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    /// Whatever is left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Up to 8 cut points chosen by the fuzzer (read before the bytes they cut).
pub(crate) fn cuts(input: &mut Input<'_>) -> Vec<u16> {
    let n = input.u8() % 9;
    (0..n).map(|_| input.u16()).collect()
}

/// `whole` cut at `cuts` (each taken modulo its length + 1), for the incremental decoders.
pub(crate) fn split<'b>(whole: &'b [u8], cuts: &[u16]) -> Vec<&'b [u8]> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| c as usize % (whole.len() + 1))
        .collect();
    at.push(0);
    at.push(whole.len());
    at.sort_unstable();
    at.windows(2).map(|w| &whole[w[0]..w[1]]).collect()
}
