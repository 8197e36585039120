//! What every store backend implements ([`Store`]), the data it answers with, and the
//! [`Outbox`] it hands deliveries to.
//!
//! Contract every backend keeps: `publish` appends and, when the channel has a holder,
//! hands the delivery to the outbox in the same step, and `subscribe` sets the directory
//! entry before it reads the backlog, so a message is either in the backlog or delivered
//! live (the worker drops seqs it already sent). The store never builds a wire frame nor
//! holds a transport handle: a directory entry is data ([`Holder`]), and the memory store
//! calls the outbox under its shard lock (which orders a channel's frames on a link),
//! where a Redis store would get "deliver to worker W, sub S" back from one script and
//! call the same outbox.

use super::directory::{Holder, WorkerRef};
use bytes::Bytes;
use protocol::link::KickReason;
use std::future::Future;
use std::sync::Arc;

/// Wall-clock milliseconds since the Unix epoch: the time every [`Store`] method takes.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Wall-clock microseconds since the Unix epoch: the stamp a delivery carries from the
/// moment a gateway accepted its publish (`Down::Deliver::published_us`), which the worker
/// turns into `pushgate_delivery_latency_seconds`.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
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

/// How a subscription starts (what `Up::Subscribe` asks for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// Retained messages with `seq > since` come first; `None`: live only.
    pub since: Option<u64>,
    /// The epoch the client last saw, when it told.
    pub epoch: Option<u64>,
    /// Most payload bytes of the first backlog page (at least one message is always sent;
    /// the worker fetches the rest).
    pub max_bytes: u32,
    /// A worker re-subscribing a connection after its link came back: a live newer holder
    /// keeps the channel.
    pub resume: bool,
    /// When the client asked, in µs since the Unix epoch by its worker's clock (0: not
    /// known). A subscribe asked before the live holder's, landing after it (it came over
    /// a slower link), does not take the channel: it is kicked with `Resync`, so a client
    /// that is still there reconnects at once and wins with a newer stamp.
    pub opened_us: u64,
}

impl Start {
    /// Whether this subscribe was asked before the one of the holder stamped
    /// `holder_opened_us`, and so must not take the channel from it while it is live.
    /// Unknown stamps (0) on either side never refuse: the later arrival takes it.
    pub fn asked_before(&self, holder_opened_us: u64) -> bool {
        self.opened_us != 0 && holder_opened_us > self.opened_us
    }
}

/// One page of what a subscriber gets first (and what a `Fetch` gets): the oldest retained
/// messages after `since` that fit the page budget, and whether the resume could not be
/// served whole (`gap_first_seq`: the first seq that follows). More remaining is not a
/// gap: `last_seq` beyond the page's last message says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BacklogPage {
    pub epoch: u64,
    pub last_seq: u64,
    pub gap_first_seq: Option<u64>,
    pub messages: Vec<(u64, Bytes)>,
}

/// Where a store sends what a holder must get. The gateway implements it over its worker
/// links ([`crate::router::Router`]); store tests record what they are given.
pub trait Outbox: Send + Sync + 'static {
    /// Queues one live message for `to`, accepted at `published_us` ([`now_us`]). `false`:
    /// `to` cannot be reached (its worker is gone or its link refused the frame), and the
    /// store forgets `to` as the holder.
    fn deliver(&self, to: &Holder, epoch: u64, seq: u64, data: Bytes, published_us: u64) -> bool;
    /// Queues `to`'s backlog page; `false` as for [`Self::deliver`].
    fn backlog(&self, to: &Holder, page: BacklogPage) -> bool;
    /// Tells `to`'s worker to drop it (a no-op for a worker that is gone).
    fn kick(&self, to: &Holder, reason: KickReason);
    /// Whether deliveries can still reach `worker`.
    fn is_live(&self, worker: &WorkerRef) -> bool;
}

impl<O: Outbox + ?Sized> Outbox for Arc<O> {
    fn deliver(&self, to: &Holder, epoch: u64, seq: u64, data: Bytes, published_us: u64) -> bool {
        (**self).deliver(to, epoch, seq, data, published_us)
    }
    fn backlog(&self, to: &Holder, page: BacklogPage) -> bool {
        (**self).backlog(to, page)
    }
    fn kick(&self, to: &Holder, reason: KickReason) {
        (**self).kick(to, reason)
    }
    fn is_live(&self, worker: &WorkerRef) -> bool {
        (**self).is_live(worker)
    }
}

/// What `GET /v1/channels/{channel}` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    pub online: bool,
    pub worker: Option<Arc<str>>,
    pub last_seq: u64,
    pub buffered: u64,
}

/// What [`Store::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreCheck {
    /// The store answered (`/healthz` says so).
    pub healthy: bool,
    /// The store lost what it held since the last check.
    pub history_lost: bool,
}

/// Totals for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub channels: u64,
    /// Channels remembered only by their seq and epoch (memory store; Redis keeps a meta
    /// key that expires on its own).
    pub idle_channels: u64,
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
    /// channel has a holder, hands the delivery to the outbox.
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

    /// Makes `holder` the channel's holder (kicking any previous one) and hands the first
    /// page of its backlog (retained messages after `start.since`, gap signalled, at most
    /// `start.max_bytes` of payload) to the outbox. With `start.resume` (a worker
    /// re-subscribing after its link came back) a live newer holder keeps the channel and
    /// `holder` is kicked instead (`Replaced`); a subscribe stamped before a live holder's
    /// `opened_us` is kicked too (`Resync`, see [`Start::opened_us`]).
    fn subscribe(
        &self,
        channel: &str,
        holder: Holder,
        start: Start,
        now_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The next page of retained messages after `since` (at most `max_bytes` of payload,
    /// at least one message), without touching the directory: the caller answers the
    /// asking subscription itself.
    fn fetch(
        &self,
        channel: &str,
        since: u64,
        epoch: Option<u64>,
        max_bytes: u32,
        now_ms: u64,
    ) -> impl Future<Output = Result<BacklogPage, StoreError>> + Send;

    /// Clears the channel's holder if it is still `holder`.
    fn unsubscribe(
        &self,
        channel: &str,
        holder: &Holder,
        now_ms: u64,
    ) -> impl Future<Output = ()> + Send;

    /// Online state, holder and log position of `channel`.
    fn channel_info(&self, channel: &str, now_ms: u64) -> impl Future<Output = ChannelInfo> + Send;

    /// Periodic housekeeping: age expiry, forgetting idle channels.
    fn sweep(&self, now_ms: u64) -> impl Future<Output = ()> + Send;

    /// Once a second: whether the store answers, and whether it lost its history since the
    /// last check (a Redis that restarted empty or was flushed: every holder it knew is
    /// gone, so every worker must subscribe its connections again). An in-process store
    /// never loses its history while the gateway runs.
    fn check(&self) -> impl Future<Output = StoreCheck> + Send {
        std::future::ready(StoreCheck {
            healthy: true,
            history_lost: false,
        })
    }

    /// Totals for metrics.
    fn stats(&self) -> impl Future<Output = StoreStats> + Send;
}
