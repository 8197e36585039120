//! Fuzz target `link_roundtrip`: the body is `fuzz_bodies::link_roundtrip` (also run on the corpus by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::link_roundtrip(data));
