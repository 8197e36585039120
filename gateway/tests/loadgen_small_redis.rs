//! The CI-scale loadgen runs of `loadgen_small.rs`, the same code, with the gateway on the
//! Redis store.

#[path = "loadgen_small.rs"]
mod loadgen_small;
