//! Fuzz target `ws_frames`: the body is `fuzz_bodies::ws_frames` (also run on the corpus by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_bodies::ws_frames(data));
