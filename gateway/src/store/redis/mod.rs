//! The Redis store (`--store redis://HOST:PORT[/DB]` or `redis+cluster://H1:P1,H2:P2,...`):
//! every channel's log, meta and directory entry live in Redis, so gateways keep nothing
//! a restart loses and several gateways can share one fleet.
//!
//! One publish is one Redis round trip: the `pushgate` function library
//! ([`pushgate.lua`](pushgate.lua), loaded at start and again whenever Redis has lost it)
//! checks the idempotency key and whether the log's history is still the one that wrote
//! it, takes the next seq, appends, trims by count, bytes and age, refreshes expiries and
//! returns the seq, the epoch and the channel's holder, whom this gateway then delivers to
//! through its [`Outbox`]. Concurrent calls share one multiplexed connection, so they are
//! pipelined. Subscribing is one call too: it takes the channel (a fencing token counts
//! owners) and returns the first backlog page, so nothing falls between backlog and live
//! delivery; a delivery that overtakes the backlog on its way to the worker is held there
//! until the backlog arrives (the worker orders by seq).
//!
//! Failure behaviour: every call has a deadline (`--redis-timeout-ms`) and in-flight calls
//! are bounded (`--redis-max-inflight`); past either the operation fails at once with
//! [`StoreError::Unavailable`] (503), it never queues without bound. A publish whose answer
//! was lost may still have been committed: the publisher's retry with an `Idempotency-Key`
//! is what makes that safe. Client-library resends (the cluster client re-sends after a
//! dropped connection on the budget it uses for MOVED/ASK) cannot give a message a second
//! seq: each publish carries an op id the function recognises.

mod batch;
mod client;
mod conn;
mod history;
pub mod keys;
mod reply;

use super::contract::{
    BacklogPage, ChannelInfo, Outbox, Published, Start, Store, StoreCheck, StoreError, StoreStats,
};
use super::directory::{Holder, WorkerRef};
use super::memory::log::BACKLOG_MAX_BYTES;
use crate::metrics;
use batch::Batcher;
use bytes::Bytes;
pub use client::LIBRARY;
use client::{new_epoch, Client};
pub use conn::{RedisOptions, RedisTarget};
use keys::{decode_holder, encode_holder, ChannelKeys};
use protocol::link::KickReason;
use redis::Value;
use reply::{bad_reply, int, parse_page, text, to_backlog};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The Redis [`crate::store::Store`].
pub struct RedisStore<O: Outbox> {
    client: Arc<Client>,
    /// Every publish goes through it (see `batch.rs`).
    batcher: Batcher,
    outbox: O,
    opts: RedisOptions,
    /// Worker refs by (id, incarnation), so a delivery does not allocate one.
    workers: Mutex<HashMap<(String, u64), WorkerRef>>,
    /// The value each history marker had when this gateway last looked: a marker with
    /// another value (or recreated by this gateway) is a history that lost its data.
    markers_seen: Mutex<HashMap<String, String>>,
    /// A subscription was attached: if that happened before the first look at the markers,
    /// a marker first seen then may already be a new history.
    attached: AtomicBool,
}

impl<O: Outbox> RedisStore<O> {
    /// A store over `opts.target`. Connects lazily: the gateway starts (and says it is
    /// unhealthy) while Redis is down, and catches up once it is back.
    pub fn new(opts: RedisOptions, outbox: O) -> anyhow::Result<Self> {
        let client = Arc::new(Client::new(opts.clone())?);
        Ok(RedisStore {
            batcher: Batcher::start(client.clone(), opts.max_inflight),
            client,
            outbox,
            opts,
            workers: Mutex::new(HashMap::new()),
            markers_seen: Mutex::new(HashMap::new()),
            attached: AtomicBool::new(false),
        })
    }

    /// Loads the function library (on every primary, for a cluster).
    pub async fn load_library(&self) -> Result<(), StoreError> {
        self.client.load_library().await
    }

