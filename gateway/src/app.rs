//! The gateway's shared state: configuration, store, worker registry, the router the store
//! delivers through, the CORS settings of the endpoint groups, and the shutdown wiring
//! every task watches.

use crate::config::Config;
use crate::http::cors::Cors;
use crate::ratelimit::PublishLimits;
use crate::registry::Registry;
use crate::router::Router;
use crate::store::AnyStore;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared state of the gateway: configuration, store, registry, shutdown wiring.
pub struct App {
    pub config: Config,
    pub store: AnyStore<Arc<Router>>,
    pub registry: Registry,
    /// The worker links deliveries go out on (the store holds the same router).
    pub router: Arc<Router>,
    /// Sent to workers in `Welcome`.
    pub gateway_id: String,
    pub shutdown: CancellationToken,
    /// Connection and link tasks, awaited (with a deadline) at shutdown.
    pub tracker: TaskTracker,
    /// CORS of `/v1/assign`.
    pub subscribe_cors: Cors,
    /// CORS of the publish endpoints, when configured.
    pub publish_cors: Option<Cors>,
    /// The store answered its last check (`/healthz`).
    pub store_healthy: AtomicBool,
    /// `--publish-rate-per-ip`, `--publish-rate-per-key`.
    pub limits: PublishLimits,
    /// `--max-inflight-body-bytes`, in KiB permits.
    pub body_budget: tokio::sync::Semaphore,
    /// The fleet's TLS session-ticket keys, handed to workers over their links.
    pub tickets: crate::tickets::Tickets,
    /// `--tls-cert`/`--tls-key`: the listener speaks TLS (API and links); reloaded on SIGHUP.
    pub tls: Option<worker::tls::server_config::TlsFiles>,
    /// Worker link attempts refused, by reason (said at `warn`, at most once a minute each).
    pub link_refusals: crate::link::refusals::LinkRefusals,
    /// `/v1/stats`' last round (see `http::stats`).
    pub stats_cache: tokio::sync::Mutex<Option<(tokio::time::Instant, bytes::Bytes)>>,
}

impl App {
    pub fn new(
        config: Config,
        store: AnyStore<Arc<Router>>,
        router: Arc<Router>,
        gateway_id: String,
        shutdown: CancellationToken,
        tickets: crate::tickets::Tickets,
        tls: Option<worker::tls::server_config::TlsFiles>,
    ) -> Self {
        let registry = Registry::new(config.worker_timeout());
        let body_budget = tokio::sync::Semaphore::new(
            config_kib(&config).min(tokio::sync::Semaphore::MAX_PERMITS),
        );
        let limits = PublishLimits::new(
            config.publish_rate_per_ip,
            config.publish_rate_per_key,
            config.publish_burst_secs,
            config.rate_limit_entries,
        );
        let subscribe_cors = Cors::new(&config.allow_origins, "GET, OPTIONS");
        let publish_cors = (!config.publish_allow_origins.is_empty())
            .then(|| Cors::new(&config.publish_allow_origins, "POST, OPTIONS"));
        App {
            config,
            store,
            registry,
            router,
            gateway_id,
            shutdown,
            tracker: TaskTracker::new(),
            link_refusals: Default::default(),
            stats_cache: Default::default(),
            subscribe_cors,
            publish_cors,
            store_healthy: AtomicBool::new(true),
            limits,
            body_budget,
            tickets,
            tls,
        }
    }
}

/// `--max-inflight-body-bytes` in KiB (the body budget's unit).
fn config_kib(config: &Config) -> usize {
    config.max_inflight_body_bytes.div_ceil(1024)
}
