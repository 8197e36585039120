//! The `--local-workers` tests of `local_workers.rs`, the same code, with the gateway on
//! the Redis store (a worker killed with -9 mid-stream, restarted, nothing lost).

#[path = "local_workers.rs"]
mod local_workers;
