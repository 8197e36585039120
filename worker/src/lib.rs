//! pushgate worker library: binds the client listeners, runs one mio event loop per
//! thread and the link to the gateway, and stops gracefully on a cancellation token.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use clap::Parser;
//! let config = worker::Config::parse_from(["worker", "--listen", "127.0.0.1:0"]);
//! let worker = worker::Worker::bind(config)?;
//! println!("listening on {:?}", worker.local_addrs());
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let handle = worker.start(shutdown.clone());
//! shutdown.cancel();
//! handle.wait();
//! # Ok(()) }
//! ```

pub mod config;
mod event_loop;
pub mod http1;
mod link;
pub mod logging;
pub mod metrics;
pub mod poll;
pub mod session;
mod shared;
pub mod sockets;
pub mod sse;
pub mod tls;
mod trim;
pub mod ws;

pub use config::Config;

use anyhow::Context;
use event_loop::{EventLoop, LoopSetup, WAKER};
use protocol::ratelimit::RateLimiter;
use shared::{Shared, ThreadPort};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A worker whose sockets are bound but whose threads are not running yet.
pub struct Worker {
    shared: Arc<Shared>,
    setups: Vec<LoopSetup>,
    up_rx: mpsc::Receiver<protocol::link::Up>,
    addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    id: String,
    /// The TLS client of `https://` gateway links.
    link_tls: Option<Arc<rustls::ClientConfig>>,
}

/// The running worker's threads.
pub struct WorkerHandle {
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Worker {
    /// Reads the secret files, validates the config and binds every listener (one
    /// SO_REUSEPORT socket per address per loop thread; port 0 is resolved once and
    /// shared). Nothing runs yet.
    pub fn bind(mut config: Config) -> anyhow::Result<Worker> {
        config.load_secret_files()?;
        config.validate()?;
        let any_tls = config
            .gateway
            .iter()
            .any(|g| config::gateway_target(g).is_ok_and(|(_, _, tls)| tls));
        let link_tls = if any_tls {
            Some(tls::client::link_client_config(
                config.gateway_ca.as_deref(),
            )?)
        } else {
            None
        };
        let threads = config.threads();
        let sock_opts = sockets::SocketOptions {
            backlog: config.backlog,
            recv_buffer: config.socket_recv_buffer,
            send_buffer: config.socket_send_buffer,
            keepalive_idle: Duration::from_secs(
                (config.ping_interval_secs as u64 * 3).clamp(10, 7200),
            ),
        };
        let mut setups = Vec::with_capacity(threads);
        let mut ports = Vec::with_capacity(threads);
        for _ in 0..threads {
            let poll = mio::Poll::new().context("create poll")?;
            let waker = mio::Waker::new(poll.registry(), WAKER).context("create waker")?;
            ports.push(ThreadPort {
                inbox: Mutex::new(Vec::new()),
                waker,
            });
            setups.push(LoopSetup {
                poll,
                listeners: Vec::new(),
            });
        }
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) if !config.listen_tls.is_empty() => {
                Some(tls::server_config::TlsFiles::load(cert, key)?)
            }
            _ => None,
        };
        let (mut addrs, mut tls_addrs) = (Vec::new(), Vec::new());
        for (addr, is_tls) in config.listeners() {
            let (actual, listeners) = sockets::bind_group(addr, threads, &sock_opts)
                .with_context(|| format!("bind {addr}"))?;
            if is_tls {
                tls_addrs.push(actual);
            } else {
                addrs.push(actual);
            }
            for (setup, l) in setups.iter_mut().zip(listeners) {
                setup.listeners.push((l, is_tls));
            }
        }
        let first = addrs.first().or(tls_addrs.first()).expect("a listener");
        let id = config
            .id
            .clone()
            .unwrap_or_else(|| format!("worker-{first}-{}", std::process::id()));
        let rate = config.connect_rate_per_ip;
        let connect_rate = (rate > 0.0).then(|| {
            let burst = rate * config.connect_burst_secs;
            RateLimiter::new(rate, burst, config.rate_limit_entries)
        });
        let (up_tx, up_rx) = mpsc::channel(config.link_queue);
        let _ = metrics::metrics();
        let shared = Arc::new(Shared {
            capacity: config.capacity(),
            secret: config
                .subscriber_secret
                .as_ref()
                .map(|s| s.as_bytes().to_vec()),
            any_origin: config.any_origin(),
            config,
            start: Instant::now(),
            open: AtomicUsize::new(0),
            link_up: AtomicBool::new(false),
            links_up: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            ports,
            up_tx,
            link_trim: AtomicBool::new(false),
            per_ip: Default::default(),
            connect_rate,
            tls,
        });
        Ok(Worker {
            shared,
            setups,
            up_rx,
            addrs,
            tls_addrs,
            id,
            link_tls,
        })
    }

    /// The bound plain client addresses (port 0 resolved), in `--listen` order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// The bound TLS client addresses (port 0 resolved), in `--listen-tls` order.
    pub fn local_tls_addrs(&self) -> Vec<SocketAddr> {
        self.tls_addrs.clone()
    }

    /// Addresses as clients are told to dial them: `--advertise` in place of the bound IP.
    fn advertised(&self, addrs: &[SocketAddr]) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(addrs.len());
        for a in addrs {
            let s = match &self.shared.config.advertise {
                Some(host) if host.contains(':') && !host.starts_with('[') => {
                    format!("[{host}]:{}", a.port())
                }
                Some(host) => format!("{host}:{}", a.port()),
                None => a.to_string(),
            };
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }

    /// The id this worker registers with.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Starts the loop threads and the link thread. Cancelling `shutdown` drains: no new
    /// connections, WebSockets get close 1001, held polls are answered, SSE streams end,
    /// pending output gets up to 2 s.
    pub fn start(self, shutdown: CancellationToken) -> WorkerHandle {
        trim::configure();
        if self.shared.secret.is_none() {
            tracing::warn!(
                "NO --subscriber-secret: every client may subscribe to any channel without a token (open mode)"
            );
        }
        let mut threads = Vec::new();
        let (addrs, tls_addrs) = (
            self.advertised(&self.addrs),
            self.advertised(&self.tls_addrs),
        );
        for (i, setup) in self.setups.into_iter().enumerate() {
            let lp = EventLoop::new(i, self.shared.clone(), setup);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("pushgate-loop-{i}"))
                    .spawn(move || lp.run())
                    .expect("spawn loop thread"),
            );
        }
        let incarnation = rand::random::<u64>() | 1;
        let setups: Vec<link::LinkSetup> = self
            .shared
            .config
            .gateway
            .iter()
            .enumerate()
            .map(|(index, g)| {
                let (host, port, tls) = config::gateway_target(g).expect("validated in bind");
                let tls = tls.then(|| {
                    let name = tls::client::server_name(
                        &host,
                        self.shared.config.gateway_tls_name.as_deref(),
                    )
                    .expect("validated in bind");
                    let config = self.link_tls.clone().expect("made in bind");
                    (tokio_rustls::TlsConnector::from(config), name)
                });
                link::LinkSetup {
                    tls,
                    id: self.id.clone(),
                    incarnation,
                    addrs: addrs.clone(),
                    tls_addrs: tls_addrs.clone(),
                    host,
                    port,
                    link_key: self.shared.config.link_key.clone(),
                    index,
                }
            })
            .collect();
        let shared = self.shared;
        let up_rx = self.up_rx;
        threads.push(
            std::thread::Builder::new()
                .name("pushgate-link".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("link runtime");
                    rt.spawn(link_trim(shared.clone()));
                    if shared.tls.is_some() {
                        rt.spawn(reload_on_sighup(shared.clone()));
                        rt.spawn(prune_ticket_keys(shared.clone()));
                    }
                    rt.block_on(link::run(shared.clone(), up_rx, setups, shutdown.clone()));
                    shared.begin_shutdown();
                })
                .expect("spawn link thread"),
        );
        WorkerHandle { threads }
    }
}

