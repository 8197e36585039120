//! Prometheus metrics of the gateway: statics registered on first use (forced at start by
//! [`init`]) so every series shows before traffic. Labels are small fixed sets, never a
//! channel or a connection.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::LazyLock;

/// The registry `/metrics` renders (process collector included).
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let r = Registry::new();
    #[cfg(target_os = "linux")]
    r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))
    .expect("process collector registers once");
    r
});

fn counter(name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("metric registers once");
    c
}

fn counter_vec(name: &str, help: &str, label: &str, values: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("metric registers once");
    for v in values {
        c.with_label_values(&[*v]);
    }
    c
}

fn gauge(name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    REGISTRY
        .register(Box::new(g.clone()))
        .expect("metric registers once");
    g
}

/// Accepted publishes (idempotent repeats not counted).
pub static PUBLISH_TOTAL: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "pushgate_publish_total",
        "Messages accepted by publish endpoints.",
    )
});

/// Broadcast requests carried out (each also counts its messages in `pushgate_publish_total`).
pub static BROADCAST_TOTAL: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "pushgate_broadcast_total",
        "Broadcast requests carried out (their messages count in pushgate_publish_total).",
    )
});

/// Why a publish was refused: the bounded label set of `pushgate_publish_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    Unauthorized,
    TooLarge,
    BadChannel,
    BadRequest,
    TooManyChannels,
    StoreUnavailable,
    /// The body did not arrive within `--body-timeout-secs`.
    Timeout,
    /// Over a publish rate limit (429).
    RateLimited,
    /// `--max-inflight-body-bytes` taken (503).
    Busy,
}

impl RejectReason {
    /// Every label, registered at start so each series shows before traffic.
    pub const ALL: [RejectReason; 9] = [
        RejectReason::Unauthorized,
        RejectReason::TooLarge,
        RejectReason::BadChannel,
        RejectReason::BadRequest,
        RejectReason::TooManyChannels,
        RejectReason::StoreUnavailable,
        RejectReason::Timeout,
        RejectReason::RateLimited,
        RejectReason::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Unauthorized => "unauthorized",
            RejectReason::TooLarge => "too_large",
            RejectReason::BadChannel => "bad_channel",
            RejectReason::BadRequest => "bad_request",
            RejectReason::TooManyChannels => "too_many_channels",
            RejectReason::StoreUnavailable => "store_unavailable",
            RejectReason::Timeout => "timeout",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::Busy => "busy",
        }
    }

    /// Counts `n` refusals for this reason.
    pub fn count(self, n: u64) {
        if n > 0 {
            PUBLISH_REJECTED
                .with_label_values(&[self.as_str()])
                .inc_by(n);
        }
    }
}

/// Publishes refused, by reason (count through [`RejectReason::count`]).
pub static PUBLISH_REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "pushgate_publish_rejected_total",
        "Publishes refused, by reason.",
        "reason",
        &RejectReason::ALL.map(RejectReason::as_str),
    )
});

/// Worker link attempts refused, by reason (`link_key`, `version`).
pub static LINK_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "pushgate_link_refused_total",
        "Worker link attempts refused: link_key = no or the wrong link key, version = another link protocol version.",
        "reason",
        &["link_key", "version"],
    )
});

/// Retained messages dropped, by reason (count, age, memory).
pub static MESSAGES_EVICTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "pushgate_messages_evicted_total",
        "Retained messages dropped: count = per-channel limit, age = retention time, memory = total bound.",
        "reason",
        &["count", "age", "memory"],
    )
});

/// Bytes accounted to retained messages (data + overhead), set at scrape.
pub static STORE_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "pushgate_store_bytes",
        "Bytes accounted to retained messages (data plus per-message overhead).",
    )
});

/// Channels the store tracks, set at scrape.
pub static STORE_CHANNELS: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("pushgate_store_channels", "Channels the store tracks."));

/// Forgotten channels whose seq and epoch the memory store keeps, set at scrape.
pub static STORE_IDLE_CHANNELS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "pushgate_store_idle_channels",
        "Channels the memory store remembers only by seq and epoch (--channel-meta-secs).",
    )
});

