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
use bytes::Bytes;
use conn::{connect, Conn};
pub use conn::{RedisOptions, RedisTarget};
use keys::{decode_holder, encode_holder, ChannelKeys};
use protocol::link::KickReason;
use redis::{Cmd, Value};
use reply::{bad_reply, int, parse_page, parse_publish, text, to_backlog};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::Semaphore;

/// The function library, loaded with `FUNCTION LOAD REPLACE`.
pub const LIBRARY: &str = include_str!("pushgate.lua");

/// Epochs stay below 2^53 so JSON clients parse them exactly.
const EPOCH_MASK: u64 = (1 << 53) - 1;

/// The Redis [`crate::store::Store`].
pub struct RedisStore<O: Outbox> {
    /// The connection and its generation. A call that times out replaces it (once per
    /// generation): the library keeps every unanswered request of a connection until an
    /// answer or an I/O error comes, and a black-holed connection gives neither, so
    /// without this each timed-out call would stay in memory.
    conn: Mutex<(Conn, u64)>,
    outbox: O,
    opts: RedisOptions,
    inflight: Semaphore,
    /// Worker refs by (id, incarnation), so a delivery does not allocate one.
    workers: Mutex<HashMap<(String, u64), WorkerRef>>,
    /// Set when a call found the library missing (a restart without persistence, a new
    /// node): the next call loads it first.
    reload: AtomicBool,
    /// The last call reached Redis.
    healthy: AtomicBool,
    /// The value each history marker had when this gateway last looked: a marker with
    /// another value (or recreated by this gateway) is a history that lost its data.
    markers_seen: Mutex<HashMap<String, String>>,
    /// A subscription was attached: if that happened before the first look at the markers,
    /// a marker first seen then may already be a new history.
    attached: AtomicBool,
    /// Arguments that do not change between calls, rendered once.
    fixed: FixedArgs,
}

/// What every call passes that the configuration fixes.
struct FixedArgs {
    cluster: bool,
    strict: &'static [u8],
    max_age: String,
    meta_ttl: String,
    max_messages: String,
    channel_bytes: String,
}

impl<O: Outbox> RedisStore<O> {
    /// A store over `opts.target`. Connects lazily: the gateway starts (and says it is
    /// unhealthy) while Redis is down, and catches up once it is back.
    pub fn new(opts: RedisOptions, outbox: O) -> anyhow::Result<Self> {
        let conn = connect(&opts)?;
        let cluster = matches!(conn, Conn::Cluster(_));
        let fixed = FixedArgs {
            cluster,
            strict: if cluster || opts.durable { b"0" } else { b"1" },
            max_age: opts.retention.max_age_ms().to_string(),
            meta_ttl: (opts.channel_meta.as_millis() as u64).to_string(),
            max_messages: opts.retention.max_messages.to_string(),
            channel_bytes: opts.channel_bytes.to_string(),
        };
        Ok(RedisStore {
            fixed,
            conn: Mutex::new((conn, 0)),
            outbox,
            inflight: Semaphore::new(opts.max_inflight.max(1)),
            opts,
            workers: Mutex::new(HashMap::new()),
            reload: AtomicBool::new(true),
            healthy: AtomicBool::new(false),
            markers_seen: Mutex::new(HashMap::new()),
            attached: AtomicBool::new(false),
        })
    }