/// SIGHUP rereads `--tls-cert` and `--tls-key`: new handshakes get the new certificate,
/// open connections keep their sessions; a file that does not load leaves the old one.
async fn reload_on_sighup(shared: Arc<Shared>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP: the TLS certificate will not be reloaded");
        return;
    };
    while hup.recv().await.is_some() {
        let Some(files) = &shared.tls else { return };
        match files.reload() {
            Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "SIGHUP: TLS certificate not reloaded; the old one stays")
            }
        }
    }
}

/// Erases fleet ticket keys whose time is up, once a second (a key goes on time even if
/// its gateway is unreachable and no handshake touches it).
async fn prune_ticket_keys(shared: Arc<Shared>) {
    let Some(files) = &shared.tls else { return };
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        files.tickets().prune(std::time::Instant::now());
        metrics::metrics()
            .tls_ticket_keys
            .set(files.tickets().key_count() as i64);
    }
}

/// The link thread's share of `trim`: it collects while loop threads report work.
async fn link_trim(shared: Arc<Shared>) {
    let mut trim = trim::Trim::default();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if shared
            .link_trim
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            trim.busy();
        }
        trim.second();
    }
}

impl WorkerHandle {
    /// Blocks until every worker thread has ended (after the shutdown token was cancelled).
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The worker binary: parse flags (`args[0]` is the program name), set up logging, bind,
/// start, and drain on SIGTERM or SIGINT.
pub fn main_with_args<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let config = match Config::parse_from_args(args) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    logging::init(config.log_format);
    let gateway = config.gateway.join(",");
    let threads = config.threads();
    let worker = Worker::bind(config)?;
    tracing::info!(
        id = worker.id(),
        listen = ?worker.local_addrs(),
        listen_tls = ?worker.local_tls_addrs(),
        gateway = %gateway,
        threads,
        capacity = worker.shared.capacity,
        "pushgate worker listening"
    );
    let shutdown = CancellationToken::new();
    let handle = worker.start(shutdown.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("signal runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
        }
        anyhow::Ok(())
    })?;
    shutdown.cancel();
    handle.wait();
    tracing::info!("worker stopped");
    Ok(())
}
