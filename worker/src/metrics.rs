//! The worker's Prometheus metrics: statics registered once per process (so they show
//! before any traffic), bounded labels only, plus the process collector for
//! `process_resident_memory_bytes`.

use crate::tls::session::Failure;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use std::sync::LazyLock;

/// How a client connection was used; the `transport` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Transport {
    /// Still reading a request (or between long-polls).
    Http = 0,
    Ws = 1,
    Poll = 2,
    Sse = 3,
}

impl Transport {
    const ALL: [Transport; 4] = [
        Transport::Http,
        Transport::Ws,
        Transport::Poll,
        Transport::Sse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Ws => "ws",
            Transport::Poll => "poll",
            Transport::Sse => "sse",
        }
    }
}

/// Why a connection ended; the `reason` label (a small fixed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// The client closed it (EOF, reset, WebSocket close).
    ClientClosed = 0,
    /// We answered and closed (errors, /metrics, SSE end, poll without keep-alive).
    Done = 1,
    /// The gateway kicked it (replaced by a newer connection, or resync).
    Kicked = 2,
    /// Handshake timeout or a silent WebSocket.
    Timeout = 3,
    /// The client broke the protocol.
    ProtocolError = 4,
    /// Its pending output passed `--max-pending-bytes`.
    SlowClient = 5,
    /// Worker shutdown.
    Shutdown = 6,
    /// Refused at accept (see [`RefuseReason`]).
    Refused = 7,
    /// A socket error.
    IoError = 8,
}

impl CloseReason {
    const ALL: [CloseReason; 9] = [
        CloseReason::ClientClosed,
        CloseReason::Done,
        CloseReason::Kicked,
        CloseReason::Timeout,
        CloseReason::ProtocolError,
        CloseReason::SlowClient,
        CloseReason::Shutdown,
        CloseReason::Refused,
        CloseReason::IoError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::Done => "done",
            CloseReason::Kicked => "kicked",
            CloseReason::Timeout => "timeout",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::SlowClient => "slow_client",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Refused => "refused",
            CloseReason::IoError => "io_error",
        }
    }
}

/// Why a connection was refused at accept; the `reason` label of
/// `pushgate_connections_refused_total`, and the answer a plain connection gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RefuseReason {
    /// `--capacity` connections are open.
    OverCapacity = 0,
    /// The source IP holds `--max-connections-per-ip`.
    TooManyConnections = 1,
    /// The source IP opened connections faster than `--connect-rate-per-ip`.
    ConnectRateLimited = 2,
}

impl RefuseReason {
    const ALL: [RefuseReason; 3] = [
        RefuseReason::OverCapacity,
        RefuseReason::TooManyConnections,
        RefuseReason::ConnectRateLimited,
    ];

    /// The label, and the `error` code of the JSON answer.
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::OverCapacity => "over_capacity",
            RefuseReason::TooManyConnections => "too_many_connections",
            RefuseReason::ConnectRateLimited => "connect_rate_limited",
        }
    }

    /// The HTTP status of the answer.
    pub fn status(self) -> u16 {
        match self {
            RefuseReason::OverCapacity => 503,
            RefuseReason::TooManyConnections | RefuseReason::ConnectRateLimited => 429,
        }
    }
}

