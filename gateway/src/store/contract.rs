//! What every store backend implements ([`Store`]) and the data it answers with.
//!
//! Contract every backend keeps: `publish` appends and, when the channel has a live
//! subscriber, enqueues the `Deliver` on that subscriber's link in the same step, and
//! `subscribe` sets the directory entry before it reads the backlog, so a message is either
//! in the backlog or delivered live (the worker drops seqs it already sent).

use super::directory::SubRef;
use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;

/// Wall-clock milliseconds since the Unix epoch: the time every [`Store`] method takes.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Result of an accepted publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    /// The idempotency key was seen within retention: nothing was appended or delivered,
    /// `seq` is the original one.
    pub duplicate: bool,
}

/// What `GET /v1/channels/{channel}` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    pub online: bool,
    pub worker: Option<Arc<str>>,
    pub last_seq: u64,
    pub buffered: u64,
}

/// Totals for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub channels: u64,
    pub bytes: u64,
    pub messages: u64,
}

/// Why the store refused an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the store already tracks the maximum number of channels")]
    TooManyChannels,
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Machine-readable code for JSON errors and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::TooManyChannels => "too_many_channels",
            StoreError::Unavailable(_) => "store_unavailable",
        }
    }
}

/// A store backend. Time is passed in as wall-clock milliseconds (`now_ms`, see [`now_ms`]):
/// gateways that share a store share no `Instant`, and tests pass explicit times.
pub trait Store: Send + Sync + 'static {
    /// Appends `data` to `channel` (idempotent on `key` within retention) and, if the
    /// channel has a live subscriber, enqueues the delivery on its link.
    fn publish(
        &self,
        channel: &str,
        data: Bytes,
        key: Option<&str>,
        now_ms: u64,
    ) -> impl Future<Output = Result<Published, StoreError>> + Send;

    /// Publishes the same `data` on every channel of `channels` (names already validated):
    /// per channel exactly what [`Store::publish`] does (own seq, retention, idempotency
    /// `key` per channel, live delivery), with the payload shared, not copied. Results are
    /// in `channels` order.
    fn publish_many(
        &self,
        channels: &[&str],
        data: Bytes,
        key: Option<&str>,
        now_ms: u64,
    ) -> impl Future<Output = Vec<Result<Published, StoreError>>> + Send;

    /// Makes `sub` the channel's holder (kicking any previous one) and enqueues its
    /// `Backlog` (retained messages after `since`, gap signalled) on `sub`'s link. With
    /// `resume` (a worker re-subscribing after its link came back) a live newer holder keeps
    /// the channel and `sub` is kicked instead.
    fn subscribe(
        &self,
        channel: &str,
        sub: SubRef,
        since: Option<u64>,
        epoch: Option<u64>,
        resume: bool,
        now_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The retained messages after `since` as a `Backlog` frame (its `sub_id` left 0 for
    /// the caller), without touching the directory.
    fn fetch(
        &self,
        channel: &str,
        since: u64,
        epoch: Option<u64>,
        now_ms: u64,
    ) -> impl Future<Output = Result<protocol::link::Down, StoreError>> + Send;

    /// Clears the channel's holder if it is still `sub`.
    fn unsubscribe(
        &self,
        channel: &str,
        sub: &SubRef,
        now_ms: u64,
    ) -> impl Future<Output = ()> + Send;

    /// Online state, holder and log position of `channel`.
    fn channel_info(&self, channel: &str, now_ms: u64) -> impl Future<Output = ChannelInfo> + Send;

    /// Periodic housekeeping: age expiry, forgetting idle channels.
    fn sweep(&self, now_ms: u64) -> impl Future<Output = ()> + Send;

    /// Totals for metrics.
    fn stats(&self) -> impl Future<Output = StoreStats> + Send;
}
