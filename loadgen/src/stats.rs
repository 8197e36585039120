//! Live counters shared by every client and publisher task of one process, the per-second
//! timeline, and hdrhistogram helpers (bounds, V2 serialization as base64, merging).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest value a histogram holds: one hour in microseconds.
const HIST_MAX_US: u64 = 3_600_000_000;

/// A new microsecond histogram (1 µs .. 1 h, 3 significant figures).
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid bounds")
}

/// V2-serializes a histogram into base64.
pub fn hist_to_b64(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .expect("serialize into a Vec");
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// Reads a histogram written by [`hist_to_b64`].
pub fn hist_from_b64(s: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s)?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut std::io::Cursor::new(bytes))
        .map_err(|e| anyhow::anyhow!("histogram: {e:?}"))?;
    Ok(h)
}

/// An empty histogram, serialized (results from before a histogram existed).
pub fn empty_hist_b64() -> String {
    hist_to_b64(&new_hist())
}

/// Adds `from` (base64) into `into` (base64).
pub fn merge_b64(into: &mut String, from: &str) -> anyhow::Result<()> {
    let mut a = hist_from_b64(into)?;
    let b = hist_from_b64(from)?;
    a.add(&b)
        .map_err(|e| anyhow::anyhow!("histogram merge: {e:?}"))?;
    *into = hist_to_b64(&a);
    Ok(())
}

/// Unix time in nanoseconds.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One second of the run, as raw numbers (mergeable across processes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TickRaw {
    /// Seconds since the start (the tick ending at that second; the last one may be partial).
    pub t: u32,
    /// Clients connected at the end of the second.
    pub connected: u64,
    /// Messages accepted by the gateway during the second.
    pub published: u64,
    /// Messages received by clients during the second.
    pub delivered: u64,
    /// Errors during the second.
    pub errors: u64,
    /// Delivery latency of the second's messages (µs, base64 V2 hdrhistogram).
    pub latency: String,
}

/// Histograms under one lock.
pub struct Hists {
    pub connect: Histogram<u64>,
    pub assign: Histogram<u64>,
    pub latency: Histogram<u64>,
    pub latency_tick: Histogram<u64>,
    pub publish: Histogram<u64>,
}

