//! One subscriber client per channel: assign, connect over its transport, check every
//! message, come back with `since` after a drop. One tokio task per client.

pub mod poll;
pub mod sse;
pub mod ws;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::Method;
use rand::Rng;
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::checker::{Seen, SeqChecker};
use crate::cli::{Plan, Transport};
use crate::net::{Gateways, SourceIps};
use crate::stats::Stats;

/// What every client task of a process shares.
pub struct ClientCtx {
    pub plan: Arc<Plan>,
    pub stats: Arc<Stats>,
    pub src: Arc<SourceIps>,
    pub assign: Arc<Gateways>,
    /// Cancelled when clients must close.
    pub stop: CancellationToken,
    /// `since` of the first connection (`Some(0)` when checking deliveries, so nothing
    /// published around the connect is missed).
    pub initial_since: Option<u64>,
}

impl ClientCtx {
    /// One text message (WebSocket frame / SSE event data) as the target sends it;
    /// `Some(kind)` when it ends the stream (an SSE `{"closed":...}` event).
    pub fn on_text(&self, checker: &mut SeqChecker, slot: &Slot, text: &[u8]) -> Option<String> {
        self.plan.server().on_text(&self.stats, checker, slot, text)
    }

    /// A fresh checker for one client, with `--check-ids` if asked.
    pub fn checker(&self) -> SeqChecker {
        if self.plan.check.check_ids {
            SeqChecker::with_ids()
        } else {
            SeqChecker::default()
        }
    }
}

/// The part of a client others look at while it runs.
#[derive(Default)]
pub struct Slot {
    /// Distinct seqs received.
    pub unique: AtomicU64,
    /// Highest seq received.
    pub max_seq: AtomicU64,
    /// Notified to make the client drop its connection and come back (churn).
    pub churn: Notify,
    /// The client's transport (what its deliveries are counted under).
    pub transport: Transport,
}

impl Slot {
    pub fn new(transport: Transport) -> Slot {
        Slot {
            transport,
            ..Slot::default()
        }
    }
}

/// `/v1/assign` answer.
#[derive(Debug, Clone, Deserialize)]
pub struct Assignment {
    pub worker: String,
    pub ws_url: String,
    pub poll_url: String,
    pub sse_url: String,
}

/// How a connection ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Asked to stop.
    Stopped,
    /// Dropped on purpose (churn).
    Churned,
    /// Ended by the server or the network; the kind is an error label.
    Error(String),
}

