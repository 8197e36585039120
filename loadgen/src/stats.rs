//! Live counters shared by every client and publisher task of one process (in total and
//! per transport), the per-second timeline, the phases as they ran, and hdrhistogram
//! helpers (bounds, V2 serialization as base64, merging).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::cli::Transport;

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
    /// The same second per transport the run's clients use (absent in results from before).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transports: Vec<LaneTick>,
}

/// One second of one transport's clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaneTick {
    /// `ws`, `poll` or `sse`.
    pub transport: String,
    pub connected: u64,
    pub delivered: u64,
    /// Delivery latency (µs, base64 V2 hdrhistogram).
    pub latency: String,
}

/// One phase of the run as it happened, in seconds since the process started (the
/// timeline's clock): `baseline`, `ramp`, `settle`, `hold`, `publish`, `churn`, `drain`,
/// `close`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseMark {
    pub name: String,
    pub start_secs: f64,
    pub end_secs: f64,
}

/// One periodic broadcast (`--broadcast-every`) of one process, as raw numbers: what was
/// sent and what its clients received. Shards send broadcast `n` at the same times, each
/// to its own channels, so entries of the same `n` merge into one broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastRaw {
    /// 1 for the first broadcast (`--broadcast-every` after the publish phase started).
    pub n: u64,
    /// The payload's `t` (Unix ns): when the first of its requests was sent.
    pub sent_ns: u64,
    /// Channels named, over all its requests.
    pub channels: u64,
    /// Requests it took (more than one above `--max-broadcast-channels`).
    pub requests: u64,
    /// Channels the answers accepted it on.
    pub accepted: u64,
    /// From the first request's start to the last answer (µs).
    pub request_us: u64,
    /// First receipts of it by clients.
    pub delivered: u64,
    /// The latest of those receipts (Unix ns; 0 while there is none).
    pub last_received_ns: u64,
}

impl BroadcastRaw {
    fn new(n: u64, sent_ns: u64) -> BroadcastRaw {
        BroadcastRaw {
            n,
            sent_ns,
            channels: 0,
            requests: 0,
            accepted: 0,
            request_us: 0,
            delivered: 0,
            last_received_ns: 0,
        }
    }

    /// Adds another shard's part of the same broadcast: its send is the earliest, its
    /// last receipt the latest, requests run side by side.
    pub fn merge(&mut self, o: &BroadcastRaw) {
        self.sent_ns = self.sent_ns.min(o.sent_ns);
        self.channels += o.channels;
        self.requests += o.requests;
        self.accepted += o.accepted;
        self.request_us = self.request_us.max(o.request_us);
        self.delivered += o.delivered;
        self.last_received_ns = self.last_received_ns.max(o.last_received_ns);
    }

    /// Send to the last client's receipt (ms), once a client received it.
    pub fn to_last_client_ms(&self) -> Option<f64> {
        (self.last_received_ns != 0)
            .then(|| self.last_received_ns.saturating_sub(self.sent_ns) as f64 / 1e6)
    }
}

/// The cumulative counters as of the previous tick (so each tick is a delta).
#[derive(Debug, Clone, Copy, Default)]
pub struct TickPrev {
    pub published: u64,
    pub delivered: u64,
    pub errors: u64,
    pub lane_delivered: [u64; 3],
}

/// Counters of the clients of one concrete transport (index [`Transport::lane`]).
#[derive(Default)]
pub struct Lane {
    /// Clients started.
    pub clients: AtomicU64,
    pub connected: AtomicI64,
    pub connects_ok: AtomicU64,
    pub delivered: AtomicU64,
}

/// Histograms under one lock.
pub struct Hists {
    pub connect: Histogram<u64>,
    pub assign: Histogram<u64>,
    pub latency: Histogram<u64>,
    /// The part of `latency` of the publish stream, and of the periodic broadcasts.
    pub latency_steady: Histogram<u64>,
    pub latency_broadcast: Histogram<u64>,
    pub latency_tick: Histogram<u64>,
    pub publish: Histogram<u64>,
    /// Per transport (index [`Transport::lane`]): connect time, latency, latency this second.
    pub lane_connect: [Histogram<u64>; 3],
    pub lane_latency: [Histogram<u64>; 3],
    pub lane_latency_tick: [Histogram<u64>; 3],
}