    /// Round-trips a PING (for `/healthz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.client.raw(&redis::cmd("PING")).await.map(|_| ())
    }

    /// Renews the leases of the workers this gateway sees (`(id, lease line)`, see
    /// [`crate::fleet`]) and reads the whole fleet back: one call.
    pub async fn renew_workers(
        &self,
        leases: &[(String, String)],
        now_ms: u64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let key = format!("{}:workers", self.opts.prefix);
        let now = now_ms.to_string();
        let keep = crate::fleet::KEEP_ENDED_MS.to_string();
        let mut args: Vec<&[u8]> = vec![now.as_bytes(), keep.as_bytes()];
        for (id, line) in leases {
            args.extend([id.as_bytes(), line.as_bytes()]);
        }
        let reply = self.client.fcall("pg_workers", &[&key], &args).await?;
        let Value::Array(a) = &reply else {
            return Err(bad_reply("pg_workers", &reply));
        };
        Ok(a.chunks_exact(2)
            .filter_map(|p| Some((text(&p[0])?, text(&p[1])?)))
            .collect())
    }

    /// The fleet's ticket keys for the previous, current and next rotation period, as the
    /// gateways sharing this Redis agreed: for the current and the next, the first
    /// gateway's `SET NX` wins and the others read its key back; the previous one is only
    /// read. Keys are stored sealed under `wrap` (see [`crate::tickets`]) and expire once
    /// no worker may open tickets with them. Keys this gateway cannot open (another link
    /// key) are left out.
    pub async fn agree_ticket_keys(
        &self,
        tickets: &crate::tickets::Tickets,
        wrap: &crate::tickets::Wrap,
        now: u64,
    ) -> Result<Vec<(u64, crate::tickets::Key)>, StoreError> {
        let p = tickets.period_secs();
        let periods = tickets.periods(now);
        let calls = periods.iter().enumerate().map(|(i, &n)| {
            let key = format!("{}:tickets:{}:{n}", self.opts.prefix, wrap.id());
            let mut cmd;
            let mut fresh = None;
            if i == 0 {
                cmd = redis::cmd("GET");
                cmd.arg(&key);
            } else {
                // Openable until period n + 1 ends; a minute's slack for clock skew.
                let ttl = ((n + 2) * p).saturating_sub(now) + 60;
                // The key this gateway already uses, if any: a Redis that lost the keys
                // (restarted empty) is given them back instead of new ones, so tickets
                // already sealed go on resuming.
                let candidate = tickets
                    .key_for(n)
                    .unwrap_or_else(crate::tickets::Key::random);
                let sealed = wrap.seal(n, &candidate);
                cmd = redis::cmd("SET");
                cmd.arg(&key)
                    .arg(&sealed)
                    .arg("NX")
                    .arg("GET")
                    .arg("EX")
                    .arg(ttl);
                fresh = Some(sealed);
            }
            async move { (n, self.client.raw(&cmd).await, fresh) }
        });
        let mut agreed = Vec::new();
        for (n, reply, fresh) in futures_util::future::join_all(calls).await {
            let sealed = match (reply?, fresh) {
                (Value::BulkString(v), _) => v,
                // This call's SET created it: the value is the one it carried.
                (Value::Nil, Some(v)) => v,
                (Value::Nil, None) => continue,
                (other, _) => return Err(bad_reply("ticket keys", &other)),
            };
            match wrap.open(n, &sealed) {
                Some(key) => agreed.push((n, key)),
                None => tracing::debug!(
                    period = n,
                    "a ticket key in Redis is sealed under another --link-key; ignored"
                ),
            }
        }
        Ok(agreed)
    }

    fn worker(&self, id: &str, incarnation: u64) -> WorkerRef {
        let mut w = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = w.get(&(id.to_owned(), incarnation)) {
            return r.clone();
        }
        if w.len() > 4096 {
            // Incarnations of long-gone workers: start over rather than grow.
            w.clear();
        }
        let r = keys::worker_ref(id, incarnation);
        w.insert((id.to_owned(), incarnation), r.clone());
        r
    }

    fn holder(&self, owner: &str) -> Option<Holder> {
        decode_holder(owner, |id, inc| self.worker(id, inc))
    }

    fn strict(&self) -> &'static [u8] {
        self.client.fixed.strict
    }

    fn keys(&self, channel: &str) -> ChannelKeys {
        ChannelKeys::new(&self.opts.prefix, channel)
    }

    fn common_args(&self, now_ms: u64) -> (String, &str, &str, String) {
        (
            now_ms.to_string(),
            &self.client.fixed.max_age,
            &self.client.fixed.meta_ttl,
            new_epoch().to_string(),
        )
    }

    async fn publish_one(
        &self,
        channel: &str,
        data: &Bytes,
        key: Option<&str>,
        now_ms: u64,
    ) -> Result<Published, StoreError> {
        let accepted_us = super::contract::now_us();
        let k = self.keys(channel);
        let idem = k.idem(key);
        let r = self
            .batcher
            .publish(k.meta, k.list, idem, data.clone(), key, now_ms)
            .await?;
        count_epoch_change(&r.cause);
        if r.evicted > 0 {
            metrics::MESSAGES_EVICTED
                .with_label_values(&["count"])
                .inc_by(r.evicted);
        }
        if !r.duplicate {
            if let Some(h) = self.holder(&r.owner) {
                // Unreachable from here (its worker's link is down, or it is linked to
                // another gateway only): the message is in Redis for its resume.
                self.outbox
                    .deliver(&h, r.epoch, r.seq, data.clone(), accepted_us);
            }
        }
        Ok(Published {
            seq: r.seq,
            duplicate: r.duplicate,
        })
    }

    async fn attach(
        &self,
        channel: &str,
        holder: &Holder,
        start: Start,
        expected: &str,
        now_ms: u64,
    ) -> Result<Vec<Value>, StoreError> {
        let k = self.keys(channel);
        let (now, max_age, meta_ttl, epoch) = self.common_args(now_ms);
        let since = start.since.map(|s| s.to_string()).unwrap_or_default();
        let client_epoch = start.epoch.map(|e| e.to_string()).unwrap_or_default();
        let max_bytes = start.max_bytes.to_string();
        let max_frame = BACKLOG_MAX_BYTES.to_string();
        let me = encode_holder(holder);
        let opened = start.opened_us.to_string();
        let reply = self
            .client
            .fcall(
                "pg_attach",
                &[&k.meta, &k.list],
                &[
                    me.as_bytes(),
                    since.as_bytes(),
                    client_epoch.as_bytes(),
                    if start.resume { b"1" } else { b"0" },
                    max_bytes.as_bytes(),
                    max_frame.as_bytes(),
                    now.as_bytes(),
                    max_age.as_bytes(),
                    meta_ttl.as_bytes(),
                    epoch.as_bytes(),
                    expected.as_bytes(),
                    self.strict(),
                    opened.as_bytes(),
                ],
            )
            .await?;
        match reply {
            Value::Array(v) => {
                self.attached.store(true, Ordering::Relaxed);
                Ok(v)
            }
            other => Err(bad_reply("pg_attach", &other)),
        }
    }
}