/// Counters of one process.
pub struct Stats {
    pub start: Instant,
    pub connected: AtomicI64,
    pub peak_connected: AtomicI64,
    /// Clients whose first connect attempt has finished (either way).
    pub first_done: AtomicU64,
    pub first_ok: AtomicU64,
    pub connect_attempts: AtomicU64,
    pub connects_ok: AtomicU64,
    pub reconnects: AtomicU64,
    pub dropped_on_purpose: AtomicU64,
    pub publish_requests: AtomicU64,
    pub published: AtomicU64,
    pub publish_attempted: AtomicU64,
    pub publish_rejected: AtomicU64,
    pub delivered: AtomicU64,
    /// Earliest send stamp (Unix ns) among the messages received; `u64::MAX` until one is.
    pub first_sent_ns: AtomicU64,
    /// Latest receive time (Unix ns) of a stamped message; 0 until one is received.
    pub last_received_ns: AtomicU64,
    pub errors_total: AtomicU64,
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// `--allow-drops`: connection ends of a [`is_drop_kind`] kind go to `drops`.
    pub allow_drops: bool,
    /// `--allow-gaps`: gap frames are not errors (the check still counts them).
    pub allow_gaps: bool,
    pub drops: Mutex<BTreeMap<String, u64>>,
    /// Publish requests sent again after a failure (`--retry-for`).
    pub publish_retries: AtomicU64,
    /// Messages accepted by a request that had been retried.
    pub published_after_retry: AtomicU64,
    pub publish_status: Mutex<BTreeMap<String, u64>>,
    pub hists: Mutex<Hists>,
    /// Connections currently open per worker id (from /v1/assign).
    pub per_worker: Mutex<HashMap<String, i64>>,
    pub timeline: Mutex<Vec<TickRaw>>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats::tolerating(false, false)
    }

    /// Counters of a run that expects connection drops and/or gaps (`--allow-drops`,
    /// `--allow-gaps`).
    pub fn tolerating(allow_drops: bool, allow_gaps: bool) -> Stats {
        Stats {
            start: Instant::now(),
            connected: AtomicI64::new(0),
            peak_connected: AtomicI64::new(0),
            first_done: AtomicU64::new(0),
            first_ok: AtomicU64::new(0),
            connect_attempts: AtomicU64::new(0),
            connects_ok: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            dropped_on_purpose: AtomicU64::new(0),
            publish_requests: AtomicU64::new(0),
            published: AtomicU64::new(0),
            publish_attempted: AtomicU64::new(0),
            publish_rejected: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            first_sent_ns: AtomicU64::new(u64::MAX),
            last_received_ns: AtomicU64::new(0),
            errors_total: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            allow_drops,
            allow_gaps,
            drops: Mutex::new(BTreeMap::new()),
            publish_retries: AtomicU64::new(0),
            published_after_retry: AtomicU64::new(0),
            publish_status: Mutex::new(BTreeMap::new()),
            hists: Mutex::new(Hists {
                connect: new_hist(),
                assign: new_hist(),
                latency: new_hist(),
                latency_tick: new_hist(),
                publish: new_hist(),
            }),
            per_worker: Mutex::new(HashMap::new()),
            timeline: Mutex::new(Vec::new()),
        }
    }

    /// Counts one error of a bounded kind (e.g. `assign_http_503`, `ws_close_4001`, `gap`).
    pub fn error(&self, kind: impl Into<String>) {
        self.errors_total.fetch_add(1, Ordering::Relaxed);
        *self.errors.lock().unwrap().entry(kind.into()).or_insert(0) += 1;
    }

    /// A connection ended, or a connect attempt failed, as `kind` says: a drop when drops
    /// are allowed and `kind` is one ([`is_drop_kind`]), else an error. Returns whether it
    /// was counted as a drop.
    pub fn ended(&self, kind: impl Into<String>) -> bool {
        let kind = kind.into();
        if self.allow_drops && (is_drop_kind(&kind) || is_replaced_kind(&kind)) {
            *self.drops.lock().unwrap().entry(kind).or_insert(0) += 1;
            true
        } else {
            self.error(kind);
            false
        }
    }

    /// A gap frame arrived (the checker has counted it): an error unless gaps are allowed.
    pub fn gap(&self) {
        if !self.allow_gaps {
            self.error("gap");
        }
    }

    pub fn publish_status(&self, status: impl Into<String>, n: u64) {
        *self
            .publish_status
            .lock()
            .unwrap()
            .entry(status.into())
            .or_insert(0) += n;
    }

    /// A client is connected to `worker`.
    pub fn up(&self, worker: &str) {
        let now = self.connected.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_connected.fetch_max(now, Ordering::Relaxed);
        self.connects_ok.fetch_add(1, Ordering::Relaxed);
        *self
            .per_worker
            .lock()
            .unwrap()
            .entry(worker.to_string())
            .or_insert(0) += 1;
    }

    /// A client connected to `worker` went away.
    pub fn down(&self, worker: &str) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
        if let Some(n) = self.per_worker.lock().unwrap().get_mut(worker) {
            *n -= 1;
        }
    }

    pub fn record_connect(&self, connect_us: u64, assign_us: u64) {
        let mut h = self.hists.lock().unwrap();
        h.connect.saturating_record(connect_us.max(1));
        h.assign.saturating_record(assign_us.max(1));
    }

    /// A stamped message arrived: its latency, and the span from the earliest send to the
    /// latest receive (the time to the last client of a burst or a broadcast).
    pub fn record_delivery(&self, sent_ns: u64) {
        let now = unix_nanos();
        self.first_sent_ns.fetch_min(sent_ns, Ordering::Relaxed);
        self.last_received_ns.fetch_max(now, Ordering::Relaxed);
        self.record_latency(now.saturating_sub(sent_ns) / 1000);
    }

    /// First send → last receive over every stamped message received, in ns.
    pub fn span(&self) -> Option<(u64, u64)> {
        let first = self.first_sent_ns.load(Ordering::Relaxed);
        let last = self.last_received_ns.load(Ordering::Relaxed);
        (first != u64::MAX && last != 0).then_some((first, last))
    }

    pub fn record_latency(&self, us: u64) {
        let mut h = self.hists.lock().unwrap();
        h.latency.saturating_record(us.max(1));
        h.latency_tick.saturating_record(us.max(1));
    }

    pub fn record_publish(&self, us: u64) {
        self.hists
            .lock()
            .unwrap()
            .publish
            .saturating_record(us.max(1));
    }

    /// Closes the current second: appends a timeline entry. `prev` carries the previous
    /// cumulative counters (published, delivered, errors).
    pub fn tick(&self, prev: &mut (u64, u64, u64)) -> TickRaw {
        let published = self.published.load(Ordering::Relaxed);
        let delivered = self.delivered.load(Ordering::Relaxed);
        let errors = self.errors_total.load(Ordering::Relaxed);
        let lat = {
            let mut h = self.hists.lock().unwrap();
            let s = hist_to_b64(&h.latency_tick);
            h.latency_tick.reset();
            s
        };
        let mut timeline = self.timeline.lock().unwrap();
        let tick = TickRaw {
            t: timeline.len() as u32 + 1,
            connected: self.connected.load(Ordering::Relaxed).max(0) as u64,
            published: published - prev.0,
            delivered: delivered - prev.1,
            errors: errors - prev.2,
            latency: lat,
        };
        *prev = (published, delivered, errors);
        timeline.push(tick.clone());
        tick
    }
}

