//! The configured backend, by enum dispatch.

use super::contract::{
    BacklogPage, ChannelInfo, Outbox, Published, Start, Store, StoreCheck, StoreError, StoreStats,
};
use super::directory::Holder;
use super::memory::MemoryStore;
use super::redis::RedisStore;
use bytes::Bytes;

/// The configured backend; every variant delivers through an outbox of type `O`.
pub enum AnyStore<O: Outbox> {
    Memory(MemoryStore<O>),
    Redis(Box<RedisStore<O>>),
}

impl<O: Outbox> AnyStore<O> {
    /// The store is shared with other gateways over the network (Redis): its directory
    /// names workers by incarnation, and concurrent calls are worth pipelining.
    pub fn is_shared(&self) -> bool {
        matches!(self, AnyStore::Redis(_))
    }
}

impl<O: Outbox> Store for AnyStore<O> {
    async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        key: Option<&str>,
        now_ms: u64,
    ) -> Result<Published, StoreError> {
        match self {
            AnyStore::Memory(m) => m.publish(channel, data, key, now_ms).await,
            AnyStore::Redis(r) => r.publish(channel, data, key, now_ms).await,
        }
    }

    async fn publish_many(
        &self,
        channels: &[&str],
        data: Bytes,
        key: Option<&str>,
        now_ms: u64,
    ) -> Vec<Result<Published, StoreError>> {
        match self {
            AnyStore::Memory(m) => m.publish_many(channels, data, key, now_ms).await,
            AnyStore::Redis(r) => r.publish_many(channels, data, key, now_ms).await,
        }
    }

    async fn subscribe(
        &self,
        channel: &str,
        holder: Holder,
        start: Start,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(m) => m.subscribe(channel, holder, start, now_ms).await,
            AnyStore::Redis(r) => r.subscribe(channel, holder, start, now_ms).await,
        }
    }

    async fn fetch(
        &self,
        channel: &str,
        since: u64,
        epoch: Option<u64>,
        max_bytes: u32,
        now_ms: u64,
    ) -> Result<BacklogPage, StoreError> {
        match self {
            AnyStore::Memory(m) => m.fetch(channel, since, epoch, max_bytes, now_ms).await,
            AnyStore::Redis(r) => r.fetch(channel, since, epoch, max_bytes, now_ms).await,
        }
    }

    async fn unsubscribe(&self, channel: &str, holder: &Holder, now_ms: u64) {
        match self {
            AnyStore::Memory(m) => m.unsubscribe(channel, holder, now_ms).await,
            AnyStore::Redis(r) => r.unsubscribe(channel, holder, now_ms).await,
        }
    }

    async fn channel_info(&self, channel: &str, now_ms: u64) -> ChannelInfo {
        match self {
            AnyStore::Memory(m) => m.channel_info(channel, now_ms).await,
            AnyStore::Redis(r) => r.channel_info(channel, now_ms).await,
        }
    }

    async fn sweep(&self, now_ms: u64) {
        match self {
            AnyStore::Memory(m) => m.sweep(now_ms).await,
            AnyStore::Redis(r) => r.sweep(now_ms).await,
        }
    }

    async fn check(&self) -> StoreCheck {
        match self {
            AnyStore::Memory(m) => m.check().await,
            AnyStore::Redis(r) => r.check().await,
        }
    }

    async fn stats(&self) -> StoreStats {
        match self {
            AnyStore::Memory(m) => m.stats().await,
            AnyStore::Redis(r) => r.stats().await,
        }
    }
}
