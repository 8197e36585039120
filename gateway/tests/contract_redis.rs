//! The contract tests of `contract.rs`, the same code, against the Redis store: each
//! cluster they start gets its own `redis-server` (`common::start` reads the test crate's
//! name).

#[path = "contract.rs"]
mod contract;
