//! The in-memory store: channels spread over mutex-guarded shards by hash; each channel is a
//! [`ChannelLog`] (pure: seq, epoch, retention, idempotency keys; `now` passed in) plus its
//! directory entry ([`SubRef`]).
//!
//! Deliveries are enqueued on the subscriber's link while the shard lock is held, so the
//! order of frames for a channel on a link is exactly the store's order.
//!
//! Memory bound: every retained message costs its data length + [`MESSAGE_OVERHEAD`] + its
//! idempotency key length. The bound is store-wide: each shard keeps a FIFO of
//! `(channel, epoch, seq)` in append order and publishes its byte count into one atomic
//! total. A shard may grow past its share (`retention_total_bytes / shards`) while the total
//! is under the bound, so one busy channel can use the whole budget; once the total is over,
//! the shard being written evicts its own oldest down to its share, and then, with no lock
//! held, every other shard over its share does the same (one lock at a time). FIFO entries
//! already gone by count or age are skipped lazily, and compacted when they pile up.

use super::{ChannelInfo, Published, Store, StoreError, StoreStats, SubRef};
use crate::metrics;
use bytes::Bytes;
use protocol::link::{Down, KickReason};
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Bytes accounted per retained message on top of its data and key.
pub const MESSAGE_OVERHEAD: usize = 64;

/// Epochs stay below 2^53 so JSON clients parse them exactly.
const EPOCH_MASK: u64 = (1 << 53) - 1;

/// Most payload bytes one `Backlog` frame carries (well under the link's frame limit).
pub const BACKLOG_MAX_BYTES: usize = protocol::link::MAX_FRAME / 4;
/// Frame bytes per backlog message besides its data (seq + length).
const BACKLOG_ENTRY_OVERHEAD: usize = 12;

/// Default number of shards.
pub const DEFAULT_SHARDS: usize = 64;

/// Per-channel retention limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most messages kept per channel.
    pub max_messages: usize,
    /// How long a message is kept.
    pub max_age: Duration,
}

/// One retained message.
#[derive(Debug, Clone)]
struct Retained {
    seq: u64,
    at: Instant,
    data: Bytes,
    key: Option<Arc<str>>,
}

impl Retained {
    fn cost(&self) -> usize {
        message_cost(&self.data, self.key.as_deref())
    }
}

/// What a message costs against the total memory bound.
pub fn message_cost(data: &[u8], key: Option<&str>) -> usize {
    data.len() + MESSAGE_OVERHEAD + key.map_or(0, str::len)
}

/// Messages dropped by retention during one operation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// Dropped by the per-channel count limit.
    pub by_count: u64,
    /// Dropped by age.
    pub by_age: u64,
    /// Bytes they were accounted.
    pub bytes: usize,
}

impl Evicted {
    fn messages(&self) -> usize {
        (self.by_count + self.by_age) as usize
    }

    fn record(&self) {
        if self.by_count > 0 {
            metrics::MESSAGES_EVICTED
                .with_label_values(&["count"])
                .inc_by(self.by_count);
        }
        if self.by_age > 0 {
            metrics::MESSAGES_EVICTED
                .with_label_values(&["age"])
                .inc_by(self.by_age);
        }
    }
}

/// Result of [`ChannelLog::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub duplicate: bool,
    /// Bytes the new message is accounted (0 for a duplicate).
    pub cost: usize,
}

/// What a subscriber gets first: retained messages after `since`, and whether the resume
/// could not be served whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    pub gap_first_seq: Option<u64>,
    pub messages: Vec<(u64, Bytes)>,
}

/// One channel's message log. Pure: no clock, no I/O.
#[derive(Debug)]
pub struct ChannelLog {
    epoch: u64,
    last_seq: u64,
    retained: VecDeque<Retained>,
    /// Idempotency keys of retained messages; boxed and absent until a key is used, so a
    /// channel that never sees one pays 8 bytes instead of an empty map's 48.
    #[allow(clippy::box_collection)] // the point: 8 bytes when absent, not 48
    keys: Option<Box<HashMap<Arc<str>, u64>>>,
}