impl Hists {
    /// A delivery latency into the histograms of every delivery (whole run, this second,
    /// the transport's).
    fn record_all(&mut self, us: u64, transport: Transport) {
        let lane = transport.lane();
        self.latency.saturating_record(us);
        self.latency_tick.saturating_record(us);
        self.lane_latency[lane].saturating_record(us);
        self.lane_latency_tick[lane].saturating_record(us);
    }
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
    /// The transports this process's clients use (the lanes the timeline carries).
    pub transports: Vec<Transport>,
    pub lanes: [Lane; 3],
    pub phases: Mutex<Vec<PhaseMark>>,
    /// The periodic broadcasts sent or received, by number.
    pub broadcasts: Mutex<BTreeMap<u64, BroadcastRaw>>,
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
                latency_steady: new_hist(),
                latency_broadcast: new_hist(),
                latency_tick: new_hist(),
                publish: new_hist(),
                lane_connect: [new_hist(), new_hist(), new_hist()],
                lane_latency: [new_hist(), new_hist(), new_hist()],
                lane_latency_tick: [new_hist(), new_hist(), new_hist()],
            }),
            per_worker: Mutex::new(HashMap::new()),
            timeline: Mutex::new(Vec::new()),
            transports: Vec::new(),
            lanes: Default::default(),
            phases: Mutex::new(Vec::new()),
            broadcasts: Mutex::new(BTreeMap::new()),
        }
    }

    /// The same, counting per transport for clients of these transports.
    pub fn with_transports(mut self, transports: &[Transport]) -> Stats {
        self.transports = transports.to_vec();
        self
    }

    /// A phase that began at `began` ends now.
    pub fn phase(&self, name: &str, began: Instant) {
        let secs = |t: Instant| {
            (t.saturating_duration_since(self.start).as_secs_f64() * 1000.0).round() / 1000.0
        };
        self.phases.lock().unwrap().push(PhaseMark {
            name: name.to_string(),
            start_secs: secs(began),
            end_secs: secs(Instant::now()),
        });
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

    /// A client of `transport` is connected to `worker`.
    pub fn up(&self, worker: &str, transport: Transport) {
        let now = self.connected.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_connected.fetch_max(now, Ordering::Relaxed);
        self.connects_ok.fetch_add(1, Ordering::Relaxed);
        let lane = &self.lanes[transport.lane()];
        lane.connected.fetch_add(1, Ordering::Relaxed);
        lane.connects_ok.fetch_add(1, Ordering::Relaxed);
        *self
            .per_worker
            .lock()
            .unwrap()
            .entry(worker.to_string())
            .or_insert(0) += 1;
    }

    /// A client of `transport` connected to `worker` went away.
    pub fn down(&self, worker: &str, transport: Transport) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
        self.lanes[transport.lane()]
            .connected
            .fetch_sub(1, Ordering::Relaxed);
        if let Some(n) = self.per_worker.lock().unwrap().get_mut(worker) {
            *n -= 1;
        }
    }

    pub fn record_connect(&self, connect_us: u64, assign_us: u64, transport: Transport) {
        let mut h = self.hists.lock().unwrap();
        h.connect.saturating_record(connect_us.max(1));
        h.assign.saturating_record(assign_us.max(1));
        h.lane_connect[transport.lane()].saturating_record(connect_us.max(1));
    }

    /// A message arrived at a client of `transport` (stamped or not, first or a copy).
    pub fn received(&self, transport: Transport) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.lanes[transport.lane()]
            .delivered
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A stamped message of the publish stream arrived at a client of `transport`: its
    /// latency, and the span from the earliest send to the latest receive (the time to the
    /// last client of a burst or a broadcast).
    pub fn record_delivery(&self, sent_ns: u64, transport: Transport) {
        let now = self.span_to(sent_ns);
        self.record_latency(now.saturating_sub(sent_ns) / 1000, transport);
    }

    /// [`Stats::record_delivery`] for a message of periodic broadcast `n`: its latency
    /// is counted apart from the stream's, and the broadcast's last receipt moves on.
    pub fn record_broadcast_delivery(&self, sent_ns: u64, n: u64, transport: Transport) {
        let now = self.span_to(sent_ns);
        let us = (now.saturating_sub(sent_ns) / 1000).max(1);
        {
            let mut h = self.hists.lock().unwrap();
            h.record_all(us, transport);
            h.latency_broadcast.saturating_record(us);
        }
        let mut b = self.broadcasts.lock().unwrap();
        let e = b.entry(n).or_insert_with(|| BroadcastRaw::new(n, sent_ns));
        e.delivered += 1;
        e.last_received_ns = e.last_received_ns.max(now);
    }

    /// Widens the delivery span to a message sent at `sent_ns` and received now; returns now.
    fn span_to(&self, sent_ns: u64) -> u64 {
        let now = unix_nanos();
        self.first_sent_ns.fetch_min(sent_ns, Ordering::Relaxed);
        self.last_received_ns.fetch_max(now, Ordering::Relaxed);
        now
    }

    /// Periodic broadcast `n` goes out: its payload's `t`, and the channels it names.
    pub fn broadcast_sent(&self, n: u64, sent_ns: u64, channels: u64) {
        let mut b = self.broadcasts.lock().unwrap();
        let e = b.entry(n).or_insert_with(|| BroadcastRaw::new(n, sent_ns));
        e.sent_ns = sent_ns;
        e.channels += channels;
    }

    /// Periodic broadcast `n` was answered: `requests` requests over `request_us`,
    /// accepted on `accepted` channels.
    pub fn broadcast_answered(&self, n: u64, requests: u64, accepted: u64, request_us: u64) {
        let mut b = self.broadcasts.lock().unwrap();
        if let Some(e) = b.get_mut(&n) {
            e.requests += requests;
            e.accepted += accepted;
            e.request_us = e.request_us.max(request_us);
        }
    }

    /// First send → last receive over every stamped message received, in ns.
    pub fn span(&self) -> Option<(u64, u64)> {
        let first = self.first_sent_ns.load(Ordering::Relaxed);
        let last = self.last_received_ns.load(Ordering::Relaxed);
        (first != u64::MAX && last != 0).then_some((first, last))
    }

    /// The latency of a message of the publish stream.
    pub fn record_latency(&self, us: u64, transport: Transport) {
        let us = us.max(1);
        let mut h = self.hists.lock().unwrap();
        h.record_all(us, transport);
        h.latency_steady.saturating_record(us);
    }

    pub fn record_publish(&self, us: u64) {
        self.hists
            .lock()
            .unwrap()
            .publish
            .saturating_record(us.max(1));
    }

    /// Closes the current second: appends a timeline entry. `prev` carries the previous
    /// cumulative counters.
    pub fn tick(&self, prev: &mut TickPrev) -> TickRaw {
        let published = self.published.load(Ordering::Relaxed);
        let delivered = self.delivered.load(Ordering::Relaxed);
        let errors = self.errors_total.load(Ordering::Relaxed);
        let mut lane_delivered = prev.lane_delivered;
        let (lat, lanes) = {
            let mut h = self.hists.lock().unwrap();
            let s = hist_to_b64(&h.latency_tick);
            h.latency_tick.reset();
            let lanes: Vec<LaneTick> = self
                .transports
                .iter()
                .map(|&t| {
                    let i = t.lane();
                    let lane = &self.lanes[i];
                    let d = lane.delivered.load(Ordering::Relaxed);
                    lane_delivered[i] = d;
                    let latency = hist_to_b64(&h.lane_latency_tick[i]);
                    h.lane_latency_tick[i].reset();
                    LaneTick {
                        transport: t.name().to_string(),
                        connected: lane.connected.load(Ordering::Relaxed).max(0) as u64,
                        delivered: d - prev.lane_delivered[i],
                        latency,
                    }
                })
                .collect();
            (s, lanes)
        };
        let mut timeline = self.timeline.lock().unwrap();
        let tick = TickRaw {
            t: timeline.len() as u32 + 1,
            connected: self.connected.load(Ordering::Relaxed).max(0) as u64,
            published: published - prev.published,
            delivered: delivered - prev.delivered,
            errors: errors - prev.errors,
            latency: lat,
            transports: lanes,
        };
        *prev = TickPrev {
            published,
            delivered,
            errors,
            lane_delivered,
        };
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
        s.record_delivery(t - 2_000_000, Transport::Ws);
        s.record_delivery(t - 5_000_000, Transport::Ws);
        let (first, last) = s.span().expect("two deliveries");
        assert_eq!(first, t - 5_000_000);
        assert!(last >= t && last - first >= 5_000_000, "{first} {last}");
        assert_eq!(s.hists.lock().unwrap().latency.len(), 2);
    }

    #[test]
    fn broadcast_deliveries_are_counted_apart() {
        let s = Stats::new();
        let t = unix_nanos() - 3_000_000;
        s.record_delivery(t, Transport::Ws);
        s.broadcast_sent(1, t, 2);
        s.record_broadcast_delivery(t, 1, Transport::Ws);
        s.record_broadcast_delivery(t, 1, Transport::Sse);
        s.broadcast_answered(1, 1, 2, 900);
        {
            let h = s.hists.lock().unwrap();
            assert_eq!(
                (
                    h.latency.len(),
                    h.latency_steady.len(),
                    h.latency_broadcast.len()
                ),
                (3, 1, 2)
            );
            assert_eq!((h.lane_latency[0].len(), h.lane_latency[2].len()), (2, 1));
        }
        let b = s.broadcasts.lock().unwrap()[&1].clone();
        assert_eq!(
            (
                b.channels,
                b.requests,
                b.accepted,
                b.delivered,
                b.request_us
            ),
            (2, 1, 2, 2, 900)
        );
        assert!(b.to_last_client_ms().unwrap() >= 3.0, "{b:?}");
        // Another shard's part of the same broadcast.
        let mut merged = b.clone();
        merged.merge(&BroadcastRaw {
            sent_ns: t - 1_000_000,
            last_received_ns: b.last_received_ns + 2_000_000,
            request_us: 400,
            ..b.clone()
        });
        assert_eq!(
            (merged.channels, merged.delivered, merged.request_us),
            (4, 4, 900)
        );
        let grew = merged.to_last_client_ms().unwrap() - b.to_last_client_ms().unwrap();
        assert!((grew - 3.0).abs() < 1e-6, "{grew}");
    }

    #[test]
    fn ticks_are_deltas() {
        let s = Stats::new().with_transports(&[Transport::Ws, Transport::Sse]);
        let mut prev = TickPrev::default();
        s.published.fetch_add(5, Ordering::Relaxed);
        for _ in 0..3 {
            s.received(Transport::Sse);
        }
        s.up("w", Transport::Sse);
        s.record_latency(100, Transport::Sse);
        let t = s.tick(&mut prev);
        assert_eq!((t.published, t.delivered, t.connected), (5, 3, 1));
        assert_eq!(hist_from_b64(&t.latency).unwrap().len(), 1);
        let lanes: Vec<(&str, u64, u64)> = t
            .transports
            .iter()
            .map(|l| (l.transport.as_str(), l.connected, l.delivered))
            .collect();
        assert_eq!(lanes, [("ws", 0, 0), ("sse", 1, 3)]);
        assert_eq!(hist_from_b64(&t.transports[1].latency).unwrap().len(), 1);
        s.published.fetch_add(1, Ordering::Relaxed);
        s.received(Transport::Ws);
        s.down("w", Transport::Sse);
        let t = s.tick(&mut prev);
        assert_eq!((t.published, t.delivered), (1, 1));
        assert_eq!(hist_from_b64(&t.latency).unwrap().len(), 0);
        assert_eq!(
            (t.transports[0].delivered, t.transports[1].delivered),
            (1, 0)
        );
        assert_eq!(t.transports[1].connected, 0);
        assert_eq!(hist_from_b64(&t.transports[1].latency).unwrap().len(), 0);
        assert_eq!(s.hists.lock().unwrap().latency.len(), 1);
        assert_eq!(s.hists.lock().unwrap().lane_latency[2].len(), 1);
    }

    #[test]
    fn phases_are_seconds_since_the_start() {
        let s = Stats::new();
        let began = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.phase("ramp", began);
        let p = s.phases.lock().unwrap()[0].clone();
        assert_eq!(p.name, "ramp");
        assert!(
            p.start_secs >= 0.0 && p.end_secs - p.start_secs >= 0.019,
            "{p:?}"
        );
    }
}
