//! Fuzz target `ndjson_batch`: the body is `fuzz_bodies::ndjson_batch` (also run on the corpus by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::ndjson_batch(data));
