//! Fuzz target `http_request`: the body is `fuzz_bodies::http_request` (also run on the corpus by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::http_request(data));
