//! Fuzz target `tls_ticket`: the body is `fuzz_bodies::tls_ticket` (also run on the corpus by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::tls_ticket(data));
