//! Fuzz target `token`: the body is `fuzz_bodies::token` (also run on the corpus by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::token(data));
