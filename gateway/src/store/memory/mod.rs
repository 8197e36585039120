//! The in-memory store (the default; nothing to run beside the gateway): the pure per-channel
//! log ([`log`]), the memory bound's bookkeeping ([`ledger`]) and the sharded store that
//! applies both under its shard locks ([`sharded`]).

pub mod ledger;
pub mod log;
pub mod sharded;

pub use log::{message_cost, Appended, Backlog, ChannelLog, Evicted, Retention, MESSAGE_OVERHEAD};
pub use sharded::{group_by_shard, MemoryStore, DEFAULT_SHARDS};