/// How an attach that left the channel to its owner is answered: `held` (a resume) as
/// replaced, `late` (asked before the owner's subscribe) as resync, counted.
fn refusal(reply: &[Value]) -> Option<KickReason> {
    match text(reply.first()?).as_deref() {
        Some("held") => Some(KickReason::Replaced),
        Some("late") => Some(KickReason::Resync),
        _ => None,
    }
}

fn refuse<O: Outbox>(outbox: &O, holder: &Holder, reason: KickReason) {
    if reason == KickReason::Resync {
        metrics::SUBSCRIBES_LATE.inc();
    }
    outbox.kick(holder, reason);
}

fn count_epoch_change(cause: &str) {
    if !cause.is_empty() {
        metrics::EPOCH_CHANGES.with_label_values(&[cause]).inc();
    }
}

impl<O: Outbox> Store for RedisStore<O> {
    async fn publish(
        &self,
        channel: &str,
        data: Bytes,
        key: Option<&str>,
        now_ms: u64,
    ) -> Result<Published, StoreError> {
        self.publish_one(channel, &data, key, now_ms).await
    }

    async fn publish_many(
        &self,
        channels: &[&str],
        data: Bytes,
        key: Option<&str>,
        now_ms: u64,
    ) -> Vec<Result<Published, StoreError>> {
        // All queued at once: the batcher sends them in few calls (one slot each in a
        // cluster).
        let calls = channels
            .iter()
            .map(|c| self.publish_one(c, &data, key, now_ms));
        futures_util::future::join_all(calls).await
    }

    async fn subscribe(
        &self,
        channel: &str,
        holder: Holder,
        start: Start,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut reply = self.attach(channel, &holder, start, "", now_ms).await?;
        if let Some(reason) = refusal(&reply) {
            let prev = text(&reply[2]).unwrap_or_default();
            match self.holder(&prev) {
                // A newer connection took the channel while this one's link was down, or
                // it asked after this one did and its subscribe landed first.
                Some(p) if self.outbox.is_live(&p.worker) => {
                    refuse(&self.outbox, &holder, reason);
                    return Ok(());
                }
                // The other holder is gone: take the channel if it is still that one's.
                _ => reply = self.attach(channel, &holder, start, &prev, now_ms).await?,
            }
            if let Some(reason) = refusal(&reply) {
                refuse(&self.outbox, &holder, reason);
                return Ok(());
            }
        }
        if reply.len() < 8 {
            return Err(bad_reply("pg_attach", &Value::Array(reply)));
        }
        let epoch = int(&reply[1]).unwrap_or(0);
        let prev = text(&reply[2]).unwrap_or_default();
        count_epoch_change(&text(&reply[4]).unwrap_or_default());
        if let Some(p) = self.holder(&prev).filter(|p| *p != holder) {
            self.outbox.kick(&p, KickReason::Replaced);
        }
        let page =
            parse_page(reply.split_off(5)).ok_or_else(|| bad_reply("pg_attach", &Value::Nil))?;
        self.outbox.backlog(&holder, to_backlog(epoch, page));
        Ok(())
    }

