//! Results: `RawResult` (mergeable: counters, base64 histograms, raw timeline; what a shard
//! sends its parent) and `Summary` (the `--json` output and the human summary).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::checker::CheckTotals;
use crate::cli::Parameters;
use crate::memory::MemoryResult;
use crate::stats::{hist_from_b64, merge_b64, BroadcastRaw, PhaseMark, TickRaw};

/// Counters of a run (they add across shards).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counters {
    pub connect_attempts: u64,
    pub connects_ok: u64,
    pub first_ok: u64,
    pub first_failed: u64,
    pub reconnects: u64,
    pub dropped_on_purpose: u64,
    pub peak_connected: u64,
    pub connected_at_ready: u64,
    pub publish_requests: u64,
    pub publish_attempted: u64,
    pub published: u64,
    pub publish_rejected: u64,
    pub delivered: u64,
    #[serde(default)]
    pub publish_retries: u64,
    #[serde(default)]
    pub published_after_retry: u64,
    #[serde(default)]
    pub connected_at_end: u64,
    /// TLS handshakes: full, resumed.
    #[serde(default)]
    pub tls_full: u64,
    #[serde(default)]
    pub tls_resumed: u64,
    /// TLS handshakes that offered a ticket (a client's first never can).
    #[serde(default)]
    pub tls_offered: u64,
}

impl Counters {
    fn merge(&mut self, o: &Counters) {
        self.connect_attempts += o.connect_attempts;
        self.connects_ok += o.connects_ok;
        self.first_ok += o.first_ok;
        self.first_failed += o.first_failed;
        self.reconnects += o.reconnects;
        self.dropped_on_purpose += o.dropped_on_purpose;
        // Shards peak at different moments: their sum would overstate the peak. The merged
        // timeline's highest second (below) and the highest single peak bound it instead.
        self.peak_connected = self.peak_connected.max(o.peak_connected);
        self.connected_at_ready += o.connected_at_ready;
        self.publish_requests += o.publish_requests;
        self.publish_attempted += o.publish_attempted;
        self.published += o.published;
        self.publish_rejected += o.publish_rejected;
        self.delivered += o.delivered;
        self.publish_retries += o.publish_retries;
        self.published_after_retry += o.published_after_retry;
        self.connected_at_end += o.connected_at_end;
        self.tls_full += o.tls_full;
        self.tls_resumed += o.tls_resumed;
        self.tls_offered += o.tls_offered;
    }
}

/// Histograms as base64 V2 hdrhistogram (µs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawHists {
    pub connect_us: String,
    pub assign_us: String,
    pub latency_us: String,
    pub publish_us: String,
    /// TLS handshake time (TCP connected to handshake done).
    #[serde(default = "crate::stats::empty_hist_b64")]
    pub tls_handshake_us: String,
    /// The part of `latency_us` of the publish stream's messages, and of the periodic
    /// broadcasts' (`--broadcast-every`).
    #[serde(default = "crate::stats::empty_hist_b64")]
    pub latency_steady_us: String,
    #[serde(default = "crate::stats::empty_hist_b64")]
    pub latency_broadcast_us: String,
}

/// The clients of one concrete transport: counters and histograms (base64, µs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaneRaw {
    pub transport: String,
    pub clients: u64,
    pub connects_ok: u64,
    pub delivered: u64,
    pub connect_us: String,
    pub latency_us: String,
}

impl LaneRaw {
    fn merge(&mut self, o: &LaneRaw) -> anyhow::Result<()> {
        self.clients += o.clients;
        self.connects_ok += o.connects_ok;
        self.delivered += o.delivered;
        merge_b64(&mut self.connect_us, &o.connect_us)?;
        merge_b64(&mut self.latency_us, &o.latency_us)
    }
}