/// One message, gap frame or SSE closing event as the worker sends it.
#[derive(Debug, Deserialize)]
pub struct Frame {
    seq: Option<u64>,
    #[serde(default)]
    gap: bool,
    epoch: Option<u64>,
    first_seq: Option<u64>,
    data: Option<Data>,
    /// SSE's last event when the worker ends the stream (`replaced`, `resync`, ...).
    closed: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Data {
    /// loadgen's own payload: send time, message number, and the number of the periodic
    /// broadcast it belongs to (`--broadcast-every`).
    Stamped {
        t: u64,
        #[serde(default)]
        i: Option<u64>,
        #[serde(default)]
        b: Option<u64>,
    },
    Other(serde::de::IgnoredAny),
}

/// Handles one `{"seq":N,"data":...}`, gap frame or closing event; `Some(kind)` when the
/// stream ends with it.
pub fn on_frame(
    stats: &Stats,
    checker: &mut SeqChecker,
    slot: &Slot,
    text: &[u8],
) -> Option<String> {
    match serde_json::from_slice::<Frame>(text) {
        Ok(f) => on_parsed(stats, checker, slot, f),
        Err(_) => {
            stats.error("bad_frame");
            None
        }
    }
}

/// Handles one already parsed frame; `Some(kind)` when the stream ends with it.
pub fn on_parsed(
    stats: &Stats,
    checker: &mut SeqChecker,
    slot: &Slot,
    frame: Frame,
) -> Option<String> {
    match frame {
        Frame {
            gap: true,
            epoch,
            first_seq,
            ..
        } => on_gap(stats, checker, epoch, first_seq),
        Frame {
            seq: Some(seq),
            data,
            ..
        } => on_message(stats, checker, slot, seq, data),
        Frame {
            closed: Some(code), ..
        } => return Some(format!("sse_closed_{code}")),
        _ => stats.error("bad_frame"),
    }
    None
}

/// A gap signal (frame or poll answer).
pub fn on_gap(stats: &Stats, checker: &mut SeqChecker, epoch: Option<u64>, first_seq: Option<u64>) {
    checker.gap(epoch, first_seq, crate::stats::unix_nanos() / 1_000_000);
    stats.gap();
}

fn on_message(stats: &Stats, checker: &mut SeqChecker, slot: &Slot, seq: u64, data: Option<Data>) {
    stats.received(slot.transport);
    let seen = checker.observe(seq);
    if seen != Seen::Duplicate {
        slot.unique.fetch_add(1, Ordering::Relaxed);
        slot.max_seq.fetch_max(seq, Ordering::Relaxed);
    }
    if let Some(Data::Stamped { t, i, b }) = data {
        if let Some(i) = i {
            checker.observe_id(i, seq);
        }
        // A copy's latency (duplicate, replay) would measure the copy, not the delivery.
        if seen.is_first() {
            match b {
                Some(n) => stats.record_broadcast_delivery(t, n, slot.transport),
                None => stats.record_delivery(t, slot.transport),
            }
        }
    }
}

/// Jittered wait: uniform in [0.5, 1.5] x `mean`.
pub fn jitter(mean: Duration) -> Duration {
    mean.mul_f64(rand::rng().random_range(0.5..1.5))
}

/// Asks the gateway where `channel` should connect.
pub async fn assign(ctx: &ClientCtx, channel: &str) -> Result<Assignment, String> {
    let path = match &ctx.plan.common.subscriber_secret {
        Some(secret) => {
            let exp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                + ctx.plan.common.max_duration.as_secs()
                + 3600;
            format!(
                "/v1/assign?token={}",
                protocol::token::sign(secret.as_bytes(), channel, exp)
            )
        }
        None => format!("/v1/assign?channel={channel}"),
    };
    let path = if ctx.plan.common.tls {
        path
    } else {
        path + "&tls=false"
    };
    let (r, gateway) = ctx
        .assign
        .send(true, Method::GET, &path, &[], None, Bytes::new())
        .await;
    let (status, body) = r.map_err(|e| format!("assign_{}", e.kind()))?;
    if status != 200 {
        return Err(format!("assign_http_{}", status.as_u16()));
    }
    let mut a: Assignment =
        serde_json::from_slice(&body).map_err(|_| "assign_bad_body".to_string())?;
    let base = ctx.assign.base(gateway);
    for url in [&mut a.ws_url, &mut a.poll_url, &mut a.sse_url] {
        if url.starts_with('/') {
            *url = format!("{base}{url}");
        }
    }
    Ok(a)
}

/// An open connection of one transport.
pub enum Conn {
    /// Boxed: a TLS stream makes it over a kilobyte.
    Ws(Box<ws::WsConn>),
    Sse(sse::SseConn),
    Poll(poll::PollConn),
    NchanPoll(crate::target::nchan::NchanPoll),
}

/// A client's whole life: returns what it received, for the final check.
pub async fn client_task(ctx: Arc<ClientCtx>, index: u64, slot: Arc<Slot>) -> SeqChecker {
    let plan = &ctx.plan;
    let channel = plan.channel(index);
    let transport = plan.clients.mix().for_client(index);
    let mut checker = ctx.checker();
    let mut first = true;
    let mut sessions = 0u64;
    let mut failures = 0u32;
    loop {
        if ctx.stop.is_cancelled() {
            break;
        }
        let since = if sessions == 0 && checker.received == 0 {
            ctx.initial_since
        } else {
            Some(checker.last_seq())
        };
        ctx.stats.connect_attempts.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let opened = tokio::select! {
            _ = ctx.stop.cancelled() => break,
            r = tokio::time::timeout(plan.common.connect_timeout, plan.server().open(&ctx, &channel, transport, since, checker.epoch, started)) => r,
        };
        let failed = match opened {
            Ok(Ok((worker, conn))) => Ok((worker, conn)),
            Ok(Err(kind)) => Err(kind),
            Err(_elapsed) => Err(format!("{}_connect_timeout", transport.name())),
        };
        let (worker, conn) = match failed {
            Ok(x) => x,
            Err(kind) => {
                log_end(&channel, "", &kind, ctx.stats.ended(kind.clone()));
                if first {
                    first = false;
                    ctx.stats.first_done.fetch_add(1, Ordering::Relaxed);
                }
                failures += 1;
                let wait = jitter(Duration::from_millis(100 * 2u64.pow(failures.min(5))));
                tokio::select! { _ = ctx.stop.cancelled() => break, _ = tokio::time::sleep(wait) => continue }
            }
        };
        failures = 0;
        tracing::debug!(%channel, %worker, ?since, "connected");
        ctx.stats.up(&worker, transport);
        if sessions > 0 {
            ctx.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        sessions += 1;
        if first {
            first = false;
            ctx.stats.first_ok.fetch_add(1, Ordering::Relaxed);
            ctx.stats.first_done.fetch_add(1, Ordering::Relaxed);
        }
        let end = match conn {
            Conn::Ws(c) => ws::session(&ctx, *c, &mut checker, &slot).await,
            Conn::Sse(c) => sse::session(&ctx, c, &mut checker, &slot).await,
            Conn::Poll(c) => poll::session(&ctx, c, since.unwrap_or(0), &mut checker, &slot).await,
            Conn::NchanPoll(c) => {
                crate::target::nchan::nchan_poll_session(&ctx, c, &mut checker, &slot).await
            }
        };
        ctx.stats.down(&worker, transport);
        match end {
            SessionEnd::Stopped => break,
            SessionEnd::Churned => {
                tracing::debug!(%channel, %worker, "churned");
                ctx.stats.dropped_on_purpose.fetch_add(1, Ordering::Relaxed);
                let backoff = plan
                    .churn
                    .as_ref()
                    .map(|c| c.backoff)
                    .unwrap_or(Duration::from_millis(100));
                tokio::select! { _ = ctx.stop.cancelled() => break, _ = tokio::time::sleep(jitter(backoff)) => {} }
            }
            SessionEnd::Error(kind) => {
                log_end(&channel, &worker, &kind, ctx.stats.ended(kind.clone()));
                tokio::select! { _ = ctx.stop.cancelled() => break, _ = tokio::time::sleep(jitter(Duration::from_millis(200))) => {} }
            }
        }
    }
    if first {
        ctx.stats.first_done.fetch_add(1, Ordering::Relaxed);
    }
    for (id, first_seq, seq) in checker.id_duplicate_examples() {
        tracing::warn!(%channel, id, first_seq, seq, "message received under a second seq");
    }
    checker
}

/// A connection that ended or could not be opened (`worker` empty then): errors and
/// `replaced` ends at `info`, other drops at `debug` (`RUST_LOG=loadgen=debug`).
pub(crate) fn log_end(channel: &str, worker: &str, kind: &str, drop: bool) {
    if drop && crate::stats::is_replaced_kind(kind) {
        tracing::info!(%channel, %worker, %kind, "live connection replaced");
    } else if drop {
        tracing::debug!(%channel, %worker, %kind, "connection dropped");
    } else {
        tracing::info!(%channel, %worker, %kind, "connection failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::unix_nanos;

    #[test]
    fn frames() {
        let stats = Stats::new();
        let slot = Slot::default();
        let mut c = SeqChecker::with_ids();
        let t = unix_nanos() - 2_000_000;
        on_frame(
            &stats,
            &mut c,
            &slot,
            format!(r#"{{"seq":1,"data":{{"t":{t},"i":0,"pad":""}}}}"#).as_bytes(),
        );
        on_frame(&stats, &mut c, &slot, br#"{"seq":2,"data":"plain text"}"#);
        on_frame(&stats, &mut c, &slot, br#"{"seq":2,"data":[1,2]}"#);
        on_frame(
            &stats,
            &mut c,
            &slot,
            format!(r#"{{"seq":3,"data":{{"t":{t},"i":9,"b":1,"pad":""}}}}"#).as_bytes(),
        );
        on_frame(
            &stats,
            &mut c,
            &slot,
            br#"{"gap":true,"epoch":3,"first_seq":9}"#,
        );
        on_frame(&stats, &mut c, &slot, b"garbage");
        assert_eq!((c.received, c.unique, c.duplicated, c.gaps), (4, 3, 1, 1));
        assert_eq!(slot.unique.load(Ordering::Relaxed), 3);
        assert_eq!(slot.max_seq.load(Ordering::Relaxed), 3);
        let errors = stats.errors.lock().unwrap().clone();
        assert_eq!(errors.get("gap"), Some(&1));
        assert_eq!(errors.get("bad_frame"), Some(&1));
        let h = stats.hists.lock().unwrap();
        assert_eq!(h.latency.len(), 2);
        assert_eq!((h.latency_steady.len(), h.latency_broadcast.len()), (1, 1));
        assert!(h.latency.max() >= 2000, "{}", h.latency.max());
        assert_eq!(stats.broadcasts.lock().unwrap()[&1].delivered, 1);
    }
}
