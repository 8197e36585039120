//! The configured backend, by enum dispatch (Redis joins as a second variant).

use super::contract::{ChannelInfo, Published, Store, StoreError, StoreStats};
use super::directory::SubRef;
use super::memory::MemoryStore;
use bytes::Bytes;
use tokio::time::Instant;

/// The configured backend (enum dispatch; Redis joins as a second variant).
pub enum AnyStore {
    Memory(MemoryStore),
}

impl Store for AnyStore {
    async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        key: Option<&str>,
        now: Instant,
    ) -> Result<Published, StoreError> {
        match self {
            AnyStore::Memory(m) => m.publish(channel, data, key, now).await,
        }
    }

    async fn publish_many(
        &self,
        channels: &[&str],
        data: Bytes,
        key: Option<&str>,
        now: Instant,
    ) -> Vec<Result<Published, StoreError>> {
        match self {
            AnyStore::Memory(m) => m.publish_many(channels, data, key, now).await,
        }
    }

    async fn subscribe(
        &self,
        channel: &str,
        sub: SubRef,
        since: Option<u64>,
        epoch: Option<u64>,
        resume: bool,
        now: Instant,
    ) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(m) => m.subscribe(channel, sub, since, epoch, resume, now).await,
        }
    }

    async fn fetch(
        &self,
        channel: &str,
        since: u64,
        epoch: Option<u64>,
        now: Instant,
    ) -> Result<protocol::link::Down, StoreError> {
        match self {
            AnyStore::Memory(m) => m.fetch(channel, since, epoch, now).await,
        }
    }

    async fn unsubscribe(&self, channel: &str, sub: &SubRef, now: Instant) {
        match self {
            AnyStore::Memory(m) => m.unsubscribe(channel, sub, now).await,
        }
    }

    async fn channel_info(&self, channel: &str, now: Instant) -> ChannelInfo {
        match self {
            AnyStore::Memory(m) => m.channel_info(channel, now).await,
        }
    }

    async fn sweep(&self, now: Instant) {
        match self {
            AnyStore::Memory(m) => m.sweep(now).await,
        }
    }

    async fn stats(&self) -> StoreStats {
        match self {
            AnyStore::Memory(m) => m.stats().await,
        }
    }
}