/// Everything one process measured, in a form that merges exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawResult {
    pub command: String,
    pub transport: String,
    pub gateway: String,
    pub channel_prefix: String,
    pub clients: u64,
    pub shards: u32,
    pub started_unix_ms: u64,
    pub elapsed_secs: f64,
    pub connect_phase_secs: f64,
    pub publish_secs: f64,
    pub deliver_secs: f64,
    pub stopped_by: String,
    pub max_errors: u64,
    /// `--allow-gaps`: gap frames do not fail the check.
    #[serde(default)]
    pub allow_gaps: bool,
    pub counters: Counters,
    pub check: Option<CheckTotals>,
    pub errors: BTreeMap<String, u64>,
    /// `--allow-drops`: connection ends counted as drops, not errors, by kind.
    #[serde(default)]
    pub drops: BTreeMap<String, u64>,
    pub publish_status: BTreeMap<String, u64>,
    pub per_worker: BTreeMap<String, i64>,
    pub hists: RawHists,
    pub timeline: Vec<TickRaw>,
    pub memory: Option<MemoryResult>,
    /// `--memory-after-drain`: against the same baseline as `memory`.
    #[serde(default)]
    pub memory_after_drain: Option<MemoryResult>,
    /// Earliest send stamp and latest receive time (Unix ns) over the stamped messages
    /// received: the span of the whole delivery (see `DeliverySummary::span_ms`).
    #[serde(default)]
    pub span_ns: Option<(u64, u64)>,
    /// The phases as they ran (seconds since the process started, like the timeline).
    #[serde(default)]
    pub phases: Vec<PhaseMark>,
    /// Per concrete transport the clients use.
    #[serde(default)]
    pub transports: Vec<LaneRaw>,
    /// The periodic broadcasts (`--broadcast-every`), by number.
    #[serde(default)]
    pub broadcasts: Vec<BroadcastRaw>,
}

