//! Fuzz target `broadcast_body`: the body is `fuzz_bodies::broadcast_body` (also run on the corpus by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::broadcast_body(data));
