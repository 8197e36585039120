//! The in-memory store: channels spread over mutex-guarded shards by hash; each channel is a
//! [`ChannelLog`] (pure: seq, epoch, retention, idempotency keys; `now_ms` passed in) plus its
//! directory entry ([`Holder`], data).
//!
//! Deliveries, backlogs and kicks go to the [`Outbox`] while the shard lock is held, so the
//! order of a channel's frames on a link is exactly the store's order.
//!
//! The memory bound's bookkeeping (a FIFO per shard, one store-wide total) lives in
//! [`super::ledger`]; this file applies it under each shard's lock, and with no lock held
//! brings every other shard over its share down too (one lock at a time, never two).

use super::ledger::{Budget, Channels, FifoEntry, Ledger};
use super::log::{ChannelLog, Evicted, Retention};
use crate::metrics;
use crate::store::contract::{
    BacklogPage, ChannelInfo, Outbox, Published, Start, Store, StoreError, StoreStats,
};
use crate::store::directory::Holder;
use bytes::Bytes;
use protocol::link::KickReason;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Epochs stay below 2^53 so JSON clients parse them exactly.
const EPOCH_MASK: u64 = (1 << 53) - 1;

/// Default number of shards.
pub const DEFAULT_SHARDS: usize = 64;

/// How long a forgotten channel's seq and epoch are kept unless told otherwise
/// (`--channel-meta-secs`' default).
pub const DEFAULT_CHANNEL_META: Duration = Duration::from_secs(30 * 24 * 3600);

/// Metas looked at to pick the oldest when the bound forces one out.
const META_EVICTION_SAMPLE: usize = 8;

/// A channel in the store: its log and its directory entry.
struct ChannelState {
    name: Arc<str>,
    log: ChannelLog,
    /// The directory entry: who holds the channel (data; the outbox knows how to reach it).
    holder: Option<Holder>,
    /// The holder's `Start::opened_us` (0: not known).
    holder_opened_us: u64,
    /// Wall-clock ms of the last append, subscribe or unsubscribe.
    last_active: u64,
}

/// What the store keeps of a channel it forgot (no messages, no holder, idle past the
/// retention age): enough to go on counting. 24 bytes plus its name and map slot.
#[derive(Debug, Clone, Copy)]
struct Meta {
    epoch: u64,
    last_seq: u64,
    /// The channel's `last_active` when it was forgotten.
    idle_since_ms: u64,
}

#[derive(Default)]
struct Shard {
    channels: HashMap<Arc<str>, ChannelState>,
    /// Forgotten channels' seq and epoch, for `--channel-meta-secs` after their last
    /// activity (at most `--max-channels` in all).
    metas: HashMap<Arc<str>, Meta>,
    ledger: Ledger,
}

impl Channels for HashMap<Arc<str>, ChannelState> {
    fn evict_oldest(&mut self, e: &FifoEntry) -> Option<usize> {
        let c = self.get_mut(&*e.channel)?;
        if c.log.epoch() == e.epoch && c.log.front_seq() == Some(e.seq) {
            c.log.evict_oldest()
        } else {
            None
        }
    }

    fn retains(&self, e: &FifoEntry) -> bool {
        self.get(&*e.channel).is_some_and(|c| {
            c.log.epoch() == e.epoch
                && e.seq <= c.log.last_seq()
                && c.log.front_seq().is_some_and(|f| e.seq >= f)
        })
    }
}

/// The in-memory [`Store`], delivering through the outbox `O`.
pub struct MemoryStore<O> {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    /// `--retention-total-bytes` over all shards.
    budget: Budget,
    retention: Retention,
    max_channels: usize,
    channels: AtomicUsize,
    /// How long a forgotten channel's [`Meta`] is kept, from its last activity.
    meta_ms: u64,
    /// [`Meta`]s held over all shards (at most `max_channels`).
    metas: AtomicUsize,
    next_epoch: AtomicU64,
    sweep_cursor: AtomicUsize,
    /// Called under the shard lock for every delivery, backlog and kick.
    outbox: O,
}