impl RawResult {
    /// Adds a shard's result into this one.
    pub fn merge(&mut self, o: &RawResult) -> anyhow::Result<()> {
        self.clients += o.clients;
        self.started_unix_ms = self.started_unix_ms.min(o.started_unix_ms);
        self.elapsed_secs = self.elapsed_secs.max(o.elapsed_secs);
        self.connect_phase_secs = self.connect_phase_secs.max(o.connect_phase_secs);
        self.publish_secs = self.publish_secs.max(o.publish_secs);
        self.deliver_secs = self.deliver_secs.max(o.deliver_secs);
        self.span_ns = match (self.span_ns, o.span_ns) {
            (Some((a0, a1)), Some((b0, b1))) => Some((a0.min(b0), a1.max(b1))),
            (a, b) => a.or(b),
        };
        if o.stopped_by != "completed" {
            self.stopped_by = o.stopped_by.clone();
        }
        self.counters.merge(&o.counters);
        match (&mut self.check, &o.check) {
            (Some(a), Some(b)) => a.merge(b),
            (None, Some(b)) => self.check = Some(*b),
            _ => {}
        }
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &o.drops {
            *self.drops.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &o.publish_status {
            *self.publish_status.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &o.per_worker {
            *self.per_worker.entry(k.clone()).or_insert(0) += v;
        }
        merge_b64(&mut self.hists.connect_us, &o.hists.connect_us)?;
        merge_b64(&mut self.hists.assign_us, &o.hists.assign_us)?;
        merge_b64(&mut self.hists.latency_us, &o.hists.latency_us)?;
        merge_b64(&mut self.hists.publish_us, &o.hists.publish_us)?;
        merge_b64(&mut self.hists.tls_handshake_us, &o.hists.tls_handshake_us)?;
        merge_b64(
            &mut self.hists.latency_steady_us,
            &o.hists.latency_steady_us,
        )?;
        merge_b64(
            &mut self.hists.latency_broadcast_us,
            &o.hists.latency_broadcast_us,
        )?;
        for b in &o.broadcasts {
            match self.broadcasts.iter_mut().find(|x| x.n == b.n) {
                Some(x) => x.merge(b),
                None => self.broadcasts.push(b.clone()),
            }
        }
        self.broadcasts.sort_by_key(|b| b.n);
        for t in &o.timeline {
            match self.timeline.iter_mut().find(|x| x.t == t.t) {
                Some(x) => {
                    x.connected += t.connected;
                    x.published += t.published;
                    x.delivered += t.delivered;
                    x.errors += t.errors;
                    merge_b64(&mut x.latency, &t.latency)?;
                    for l in &t.transports {
                        match x.transports.iter_mut().find(|y| y.transport == l.transport) {
                            Some(y) => {
                                y.connected += l.connected;
                                y.delivered += l.delivered;
                                merge_b64(&mut y.latency, &l.latency)?;
                            }
                            None => x.transports.push(l.clone()),
                        }
                    }
                }
                None => self.timeline.push(t.clone()),
            }
        }
        for l in &o.transports {
            match self
                .transports
                .iter_mut()
                .find(|y| y.transport == l.transport)
            {
                Some(y) => y.merge(l)?,
                None => self.transports.push(l.clone()),
            }
        }
        // Shards run the same phases: each spans from the earliest start to the latest end.
        for (i, p) in o.phases.iter().enumerate() {
            match self.phases.get_mut(i) {
                Some(q) if q.name == p.name => {
                    q.start_secs = q.start_secs.min(p.start_secs);
                    q.end_secs = q.end_secs.max(p.end_secs);
                }
                _ => {
                    if !self.phases.iter().any(|q| q.name == p.name) {
                        self.phases.push(p.clone());
                    }
                }
            }
        }
        self.timeline.sort_by_key(|t| t.t);
        let busiest = self.timeline.iter().map(|t| t.connected).max().unwrap_or(0);
        self.counters.peak_connected = self.counters.peak_connected.max(busiest);
        Ok(())
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Percentiles of one histogram (µs).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistSummary {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl HistSummary {
    pub fn of(h: &Histogram<u64>) -> HistSummary {
        if h.is_empty() {
            return HistSummary::default();
        }
        HistSummary {
            count: h.len(),
            min: h.min(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectSummary {
    pub attempts: u64,
    pub ok: u64,
    pub first_ok: u64,
    pub first_failed: u64,
    pub reconnects: u64,
    pub dropped_on_purpose: u64,
    pub peak_connected: u64,
    pub connected_at_ready: u64,
    /// Connected when publishing and the drain were over.
    #[serde(default)]
    pub connected_at_end: u64,
    /// `--allow-drops`: unexpected connection ends and failed reconnects, by kind.
    #[serde(default)]
    pub drops: u64,
    #[serde(default)]
    pub drops_by_kind: BTreeMap<String, u64>,
    pub phase_secs: f64,
    pub rate_per_sec: f64,
    pub time_us: HistSummary,
    pub assign_us: HistSummary,
    pub per_worker: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishSummary {
    pub requests: u64,
    pub messages_attempted: u64,
    pub messages_accepted: u64,
    pub messages_rejected: u64,
    /// `--retry-for`: requests sent again, and messages accepted by a retried request.
    #[serde(default)]
    pub retries: u64,
    #[serde(default)]
    pub accepted_after_retry: u64,
    pub secs: f64,
    pub rate_per_sec: f64,
    pub by_status: BTreeMap<String, u64>,
    pub request_us: HistSummary,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliverySummary {
    pub received: u64,
    pub rate_per_sec: f64,
    pub latency_us: HistSummary,
    /// From the earliest send stamp to the latest receive over every message received
    /// (ms): for one burst or one broadcast, the time to the last client.
    #[serde(default)]
    pub span_ms: Option<f64>,
    /// Loss/duplicate/order check (absent for `connect` and `publish`).
    pub check: Option<CheckTotals>,
    /// With periodic broadcasts: `latency_us` of the publish stream's messages alone,
    /// and of the broadcasts' alone (first receipts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steady_latency_us: Option<HistSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_latency_us: Option<HistSummary>,
}

/// The periodic broadcasts of `--broadcast-every`, over every process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BroadcastsSummary {
    /// Broadcasts sent; the requests they took; channels they named, accepted them on,
    /// and first receipts of them by clients.
    pub sent: u64,
    pub requests: u64,
    pub channels: u64,
    pub accepted: u64,
    pub delivered: u64,
    /// Send to the last client's receipt, over the broadcasts that reached one (ms).
    pub to_last_client_p50_ms: Option<f64>,
    pub to_last_client_max_ms: Option<f64>,
    pub each: Vec<BroadcastSummary>,
}

/// One periodic broadcast.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BroadcastSummary {
    /// 1 for the first.
    pub n: u64,
    /// The payload's `t`: its first request's send time.
    pub sent_unix_ms: u64,
    pub channels: u64,
    pub requests: u64,
    pub accepted: u64,
    pub delivered: u64,
    /// First request sent to last answer.
    pub request_ms: f64,
    /// Send to the last client's receipt (absent while no client received it).
    pub to_last_client_ms: Option<f64>,
}

impl BroadcastsSummary {
    fn of(raw: &[BroadcastRaw]) -> Option<BroadcastsSummary> {
        if raw.is_empty() {
            return None;
        }
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        let each: Vec<BroadcastSummary> = raw
            .iter()
            .map(|b| BroadcastSummary {
                n: b.n,
                sent_unix_ms: b.sent_ns / 1_000_000,
                channels: b.channels,
                requests: b.requests,
                accepted: b.accepted,
                delivered: b.delivered,
                request_ms: round(b.request_us as f64 / 1000.0),
                to_last_client_ms: b.to_last_client_ms().map(round),
            })
            .collect();
        let mut last: Vec<f64> = each.iter().filter_map(|b| b.to_last_client_ms).collect();
        last.sort_by(f64::total_cmp);
        Some(BroadcastsSummary {
            sent: each.len() as u64,
            requests: each.iter().map(|b| b.requests).sum(),
            channels: each.iter().map(|b| b.channels).sum(),
            accepted: each.iter().map(|b| b.accepted).sum(),
            delivered: each.iter().map(|b| b.delivered).sum(),
            to_last_client_p50_ms: last.get(last.len().saturating_sub(1) / 2).copied(),
            to_last_client_max_ms: last.last().copied(),
            each,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorSummary {
    pub total: u64,
    pub by_kind: BTreeMap<String, u64>,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TickSummary {
    pub t: u32,
    pub connected: u64,
    pub published: u64,
    pub delivered: u64,
    pub errors: u64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_max_us: u64,
    /// The same second per transport the clients use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transports: Vec<TransportTick>,
}

/// One second of one transport's clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransportTick {
    pub transport: String,
    pub connected: u64,
    pub delivered: u64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
}

/// The clients of one concrete transport over the whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransportSummary {
    pub transport: String,
    pub clients: u64,
    pub connects_ok: u64,
    pub delivered: u64,
    pub connect_us: HistSummary,
    pub latency_us: HistSummary,
}

/// A point of the latency distribution.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyPoint {
    pub percentile: f64,
    pub value_us: u64,
}

/// TLS handshakes of a `--tls` run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TlsSummary {
    pub full: u64,
    pub resumed: u64,
    /// resumed / (full + resumed).
    pub resumed_share: f64,
    /// Handshakes that offered a ticket, and the share of those resumed: what the servers
    /// made of the tickets they were shown (a client's first handshake has none).
    pub offered: u64,
    pub resumed_of_offered: f64,
    /// Over the whole run.
    pub full_per_sec: f64,
    pub resumed_per_sec: f64,
    pub handshake_us: HistSummary,
}

/// The `--json` document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub loadgen_version: String,
    pub command: String,
    /// The command line as run, shell-quoted, secrets as `***`.
    #[serde(default)]
    pub command_line: String,
    /// The scenario as parsed.
    #[serde(default)]
    pub parameters: Option<Parameters>,
    pub transport: String,
    pub gateway: String,
    pub channel_prefix: String,
    pub clients: u64,
    pub shards: u32,
    pub started_unix_ms: u64,
    pub elapsed_secs: f64,
    pub stopped_by: String,
    pub passed: bool,
    pub connect: ConnectSummary,
    pub publish: PublishSummary,
    pub delivery: DeliverySummary,
    pub errors: ErrorSummary,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSummary>,
    /// `--broadcast-every`: the periodic broadcasts (absent when none was sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcasts: Option<BroadcastsSummary>,
    pub memory: Option<MemoryResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_after_drain: Option<MemoryResult>,
    /// Per concrete transport the clients use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_transport: Vec<TransportSummary>,
    /// The phases as they ran, in seconds since the start (the timeline's clock).
    #[serde(default)]
    pub phases: Vec<PhaseMark>,
    pub timeline: Vec<TickSummary>,
    pub latency_distribution: Vec<LatencyPoint>,
    pub histograms: RawHists,
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        (n as f64 / secs * 10.0).round() / 10.0
    } else {
        0.0
    }
}

impl Summary {
    pub fn from_raw(raw: &RawResult) -> anyhow::Result<Summary> {
        let connect = hist_from_b64(&raw.hists.connect_us).context("connect histogram")?;
        let assign = hist_from_b64(&raw.hists.assign_us).context("assign histogram")?;
        let latency = hist_from_b64(&raw.hists.latency_us).context("latency histogram")?;
        let publish = hist_from_b64(&raw.hists.publish_us).context("publish histogram")?;
        let handshakes =
            hist_from_b64(&raw.hists.tls_handshake_us).context("TLS handshake histogram")?;
        let steady = hist_from_b64(&raw.hists.latency_steady_us).context("steady histogram")?;
        let broadcast =
            hist_from_b64(&raw.hists.latency_broadcast_us).context("broadcast histogram")?;
        let split = !raw.broadcasts.is_empty() || !broadcast.is_empty();
        let c = &raw.counters;
        let errors_total = raw.errors_total();
        let check_ok = raw.check.map(|c| c.clean(raw.allow_gaps)).unwrap_or(true);
        let passed = check_ok && errors_total <= raw.max_errors;
        let mut timeline = Vec::new();
        for t in &raw.timeline {
            let h = hist_from_b64(&t.latency)?;
            let s = HistSummary::of(&h);
            let mut transports = Vec::new();
            for l in &t.transports {
                let h = HistSummary::of(&hist_from_b64(&l.latency)?);
                transports.push(TransportTick {
                    transport: l.transport.clone(),
                    connected: l.connected,
                    delivered: l.delivered,
                    latency_p50_us: h.p50,
                    latency_p99_us: h.p99,
                });
            }
            timeline.push(TickSummary {
                t: t.t,
                connected: t.connected,
                published: t.published,
                delivered: t.delivered,
                errors: t.errors,
                latency_p50_us: s.p50,
                latency_p99_us: s.p99,
                latency_max_us: s.max,
                transports,
            });
        }
        let mut by_transport = Vec::new();
        for l in &raw.transports {
            by_transport.push(TransportSummary {
                transport: l.transport.clone(),
                clients: l.clients,
                connects_ok: l.connects_ok,
                delivered: l.delivered,
                connect_us: HistSummary::of(
                    &hist_from_b64(&l.connect_us).context("connect histogram")?,
                ),
                latency_us: HistSummary::of(
                    &hist_from_b64(&l.latency_us).context("latency histogram")?,
                ),
            });
        }
        let latency_distribution = if latency.is_empty() {
            Vec::new()
        } else {
            [
                0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
            ]
            .iter()
            .map(|&p| LatencyPoint {
                percentile: p,
                value_us: latency.value_at_percentile(p),
            })
            .collect()
        };
        Ok(Summary {
            loadgen_version: env!("CARGO_PKG_VERSION").to_string(),
            command: raw.command.clone(),
            command_line: String::new(),
            parameters: None,
            transport: raw.transport.clone(),
            gateway: raw.gateway.clone(),
            channel_prefix: raw.channel_prefix.clone(),
            clients: raw.clients,
            shards: raw.shards,
            started_unix_ms: raw.started_unix_ms,
            elapsed_secs: (raw.elapsed_secs * 1000.0).round() / 1000.0,
            stopped_by: raw.stopped_by.clone(),
            passed,
            connect: ConnectSummary {
                attempts: c.connect_attempts,
                ok: c.connects_ok,
                first_ok: c.first_ok,
                first_failed: c.first_failed,
                reconnects: c.reconnects,
                dropped_on_purpose: c.dropped_on_purpose,
                peak_connected: c.peak_connected,
                connected_at_ready: c.connected_at_ready,
                connected_at_end: c.connected_at_end,
                drops: raw.drops.values().sum(),
                drops_by_kind: raw.drops.clone(),
                phase_secs: (raw.connect_phase_secs * 1000.0).round() / 1000.0,
                rate_per_sec: rate(c.first_ok, raw.connect_phase_secs),
                time_us: HistSummary::of(&connect),
                assign_us: HistSummary::of(&assign),
                per_worker: raw.per_worker.clone(),
            },
            publish: PublishSummary {
                requests: c.publish_requests,
                messages_attempted: c.publish_attempted,
                messages_accepted: c.published,
                messages_rejected: c.publish_rejected,
                retries: c.publish_retries,
                accepted_after_retry: c.published_after_retry,
                secs: (raw.publish_secs * 1000.0).round() / 1000.0,
                rate_per_sec: rate(c.published, raw.publish_secs),
                by_status: raw.publish_status.clone(),
                request_us: HistSummary::of(&publish),
            },
            delivery: DeliverySummary {
                received: c.delivered,
                rate_per_sec: rate(c.delivered, raw.deliver_secs),
                latency_us: HistSummary::of(&latency),
                span_ms: raw
                    .span_ns
                    .map(|(first, last)| last.saturating_sub(first) as f64 / 1e6),
                check: raw.check,
                steady_latency_us: split.then(|| HistSummary::of(&steady)),
                broadcast_latency_us: split.then(|| HistSummary::of(&broadcast)),
            },
            errors: ErrorSummary {
                total: errors_total,
                by_kind: raw.errors.clone(),
            },
            tls: (c.tls_full + c.tls_resumed > 0).then(|| TlsSummary {
                full: c.tls_full,
                resumed: c.tls_resumed,
                resumed_share: (c.tls_resumed as f64 / (c.tls_full + c.tls_resumed) as f64
                    * 10_000.0)
                    .round()
                    / 10_000.0,
                offered: c.tls_offered,
                resumed_of_offered: if c.tls_offered == 0 {
                    0.0
                } else {
                    (c.tls_resumed as f64 / c.tls_offered as f64 * 10_000.0).round() / 10_000.0
                },
                full_per_sec: rate(c.tls_full, raw.elapsed_secs),
                resumed_per_sec: rate(c.tls_resumed, raw.elapsed_secs),
                handshake_us: HistSummary::of(&handshakes),
            }),
            broadcasts: BroadcastsSummary::of(&raw.broadcasts),
            memory: raw.memory.clone(),
            memory_after_drain: raw.memory_after_drain.clone(),
            by_transport,
            phases: raw.phases.clone(),
            timeline,
            latency_distribution,
            histograms: raw.hists.clone(),
        })
    }

    /// The human summary.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
        let _ = writeln!(
            s,
            "loadgen {} ({}, {} clients, {} shard{}) against {}: {} in {:.1} s",
            self.command,
            self.transport,
            self.clients,
            self.shards,
            if self.shards == 1 { "" } else { "s" },
            self.gateway,
            self.stopped_by,
            self.elapsed_secs
        );
        let c = &self.connect;
        if c.attempts > 0 {
            let _ = writeln!(
                s,
                "  connect   {} ok of {} first attempts ({} failed) in {:.2} s = {:.0}/s; time p50 {} p99 {} max {}; assign p50 {}; reconnects {}",
                c.first_ok,
                self.clients,
                c.first_failed,
                c.phase_secs,
                c.rate_per_sec,
                ms(c.time_us.p50),
                ms(c.time_us.p99),
                ms(c.time_us.max),
                ms(c.assign_us.p50),
                c.reconnects
            );
            if c.drops > 0 {
                let _ = write!(
                    s,
                    "  drops     {} (resumed with since; not errors)",
                    c.drops
                );
                for (k, v) in &c.drops_by_kind {
                    let _ = write!(s, " {k}={v}");
                }
                let _ = writeln!(s, "; connected at the end {}", c.connected_at_end);
            }
        }
        if let Some(t) = &self.tls {
            let _ = writeln!(
                s,
                "  tls       {} full + {} resumed handshakes ({:.1} % resumed; {:.1} % of the {} that offered a ticket; {:.0}/s full, {:.0}/s resumed); handshake p50 {} p99 {}",
                t.full,
                t.resumed,
                t.resumed_share * 100.0,
                t.resumed_of_offered * 100.0,
                t.offered,
                t.full_per_sec,
                t.resumed_per_sec,
                ms(t.handshake_us.p50),
                ms(t.handshake_us.p99)
            );
        }
        let p = &self.publish;
        if p.requests > 0 {
            let _ = writeln!(
                s,
                "  publish   {} accepted of {} in {} requests over {:.1} s = {:.0}/s; request p50 {} p99 {}; rejected {}",
                p.messages_accepted,
                p.messages_attempted,
                p.requests,
                p.secs,
                p.rate_per_sec,
                ms(p.request_us.p50),
                ms(p.request_us.p99),
                p.messages_rejected
            );
            if p.retries > 0 {
                let _ = writeln!(
                    s,
                    "            {} requests retried; {} messages accepted by a retried request",
                    p.retries, p.accepted_after_retry
                );
            }
        }
        let d = &self.delivery;
        if d.received > 0 || d.check.is_some() {
            let l = &d.latency_us;
            let _ = writeln!(
                s,
                "  deliver   {} received = {:.0}/s; latency p50 {} p90 {} p99 {} p99.9 {} max {}{}",
                d.received,
                d.rate_per_sec,
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max),
                d.span_ms
                    .map(|v| format!("; first sent -> last received {v:.2} ms"))
                    .unwrap_or_default()
            );
        }
        let lat = |l: &HistSummary| {
            format!(
                "latency p50 {} p99 {} p99.9 {} max {}",
                ms(l.p50),
                ms(l.p99),
                ms(l.p999),
                ms(l.max)
            )
        };
        if let Some(l) = &d.steady_latency_us {
            let _ = writeln!(s, "  steady    {} received; {}", l.count, lat(l));
        }
        if let (Some(b), Some(l)) = (&self.broadcasts, &d.broadcast_latency_us) {
            let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2} ms"));
            let _ = writeln!(
                s,
                "  broadcast {} sent in {} requests naming {} channels, accepted on {}; {} received; {}; send -> last client p50 {} max {}",
                b.sent,
                b.requests,
                b.channels,
                b.accepted,
                b.delivered,
                lat(l),
                opt(b.to_last_client_p50_ms),
                opt(b.to_last_client_max_ms)
            );
        }
        if self.by_transport.len() > 1 {
            let _ = write!(s, "  transport");
            for (i, t) in self.by_transport.iter().enumerate() {
                let _ = write!(
                    s,
                    "{} {} {} clients, {} received, connect p50 {}, latency p50 {} p99 {}",
                    if i == 0 { "" } else { " |" },
                    t.transport,
                    t.clients,
                    t.delivered,
                    ms(t.connect_us.p50),
                    ms(t.latency_us.p50),
                    ms(t.latency_us.p99)
                );
            }
            s.push('\n');
        }
        if let Some(k) = &d.check {
            let _ = writeln!(
                s,
                "  check     expected {} unique {} | lost {} duplicated {} out-of-order {} gaps {} unexpected {} (channels with loss {})",
                k.expected, k.unique, k.lost, k.duplicated, k.out_of_order, k.gaps, k.unexpected, k.channels_with_loss
            );
            if k.gaps > 0 || k.replayed > 0 || k.id_duplicated > 0 {
                let when = |ms: u64| {
                    if ms == 0 {
                        "-".to_string()
                    } else {
                        format!(
                            "{:+.1} s",
                            (ms as f64 - self.started_unix_ms as f64) / 1000.0
                        )
                    }
                };
                let _ = writeln!(
                    s,
                    "            gaps on {} channels (at most {} per channel, {} saying messages were gone) from {} to {} after the start; replayed after a gap {}; id duplicates {}",
                    k.channels_with_gaps,
                    k.max_gaps_per_channel,
                    k.gaps_with_missing,
                    when(k.gap_first_unix_ms),
                    when(k.gap_last_unix_ms),
                    k.replayed,
                    k.id_duplicated
                );
            }
        }
        let _ = write!(s, "  errors    {}", self.errors.total);
        for (k, v) in &self.errors.by_kind {
            let _ = write!(s, " {k}={v}");
        }
        s.push('\n');
        if let Some(m) = &self.memory {
            memory_lines(&mut s, "memory   ", m);
        }
        if let Some(m) = &self.memory_after_drain {
            memory_lines(&mut s, "drained  ", m);
        }
        let _ = writeln!(
            s,
            "  result    {}",
            if self.passed { "PASS" } else { "FAIL" }
        );
        s
    }
}

/// The memory lines of the human summary; `label` is 9 characters wide.
fn memory_lines(out: &mut String, label: &str, m: &MemoryResult) {
    let f = |x: Option<f64>| {
        x.map(|v| format!("{v:.0} B"))
            .unwrap_or_else(|| "n/a".into())
    };
    let _ = writeln!(
        out,
        "  {label} {} connections: workers +{} B = {} per connection",
        m.connections,
        m.workers_delta_bytes,
        f(m.bytes_per_connection)
    );
    for w in &m.workers {
        let _ = writeln!(
            out,
            "            worker {} ({}): {} connections, RSS {} -> {} = {} per connection",
            w.id,
            w.address.as_deref().unwrap_or("?"),
            w.connections,
            w.rss_before
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into()),
            w.rss_after
                .map(|v| v.to_string())
                .unwrap_or_else(|| "?".into()),
            f(w.bytes_per_connection)
        );
    }
    if let Some(d) = m.gateway.delta_bytes {
        let _ = writeln!(out, "            gateway RSS {d:+} B");
    }
    if let Some(k) = &m.kernel {
        let _ = writeln!(
            out,
            "            kernel TCP buffer mem {} -> {} pages, sockets {} -> {}: {} per socket, {} per connection{}",
            k.tcp_mem_pages_before,
            k.tcp_mem_pages_after,
            k.tcp_inuse_before,
            k.tcp_inuse_after,
            f(k.bytes_per_socket),
            f(k.bytes_per_connection),
            if k.bytes_per_socket.is_none() {
                " (socket buffers did not grow: idle sockets hold none)"
            } else {
                ""
            }
        );
    }
}