/// Buckets of `pushgate_delivery_latency_seconds`: 100 µs to 5 s.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// All worker metrics, with label handles resolved once.
pub struct Metrics {
    pub registry: Registry,
    open: [IntGauge; 4],
    closed: [IntCounter; 9],
    refused: [IntCounter; 3],
    pub accepted: IntCounter,
    pub delivered: IntCounter,
    pub link_up: IntGauge,
    pub slow_client_closes: IntCounter,
    pub link_queue_full: IntCounter,
    pub write_buffered: IntCounter,
    pub pending_bytes: IntGauge,
    /// Deliveries that arrived past a hole in their connection's seqs (a hole wait began).
    pub holes: IntCounter,
    /// `Fetch` requests sent (next pages of a resume, holes, epoch changes).
    pub fetches: IntCounter,
    /// Gap frames/events/poll answers told to clients.
    pub gaps: IntCounter,
    /// `EventSource` reconnects of a replaced stream, answered 204 so the browser stops.
    pub sse_replaced_stops: IntCounter,
    /// TLS handshakes completed: [full, resumed].
    tls_handshakes: [IntCounter; 2],
    /// TLS handshakes that failed, by `Failure`.
    tls_failures: [IntCounter; 6],
    /// Fleet ticket keys held (from the gateways).
    pub tls_ticket_keys: IntGauge,
    /// From a gateway's accepting a publish to its live delivery here (loop threads observe
    /// into their own `LocalHistogram` and flush it once per inbox).
    pub delivery_latency: Histogram,
}

impl Metrics {
    pub fn open(&self, t: Transport) -> &IntGauge {
        &self.open[t as usize]
    }

    pub fn closed(&self, r: CloseReason) -> &IntCounter {
        &self.closed[r as usize]
    }

    pub fn refused(&self, r: RefuseReason) -> &IntCounter {
        &self.refused[r as usize]
    }

    pub fn tls_handshake(&self, resumed: bool) -> &IntCounter {
        &self.tls_handshakes[usize::from(resumed)]
    }

