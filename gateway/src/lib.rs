//! pushgate gateway: worker registry and least-loaded assignment, the publish API, the
//! per-channel message store with its directory, links to workers, dashboard and metrics.
//!
//! Thin binary, real library: `main` calls [`main_with_args`], tests and tools call [`run`]
//! with their own listener, exactly as production does.

pub mod app;
pub mod broadcast;
pub mod config;
pub mod fleet;
pub mod http;
pub mod link;
pub mod local;
pub mod metrics;
pub mod ndjson;
pub mod net;
pub mod ratelimit;
pub mod registry;
pub mod router;
pub mod runtimes;
pub mod store;
pub mod tickets;

pub use config::Config;

use anyhow::Context as _;
use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;
use store::redis::{RedisOptions, RedisStore};
use store::{AnyStore, MemoryStore, Retention, Store};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long connection and link tasks get to finish after shutdown starts.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(5);
/// Period of the store's housekeeping sweep.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Serves the API and worker links on `listener` until `shutdown`, with local workers when
/// configured; then stops accepting, closes links, stops local workers and returns.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_with(listener, Vec::new(), config, shutdown).await
}

/// [`run`], and the same API served on every `more` listener (each bound to the same address
/// with SO_REUSEPORT) by its own runtime: how `main_with_args` spreads connections over
/// threads (`runtimes.rs`). Gateway-wide tasks run on the caller's runtime.
pub async fn run_with(
    listener: tokio::net::TcpListener,
    more: Vec<runtimes::Acceptor>,
    mut config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.load_secret_files()?;
    config.validate()?;
    if config.link_key.is_none() && config.local_workers > 0 {
        // Local workers get a key of their own, so nobody else can pose as one.
        config.link_key = Some(format!("{:032x}", rand::random::<u128>()));
    }
    metrics::init();
    let addr = listener.local_addr().context("listener address")?;
    let router = Arc::new(match config.store_kind() {
        Ok(config::StoreKind::Redis(_)) => router::Router::with_parking(
            config.parked_delivery_bytes,
            Duration::from_millis(config.parked_delivery_ms),
        ),
        _ => router::Router::new(),
    });
    let store = open_store(&config, router.clone()).await?;
    let gateway_id = format!("gateway@{addr}");
    let specs = if config.local_workers > 0 {
        local::worker_specs(&config, addr)?
    } else {
        Vec::new()
    };
    let tickets =
        tickets::Tickets::new(config.ticket_rotate_secs, config.ticket_key_file.as_deref())?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(worker::tls::server_config::TlsFiles::load(cert, key)?),
        _ => None,
    };
    let app = Arc::new(app::App::new(
        config,
        store,
        router,
        gateway_id,
        shutdown.clone(),
        tickets,
        tls,
    ));
    if app.tls.is_some() || app.tickets.from_file() {
        tokio::spawn(reload_on_sighup(app.clone()));
    }
    // Keys exist before the first worker links.
    refresh_ticket_keys(&app).await;

    let sweeper = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => housekeeping(&app).await,
                    _ = app.shutdown.cancelled() => break,
                }
            }
        })
    };

    local::describe(&specs);
    let mut children = local::start(specs, shutdown.clone());

    if let Some(admin) = app.config.admin_listen {
        let l =
            net::bind_listener(admin).with_context(|| format!("binding --admin-listen {admin}"))?;
        let l = tokio::net::TcpListener::from_std(l)?;
        info!(admin = %l.local_addr()?, "admin surface (dashboard, /metrics, /v1/workers, /v1/channels) on http://{}", l.local_addr()?);
        tokio::spawn(http::server::serve(l, app.clone(), net::Plane::Admin));
    }
    let others: Vec<_> = more
        .into_iter()
        .map(|a| {
            a.runtime.spawn(http::server::serve(
                a.listener,
                app.clone(),
                net::Plane::Api,
            ))
        })
        .collect();
    http::server::serve(listener, app.clone(), net::Plane::Api).await;
    for accepting in others {
        let _ = accepting.await;
    }

    // Shutdown: no new connections; links close on the token; wait for tasks and children.
    // Connections and links on every runtime are in the one tracker.
    app.registry.close_all();
    app.tracker.close();
    if tokio::time::timeout(SHUTDOWN_DEADLINE, app.tracker.wait())
        .await
        .is_err()
    {
        warn!("some connections did not finish within {SHUTDOWN_DEADLINE:?}; dropping them");
    }
    while children.join_next().await.is_some() {}
    let _ = sweeper.await;
    Ok(())
}