/// Whether a connection end (or failed connect) of this kind is the peer going away or
/// not being reachable, which a client survives by assigning again and resuming: the
/// transport's own failures, 5xx answers, and the close codes and SSE endings that ask
/// the client to come back. Refusals (4xx), replacement (4001), slowness (4003), protocol
/// errors and bad bodies are not.
pub fn is_drop_kind(kind: &str) -> bool {
    if let Some(code) = kind.strip_prefix("ws_close_") {
        return matches!(
            code,
            "1001" | "1005" | "1006" | "1011" | "1012" | "1013" | "1014" | "4002"
        );
    }
    if let Some(code) = kind.strip_prefix("sse_closed_") {
        return matches!(code, "resync" | "refused" | "shutdown");
    }
    if let Some((_, status)) = kind.rsplit_once("_http_") {
        return status.starts_with('5');
    }
    [
        "_eof",
        "_error",
        "_io",
        "_connect",
        "_connect_timeout",
        "_timeout",
        "_handshake",
        "_resolve",
    ]
    .iter()
    .any(|s| kind.ends_with(s))
}

/// Whether a connection end says a newer connection took the channel (WebSocket 4001,
/// poll 409, SSE `replaced`). loadgen opens one connection per channel at a time and
/// closes the old one before it opens the next, so such an end on its live connection
/// means the server let an older subscription win: with `--allow-drops` (runs that break
/// hosts) it is counted as a drop of its own kind, so it stays visible, and the client
/// resumes.
pub fn is_replaced_kind(kind: &str) -> bool {
    matches!(
        kind,
        "ws_close_4001" | "poll_http_409" | "sse_closed_replaced"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_and_errors() {
        for k in [
            "ws_eof",
            "ws_error",
            "sse_eof",
            "poll_error",
            "poll_timeout",
            "ws_connect",
            "sse_connect_timeout",
            "ws_handshake",
            "assign_connect",
            "assign_timeout",
            "assign_io",
            "assign_http_503",
            "ws_http_502",
            "poll_http_503",
            "ws_close_1001",
            "ws_close_1013",
            "ws_close_4002",
            "sse_closed_resync",
        ] {
            assert!(is_drop_kind(k), "{k}");
        }
        for k in [
            "assign_http_403",
            "ws_http_401",
            "poll_http_409",
            "ws_close_4001",
            "ws_close_4003",
            "ws_close_1002",
            "sse_closed_replaced",
            "bad_frame",
            "poll_bad_body",
            "gap",
        ] {
            assert!(!is_drop_kind(k), "{k}");
        }
        assert!(is_replaced_kind("ws_close_4001") && !is_drop_kind("ws_close_4001"));
        let s = Stats::tolerating(true, true);
        assert!(s.ended("ws_eof"));
        assert!(s.ended("ws_close_4001"));
        assert!(!s.ended("ws_close_4003"));
        s.gap();
        assert_eq!(s.drops.lock().unwrap().get("ws_eof"), Some(&1));
        assert_eq!(s.drops.lock().unwrap().get("ws_close_4001"), Some(&1));
        assert_eq!(s.errors.lock().unwrap().len(), 1);
        assert_eq!(s.errors.lock().unwrap().get("ws_close_4003"), Some(&1));
        let s = Stats::new();
        s.ended("ws_eof");
        s.gap();
        assert!(s.drops.lock().unwrap().is_empty());
        assert_eq!(s.errors_total.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn histograms_roundtrip_and_merge() {
        let mut a = new_hist();
        let mut b = new_hist();
        for v in 1..=1000u64 {
            a.record(v).unwrap();
        }
        for v in 1001..=2000u64 {
            b.record(v * 10).unwrap();
        }
        let mut sa = hist_to_b64(&a);
        let sb = hist_to_b64(&b);
        assert_eq!(hist_from_b64(&sa).unwrap().len(), 1000);
        merge_b64(&mut sa, &sb).unwrap();
        let m = hist_from_b64(&sa).unwrap();
        assert_eq!(m.len(), 2000);
        assert_eq!(m.min(), 1);
        assert!((19_990..=20_040).contains(&m.max()), "max {}", m.max());
        // The median sits at the boundary of the two halves.
        let p50 = m.value_at_quantile(0.5);
        assert!((999..=1001).contains(&p50), "p50 {p50}");
        // Merging an empty histogram changes nothing.
        merge_b64(&mut sa, &hist_to_b64(&new_hist())).unwrap();
        assert_eq!(hist_from_b64(&sa).unwrap().len(), 2000);
        assert!(hist_from_b64("not base64!").is_err());
    }

    #[test]
    fn span_runs_from_the_first_send_to_the_last_receive() {
        let s = Stats::new();
        assert_eq!(s.span(), None);
        let t = unix_nanos();
        s.record_delivery(t - 2_000_000);
        s.record_delivery(t - 5_000_000);
        let (first, last) = s.span().expect("two deliveries");
        assert_eq!(first, t - 5_000_000);
        assert!(last >= t && last - first >= 5_000_000, "{first} {last}");
        assert_eq!(s.hists.lock().unwrap().latency.len(), 2);
    }

    #[test]
    fn ticks_are_deltas() {
        let s = Stats::new();
        let mut prev = (0, 0, 0);
        s.published.fetch_add(5, Ordering::Relaxed);
        s.delivered.fetch_add(3, Ordering::Relaxed);
        s.record_latency(100);
        let t = s.tick(&mut prev);
        assert_eq!((t.published, t.delivered), (5, 3));
        assert_eq!(hist_from_b64(&t.latency).unwrap().len(), 1);
        s.published.fetch_add(1, Ordering::Relaxed);
        let t = s.tick(&mut prev);
        assert_eq!((t.published, t.delivered), (1, 0));
        assert_eq!(hist_from_b64(&t.latency).unwrap().len(), 0);
        assert_eq!(s.hists.lock().unwrap().latency.len(), 1);
    }
}
