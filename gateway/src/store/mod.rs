//! The store: per-channel message logs (seq, epoch, retention, idempotency keys) and the
//! directory entry saying which worker subscription holds each channel.
//!
//! [`Store`] ([`contract`]) is backend-neutral so a Redis implementation can sit beside the
//! in-memory one ([`memory`]); the rest of the gateway holds an [`AnyStore`] ([`any`]). A
//! directory entry is data ([`Holder`]: worker id + incarnation, `sub_id`, in
//! [`directory`]); deliveries go through the [`Outbox`] the gateway gives the store
//! ([`crate::router::Router`] over its worker links).
//!
//! This file only declares and re-exports: files inside `store/` name each other directly,
//! so the facade never closes an import circle.

pub mod any;
pub mod contract;
pub mod directory;
pub mod memory;
pub mod redis;

pub use any::AnyStore;
pub use contract::{
    now_ms, BacklogPage, ChannelInfo, Outbox, Published, Start, Store, StoreCheck, StoreError,
    StoreStats,
};
pub use directory::{Holder, WorkerRef};
pub use memory::{ChannelLog, MemoryStore, Retention};