/// Once a second: the store's sweep and check; a store that lost its history has every
/// worker subscribe its connections again.
async fn housekeeping(app: &app::App) {
    use std::sync::atomic::Ordering;
    app.store.sweep(store::now_ms()).await;
    let check = app.store.check().await;
    let was = app.store_healthy.swap(check.healthy, Ordering::Relaxed);
    if was != check.healthy {
        if check.healthy {
            info!("the store answers again");
        } else {
            warn!(
                "the store does not answer: publishes get 503 and /healthz says so until it does"
            );
        }
    }
    if let AnyStore::Redis(r) = &app.store {
        // The fleet registry: renew what this gateway sees, read what the others see.
        let now_ms = store::now_ms();
        let lease_ms =
            app.config.worker_timeout().as_millis() as u64 + SWEEP_EVERY.as_millis() as u64;
        let leases = app
            .registry
            .leases(tokio::time::Instant::now(), now_ms, lease_ms);
        match r.renew_workers(&leases, now_ms).await {
            Ok(fleet) => app.router.fleet.replace(fleet),
            Err(e) => tracing::debug!(error = %e, "worker registry not renewed"),
        }
    }
    refresh_ticket_keys(app).await;
    if check.history_lost {
        let workers = app.router.resubscribe_all();
        metrics::STORE_RESYNCS.inc();
        warn!(
            workers,
            "the store lost its history (restarted empty or flushed); every worker subscribes its connections again"
        );
    }
}

/// Rotates the fleet's ticket keys (agreeing on them through Redis when gateways share one
/// and have a `--link-key` to wrap them with) and tells every worker a set that changed.
async fn refresh_ticket_keys(app: &app::App) {
    let now_ms = store::now_ms();
    let now = now_ms / 1000;
    if !app.tickets.from_file() {
        if let (AnyStore::Redis(r), Some(link_key)) = (&app.store, &app.config.link_key) {
            let wrap = tickets::Wrap::new(link_key);
            match r.agree_ticket_keys(&app.tickets, &wrap, now).await {
                Ok(agreed) => {
                    app.tickets.adopt(now, agreed);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "ticket keys not agreed through Redis this time")
                }
            }
        }
        // Any period still without a key (no Redis, or it did not answer) gets one here.
        app.tickets.generate(now);
    }
    if app.tickets.due(now) {
        let frame = app.tickets.frame(now_ms);
        app.router.send_ticket_keys(&frame);
        // The gateway's own listener seals with the same keys: its API clients resume on
        // any gateway of the fleet too.
        if let (
            Some(tls),
            protocol::link::Down::TicketKeys {
                lifetime_secs,
                keys,
            },
        ) = (&app.tls, &frame)
        {
            tls.tickets()
                .install(0, *lifetime_secs, keys, std::time::Instant::now());
        }
    }
}

/// SIGHUP rereads `--tls-cert`/`--tls-key` (new handshakes get the new certificate, open
/// connections go on) and `--ticket-key-file`; a file that does not load changes nothing.
async fn reload_on_sighup(app: Arc<app::App>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot watch SIGHUP: certificates and ticket keys will not be reloaded");
        return;
    };
    loop {
        tokio::select! {
            r = hup.recv() => if r.is_none() { return },
            _ = app.shutdown.cancelled() => return,
        }
        if let Some(tls) = &app.tls {
            match tls.reload() {
                Ok(()) => info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "SIGHUP: TLS certificate not reloaded; the old one stays")
                }
            }
        }
        match app.tickets.reload() {
            Ok(true) => {
                info!("SIGHUP: ticket keys reloaded");
                refresh_ticket_keys(&app).await;
            }
            Ok(false) => {}
            Err(e) => {
                warn!(error = %format!("{e:#}"), "SIGHUP: --ticket-key-file not reloaded; the old keys stay")
            }
        }
    }
}