/// Idle channels' metas dropped before --channel-meta-secs because --max-channels was reached.
pub static CHANNEL_METAS_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "pushgate_channel_metas_dropped_total",
        "Idle channels' seq and epoch dropped early at the --max-channels bound (their next publish opens a new epoch).",
    )
});

/// Workers by state, set at scrape.
pub static WORKERS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    let g = IntGaugeVec::new(
        Opts::new("pushgate_workers", "Known workers by state."),
        &["state"],
    )
    .expect("valid metric");
    REGISTRY
        .register(Box::new(g.clone()))
        .expect("metric registers once");
    for s in ["starting", "healthy", "stale", "disconnected"] {
        g.with_label_values(&[s]);
    }
    g
});

/// Successful assigns.
pub static ASSIGN_TOTAL: LazyLock<IntCounter> =
    LazyLock::new(|| counter("pushgate_assign_total", "Clients assigned to a worker."));

/// Frames written to worker links.
pub static LINK_FRAMES_SENT: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "pushgate_link_frames_sent_total",
        "Frames written to worker links.",
    )
});

/// Writes (batches of frames) to worker links.
pub static LINK_BATCHES_SENT: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "pushgate_link_batches_sent_total",
        "Batched writes to worker links (one write each).",
    )
});

/// Frames a publishing task wrote to an idle plain link itself (no writer task woken).
pub static LINK_DIRECT_WRITES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "pushgate_link_direct_writes_total",
        "Frames written to an idle plain worker link by the task that sent them (also counted in the frames and batches sent).",
    )
});

/// Links closed because their outbound queue was full.
pub static LINK_OVERFLOWS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "pushgate_link_overflows_total",
        "Worker links closed because their outbound queue was full.",
    )
});

/// Worker links open now.
pub static LINKS_OPEN: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("pushgate_links_open", "Worker links open now."));

/// Local worker processes restarted after an unexpected exit.
pub static LOCAL_WORKER_RESTARTS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "pushgate_local_worker_restarts_total",
        "Local worker processes restarted after they exited.",
    )
});

/// Publish requests from their head to their answer (body read, store, routing), accepted
/// or refused: `[single, ndjson, broadcast]`, the `kind` label.
pub static PUBLISH_SECONDS: LazyLock<[Histogram; 3]> = LazyLock::new(|| {
    let h = prometheus::HistogramVec::new(
        HistogramOpts::new(
            "pushgate_publish_seconds",
            "Publish requests from request head to answer (body read, store, routing), by kind (single, ndjson, broadcast).",
        )
        .buckets(vec![
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0,
        ]),
        &["kind"],
    )
    .expect("valid metric");
    REGISTRY
        .register(Box::new(h.clone()))
        .expect("metric registers once");
    ["single", "ndjson", "broadcast"].map(|k| h.with_label_values(&[k]))
});

/// Redis store: round-trip time of every call.
pub static REDIS_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    let h = Histogram::with_opts(
        HistogramOpts::new(
            "pushgate_redis_seconds",
            "Round-trip time of Redis store calls.",
        )
        .buckets(vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0,
        ]),
    )
    .expect("valid metric");
    REGISTRY
        .register(Box::new(h.clone()))
        .expect("metric registers once");
    h
});

/// Shared store: deliveries for a worker whose lease had ended, neither sent nor parked.
pub static LEASE_ENDED_DROPS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "pushgate_lease_ended_deliveries_total",
        "Deliveries for a worker incarnation whose lease had ended (it died or restarted): not sent, not parked; the message waits in the store.",
    )
});

/// Redis store: publishes carried by each `pg_publish_batch` call.
pub static REDIS_PUBLISHES_PER_CALL: LazyLock<Histogram> = LazyLock::new(|| {
    let h = Histogram::with_opts(
        HistogramOpts::new(
            "pushgate_redis_publishes_per_call",
            "Publishes sent to Redis in one function call (busy gateways batch them).",
        )
        .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
    )
    .expect("valid metric");
    REGISTRY
        .register(Box::new(h.clone()))
        .expect("metric registers once");
    h
});