impl<O: Outbox> MemoryStore<O> {
    /// A store with [`DEFAULT_SHARDS`] shards.
    pub fn new(retention: Retention, total_bytes: usize, max_channels: usize, outbox: O) -> Self {
        Self::with_shards(DEFAULT_SHARDS, retention, total_bytes, max_channels, outbox)
    }

    /// A store with `shards` shards, each owning `total_bytes / shards` of the memory bound.
    pub fn with_shards(
        shards: usize,
        retention: Retention,
        total_bytes: usize,
        max_channels: usize,
        outbox: O,
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
            budget: Budget::new(total_bytes, shards),
            retention,
            max_channels,
            channels: AtomicUsize::new(0),
            meta_ms: DEFAULT_CHANNEL_META.as_millis() as u64,
            metas: AtomicUsize::new(0),
            next_epoch: AtomicU64::new(base.max(1)),
            sweep_cursor: AtomicUsize::new(0),
            outbox,
        }
    }

    /// Keeps a forgotten channel's seq and epoch for `d` after its last activity
    /// (`--channel-meta-secs`), so its next publish goes on counting and a resume from
    /// before gets the gap frame.
    pub fn with_channel_meta(mut self, d: Duration) -> Self {
        self.meta_ms = d.as_millis().try_into().unwrap_or(u64::MAX);
        self
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
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if shard.channels.contains_key(channel) {
            return Ok(());
        }
        let prev = self.channels.fetch_add(1, Ordering::Relaxed);
        if prev >= self.max_channels {
            self.channels.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::TooManyChannels);
        }
        // A channel forgotten within --channel-meta-secs goes on with its seq and epoch.
        let (name, log) = match shard.metas.remove_entry(channel) {
            Some((name, m)) => {
                self.metas.fetch_sub(1, Ordering::Relaxed);
                (name, ChannelLog::continued(m.epoch, m.last_seq))
            }
            None => (Arc::from(channel), ChannelLog::new(self.new_epoch())),
        };
        shard.channels.insert(
            name.clone(),
            ChannelState {
                name,
                log,
                holder: None,
                holder_opened_us: 0,
                last_active: now_ms,
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
        now_ms: u64,
    ) -> Result<Published, StoreError> {
        let mut guard = self.shard(channel);
        let shard = &mut *guard;
        let mut evicted = Evicted::default();
        let r = self.append_locked(shard, channel, data, key, now_ms, &mut evicted);
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
        now_ms: u64,
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
                    self.append_locked(shard, channels[i], data.clone(), key, now_ms, &mut ev);
            }
            self.finish(shard, ev);
            drop(guard);
        }
        self.rebalance();
        results
    }

    /// One append under the shard lock: ensures the channel, appends, and hands the live
    /// delivery to the outbox. The caller settles `evicted` and the memory budget.
    fn append_locked(
        &self,
        shard: &mut Shard,
        channel: &str,
        data: Bytes,
        key: Option<&str>,
        now_ms: u64,
        evicted: &mut Evicted,
    ) -> Result<Published, StoreError> {
        self.ensure_channel(shard, channel, now_ms)?;
        let state = shard.channels.get_mut(channel).expect("just ensured");
        let a = state
            .log
            .append(data.clone(), key, now_ms, &self.retention, evicted);
        state.last_active = now_ms;
        if !a.duplicate {
            shard
                .ledger
                .appended(state.name.clone(), state.log.epoch(), a.seq, a.cost);
            if let Some(holder) = &state.holder {
                let at = super::super::contract::now_us();
                if !self
                    .outbox
                    .deliver(holder, state.log.epoch(), a.seq, data, at)
                {
                    state.holder = None;
                }
            }
        }
        Ok(Published {
            seq: a.seq,
            duplicate: a.duplicate,
        })
    }

    /// [`Store::subscribe`] with the whole backlog in the first page (up to the frame
    /// limit), as tests and benches want it.
    pub fn subscribe_now(
        &self,
        channel: &str,
        holder: Holder,
        since: Option<u64>,
        epoch: Option<u64>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let start = Start {
            since,
            epoch,
            max_bytes: u32::MAX,
            resume: false,
            opened_us: 0,
        };
        self.subscribe_start(channel, holder, start, now_ms)
    }

    /// Synchronous core of [`Store::subscribe`].
    pub fn subscribe_start(
        &self,
        channel: &str,
        holder: Holder,
        start: Start,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.on_channel(channel, now_ms, |state| {
            state.last_active = now_ms;
            let other_live = || {
                state
                    .holder
                    .as_ref()
                    .is_some_and(|cur| *cur != holder && self.outbox.is_live(&cur.worker))
            };
            if start.resume && other_live() {
                // A newer connection took the channel while this worker's link was down:
                // it keeps it, and the resuming connection is the one replaced.
                self.outbox.kick(&holder, KickReason::Replaced);
                return;
            }
            if start.asked_before(state.holder_opened_us) && other_live() {
                // Asked before the live holder's subscribe but landed after it (its link
                // was slower): the client that asked later keeps the channel.
                metrics::SUBSCRIBES_LATE.inc();
                self.outbox.kick(&holder, KickReason::Resync);
                return;
            }
            // Directory first, then the backlog: a concurrent publish is either in the
            // backlog or delivered live after it (same lock).
            let same = state.holder.as_ref() == Some(&holder);
            if let Some(old) = state.holder.replace(holder.clone()) {
                if old != holder {
                    self.outbox.kick(&old, KickReason::Replaced);
                }
            }
            if !same || start.opened_us != 0 {
                state.holder_opened_us = start.opened_us;
            }
            let page = page(&state.log, start.since, start.epoch, start.max_bytes);
            if !self.outbox.backlog(&holder, page) {
                state.holder = None;
            }
        })
    }

    /// Synchronous core of [`Store::fetch`].
    pub fn fetch_now(
        &self,
        channel: &str,
        since: u64,
        epoch: Option<u64>,
        max_bytes: u32,
        now_ms: u64,
    ) -> Result<BacklogPage, StoreError> {
        self.on_channel(channel, now_ms, |state| {
            page(&state.log, Some(since), epoch, max_bytes)
        })
    }

    /// Runs `f` on `channel` (created if new, age retention applied) under its shard lock,
    /// then settles the shard.
    fn on_channel<R>(
        &self,
        channel: &str,
        now_ms: u64,
        f: impl FnOnce(&mut ChannelState) -> R,
    ) -> Result<R, StoreError> {
        let mut guard = self.shard(channel);
        let shard = &mut *guard;
        self.ensure_channel(shard, channel, now_ms)?;
        let state = shard.channels.get_mut(channel).expect("just ensured");
        let mut evicted = Evicted::default();
        state.log.expire(now_ms, &self.retention, &mut evicted);
        let r = f(state);
        self.finish(shard, evicted);
        Ok(r)
    }

    /// Synchronous core of [`Store::unsubscribe`].
    pub fn unsubscribe_now(&self, channel: &str, holder: &Holder, now_ms: u64) {
        let mut shard = self.shard(channel);
        if let Some(state) = shard.channels.get_mut(channel) {
            if state.holder.as_ref() == Some(holder) {
                state.holder = None;
                state.last_active = now_ms;
            }
        }
    }

    /// Synchronous core of [`Store::channel_info`].
    pub fn channel_info_now(&self, channel: &str, now_ms: u64) -> ChannelInfo {
        let mut guard = self.shard(channel);
        let shard = &mut *guard;
        let Some(state) = shard.channels.get_mut(channel) else {
            return ChannelInfo {
                online: false,
                worker: None,
                last_seq: shard.metas.get(channel).map_or(0, |m| m.last_seq),
                buffered: 0,
            };
        };
        let mut evicted = Evicted::default();
        state.log.expire(now_ms, &self.retention, &mut evicted);
        let holder = state
            .holder
            .as_ref()
            .filter(|h| self.outbox.is_live(&h.worker));
        let info = ChannelInfo {
            online: holder.is_some(),
            worker: holder.map(|h| h.worker.id().clone()),
            last_seq: state.log.last_seq(),
            buffered: state.log.len() as u64,
        };
        self.finish(shard, evicted);
        info
    }

    /// Settles what a locked operation evicted by count or age: the shard's ledger, the
    /// eviction metrics, and the store-wide memory bound ([`Self::settle`]).
    fn finish(&self, shard: &mut Shard, evicted: Evicted) {
        shard.ledger.released(&evicted);
        evicted.record();
        self.settle(shard);
    }

    /// Adds `shard`'s byte changes into the store-wide total and, when the total is over
    /// the bound, evicts the shard's oldest messages down to its share (or until the total
    /// fits). Always drops stale FIFO entries.
    fn settle(&self, shard: &mut Shard) {
        self.budget.account(&mut shard.ledger);
        let target = self.budget.target(&shard.ledger);
        let evicted = shard.ledger.enforce(target, &mut shard.channels);
        if evicted > 0 {
            metrics::MESSAGES_EVICTED
                .with_label_values(&["memory"])
                .inc_by(evicted);
        }
        self.budget.account(&mut shard.ledger);
    }

    /// When the total is still over the bound, brings every shard down to its share, one
    /// lock at a time (called with no shard lock held).
    fn rebalance(&self) {
        if !self.budget.over() {
            return;
        }
        for shard in self.shards.iter() {
            if !self.budget.over() {
                break;
            }
            let mut guard = lock(shard);
            self.settle(&mut guard);
        }
    }

    /// Synchronous core of [`Store::sweep`]: visits a quarter of the shards per call (so a
    /// full pass takes four calls), expiring by age, forgetting channels that are empty,
    /// idle for longer than retention and without a live holder (their seq and epoch are
    /// kept as a [`Meta`]), and dropping metas idle for longer than `--channel-meta-secs`.
    pub fn sweep_now(&self, now_ms: u64) {
        let n = self.shards.len();
        let per_call = n.div_ceil(4);
        let start = self.sweep_cursor.fetch_add(per_call, Ordering::Relaxed);
        for i in start..start + per_call {
            self.sweep_shard(i % n, now_ms);
        }
    }

    /// Sweeps every shard once.
    pub fn sweep_all(&self, now_ms: u64) {
        for i in 0..self.shards.len() {
            self.sweep_shard(i, now_ms);
        }
    }

    fn sweep_shard(&self, i: usize, now_ms: u64) {
        let mut guard = lock(&self.shards[i]);
        let shard = &mut *guard;
        let mut evicted = Evicted::default();
        let before = shard.channels.len();
        let metas_before = shard.metas.len();
        shard
            .metas
            .retain(|_, m| now_ms.saturating_sub(m.idle_since_ms) <= self.meta_ms);
        let mut forgotten = Vec::new();
        shard.channels.retain(|_, c| {
            c.log.expire(now_ms, &self.retention, &mut evicted);
            let idle = now_ms.saturating_sub(c.last_active) > self.retention.max_age_ms();
            if !(c.log.is_empty() && idle) {
                return true;
            }
            // Only a channel that could otherwise be forgotten has its holder looked up: a
            // stale entry elsewhere costs nothing and the next delivery to it clears it.
            if c.holder
                .as_ref()
                .is_some_and(|h| !self.outbox.is_live(&h.worker))
            {
                c.holder = None;
            }
            if c.holder.is_none() && c.log.last_seq() > 0 {
                forgotten.push((
                    c.name.clone(),
                    c.log.epoch(),
                    c.log.last_seq(),
                    c.last_active,
                ));
            }
            c.holder.is_some()
        });
        let removed = before - shard.channels.len();
        self.channels.fetch_sub(removed, Ordering::Relaxed);
        let expired = metas_before - shard.metas.len();
        self.metas.fetch_sub(expired, Ordering::Relaxed);
        for (name, epoch, last_seq, idle_since_ms) in forgotten {
            self.keep_meta(shard, name, epoch, last_seq, idle_since_ms, now_ms);
        }
        self.finish(shard, evicted);
    }

    /// Keeps a forgotten channel's meta if it is still within `--channel-meta-secs`; at the
    /// `--max-channels` bound the oldest of a sample of this shard's metas makes room (none
    /// in this shard: the new one is not kept).
    fn keep_meta(
        &self,
        shard: &mut Shard,
        name: Arc<str>,
        epoch: u64,
        last_seq: u64,
        idle_since_ms: u64,
        now_ms: u64,
    ) {
        if now_ms.saturating_sub(idle_since_ms) > self.meta_ms {
            return;
        }
        if self.metas.load(Ordering::Relaxed) >= self.max_channels {
            let oldest = shard
                .metas
                .iter()
                .take(META_EVICTION_SAMPLE)
                .min_by_key(|(_, m)| m.idle_since_ms)
                .map(|(k, _)| k.clone());
            let Some(oldest) = oldest else {
                metrics::CHANNEL_METAS_DROPPED.inc();
                return;
            };
            shard.metas.remove(&oldest);
            self.metas.fetch_sub(1, Ordering::Relaxed);
            metrics::CHANNEL_METAS_DROPPED.inc();
        }
        let meta = Meta {
            epoch,
            last_seq,
            idle_since_ms,
        };
        if shard.metas.insert(name, meta).is_none() {
            self.metas.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Synchronous core of [`Store::stats`].
    pub fn stats_now(&self) -> StoreStats {
        let mut s = StoreStats::default();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            s.bytes += shard.ledger.bytes() as u64;
            s.messages += shard.ledger.messages() as u64;
        }
        s.channels = self.channels.load(Ordering::Relaxed) as u64;
        s.idle_channels = self.metas.load(Ordering::Relaxed) as u64;
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

/// The page for a subscriber resuming after `since` (live only when `None`) that last saw
/// `epoch`: at most `max_bytes` of payload, at least one message.
fn page(log: &ChannelLog, since: Option<u64>, epoch: Option<u64>, max_bytes: u32) -> BacklogPage {
    let backlog = log.backlog(since, epoch, max_bytes as usize);
    BacklogPage {
        epoch: log.epoch(),
        last_seq: log.last_seq(),
        gap_first_seq: backlog.gap_first_seq,
        messages: backlog.messages,
    }
}

impl<O: Outbox> Store for MemoryStore<O> {
    fn publish(
        &self,
        channel: &str,
        data: Bytes,
        key: Option<&str>,
        now_ms: u64,
    ) -> impl std::future::Future<Output = Result<Published, StoreError>> + Send {
        std::future::ready(self.publish_now(channel, data, key, now_ms))
    }

    fn publish_many(
        &self,
        channels: &[&str],
        data: Bytes,
        key: Option<&str>,
        now_ms: u64,
    ) -> impl std::future::Future<Output = Vec<Result<Published, StoreError>>> + Send {
        std::future::ready(self.publish_many_now(channels, &data, key, now_ms))
    }

    fn subscribe(
        &self,
        channel: &str,
        holder: Holder,
        start: Start,
        now_ms: u64,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        std::future::ready(self.subscribe_start(channel, holder, start, now_ms))
    }

    fn fetch(
        &self,
        channel: &str,
        since: u64,
        epoch: Option<u64>,
        max_bytes: u32,
        now_ms: u64,
    ) -> impl std::future::Future<Output = Result<BacklogPage, StoreError>> + Send {
        std::future::ready(self.fetch_now(channel, since, epoch, max_bytes, now_ms))
    }

    fn unsubscribe(
        &self,
        channel: &str,
        holder: &Holder,
        now_ms: u64,
    ) -> impl std::future::Future<Output = ()> + Send {
        self.unsubscribe_now(channel, holder, now_ms);
        std::future::ready(())
    }

    fn channel_info(
        &self,
        channel: &str,
        now_ms: u64,
    ) -> impl std::future::Future<Output = ChannelInfo> + Send {
        std::future::ready(self.channel_info_now(channel, now_ms))
    }

    fn sweep(&self, now_ms: u64) -> impl std::future::Future<Output = ()> + Send {
        self.sweep_now(now_ms);
        std::future::ready(())
    }

    fn stats(&self) -> impl std::future::Future<Output = StoreStats> + Send {
        std::future::ready(self.stats_now())
    }
}

#[cfg(test)]
mod tests;