/// The store `--store` names, delivering through `router`.
async fn open_store(
    config: &Config,
    router: Arc<router::Router>,
) -> anyhow::Result<AnyStore<Arc<router::Router>>> {
    let retention = Retention {
        max_messages: config.retention_messages,
        max_age: config.retention_age(),
    };
    Ok(match config.store_kind()? {
        config::StoreKind::Memory => AnyStore::Memory(
            MemoryStore::new(
                retention,
                config.retention_total_bytes,
                config.max_channels,
                router,
            )
            .with_channel_meta(Duration::from_secs(config.channel_meta_secs)),
        ),
        config::StoreKind::Redis(target) => {
            let store = RedisStore::new(
                RedisOptions {
                    target,
                    prefix: config.redis_key_prefix.clone(),
                    retention,
                    channel_bytes: config.retention_channel_bytes,
                    channel_meta: Duration::from_secs(config.channel_meta_secs),
                    timeout: Duration::from_millis(config.redis_timeout_ms),
                    max_inflight: config.redis_max_inflight,
                    durable: config.redis_durable,
                },
                router,
            )?;
            // Loaded now when Redis is up; otherwise on the first call that reaches it.
            if let Err(e) = store.load_library().await {
                warn!(error = %e, "Redis is not reachable yet; publishes answer 503 until it is");
            }
            AnyStore::Redis(Box::new(store))
        }
    })
}

/// The `gateway` binary: parses flags (`args` includes the program name), sets up logging,
/// binds, and runs until SIGTERM or SIGINT.
pub fn main_with_args<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    use clap::Parser;
    let mut config = Config::try_parse_from(args).unwrap_or_else(|e| e.exit());
    worker::logging::init(config.log_format);
    config.load_secret_files()?;
    config.validate()?;
    let threads = config.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let runtimes = runtimes::Runtimes::start(threads)?;
    let (addr, listener, more) = runtimes
        .bind(config.listen)
        .with_context(|| format!("binding {}", config.listen))?;
    runtimes.block_on(async move {
        let scheme = if config.tls_cert.is_some() { "https" } else { "http" };
        info!(
            listen = %addr,
            tls = config.tls_cert.is_some(),
            local_workers = config.local_workers,
            store = %config.store,
            "gateway listening on {scheme}://{addr} (API, dashboard, /metrics, worker links)"
        );
        if config.is_open() {
            warn!("OPEN MODE: no --subscriber-secret and no --publisher-key; anyone who can reach {addr} can publish to and subscribe to any channel");
        } else if config.subscriber_secret.is_none() {
            warn!("no --subscriber-secret: subscribing is open to anyone");
        } else if config.publisher_keys.is_empty() {
            warn!("no --publisher-key: publishing is open to anyone");
        }
        match (&config.admin_key, config.admin_listen) {
            (None, Some(a)) if !a.ip().is_loopback() => warn!("ADMIN OPEN: no --admin-key; anyone who can reach {a} sees the dashboard, /metrics, /v1/workers and every channel's state"),
            (None, None) if !addr.ip().is_loopback() => warn!("no --admin-key: the dashboard, /metrics, /v1/workers and /v1/channels answer loopback clients only (403 admin_forbidden for others); set --admin-key, or --admin-listen on a private address"),
            _ => {}
        }
        if config.link_key.is_none() && config.local_workers == 0 {
            warn!("no --link-key: any host that reaches {addr} can register as a worker");
        }
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        run_with(listener, more, config, shutdown).await
    })
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop the gateway with SIGKILL");
        return;
    };
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!("{which} received; shutting down");
    shutdown.cancel();
    // A second signal means: do not wait.
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    warn!("second signal; exiting now");
    std::process::exit(130);
}
