//! The in-memory store (the default; nothing to run beside the gateway): the pure per-channel
//! log ([`log`]) and the sharded store around it ([`sharded`]).

pub mod log;
pub mod sharded;

pub use log::{message_cost, Appended, Backlog, ChannelLog, Evicted, Retention, MESSAGE_OVERHEAD};
pub use sharded::{group_by_shard, MemoryStore, DEFAULT_SHARDS};