    /// Loads the function library (on every primary, for a cluster).
    pub async fn load_library(&self) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LOAD").arg("REPLACE").arg(LIBRARY);
        self.raw(&cmd).await.map(|_| ())?;
        self.reload.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Round-trips a PING (for `/healthz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.raw(&redis::cmd("PING")).await.map(|_| ())
    }

    /// One command with the deadline and the in-flight bound, timed and counted.
    async fn raw(&self, cmd: &Cmd) -> Result<Value, StoreError> {
        let Ok(_permit) = self.inflight.try_acquire() else {
            metrics::REDIS_ERRORS
                .with_label_values(&["overloaded"])
                .inc();
            return Err(StoreError::Unavailable(
                "too many Redis calls in flight".into(),
            ));
        };
        let started = Instant::now();
        let (conn, generation) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let r = tokio::time::timeout(self.opts.timeout, conn.query(cmd)).await;
        metrics::REDIS_SECONDS.observe(started.elapsed().as_secs_f64());
        match r {
            Ok(Ok(v)) => {
                self.healthy.store(true, Ordering::Relaxed);
                Ok(v)
            }
            Ok(Err(e)) => {
                let kind = if e.is_io_error() || e.is_connection_dropped() {
                    "connection"
                } else if e.is_timeout() {
                    "timeout"
                } else {
                    "reply"
                };
                if kind != "reply" {
                    self.healthy.store(false, Ordering::Relaxed);
                }
                metrics::REDIS_ERRORS.with_label_values(&[kind]).inc();
                if e.to_string().contains("Function not found") {
                    self.reload.store(true, Ordering::Relaxed);
                }
                Err(StoreError::Unavailable(format!("redis: {e}")))
            }
            Err(_) => {
                self.healthy.store(false, Ordering::Relaxed);
                metrics::REDIS_ERRORS.with_label_values(&["timeout"]).inc();
                self.replace_connection(generation);
                Err(StoreError::Unavailable(format!(
                    "redis did not answer within {:?}",
                    self.opts.timeout
                )))
            }
        }
    }

    /// Drops connection `generation` (and every request still waiting on it) for a new
    /// one, unless another call did already.
    fn replace_connection(&self, generation: u64) {
        let mut c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if c.1 != generation {
            return;
        }
        match connect(&self.opts) {
            Ok(fresh) => {
                *c = (fresh, generation + 1);
                tracing::debug!("Redis did not answer in time: connection replaced");
            }
            Err(e) => tracing::warn!(error = %e, "cannot make a new Redis connection"),
        }
    }

    /// `FCALL name` with `keys` and `args`; loads the library first when it is missing
    /// and retries once if the call found it gone (the function did not run then).
    async fn fcall(&self, name: &str, keys: &[&str], args: &[&[u8]]) -> Result<Value, StoreError> {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(name).arg(keys.len()).arg(keys);
        for a in args {
            cmd.arg(*a);
        }
        if self.reload.load(Ordering::Relaxed) {
            self.load_library().await?;
        }
        match self.raw(&cmd).await {
            Err(_) if self.reload.load(Ordering::Relaxed) => {
                self.load_library().await?;
                self.raw(&cmd).await
            }
            r => r,
        }
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

    /// `1` on one node: any other replication id than the node's own is a lost history
    /// (a restart from an older snapshot is one). In a cluster keys move between masters,
    /// and with `--redis-durable` a restart keeps every write, so only a promotion counts
    /// (see the library).
    fn strict(&self) -> &'static [u8] {
        self.fixed.strict
    }

    fn keys(&self, channel: &str) -> ChannelKeys {
        ChannelKeys::new(&self.opts.prefix, channel)
    }

    fn common_args(&self, now_ms: u64) -> (String, &str, &str, String) {
        (
            now_ms.to_string(),
            &self.fixed.max_age,
            &self.fixed.meta_ttl,
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
        let k = self.keys(channel);
        let idem = k.idem(key);
        let (now, max_age, meta_ttl, epoch) = self.common_args(now_ms);
        let op = format!("{:016x}", rand::random::<u64>());
        let (max_messages, channel_bytes) = (&self.fixed.max_messages, &self.fixed.channel_bytes);
        let reply = self
            .fcall(
                "pg_publish",
                &[&k.meta, &k.list, &idem],
                &[
                    data,
                    now.as_bytes(),
                    max_messages.as_bytes(),
                    max_age.as_bytes(),
                    channel_bytes.as_bytes(),
                    meta_ttl.as_bytes(),
                    epoch.as_bytes(),
                    op.as_bytes(),
                    key.unwrap_or("").as_bytes(),
                    self.strict(),
                ],
            )
            .await?;
        let r = parse_publish(reply)?;
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
                self.outbox.deliver(&h, r.epoch, r.seq, data.clone());
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
        let reply = self
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

/// A fresh epoch: random, non-zero, below 2^53.
fn new_epoch() -> u64 {
    (rand::random::<u64>() & EPOCH_MASK).max(1)
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
        // All in flight at once: one multiplexed connection pipelines them.
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
        if text(&reply[0]).as_deref() == Some("held") {
            let prev = text(&reply[2]).unwrap_or_default();
            match self.holder(&prev) {
                Some(p) if self.outbox.is_live(&p.worker) => {
                    // A newer connection took the channel while this one's link was down.
                    self.outbox.kick(&holder, KickReason::Replaced);
                    return Ok(());
                }
                // The other holder is gone: take the channel if it is still that one's.
                _ => reply = self.attach(channel, &holder, start, &prev, now_ms).await?,
            }
            if text(&reply[0]).as_deref() == Some("held") {
                self.outbox.kick(&holder, KickReason::Replaced);
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
        if let Err(e) = self.fcall("pg_detach", &[&k.meta], &[me.as_bytes()]).await {
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
