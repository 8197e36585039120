//! The configured backend, by enum dispatch (Redis joins as a second variant).

use super::contract::{ChannelInfo, Published, Store, StoreError, StoreStats};
use super::directory::SubRef;
use super::memory::MemoryStore;
use bytes::Bytes;

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
        now_ms: u64,
    ) -> Result<Published, StoreError> {
        match self {
            AnyStore::Memory(m) => m.publish(channel, data, key, now_ms).await,
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
        }
    }

    async fn subscribe(
        &self,
        channel: &str,
        sub: SubRef,
        since: Option<u64>,
        epoch: Option<u64>,
        resume: bool,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(m) => {
                m.subscribe(channel, sub, since, epoch, resume, now_ms)
                    .await
            }
        }
    }

    async fn fetch(
        &self,
        channel: &str,
        since: u64,
        epoch: Option<u64>,
        now_ms: u64,
    ) -> Result<protocol::link::Down, StoreError> {
        match self {
            AnyStore::Memory(m) => m.fetch(channel, since, epoch, now_ms).await,
        }
    }

    async fn unsubscribe(&self, channel: &str, sub: &SubRef, now_ms: u64) {
        match self {
            AnyStore::Memory(m) => m.unsubscribe(channel, sub, now_ms).await,
        }
    }

    async fn channel_info(&self, channel: &str, now_ms: u64) -> ChannelInfo {
        match self {
            AnyStore::Memory(m) => m.channel_info(channel, now_ms).await,
        }
    }

    async fn sweep(&self, now_ms: u64) {
        match self {
            AnyStore::Memory(m) => m.sweep(now_ms).await,
        }
    }

    async fn stats(&self) -> StoreStats {
        match self {
            AnyStore::Memory(m) => m.stats().await,
        }
    }
}
