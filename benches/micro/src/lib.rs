//! Shared setup for pushgate's micro-benchmarks (`benches/micro/benches/*.rs`).
//!
//! The bench binaries link this library, so they run on mimalloc like the `gateway` and
//! `worker` binaries do, and they all use the same short criterion settings (the whole
//! suite stays within a few minutes).
//!
//! Run: `cargo bench -p pushgate-benches` (one target: `--bench store`).

use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Criterion measurement time per benchmark.
pub const MEASUREMENT: Duration = Duration::from_millis(2500);
/// Criterion warm-up time per benchmark.
pub const WARM_UP: Duration = Duration::from_millis(500);
/// Criterion samples per benchmark.
pub const SAMPLES: usize = 20;

/// `n` bytes of a JSON object, `{"k":"xxxx..."}`, the shape a backend typically publishes.
pub fn json_payload(n: usize) -> bytes::Bytes {
    let overhead = br#"{"k":""}"#.len();
    let mut v = Vec::with_capacity(n);
    v.extend_from_slice(br#"{"k":""#);
    v.extend(std::iter::repeat_n(b'x', n.saturating_sub(overhead)));
    v.extend_from_slice(br#""}"#);
    v.into()
}

/// `n` bytes of plain text (not JSON), with a quote and a newline to escape.
pub fn text_payload(n: usize) -> bytes::Bytes {
    let mut v: Vec<u8> = b"plain \"text\"\n".to_vec();
    while v.len() < n {
        v.push(b'a' + (v.len() % 26) as u8);
    }
    v.truncate(n);
    v.into()
}

/// The number after `name` in `args`, or `default` (the floor binaries' flags).
pub fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: not a number: {v}"))
        })
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_sizes() {
        assert_eq!(json_payload(64).len(), 64);
        assert_eq!(json_payload(1024).len(), 1024);
        assert_eq!(text_payload(64).len(), 64);
        // Valid one-line JSON is kept verbatim; text is turned into a JSON string.
        let json = json_payload(64);
        assert_eq!(
            &protocol::envelope::payload_to_data(json.clone())[..],
            &json[..]
        );
        assert_ne!(
            &protocol::envelope::payload_to_data(text_payload(64))[..],
            &text_payload(64)[..]
        );
    }
}