impl ChannelLog {
    /// An empty log with the given epoch (unique per log creation).
    pub fn new(epoch: u64) -> Self {
        ChannelLog {
            epoch,
            last_seq: 0,
            retained: VecDeque::new(),
            keys: None,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Seq of the newest message ever accepted (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Messages retained now.
    pub fn len(&self) -> usize {
        self.retained.len()
    }

    pub fn is_empty(&self) -> bool {
        self.retained.is_empty()
    }

    /// Seq of the oldest retained message.
    pub fn front_seq(&self) -> Option<u64> {
        self.retained.front().map(|m| m.seq)
    }

    /// The first seq a resume can be served from: the oldest retained, or the next one
    /// when nothing is retained.
    pub fn first_seq(&self) -> u64 {
        self.front_seq().unwrap_or(self.last_seq + 1)
    }

    /// Appends a message (or recognizes a repeated idempotency key), then applies age and
    /// count retention.
    pub fn append(
        &mut self,
        data: Bytes,
        key: Option<&str>,
        now: Instant,
        retention: &Retention,
        evicted: &mut Evicted,
    ) -> Appended {
        self.expire(now, retention, evicted);
        if let Some(k) = key {
            if let Some(&seq) = self.keys.as_ref().and_then(|m| m.get(k)) {
                return Appended {
                    seq,
                    duplicate: true,
                    cost: 0,
                };
            }
        }
        self.last_seq += 1;
        let seq = self.last_seq;
        let key: Option<Arc<str>> = key.map(Arc::from);
        if let Some(k) = &key {
            self.keys
                .get_or_insert_with(Default::default)
                .insert(k.clone(), seq);
        }
        let msg = Retained {
            seq,
            at: now,
            data,
            key,
        };
        let cost = msg.cost();
        self.retained.push_back(msg);
        while self.retained.len() > retention.max_messages {
            let m = self.pop_front().expect("non-empty");
            evicted.by_count += 1;
            evicted.bytes += m.cost();
        }
        Appended {
            seq,
            duplicate: false,
            cost,
        }
    }

    /// Drops messages older than the retention age.
    pub fn expire(&mut self, now: Instant, retention: &Retention, evicted: &mut Evicted) {
        while let Some(front) = self.retained.front() {
            if now.saturating_duration_since(front.at) < retention.max_age {
                break;
            }
            let m = self.pop_front().expect("non-empty");
            evicted.by_age += 1;
            evicted.bytes += m.cost();
        }
    }

    /// Drops the oldest retained message (memory bound); returns its cost.
    pub fn evict_oldest(&mut self) -> Option<usize> {
        self.pop_front().map(|m| m.cost())
    }

    fn pop_front(&mut self) -> Option<Retained> {
        let m = self.retained.pop_front()?;
        if let (Some(k), Some(keys)) = (&m.key, &mut self.keys) {
            keys.remove(k);
            if keys.is_empty() {
                self.keys = None;
            }
        }
        Some(m)
    }

    /// The backlog for a subscriber resuming after `since` (live only when `None`) that
    /// last saw `epoch`.
    ///
    /// Gap (the resume cannot be served whole; everything retained is sent, preceded by
    /// `gap_first_seq` = the first seq that follows): another epoch, `since` beyond
    /// `last_seq`, or messages between `since` and the oldest retained are gone.
    pub fn backlog(&self, since: Option<u64>, epoch: Option<u64>) -> Backlog {
        let Some(since) = since else {
            return Backlog {
                gap_first_seq: None,
                messages: Vec::new(),
            };
        };
        let first = self.first_seq();
        let gap = epoch.is_some_and(|e| e != self.epoch)
            || since > self.last_seq
            || since.saturating_add(1) < first;
        let mut gap_first_seq = gap.then_some(first);
        let wanted = self.retained.iter().filter(|m| gap || m.seq > since);
        // A backlog is one link frame: keep the newest messages that fit and say so.
        let mut bytes = 0usize;
        let fitting = wanted
            .clone()
            .rev()
            .take_while(|m| {
                bytes += m.data.len() + BACKLOG_ENTRY_OVERHEAD;
                bytes <= BACKLOG_MAX_BYTES
            })
            .count();
        let total = wanted.clone().count();
        let messages: Vec<(u64, Bytes)> = wanted
            .skip(total - fitting)
            .map(|m| (m.seq, m.data.clone()))
            .collect();
        if fitting < total {
            gap_first_seq = Some(messages.first().map_or(self.last_seq + 1, |m| m.0));
        }
        Backlog {
            gap_first_seq,
            messages,
        }
    }
}

/// A channel in the store: its log and its directory entry.
struct ChannelState {
    name: Arc<str>,
    log: ChannelLog,
    sub: Option<SubRef>,
    last_active: Instant,
}

/// A FIFO entry for the memory bound.
struct FifoEntry {
    channel: Arc<str>,
    epoch: u64,
    seq: u64,
}

#[derive(Default)]
struct Shard {
    channels: HashMap<Arc<str>, ChannelState>,
    fifo: VecDeque<FifoEntry>,
    bytes: usize,
    /// `bytes` as last added into the store-wide total.
    accounted: usize,
    messages: usize,
}

impl Shard {
    fn is_live(&self, e: &FifoEntry) -> bool {
        self.channels.get(&*e.channel).is_some_and(|c| {
            c.log.epoch == e.epoch
                && e.seq <= c.log.last_seq
                && c.log.front_seq().is_some_and(|f| e.seq >= f)
        })
    }

    /// Evicts oldest-first while over `budget`, then drops stale FIFO entries at the front
    /// and compacts the FIFO when most of it is stale.
    fn enforce_budget(&mut self, budget: usize) {
        let mut evicted = 0u64;
        while self.bytes > budget {
            let Some(e) = self.fifo.pop_front() else {
                break;
            };
            let Some(c) = self.channels.get_mut(&*e.channel) else {
                continue;
            };
            if c.log.epoch == e.epoch && c.log.front_seq() == Some(e.seq) {
                let cost = c.log.evict_oldest().expect("front exists");
                self.bytes -= cost;
                self.messages -= 1;
                evicted += 1;
            }
        }
        if evicted > 0 {
            metrics::MESSAGES_EVICTED
                .with_label_values(&["memory"])
                .inc_by(evicted);
        }
        while let Some(front) = self.fifo.front() {
            if self.is_live(front) {
                break;
            }
            self.fifo.pop_front();
        }
        if self.fifo.len() > 2 * self.messages + 1024 {
            let fifo = std::mem::take(&mut self.fifo);
            self.fifo = fifo.into_iter().filter(|e| self.is_live(e)).collect();
        }
    }
}

/// The in-memory [`Store`].
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    /// `--retention-total-bytes`.
    total_budget: usize,
    /// Fair share of one shard: a shard over it evicts when the total is over budget.
    shard_share: usize,
    /// Bytes retained over all shards (each shard adds its changes when settled).
    total: AtomicUsize,
    retention: Retention,
    max_channels: usize,
    channels: AtomicUsize,
    next_epoch: AtomicU64,
    sweep_cursor: AtomicUsize,
}

impl MemoryStore {
    /// A store with [`DEFAULT_SHARDS`] shards.
    pub fn new(retention: Retention, total_bytes: usize, max_channels: usize) -> Self {
        Self::with_shards(DEFAULT_SHARDS, retention, total_bytes, max_channels)
    }

    /// A store with `shards` shards, each owning `total_bytes / shards` of the memory bound.
    pub fn with_shards(
        shards: usize,
        retention: Retention,
        total_bytes: usize,
        max_channels: usize,
    ) -> Self {
        let shards = shards.max(1);
        // Epochs: unique per log creation; a per-process base from the clock keeps them
        // distinct across restarts, and < 2^53 so they survive JSON number parsing.
        let base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1)
            & EPOCH_MASK;
        MemoryStore {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            total_budget: total_bytes,
            shard_share: total_bytes / shards,
            total: AtomicUsize::new(0),
            retention,
            max_channels,
            channels: AtomicUsize::new(0),
            next_epoch: AtomicU64::new(base.max(1)),
            sweep_cursor: AtomicUsize::new(0),
        }
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, Shard> {
        lock(&self.shards[self.shard_index(channel)])
    }

    fn new_epoch(&self) -> u64 {
        self.next_epoch.fetch_add(1, Ordering::Relaxed) & EPOCH_MASK
    }

    /// Makes sure `channel` exists in `shard`, counting it against `--max-channels`.
    fn ensure_channel(
        &self,
        shard: &mut Shard,
        channel: &str,
        now: Instant,
    ) -> Result<(), StoreError> {
        if shard.channels.contains_key(channel) {
            return Ok(());
        }
        let prev = self.channels.fetch_add(1, Ordering::Relaxed);
        if prev >= self.max_channels {
            self.channels.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::TooManyChannels);
        }
        let name: Arc<str> = Arc::from(channel);
        shard.channels.insert(
            name.clone(),
            ChannelState {
                name,
                log: ChannelLog::new(self.new_epoch()),
                sub: None,
                last_active: now,
            },
        );
        Ok(())
    }

    fn shard_index(&self, channel: &str) -> usize {
        (self.hasher.hash_one(channel) % self.shards.len() as u64) as usize
    }

    /// Synchronous core of [`Store::publish`].
    pub fn publish_now(
        &self,
        channel: &str,
        data: Bytes,
        key: Option<&str>,
        now: Instant,
    ) -> Result<Published, StoreError> {
        let mut guard = self.shard(channel);
        let shard = &mut *guard;
        let mut evicted = Evicted::default();
        let r = self.append_locked(shard, channel, data, key, now, &mut evicted);
        self.finish(shard, evicted);
        drop(guard);
        self.rebalance();
        r
    }

    /// Synchronous core of [`Store::publish_many`]: channels are grouped by shard and each
    /// shard is locked once; every channel gets a normal append (own seq, retention,
    /// idempotency key, live delivery) sharing `data`. Results are in `channels` order.
    pub fn publish_many_now(
        &self,
        channels: &[&str],
        data: &Bytes,
        key: Option<&str>,
        now: Instant,
    ) -> Vec<Result<Published, StoreError>> {
        let n = self.shards.len();
        let order = group_by_shard(channels.iter().map(|c| self.shard_index(c)), n);
        let mut results: Vec<Result<Published, StoreError>> = vec![
            Ok(Published {
                seq: 0,
                duplicate: false
            });
            channels.len()
        ];
        for (shard_i, idxs) in order {
            let mut guard = lock(&self.shards[shard_i]);
            let shard = &mut *guard;
            let mut ev = Evicted::default();
            for &i in idxs.iter() {
                results[i] =
                    self.append_locked(shard, channels[i], data.clone(), key, now, &mut ev);
            }
            self.finish(shard, ev);
            drop(guard);
        }
        self.rebalance();
        results
    }

    /// One append under the shard lock: ensures the channel, appends, and enqueues the live
    /// delivery. The caller settles `evicted` and the memory budget.
    fn append_locked(
        &self,
        shard: &mut Shard,
        channel: &str,
        data: Bytes,
        key: Option<&str>,
        now: Instant,
        evicted: &mut Evicted,
    ) -> Result<Published, StoreError> {
        self.ensure_channel(shard, channel, now)?;
        let state = shard.channels.get_mut(channel).expect("just ensured");
        let a = state
            .log
            .append(data.clone(), key, now, &self.retention, evicted);
        state.last_active = now;
        if !a.duplicate {
            shard.fifo.push_back(FifoEntry {
                channel: state.name.clone(),
                epoch: state.log.epoch,
                seq: a.seq,
            });
            shard.bytes += a.cost;
            shard.messages += 1;
            if let Some(sub) = &state.sub {
                let sent = sub.is_alive()
                    && sub.link.send(Down::Deliver {
                        sub_id: sub.sub_id,
                        epoch: state.log.epoch,
                        seq: a.seq,
                        data,
                    });
                if !sent {
                    state.sub = None;
                }
            }
        }
        Ok(Published {
            seq: a.seq,
            duplicate: a.duplicate,
        })
    }

    /// Synchronous core of [`Store::subscribe`].
    pub fn subscribe_now(
        &self,
        channel: &str,
        sub: SubRef,
        since: Option<u64>,
        epoch: Option<u64>,
        now: Instant,
    ) -> Result<(), StoreError> {
        self.subscribe_inner(channel, sub, since, epoch, false, now)
    }

    /// [`Self::subscribe_now`] for a worker re-subscribing a connection it already held.
    pub fn resubscribe_now(
        &self,
        channel: &str,
        sub: SubRef,
        since: Option<u64>,
        epoch: Option<u64>,
        now: Instant,
    ) -> Result<(), StoreError> {
        self.subscribe_inner(channel, sub, since, epoch, true, now)
    }

    fn subscribe_inner(
        &self,
        channel: &str,
        sub: SubRef,
        since: Option<u64>,
        epoch: Option<u64>,
        resume: bool,
        now: Instant,
    ) -> Result<(), StoreError> {
        let mut guard = self.shard(channel);
        let shard = &mut *guard;
        self.ensure_channel(shard, channel, now)?;
        let state = shard.channels.get_mut(channel).expect("just ensured");
        let mut evicted = Evicted::default();
        state.log.expire(now, &self.retention, &mut evicted);
        state.last_active = now;
        if resume
            && state
                .sub
                .as_ref()
                .is_some_and(|cur| *cur != sub && cur.is_alive())
        {
            // A newer connection took the channel while this worker's link was down: it
            // keeps it, and the resuming connection is the one replaced.
            sub.link.send(Down::Kick {
                sub_id: sub.sub_id,
                reason: KickReason::Replaced,
            });
            self.finish(shard, evicted);
            return Ok(());
        }
        // Directory first, then the backlog: a concurrent publish is either in the backlog
        // or delivered live after it (same lock).
        if let Some(old) = state.sub.replace(sub.clone()) {
            if old != sub && old.is_alive() {
                old.link.send(Down::Kick {
                    sub_id: old.sub_id,
                    reason: KickReason::Replaced,
                });
            }
        }
        let backlog = state.log.backlog(since, epoch);
        let sent = sub.link.send(Down::Backlog {
            sub_id: sub.sub_id,
            epoch: state.log.epoch,
            last_seq: state.log.last_seq,
            gap_first_seq: backlog.gap_first_seq,
            messages: backlog.messages,
        });
        if !sent {
            state.sub = None;
        }
        self.finish(shard, evicted);
        Ok(())
    }

    /// Synchronous core of [`Store::fetch`].
    pub fn fetch_now(
        &self,
        channel: &str,
        since: u64,
        epoch: Option<u64>,
        now: Instant,
    ) -> Result<Down, StoreError> {
        let mut guard = self.shard(channel);
        let shard = &mut *guard;
        self.ensure_channel(shard, channel, now)?;
        let state = shard.channels.get_mut(channel).expect("just ensured");
        let mut evicted = Evicted::default();
        state.log.expire(now, &self.retention, &mut evicted);
        let backlog = state.log.backlog(Some(since), epoch);
        let down = Down::Backlog {
            sub_id: 0,
            epoch: state.log.epoch,
            last_seq: state.log.last_seq,
            gap_first_seq: backlog.gap_first_seq,
            messages: backlog.messages,
        };
        self.finish(shard, evicted);
        Ok(down)
    }

    /// Synchronous core of [`Store::unsubscribe`].
    pub fn unsubscribe_now(&self, channel: &str, sub: &SubRef, now: Instant) {
        let mut shard = self.shard(channel);
        if let Some(state) = shard.channels.get_mut(channel) {
            if state.sub.as_ref() == Some(sub) {
                state.sub = None;
                state.last_active = now;
            }
        }
    }

    /// Synchronous core of [`Store::channel_info`].
    pub fn channel_info_now(&self, channel: &str, now: Instant) -> ChannelInfo {
        let mut guard = self.shard(channel);
        let shard = &mut *guard;
        let Some(state) = shard.channels.get_mut(channel) else {
            return ChannelInfo {
                online: false,
                worker: None,
                last_seq: 0,
                buffered: 0,
            };
        };
        let mut evicted = Evicted::default();
        state.log.expire(now, &self.retention, &mut evicted);
        let holder = state.sub.as_ref().filter(|s| s.is_alive());
        let info = ChannelInfo {
            online: holder.is_some(),
            worker: holder.map(|s| s.link.worker_id.clone()),
            last_seq: state.log.last_seq,
            buffered: state.log.len() as u64,
        };
        self.finish(shard, evicted);
        info
    }

    /// Settles what a locked operation evicted by count or age: the shard's counters, the
    /// eviction metrics, and the store-wide memory bound ([`Self::settle`]).
    fn finish(&self, shard: &mut Shard, evicted: Evicted) {
        shard.bytes -= evicted.bytes;
        shard.messages -= evicted.messages();
        evicted.record();
        self.settle(shard);
    }

    /// Adds `shard`'s byte changes into the store-wide total and, when the total is over
    /// the bound, evicts the shard's oldest messages down to its share (or until the total
    /// fits). Always drops stale FIFO entries.
    fn settle(&self, shard: &mut Shard) {
        self.account(shard);
        let total = self.total.load(Ordering::Relaxed);
        let target = if total > self.total_budget && shard.bytes > self.shard_share {
            shard
                .bytes
                .saturating_sub(total - self.total_budget)
                .max(self.shard_share)
        } else {
            usize::MAX
        };
        shard.enforce_budget(target);
        self.account(shard);
    }

    fn account(&self, shard: &mut Shard) {
        if shard.bytes == shard.accounted {
            // No write to the shared total's cache line when nothing changed.
            return;
        }
        if shard.bytes > shard.accounted {
            self.total
                .fetch_add(shard.bytes - shard.accounted, Ordering::Relaxed);
        } else {
            self.total
                .fetch_sub(shard.accounted - shard.bytes, Ordering::Relaxed);
        }
        shard.accounted = shard.bytes;
    }

    /// When the total is still over the bound, brings every shard down to its share, one
    /// lock at a time (called with no shard lock held).
    fn rebalance(&self) {
        if self.total.load(Ordering::Relaxed) <= self.total_budget {
            return;
        }
        for shard in self.shards.iter() {
            if self.total.load(Ordering::Relaxed) <= self.total_budget {
                break;
            }
            let mut guard = lock(shard);
            self.settle(&mut guard);
        }
    }

    /// Synchronous core of [`Store::sweep`]: visits a quarter of the shards per call (so a
    /// full pass takes four calls), expiring by age, dropping dead directory entries and
    /// forgetting channels that are empty, unsubscribed and idle for longer than retention.
    pub fn sweep_now(&self, now: Instant) {
        let n = self.shards.len();
        let per_call = n.div_ceil(4);
        let start = self.sweep_cursor.fetch_add(per_call, Ordering::Relaxed);
        for i in start..start + per_call {
            self.sweep_shard(i % n, now);
        }
    }

    /// Sweeps every shard once.
    pub fn sweep_all(&self, now: Instant) {
        for i in 0..self.shards.len() {
            self.sweep_shard(i, now);
        }
    }

    fn sweep_shard(&self, i: usize, now: Instant) {
        let mut guard = lock(&self.shards[i]);
        let shard = &mut *guard;
        let mut evicted = Evicted::default();
        let before = shard.channels.len();
        shard.channels.retain(|_, c| {
            c.log.expire(now, &self.retention, &mut evicted);
            if c.sub.as_ref().is_some_and(|s| !s.is_alive()) {
                c.sub = None;
            }
            let idle = now.saturating_duration_since(c.last_active) > self.retention.max_age;
            !(c.log.is_empty() && c.sub.is_none() && idle)
        });
        let removed = before - shard.channels.len();
        self.channels.fetch_sub(removed, Ordering::Relaxed);
        self.finish(shard, evicted);
    }

    /// Synchronous core of [`Store::stats`].
    pub fn stats_now(&self) -> StoreStats {
        let mut s = StoreStats::default();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            s.bytes += shard.bytes as u64;
            s.messages += shard.messages as u64;
        }
        s.channels = self.channels.load(Ordering::Relaxed) as u64;
        s
    }
}