    pub fn tls_failure(&self, f: Failure) -> &IntCounter {
        &self.tls_failures[f as usize]
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let open_vec = IntGaugeVec::new(
        Opts::new(
            "pushgate_connections_open",
            "Client connections open, by transport",
        ),
        &["transport"],
    )
    .expect("metric");
    let closed_vec = IntCounterVec::new(
        Opts::new(
            "pushgate_connections_closed_total",
            "Client connections closed, by reason",
        ),
        &["reason"],
    )
    .expect("metric");
    let refused_vec = IntCounterVec::new(
        Opts::new(
            "pushgate_connections_refused_total",
            "Client connections refused at accept, by reason (each also counts as closed with reason refused)",
        ),
        &["reason"],
    )
    .expect("metric");
    let accepted = IntCounter::new(
        "pushgate_connections_accepted_total",
        "Client connections accepted",
    )
    .expect("metric");
    let delivered = IntCounter::new(
        "pushgate_messages_delivered_total",
        "Messages written to clients (WebSocket frames, SSE events, poll entries)",
    )
    .expect("metric");
    let link_up = IntGauge::new(
        "pushgate_link_up",
        "Gateway links up now (one per --gateway)",
    )
    .expect("metric");
    let slow = IntCounter::new(
        "pushgate_slow_client_closes_total",
        "Connections closed because their pending output passed --max-pending-bytes",
    )
    .expect("metric");
    let queue_full = IntCounter::new(
        "pushgate_link_queue_full_total",
        "Subscribe/Unsubscribe requests refused because the link queue was full",
    )
    .expect("metric");
    let write_buffered = IntCounter::new(
        "pushgate_write_buffered_total",
        "Writes the socket did not take whole: the rest waited in a per-connection buffer",
    )
    .expect("metric");
    let pending_bytes = IntGauge::new(
        "pushgate_pending_bytes",
        "Bytes waiting in per-connection write buffers (output the sockets did not take yet)",
    )
    .expect("metric");
    let holes = IntCounter::new(
        "pushgate_holes_total",
        "Deliveries that arrived past a hole in their connection's seqs (held, then filled by a late delivery or from the store)",
    )
    .expect("metric");
    let fetches = IntCounter::new(
        "pushgate_fetches_total",
        "Fetch requests sent to the gateway: next pages of a resume, holes, epoch changes",
    )
    .expect("metric");
    let gaps = IntCounter::new(
        "pushgate_gaps_sent_total",
        "Gaps told to clients (a resume or a hole that could not be served whole)",
    )
    .expect("metric");
    let sse_replaced_stops = IntCounter::new(
        "pushgate_sse_replaced_stops_total",
        "EventSource reconnects of a replaced SSE stream, answered 204 so the browser stops instead of taking the channel back",
    )
    .expect("metric");
    let tls_vec = IntCounterVec::new(
        Opts::new(
            "pushgate_tls_handshakes_total",
            "TLS handshakes completed on --listen-tls, by kind (full, resumed)",
        ),
        &["kind"],
    )
    .expect("metric");
    let tls_fail_vec = IntCounterVec::new(
        Opts::new(
            "pushgate_tls_handshake_failures_total",
            "TLS handshakes that failed, by reason",
        ),
        &["reason"],
    )
    .expect("metric");
    let ticket_keys = IntGauge::new(
        "pushgate_tls_ticket_keys",
        "Fleet TLS session-ticket keys held (sent by the gateways; 0: tickets only this process opens)",
    )
    .expect("metric");
    let delivery_latency = Histogram::with_opts(
        HistogramOpts::new(
            "pushgate_delivery_latency_seconds",
            "From a gateway accepting a publish to the worker writing the live message to its client (gateway and worker clocks; backlog pages not counted)",
        )
        .buckets(LATENCY_BUCKETS.to_vec()),
    )
    .expect("metric");
    for c in [
        Box::new(holes.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(delivery_latency.clone()),
        Box::new(ticket_keys.clone()),
        Box::new(tls_vec.clone()),
        Box::new(tls_fail_vec.clone()),
        Box::new(fetches.clone()),
        Box::new(gaps.clone()),
        Box::new(sse_replaced_stops.clone()),
        Box::new(open_vec.clone()),
        Box::new(closed_vec.clone()),
        Box::new(refused_vec.clone()),
        Box::new(accepted.clone()),
        Box::new(delivered.clone()),
        Box::new(link_up.clone()),
        Box::new(slow.clone()),
        Box::new(queue_full.clone()),
        Box::new(write_buffered.clone()),
        Box::new(pending_bytes.clone()),
    ] {
        registry.register(c).expect("register metric");
    }
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("register process collector");
    Metrics {
        open: Transport::ALL.map(|t| open_vec.with_label_values(&[t.as_str()])),
        closed: CloseReason::ALL.map(|r| closed_vec.with_label_values(&[r.as_str()])),
        refused: RefuseReason::ALL.map(|r| refused_vec.with_label_values(&[r.as_str()])),
        accepted,
        delivered,
        link_up,
        slow_client_closes: slow,
        link_queue_full: queue_full,
        write_buffered,
        pending_bytes,
        holes,
        fetches,
        gaps,
        sse_replaced_stops,
        tls_handshakes: ["full", "resumed"].map(|k| tls_vec.with_label_values(&[k])),
        tls_failures: Failure::ALL.map(|f| tls_fail_vec.with_label_values(&[f.as_str()])),
        tls_ticket_keys: ticket_keys,
        delivery_latency,
        registry,
    }
});

/// The process-wide metrics (registered on first use; `Worker::bind` touches them).
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Prometheus text of every worker metric.
pub fn render(out: &mut Vec<u8>) {
    let families = metrics().registry.gather();
    let _ = prometheus::TextEncoder::new().encode(&families, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_names() {
        metrics().accepted.inc_by(0);
        let mut out = Vec::new();
        render(&mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.contains("pushgate_connections_open{transport=\"ws\"}"),
            "{s}"
        );
        assert!(s.contains("pushgate_connections_closed_total{reason=\"slow_client\"}"));
        assert!(
            s.contains("pushgate_connections_refused_total{reason=\"connect_rate_limited\"}"),
            "{s}"
        );
        assert!(s.contains("process_resident_memory_bytes"), "{s}");
        assert!(s.contains("pushgate_link_up"));
    }
}
