//! The calls to Redis, whoever makes them (the store, the publish batcher, the history
//! check): one shared connection, a deadline and an in-flight bound on every call, the
//! function library loaded again when Redis lost it, and a black-holed connection
//! replaced.

use super::conn::{connect, Conn, RedisOptions};
use crate::metrics;
use crate::store::contract::StoreError;
use redis::{Cmd, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// The function library, loaded with `FUNCTION LOAD REPLACE`.
pub const LIBRARY: &str = include_str!("pushgate.lua");

/// Epochs stay below 2^53 so JSON clients parse them exactly.
const EPOCH_MASK: u64 = (1 << 53) - 1;

/// A fresh epoch: random, non-zero, below 2^53 (used only when a channel's meta is made
/// or its history changed).
pub(super) fn new_epoch() -> u64 {
    (rand::random::<u64>() & EPOCH_MASK).max(1)
}

/// What every call passes that the configuration fixes, rendered once.
pub(super) struct FixedArgs {
    pub(super) cluster: bool,
    /// `1` on one node: any other replication id than the node's own is a lost history
    /// (a restart from an older snapshot is one). In a cluster keys move between masters,
    /// and with `--redis-durable` a restart keeps every write, so only a promotion counts
    /// (see the library).
    pub(super) strict: &'static [u8],
    pub(super) max_age: String,
    pub(super) meta_ttl: String,
    pub(super) max_messages: String,
    pub(super) channel_bytes: String,
}

/// The connection and what every call through it shares.
pub(super) struct Client {
    /// The connection and its generation. A call that times out replaces it (once per
    /// generation): the library keeps every unanswered request of a connection until an
    /// answer or an I/O error comes, and a black-holed connection gives neither, so
    /// without this each timed-out call would stay in memory.
    conn: Mutex<(Conn, u64)>,
    pub(super) opts: RedisOptions,
    pub(super) fixed: FixedArgs,
    inflight: Semaphore,
    /// Set when a call found the library missing (a restart without persistence, a new
    /// node): the next call loads it first.
    pub(super) reload: AtomicBool,
}

impl Client {
    /// A client of `opts.target`. Connects lazily: nothing is dialled until the first call.
    pub(super) fn new(opts: RedisOptions) -> anyhow::Result<Self> {
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
        Ok(Client {
            conn: Mutex::new((conn, 0)),
            fixed,
            inflight: Semaphore::new(opts.max_inflight.max(1)),
            opts,
            reload: AtomicBool::new(true),
        })
    }

    /// Loads the function library (on every primary, for a cluster).
    pub(super) async fn load_library(&self) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LOAD").arg("REPLACE").arg(LIBRARY);
        self.raw(&cmd).await.map(|_| ())?;
        self.reload.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// One command with the deadline and the in-flight bound, timed and counted.
    pub(super) async fn raw(&self, cmd: &Cmd) -> Result<Value, StoreError> {
        self.raw_until(cmd, Instant::now() + self.opts.timeout)
            .await
    }

    /// [`Client::raw`] with a deadline of the caller's.
    async fn raw_until(&self, cmd: &Cmd, deadline: Instant) -> Result<Value, StoreError> {
        let Ok(_permit) = self.inflight.try_acquire() else {
            return Err(overloaded());
        };
        let started = Instant::now();
        let (conn, generation) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let r = tokio::time::timeout_at(deadline, conn.query(cmd)).await;
        metrics::REDIS_SECONDS.observe(started.elapsed().as_secs_f64());
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let kind = if e.is_io_error() || e.is_connection_dropped() {
                    "connection"
                } else if e.is_timeout() {
                    "timeout"
                } else {
                    "reply"
                };
                metrics::REDIS_ERRORS.with_label_values(&[kind]).inc();
                if e.to_string().contains("Function not found") {
                    self.reload.store(true, Ordering::Relaxed);
                }
                Err(StoreError::Unavailable(format!("redis: {e}")))
            }
            Err(_) => {
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

    /// A function call (`FCALL ...`, see [`fcall_cmd`]) answered by `deadline`; loads the
    /// library first when it is missing and retries once if the call found it gone (the
    /// function did not run then).
    pub(super) async fn call(&self, cmd: &Cmd, deadline: Instant) -> Result<Value, StoreError> {
        if self.reload.load(Ordering::Relaxed) {
            self.load_library().await?;
        }
        match self.raw_until(cmd, deadline).await {
            Err(_) if self.reload.load(Ordering::Relaxed) => {
                self.load_library().await?;
                self.raw_until(cmd, deadline).await
            }
            r => r,
        }
    }

    /// `FCALL name` with `keys` and `args`.
    pub(super) async fn fcall(
        &self,
        name: &str,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<Value, StoreError> {
        let deadline = Instant::now() + self.opts.timeout;
        self.call(&fcall_cmd(name, keys, args), deadline).await
    }
}

/// `FCALL name <number of keys> keys... args...`.
pub(super) fn fcall_cmd(name: &str, keys: &[&str], args: &[&[u8]]) -> Cmd {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(name).arg(keys.len()).arg(keys);
    for a in args {
        cmd.arg(*a);
    }
    cmd
}

/// The answer when the in-flight bound is reached.
pub(super) fn overloaded() -> StoreError {
    metrics::REDIS_ERRORS
        .with_label_values(&["overloaded"])
        .inc();
    StoreError::Unavailable("too many Redis calls in flight".into())
}