/// Redis store: failed calls by kind.
pub static REDIS_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "pushgate_redis_errors_total",
        "Redis store calls that failed, by kind (connection, timeout, reply, overloaded).",
        "kind",
        &["connection", "timeout", "reply", "overloaded"],
    )
});

/// Channel logs whose epoch changed because their history was lost, by cause.
pub static PARKED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "pushgate_parked_deliveries_total",
        "Deliveries for a worker with no link to this gateway yet, kept until it links (shared store).",
    )
});

pub static PARKED_SENT: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "pushgate_parked_deliveries_sent_total",
        "Parked deliveries sent when their worker's link came.",
    )
});

pub static STORE_RESYNCS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "pushgate_store_resyncs_total",
        "Times the store was found to have lost its history (restarted empty, flushed) and every worker was asked to subscribe its connections again.",
    )
});

pub static PUBLISH_STREAMS_OPEN: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "pushgate_publish_streams_open",
        "Publish streams (POST /v1/publish?stream=1) open now.",
    )
});

pub static SUBSCRIBES_LATE: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "pushgate_subscribes_late_total",
        "Subscribes that landed after the channel's live holder although their client asked before it (they came over a slower link): refused with resync instead of taking the channel.",
    )
});

pub static EPOCH_CHANGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "pushgate_epoch_changes_total",
        "Channel logs given a new epoch because their history was lost: missing (meta gone: flushed, expired, evicted, restarted without persistence), replid (another Redis history: restart from a snapshot, failover).",
        "cause",
        &["missing", "replid"],
    )
});

/// Registers every metric (call once at start so all series show before traffic).
pub static TLS_HANDSHAKES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "pushgate_tls_handshakes_total",
        "TLS handshakes completed on the gateway's listener (--tls-cert), by kind (full, resumed).",
        "kind",
        &["full", "resumed"],
    )
});

pub static TLS_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "pushgate_tls_handshake_failures_total",
        "TLS handshakes on the gateway's listener that failed, by reason (plain_http, refused, timeout).",
        "reason",
        &["plain_http", "refused", "timeout"],
    )
});

pub fn init() {
    LazyLock::force(&TLS_HANDSHAKES);
    LazyLock::force(&TLS_FAILURES);
    LazyLock::force(&LINK_REFUSED);
    LazyLock::force(&REDIS_SECONDS);
    LazyLock::force(&REDIS_PUBLISHES_PER_CALL);
    LazyLock::force(&LEASE_ENDED_DROPS);
    LazyLock::force(&REDIS_ERRORS);
    LazyLock::force(&EPOCH_CHANGES);
    LazyLock::force(&STORE_RESYNCS);
    LazyLock::force(&SUBSCRIBES_LATE);
    LazyLock::force(&PUBLISH_STREAMS_OPEN);
    LazyLock::force(&PARKED);
    LazyLock::force(&PARKED_SENT);
    LazyLock::force(&PUBLISH_TOTAL);
    LazyLock::force(&PUBLISH_SECONDS);
    LazyLock::force(&PUBLISH_REJECTED);
    LazyLock::force(&BROADCAST_TOTAL);
    LazyLock::force(&MESSAGES_EVICTED);
    LazyLock::force(&STORE_BYTES);
    LazyLock::force(&STORE_CHANNELS);
    LazyLock::force(&STORE_IDLE_CHANNELS);
    LazyLock::force(&CHANNEL_METAS_DROPPED);
    LazyLock::force(&WORKERS);
    LazyLock::force(&ASSIGN_TOTAL);
    LazyLock::force(&LINK_FRAMES_SENT);
    LazyLock::force(&LINK_BATCHES_SENT);
    LazyLock::force(&LINK_DIRECT_WRITES);
    LazyLock::force(&LINK_OVERFLOWS);
    LazyLock::force(&LINKS_OPEN);
    LazyLock::force(&LOCAL_WORKER_RESTARTS);
}

/// Renders the registry in the Prometheus text format.
pub fn render() -> Vec<u8> {
    init();
    let mut out = Vec::with_capacity(8 * 1024);
    TextEncoder::new()
        .encode(&REGISTRY.gather(), &mut out)
        .expect("text encoding into a Vec cannot fail");
    out
}