/// Groups item indices by shard (`shard_of` yields each item's shard, `< shards`): the
/// non-empty shards in ascending order, each with its items in their original order.
pub fn group_by_shard(
    shard_of: impl ExactSizeIterator<Item = usize>,
    shards: usize,
) -> Vec<(usize, Vec<usize>)> {
    let mut buckets: Vec<Vec<usize>> = vec![Vec::new(); shards];
    for (i, s) in shard_of.enumerate() {
        buckets[s].push(i);
    }
    buckets
        .into_iter()
        .enumerate()
        .filter(|(_, b)| !b.is_empty())
        .collect()
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic while holding a shard lock leaves consistent-enough state (counters at worst);
    // keep serving rather than poisoning every later request.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store for MemoryStore {
    fn publish(
        &self,
        channel: &str,
        data: Bytes,
        key: Option<&str>,
        now: Instant,
    ) -> impl std::future::Future<Output = Result<Published, StoreError>> + Send {
        std::future::ready(self.publish_now(channel, data, key, now))
    }

    fn publish_many(
        &self,
        channels: &[&str],
        data: Bytes,
        key: Option<&str>,
        now: Instant,
    ) -> impl std::future::Future<Output = Vec<Result<Published, StoreError>>> + Send {
        std::future::ready(self.publish_many_now(channels, &data, key, now))
    }

    fn subscribe(
        &self,
        channel: &str,
        sub: SubRef,
        since: Option<u64>,
        epoch: Option<u64>,
        resume: bool,
        now: Instant,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        std::future::ready(self.subscribe_inner(channel, sub, since, epoch, resume, now))
    }

    fn fetch(
        &self,
        channel: &str,
        since: u64,
        epoch: Option<u64>,
        now: Instant,
    ) -> impl std::future::Future<Output = Result<Down, StoreError>> + Send {
        std::future::ready(self.fetch_now(channel, since, epoch, now))
    }

    fn unsubscribe(
        &self,
        channel: &str,
        sub: &SubRef,
        now: Instant,
    ) -> impl std::future::Future<Output = ()> + Send {
        self.unsubscribe_now(channel, sub, now);
        std::future::ready(())
    }

    fn channel_info(
        &self,
        channel: &str,
        now: Instant,
    ) -> impl std::future::Future<Output = ChannelInfo> + Send {
        std::future::ready(self.channel_info_now(channel, now))
    }

    fn sweep(&self, now: Instant) -> impl std::future::Future<Output = ()> + Send {
        self.sweep_now(now);
        std::future::ready(())
    }

    fn stats(&self) -> impl std::future::Future<Output = StoreStats> + Send {
        std::future::ready(self.stats_now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::LinkHandle;
    use tokio::sync::mpsc;

    const R: Retention = Retention {
        max_messages: 3,
        max_age: Duration::from_secs(10),
    };

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn seqs(log: &ChannelLog) -> Vec<u64> {
        log.retained.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn seq_starts_at_one_and_count_retention_drops_oldest() {
        let t = Instant::now();
        let mut log = ChannelLog::new(7);
        let mut ev = Evicted::default();
        for i in 1..=5 {
            let a = log.append(b("1"), None, t, &R, &mut ev);
            assert_eq!((a.seq, a.duplicate), (i, false));
            assert_eq!(a.cost, 1 + MESSAGE_OVERHEAD);
        }
        assert_eq!(seqs(&log), [3, 4, 5]);
        assert_eq!(ev.by_count, 2);
        assert_eq!(ev.bytes, 2 * (1 + MESSAGE_OVERHEAD));
        assert_eq!((log.last_seq(), log.epoch(), log.first_seq()), (5, 7, 3));
    }

    #[test]
    fn age_retention() {
        let t0 = Instant::now();
        let mut log = ChannelLog::new(1);
        let mut ev = Evicted::default();
        log.append(b("1"), None, t0, &R, &mut ev);
        log.append(b("2"), None, t0 + Duration::from_secs(5), &R, &mut ev);
        log.expire(t0 + Duration::from_millis(9_999), &R, &mut ev);
        assert_eq!(seqs(&log), [1, 2]);
        log.expire(t0 + Duration::from_secs(10), &R, &mut ev);
        assert_eq!(seqs(&log), [2]);
        log.expire(t0 + Duration::from_secs(16), &R, &mut ev);
        assert!(log.is_empty());
        assert_eq!((ev.by_age, log.last_seq(), log.first_seq()), (2, 2, 3));
    }

    #[test]
    fn idempotency_within_retention() {
        let t = Instant::now();
        let mut log = ChannelLog::new(1);
        let mut ev = Evicted::default();
        assert_eq!(log.append(b("a"), Some("k"), t, &R, &mut ev).seq, 1);
        let again = log.append(b("a"), Some("k"), t, &R, &mut ev);
        assert_eq!((again.seq, again.duplicate, again.cost), (1, true, 0));
        assert_eq!(log.len(), 1);
        // Once the keyed message leaves retention the key is forgotten.
        for _ in 0..3 {
            log.append(b("x"), None, t, &R, &mut ev);
        }
        let later = log.append(b("a"), Some("k"), t, &R, &mut ev);
        assert_eq!((later.seq, later.duplicate), (5, false));
        assert_eq!(later.cost, 1 + 1 + MESSAGE_OVERHEAD);
    }

    #[test]
    fn backlog_and_gap_rules() {
        let t = Instant::now();
        let mut log = ChannelLog::new(42);
        let mut ev = Evicted::default();
        // Nothing published yet.
        assert_eq!(log.backlog(Some(0), None).gap_first_seq, None);
        assert_eq!(
            log.backlog(Some(3), None).gap_first_seq,
            Some(1),
            "since beyond last_seq"
        );
        for _ in 0..5 {
            log.append(b("m"), None, t, &R, &mut ev);
        }
        // Retained 3, 4, 5.
        let live = log.backlog(None, None);
        assert_eq!((live.gap_first_seq, live.messages.len()), (None, 0));
        let whole = log.backlog(Some(2), Some(42));
        assert_eq!(whole.gap_first_seq, None);
        assert_eq!(
            whole.messages.iter().map(|m| m.0).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        let tail = log.backlog(Some(4), None);
        assert_eq!(tail.messages.iter().map(|m| m.0).collect::<Vec<_>>(), [5]);
        assert_eq!(
            log.backlog(Some(5), None),
            Backlog {
                gap_first_seq: None,
                messages: vec![]
            }
        );
        // 2 is gone: since=1 cannot be served whole.
        let gap = log.backlog(Some(1), None);
        assert_eq!(gap.gap_first_seq, Some(3));
        assert_eq!(gap.messages.len(), 3);
        // Another epoch: gap even though since looks fine; everything retained follows.
        let other = log.backlog(Some(4), Some(41));
        assert_eq!(other.gap_first_seq, Some(3));
        assert_eq!(other.messages.len(), 3);
        // since beyond last_seq (e.g. from a lost history).
        assert_eq!(log.backlog(Some(9), None).gap_first_seq, Some(3));
        // Nothing retained but messages existed: since < last_seq is a gap, since == last_seq not.
        log.expire(t + Duration::from_secs(60), &R, &mut ev);
        assert_eq!(log.backlog(Some(2), None).gap_first_seq, Some(6));
        assert_eq!(log.backlog(Some(5), None).gap_first_seq, None);
        assert_eq!(log.backlog(Some(5), Some(1)).gap_first_seq, Some(6));
    }

    #[test]
    fn backlog_is_capped_to_one_frame() {
        let t = Instant::now();
        let big = Retention {
            max_messages: 10,
            max_age: Duration::from_secs(10),
        };
        let mut log = ChannelLog::new(1);
        let mut ev = Evicted::default();
        let chunk = Bytes::from(vec![b'1'; BACKLOG_MAX_BYTES / 3 - 100]);
        for _ in 0..5 {
            log.append(chunk.clone(), None, t, &big, &mut ev);
        }
        let b = log.backlog(Some(0), None);
        assert_eq!(
            b.messages.iter().map(|m| m.0).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!(b.gap_first_seq, Some(3));
    }

    fn link(queue: usize) -> (Arc<LinkHandle>, mpsc::Receiver<Down>) {
        LinkHandle::new(Arc::from("w"), 0, 1, queue)
    }

    fn store(total: usize, max_channels: usize) -> MemoryStore {
        MemoryStore::with_shards(
            1,
            Retention {
                max_messages: 100,
                max_age: Duration::from_secs(10),
            },
            total,
            max_channels,
        )
    }

    #[test]
    fn channel_state_stays_small() {
        // Every channel with a subscriber or retained messages holds one of these.
        let size = std::mem::size_of::<ChannelState>();
        assert!(size <= 104, "ChannelState is {size} bytes");
    }

    #[test]
    fn one_busy_channel_may_use_the_whole_budget_and_the_total_holds() {
        // 64 shards: a channel's shard owns 1/64 of the bound, but while the total fits, one
        // channel keeps everything its own retention allows.
        let per = 10 + MESSAGE_OVERHEAD;
        let big = Retention {
            max_messages: 1000,
            max_age: Duration::from_secs(600),
        };
        let s = MemoryStore::with_shards(64, big, per * 640, 10_000);
        let t = Instant::now();
        for _ in 0..600 {
            s.publish_now("hot", b("0123456789"), None, t).unwrap();
        }
        assert_eq!(
            s.channel_info_now("hot", t).buffered,
            600,
            "evicted under the bound"
        );
        // Past the total, other channels' appends bring it back, whichever shard they hit.
        for i in 0..400 {
            s.publish_now(&format!("c{i}"), b("0123456789"), None, t)
                .unwrap();
        }
        let st = s.stats_now();
        assert!(st.bytes <= (per * 640) as u64, "{} > bound", st.bytes);
        assert_eq!(s.total.load(Ordering::Relaxed) as u64, st.bytes);
        // The hot channel lost its oldest messages; the newcomers kept theirs.
        let hot = s.channel_info_now("hot", t).buffered;
        assert!(hot < 600, "{hot}");
        assert_eq!(s.channel_info_now("c399", t).buffered, 1);
    }

    #[test]
    fn total_bytes_evicts_oldest_first_across_channels() {
        let per = 10 + MESSAGE_OVERHEAD;
        let s = store(per * 4, 100);
        let t = Instant::now();
        let memory = metrics::MESSAGES_EVICTED.with_label_values(&["memory"]);
        let before = memory.get();
        for i in 0..6 {
            let ch = if i % 2 == 0 { "a" } else { "b" };
            s.publish_now(ch, b("0123456789"), None, t).unwrap();
        }
        // a: 1,2,3  b: 1,2,3 in order a1 b1 a2 b2 a3 b3; budget 4 -> a1 and b1 evicted.
        assert!(memory.get() - before >= 2);
        let st = s.stats_now();
        assert_eq!(
            (st.bytes, st.messages, st.channels),
            ((per * 4) as u64, 4, 2)
        );
        assert_eq!(s.channel_info_now("a", t).buffered, 2);
        assert_eq!(s.channel_info_now("b", t).buffered, 2);
        assert_eq!(s.channel_info_now("a", t).last_seq, 3);
        // Count-evicted entries leave stale FIFO entries that are skipped, not double-counted.
        let lone = store(per * 1000, 100);
        for _ in 0..5000 {
            lone.publish_now("c", b("0123456789"), None, t).unwrap();
        }
        let st = lone.stats_now();
        assert_eq!((st.messages, st.bytes), (100, (per * 100) as u64));
        assert!(lone.shards[0].lock().unwrap().fifo.len() <= 2 * 100 + 1024);
    }

    #[test]
    fn max_channels_bounds_new_channels() {
        let s = store(1 << 20, 2);
        let t = Instant::now();
        s.publish_now("a", b("1"), None, t).unwrap();
        s.publish_now("b", b("1"), None, t).unwrap();
        assert_eq!(
            s.publish_now("c", b("1"), None, t),
            Err(StoreError::TooManyChannels)
        );
        assert_eq!(s.publish_now("a", b("2"), None, t).unwrap().seq, 2);
        let (l, _rx) = link(16);
        let sub = SubRef { link: l, sub_id: 1 };
        assert_eq!(
            s.subscribe_now("d", sub, None, None, t),
            Err(StoreError::TooManyChannels)
        );
    }

    #[test]
    fn a_resuming_worker_does_not_take_the_channel_from_a_newer_holder() {
        let s = store(1 << 20, 100);
        let t = Instant::now();
        let (l1, mut rx1) = link(16);
        let (l2, mut rx2) = link(16);
        let old = SubRef {
            link: l1.clone(),
            sub_id: 1,
        };
        let newer = SubRef {
            link: l2.clone(),
            sub_id: 2,
        };
        // The newer client took the channel while the old one's link was down.
        s.subscribe_now("c", newer.clone(), None, None, t).unwrap();
        assert!(matches!(rx2.try_recv().unwrap(), Down::Backlog { .. }));
        s.resubscribe_now("c", old.clone(), Some(0), None, t)
            .unwrap();
        assert!(matches!(
            rx1.try_recv().unwrap(),
            Down::Kick {
                sub_id: 1,
                reason: KickReason::Replaced
            }
        ));
        assert!(rx2.try_recv().is_err(), "the newer holder is not kicked");
        s.publish_now("c", b("x"), None, t).unwrap();
        assert!(matches!(
            rx2.try_recv().unwrap(),
            Down::Deliver { sub_id: 2, .. }
        ));
        // With nobody holding the channel, a resume takes it as usual.
        s.unsubscribe_now("c", &newer, t);
        s.resubscribe_now("c", old, Some(0), None, t).unwrap();
        assert!(matches!(
            rx1.try_recv().unwrap(),
            Down::Backlog { sub_id: 1, .. }
        ));
    }

    #[test]
    fn subscribe_backlog_then_live_and_kick_on_replace() {
        let s = store(1 << 20, 100);
        let t = Instant::now();
        s.publish_now("c", b("1"), None, t).unwrap();
        s.publish_now("c", b("2"), None, t).unwrap();
        let (l1, mut rx1) = link(16);
        let (l2, mut rx2) = link(16);
        let first = SubRef {
            link: l1.clone(),
            sub_id: 11,
        };
        s.subscribe_now("c", first.clone(), Some(0), None, t)
            .unwrap();
        match rx1.try_recv().unwrap() {
            Down::Backlog {
                sub_id,
                last_seq,
                gap_first_seq,
                messages,
                ..
            } => {
                assert_eq!((sub_id, last_seq, gap_first_seq), (11, 2, None));
                assert_eq!(messages.iter().map(|m| m.0).collect::<Vec<_>>(), [1, 2]);
            }
            other => panic!("{other:?}"),
        }
        s.publish_now("c", b("3"), None, t).unwrap();
        assert!(matches!(
            rx1.try_recv().unwrap(),
            Down::Deliver {
                sub_id: 11,
                seq: 3,
                ..
            }
        ));
        let info = s.channel_info_now("c", t);
        assert_eq!(
            (info.online, info.worker.as_deref(), info.last_seq),
            (true, Some("w"), 3)
        );

        let second = SubRef {
            link: l2,
            sub_id: 22,
        };
        s.subscribe_now("c", second.clone(), None, None, t).unwrap();
        assert!(matches!(
            rx1.try_recv().unwrap(),
            Down::Kick {
                sub_id: 11,
                reason: KickReason::Replaced
            }
        ));
        assert!(matches!(
            rx2.try_recv().unwrap(),
            Down::Backlog { sub_id: 22, .. }
        ));
        // The old holder's unsubscribe does not clear the new holder.
        s.unsubscribe_now("c", &first, t);
        s.publish_now("c", b("4"), None, t).unwrap();
        assert!(matches!(
            rx2.try_recv().unwrap(),
            Down::Deliver {
                sub_id: 22,
                seq: 4,
                ..
            }
        ));
        assert!(rx1.try_recv().is_err());
        s.unsubscribe_now("c", &second, t);
        assert!(!s.channel_info_now("c", t).online);
        // A duplicate is not delivered again.
        s.subscribe_now("c", second.clone(), None, None, t).unwrap();
        let _ = rx2.try_recv();
        s.publish_now("c", b("5"), Some("k"), t).unwrap();
        assert_eq!(
            s.publish_now("c", b("5"), Some("k"), t).unwrap(),
            Published {
                seq: 5,
                duplicate: true
            }
        );
        assert!(matches!(
            rx2.try_recv().unwrap(),
            Down::Deliver { seq: 5, .. }
        ));
        assert!(rx2.try_recv().is_err());
        // A dead link is offline.
        second.link.close();
        assert!(!s.channel_info_now("c", t).online);
    }

    #[test]
    fn full_link_queue_closes_the_link() {
        let s = store(1 << 20, 100);
        let t = Instant::now();
        let (l, _rx) = link(2);
        s.subscribe_now(
            "c",
            SubRef {
                link: l.clone(),
                sub_id: 1,
            },
            None,
            None,
            t,
        )
        .unwrap();
        let overflows = metrics::LINK_OVERFLOWS.get();
        for _ in 0..3 {
            s.publish_now("c", b("x"), None, t).unwrap();
        }
        assert!(!l.is_alive());
        assert!(metrics::LINK_OVERFLOWS.get() > overflows);
        assert!(!s.channel_info_now("c", t).online);
        // Every message is still in the store for the resume.
        assert_eq!(s.channel_info_now("c", t).buffered, 3);
    }

    #[test]
    fn group_by_shard_keeps_order_within_a_shard() {
        let g = group_by_shard([2usize, 0, 2, 1, 0].into_iter(), 4);
        assert_eq!(g, vec![(0, vec![1, 4]), (1, vec![3]), (2, vec![0, 2])]);
        assert!(group_by_shard(std::iter::empty(), 4).is_empty());
    }

    #[test]
    fn publish_many_appends_per_channel_and_shares_the_payload() {
        let s = MemoryStore::with_shards(
            4,
            Retention {
                max_messages: 2,
                max_age: Duration::from_secs(10),
            },
            1 << 20,
            100,
        );
        let t = Instant::now();
        s.publish_now("b", b("0"), None, t).unwrap();
        let (l, mut rx) = link(64);
        for (i, ch) in ["a", "b"].iter().enumerate() {
            s.subscribe_now(
                ch,
                SubRef {
                    link: l.clone(),
                    sub_id: i as u64,
                },
                None,
                None,
                t,
            )
            .unwrap();
            assert!(matches!(rx.try_recv().unwrap(), Down::Backlog { .. }));
        }
        let data = Bytes::from(vec![b'7'; 100]);
        let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let r = s.publish_many_now(&names, &data, Some("k"), t);
        let seqs: Vec<u64> = r.iter().map(|p| p.as_ref().unwrap().seq).collect();
        assert_eq!(seqs, [1, 2, 1, 1, 1, 1, 1, 1]);
        assert!(r.iter().all(|p| !p.as_ref().unwrap().duplicate));
        // Live deliveries carry the very same buffer, not a copy.
        let mut delivered = Vec::new();
        while let Ok(Down::Deliver {
            sub_id,
            seq,
            data: d,
            ..
        }) = rx.try_recv()
        {
            assert_eq!(d.as_ptr(), data.as_ptr());
            delivered.push((sub_id, seq));
        }
        delivered.sort();
        assert_eq!(delivered, [(0, 1), (1, 2)]);
        // Idempotency key per channel; count retention per channel.
        let again = s.publish_many_now(&["a", "b"], &data, Some("k"), t);
        assert!(again.iter().all(|p| p.as_ref().unwrap().duplicate));
        assert!(rx.try_recv().is_err());
        s.publish_many_now(&["b"], &data, None, t);
        let info = s.channel_info_now("b", t);
        assert_eq!((info.last_seq, info.buffered), (3, 2));
        let st = s.stats_now();
        assert_eq!((st.channels, st.messages), (8, 9));
        // The channel bound is per channel, not per request.
        let small = store(1 << 20, 2);
        let r = small.publish_many_now(&["x", "y", "z"], &data, None, t);
        assert_eq!(r.iter().filter(|p| p.is_ok()).count(), 2);
        assert_eq!(r.iter().filter(|p| p.is_err()).count(), 1, "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_expires_and_forgets_idle_channels_with_a_new_epoch_later() {
        let s = store(1 << 20, 100);
        s.publish_now("c", b("1"), None, Instant::now()).unwrap();
        let (l, mut rx) = link(16);
        s.subscribe_now(
            "c",
            SubRef {
                link: l.clone(),
                sub_id: 1,
            },
            Some(0),
            None,
            Instant::now(),
        )
        .unwrap();
        let epoch = match rx.try_recv().unwrap() {
            Down::Backlog { epoch, .. } => epoch,
            other => panic!("{other:?}"),
        };
        let age = s.metrics_age_count();
        tokio::time::advance(Duration::from_secs(11)).await;
        s.sweep_all(Instant::now());
        assert!(s.metrics_age_count() > age);
        assert_eq!(s.stats_now().messages, 0);
        assert_eq!(s.stats_now().channels, 1, "subscribed channels stay");
        l.close();
        tokio::time::advance(Duration::from_secs(11)).await;
        s.sweep_all(Instant::now());
        assert_eq!(
            s.stats_now().channels,
            0,
            "idle, empty, unsubscribed: forgotten"
        );
        let (l2, mut rx2) = link(16);
        s.subscribe_now(
            "c",
            SubRef {
                link: l2,
                sub_id: 2,
            },
            Some(1),
            Some(epoch),
            Instant::now(),
        )
        .unwrap();
        match rx2.try_recv().unwrap() {
            Down::Backlog {
                epoch: e2,
                gap_first_seq,
                ..
            } => {
                assert_ne!(e2, epoch);
                assert_eq!(gap_first_seq, Some(1));
            }
            other => panic!("{other:?}"),
        }
    }

    impl MemoryStore {
        fn metrics_age_count(&self) -> u64 {
            metrics::MESSAGES_EVICTED.with_label_values(&["age"]).get()
        }
    }
}