    async fn fetch(
        &self,
        channel: &str,
        since: u64,
        epoch: Option<u64>,
        max_bytes: u32,
        now_ms: u64,
    ) -> Result<BacklogPage, StoreError> {
        let k = self.keys(channel);
        let (now, max_age, meta_ttl, new) = self.common_args(now_ms);
        let since = since.to_string();
        let client_epoch = epoch.map(|e| e.to_string()).unwrap_or_default();
        let max_bytes = max_bytes.to_string();
        let max_frame = BACKLOG_MAX_BYTES.to_string();
        let reply = self
            .client
            .fcall(
                "pg_fetch",
                &[&k.meta, &k.list],
                &[
                    since.as_bytes(),
                    client_epoch.as_bytes(),
                    max_bytes.as_bytes(),
                    max_frame.as_bytes(),
                    now.as_bytes(),
                    max_age.as_bytes(),
                    meta_ttl.as_bytes(),
                    new.as_bytes(),
                    self.strict(),
                ],
            )
            .await?;
        let Value::Array(mut a) = reply else {
            return Err(bad_reply("pg_fetch", &reply));
        };
        if a.len() < 5 {
            return Err(bad_reply("pg_fetch", &Value::Array(a)));
        }
        let epoch = int(&a[0]).unwrap_or(0);
        count_epoch_change(&text(&a[1]).unwrap_or_default());
        let page = parse_page(a.split_off(2)).ok_or_else(|| bad_reply("pg_fetch", &Value::Nil))?;
        Ok(to_backlog(epoch, page))
    }

    async fn unsubscribe(&self, channel: &str, holder: &Holder, _now_ms: u64) {
        let k = self.keys(channel);
        let me = encode_holder(holder);
        if let Err(e) = self
            .client
            .fcall("pg_detach", &[&k.meta], &[me.as_bytes()])
            .await
        {
            // The entry stays until the next subscriber takes the channel; deliveries to
            // it are dropped by the worker (its sub_id is gone).
            tracing::debug!(error = %e, "unsubscribe not recorded in Redis");
        }
    }

    async fn channel_info(&self, channel: &str, now_ms: u64) -> ChannelInfo {
        let k = self.keys(channel);
        let now = now_ms.to_string();
        let max_age = self.opts.retention.max_age_ms().to_string();
        let none = ChannelInfo {
            online: false,
            worker: None,
            last_seq: 0,
            buffered: 0,
        };
        let Ok(Value::Array(a)) = self
            .client
            .fcall(
                "pg_info",
                &[&k.meta, &k.list],
                &[now.as_bytes(), max_age.as_bytes()],
            )
            .await
        else {
            return none;
        };
        if a.len() != 5 || int(&a[0]) != Some(1) {
            return none;
        }
        let holder = text(&a[3])
            .and_then(|o| self.holder(&o))
            .filter(|h| self.outbox.is_live(&h.worker));
        ChannelInfo {
            online: holder.is_some(),
            worker: holder.map(|h| h.worker.id().clone()),
            last_seq: int(&a[2]).unwrap_or(0),
            buffered: int(&a[4]).unwrap_or(0),
        }
    }

    async fn sweep(&self, _now_ms: u64) {
        // Redis expires what it holds (the message list: the retention age after the last publish;
        // meta: --channel-meta-secs), and reads skip expired entries.
    }

    async fn check(&self) -> StoreCheck {
        self.check_history().await
    }

    async fn stats(&self) -> StoreStats {
        // Totals over every channel would need a scan of Redis; they are Redis' own
        // figures (INFO memory, DBSIZE) in this mode.
        StoreStats::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_json_safe_and_non_zero() {
        for _ in 0..1000 {
            let e = new_epoch();
            assert!(e > 0 && e < (1 << 53));
        }
    }
}
