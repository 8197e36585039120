//! The worker's side of the gateway links, on a small tokio runtime: one link to each
//! `--gateway`: dial, upgrade, Hello / Welcome, Load every second, route Down frames to loop
//! threads by `sub_id`, reconnect with backoff (100 ms doubling to 2 s).
//!
//! Subscribe, Fetch and Unsubscribe from the loop threads go out in batches (one write per
//! batch) over one link, the *control* link: whichever link holds the up queue. Deliveries
//! come over every link (each gateway sends what it publishes over its own). When a link
//! goes down, what it had in flight either way is unknown (a Subscribe not taken, a
//! Deliver a gateway committed and never sent), so every loop thread re-subscribes its
//! connections with `resume` and the position it reached, over the control link: holes are
//! filled from the store and nothing is lost.

use crate::metrics::metrics;
use crate::shared::{split_sub_id, Cmd, Shared};
use anyhow::{bail, Context};
use bytes::BytesMut;
use protocol::link::{split_frame, Down, Hello, Up};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long the link's unacknowledged bytes may wait before the kernel ends it.
const LINK_USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const LOAD_EVERY: Duration = Duration::from_secs(1);
/// Read buffer of an idle link (a small-object size for the allocator, see [`reader`]).
const IDLE_READ_BUF: usize = 8 * 1024;
/// Most Up frames gathered into one write.
const BATCH: usize = 4096;
/// Least time between two link writes while frames keep coming (see [`writer`]).
const LINGER: Duration = Duration::from_millis(1);

/// What a link needs to introduce the worker.
#[derive(Clone)]
pub(crate) struct LinkSetup {
    pub id: String,
    /// Random per worker process: every gateway names this process the same way in a
    /// shared store's directory.
    pub incarnation: u64,
    pub addrs: Vec<String>,
    pub tls_addrs: Vec<String>,
    pub host: String,
    pub port: u16,
    /// Sent as `Authorization: Bearer <key>` on the upgrade.
    pub link_key: Option<String>,
    /// This link's place in `--gateway` (whose ticket keys seal first).
    pub index: usize,
    /// For an `https://` gateway: the TLS client and the name its certificate must carry.
    pub tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

/// The up queue from the loop threads: held by the control link's writer.
type UpQueue = tokio::sync::Mutex<mpsc::Receiver<Up>>;

/// Keeps a link to every gateway up until `shutdown` is cancelled.
pub(crate) async fn run(
    shared: Arc<Shared>,
    up_rx: mpsc::Receiver<Up>,
    setups: Vec<LinkSetup>,
    shutdown: CancellationToken,
) {
    let up = Arc::new(tokio::sync::Mutex::new(up_rx));
    let links = setups.into_iter().map(|setup| {
        let (shared, up, shutdown) = (shared.clone(), up.clone(), shutdown.clone());
        async move { keep_up(&shared, &up, &setup, &shutdown).await }
    });
    futures_util::future::join_all(links).await;
}

/// Keeps one gateway's link up until `shutdown`.
async fn keep_up(
    shared: &Arc<Shared>,
    up: &UpQueue,
    setup: &LinkSetup,
    shutdown: &CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let mut failing = Failing::default();
    loop {
        let mut welcomed = false;
        let res = tokio::select! {
            r = session(shared, up, setup, &mut welcomed) => r,
            _ = shutdown.cancelled() => Ok(()),
        };
        if welcomed {
            link_down(shared);
        }
        if shutdown.is_cancelled() {
            break;
        }
        match &res {
            Err(e) if welcomed => tracing::warn!(
                gateway = %format!("{}:{}", setup.host, setup.port),
                error = %format!("{e:#}"),
                "gateway link lost; reconnecting"
            ),
            Err(e) => {
                let cause = format!("{e:#}");
                match failing.count(&cause, std::time::Instant::now()) {
                    Some(n) => tracing::warn!(
                        gateway = %format!("{}:{}", setup.host, setup.port),
                        error = %cause,
                        failed = n,
                        "gateway link attempt failed; retrying every {} s at most (no clients are taken until a link is up)",
                        BACKOFF_MAX.as_secs()
                    ),
                    None => tracing::debug!(error = %cause, "gateway link attempt failed"),
                }
            }
            Ok(()) => {}
        }
        if welcomed {
            backoff = BACKOFF_MIN;
            failing = Failing::default();
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => break,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Failed link attempts in a row: a cause is said at `warn` when it first occurs (or
/// changes) and then at most every [`SAY_AGAIN`] while it lasts, with the attempts since.
#[derive(Default)]
struct Failing {
    cause: String,
    said: Option<std::time::Instant>,
    since: u64,
}

/// How often an unchanged cause of failing link attempts is said again.
const SAY_AGAIN: Duration = Duration::from_secs(60);

impl Failing {
    /// Counts one failed attempt; `Some(n)` when it is to be said now (`n` attempts since
    /// it was last said, this one included).
    fn count(&mut self, cause: &str, now: std::time::Instant) -> Option<u64> {
        self.since += 1;
        let due = self.cause != cause
            || self
                .said
                .is_none_or(|at| now.duration_since(at) >= SAY_AGAIN);
        if !due {
            return None;
        }
        self.cause = cause.to_owned();
        self.said = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

/// A welcomed link is up: counted, and while any is, clients are taken.
fn link_up(shared: &Shared) {
    let n = shared.links_up.fetch_add(1, Ordering::AcqRel) + 1;
    shared.link_up.store(true, Ordering::Release);
    metrics().link_up.set(n as i64);
}

/// A welcomed link went down: whatever it carried either way may be lost, so every
/// connection is subscribed again (over the control link, once there is one).
fn link_down(shared: &Shared) {
    let n = shared.links_up.fetch_sub(1, Ordering::AcqRel) - 1;
    shared.link_up.store(n > 0, Ordering::Release);
    metrics().link_up.set(n as i64);
    resubscribe_everything(shared);
}

/// Every loop thread re-sends `Subscribe{resume}` for each of its connections.
fn resubscribe_everything(shared: &Shared) {
    for port in &shared.ports {
        port.push(&mut vec![Cmd::LinkUp]);
    }
}

/// One link: connect, upgrade, Hello/Welcome, then pump both ways until it fails.
async fn session(
    shared: &Arc<Shared>,
    up: &UpQueue,
    setup: &LinkSetup,
    welcomed: &mut bool,
) -> anyhow::Result<()> {
    let mut stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((setup.host.as_str(), setup.port)),
    )
    .await
    .context("connect timed out")?
    .with_context(|| format!("connect to {}:{}", setup.host, setup.port))?;
    let _ = stream.set_nodelay(true);
    // A route that stops acknowledging (a dead host, a black hole) ends the link once the
    // heartbeats sent into it stay unacknowledged this long (they go every second), instead
    // of the kernel's retransmission time of minutes. A route that acknowledges and drops
    // is the gateway's to notice: it closes a link silent for twice its worker timeout.
    let _ = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(LINK_USER_TIMEOUT));
    match &setup.tls {
        None => {
            let buf = introduce(shared, setup, &mut stream, welcomed).await?;
            let (rd, wr) = stream.into_split();
            pump(shared, up, setup, rd, wr, buf).await
        }
        Some((connector, name)) => {
            let mut stream =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name.clone(), stream))
                    .await
                    .context("TLS handshake with the gateway timed out")?
                    .context("TLS handshake with the gateway")?;
            let buf = introduce(shared, setup, &mut stream, welcomed).await?;
            let (rd, wr) = tokio::io::split(stream);
            pump(shared, up, setup, rd, wr, buf).await
        }
    }
}

/// The upgrade, Hello and Welcome on a fresh connection; what was read past the Welcome.
async fn introduce<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    setup: &LinkSetup,
    stream: &mut S,
    welcomed: &mut bool,
) -> anyhow::Result<BytesMut> {
    let host = if setup.host.contains(':') {
        format!("[{}]:{}", setup.host, setup.port)
    } else {
        format!("{}:{}", setup.host, setup.port)
    };
    let req = protocol::link::upgrade_request(&host, setup.link_key.as_deref());
    stream.write_all(req.as_bytes()).await?;
    stream.flush().await?;

    let mut buf = BytesMut::with_capacity(64 * 1024);
    let welcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        // Response head.
        loop {
            if let Some(end) = protocol::link::response_head_len(&buf) {
                let head = buf.split_to(end);
                if let Err(line) = protocol::link::check_upgrade_response(&head) {
                    if line.starts_with("HTTP/1.1 401") {
                        bail!(
                            "the gateway refused this worker's link key ({line}): --link-key must be the gateway's"
                        );
                    }
                    if line.starts_with("HTTP/1.1 426") {
                        bail!(
                            "the gateway speaks another link protocol version ({line}; this worker speaks {}): run the same pushgate release on both",
                            protocol::link::LINK_UPGRADE
                        );
                    }
                    bail!("gateway refused the link upgrade: {line}");
                }
                break;
            }
            if buf.len() > 16 * 1024 {
                bail!("gateway's upgrade response is too large");
            }
            if stream.read_buf(&mut buf).await? == 0 {
                bail!("gateway closed during the upgrade");
            }
        }
        let hello = Up::Hello(Hello {
            id: setup.id.clone(),
            incarnation: setup.incarnation,
            addrs: setup.addrs.clone(),
            capacity: shared.capacity as u64,
            connections: shared.connections() as u64,
            tls_addrs: setup.tls_addrs.clone(),
            wants_ticket_keys: shared.tls.is_some(),
        });
        let mut out = Vec::new();
        hello.encode(&mut out);
        stream.write_all(&out).await?;
        stream.flush().await?;
        loop {
            if let Some(frame) = split_frame(&mut buf)? {
                match Down::decode(frame)? {
                    Down::Welcome { gateway_id } => return Ok(gateway_id),
                    other => bail!("expected Welcome, got {other:?}"),
                }
            }
            if stream.read_buf(&mut buf).await? == 0 {
                bail!("gateway closed before Welcome");
            }
        }
    })
    .await
    .context("link handshake timed out")??;

    *welcomed = true;
    link_up(shared);
    tracing::info!(gateway = %welcome, tls = setup.tls.is_some(), "gateway link up");
    Ok(buf)
}

/// Both directions of a welcomed link, until either fails.
async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    up: &UpQueue,
    setup: &LinkSetup,
    rd: R,
    wr: W,
    buf: BytesMut,
) -> anyhow::Result<()> {
    tokio::select! {
        r = reader(shared, rd, buf, setup.index) => r,
        r = writer(shared, wr, up) => r,
    }
}

/// Splits Down frames out of the stream and hands them to their loop threads, one inbox
/// append and at most one wake-up per thread per read.
async fn reader<R: AsyncRead + Unpin>(
    shared: &Arc<Shared>,
    mut rd: R,
    mut buf: BytesMut,
    index: usize,
) -> anyhow::Result<()> {
    let mut per_thread: Vec<Vec<Cmd>> = (0..shared.ports.len()).map(|_| Vec::new()).collect();
    // The last read took less than there was room for: the socket had nothing more.
    let mut drained = false;
    loop {
        while let Some(frame) = split_frame(&mut buf)? {
            let down = Down::decode(frame)?;
            if down == Down::ResubscribeAll {
                // The gateway's store lost its directory: as after a link came back.
                for cmds in per_thread.iter_mut() {
                    cmds.push(Cmd::LinkUp);
                }
                continue;
            }
            if let Down::TicketKeys {
                lifetime_secs,
                keys,
            } = &down
            {
                if let Some(files) = &shared.tls {
                    files
                        .tickets()
                        .install(index, *lifetime_secs, keys, std::time::Instant::now());
                    tracing::debug!(keys = keys.len(), "ticket keys from the gateway");
                }
                continue;
            }
            let Some(id) = down.sub_id() else {
                continue;
            };
            let (thread, _, _) = split_sub_id(id);
            if let Some(v) = per_thread.get_mut(thread) {
                v.push(Cmd::Down(down));
            }
        }
        for (port, cmds) in shared.ports.iter().zip(per_thread.iter_mut()) {
            port.push(cmds);
        }
        if buf.is_empty() && drained {
            // Nothing is waiting: read into a small buffer, so that the large one a burst
            // used is not kept alive while the link is idle (with mimalloc a live 64 KiB
            // block keeps its whole 512 KiB page resident).
            if buf.capacity() > IDLE_READ_BUF {
                buf = BytesMut::with_capacity(IDLE_READ_BUF);
            }
        } else if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        let room = buf.capacity() - buf.len();
        let n = rd.read_buf(&mut buf).await?;
        if n == 0 {
            bail!("gateway closed the link");
        }
        drained = n < room;
    }
}

/// Drains queued Up frames into one buffer per write; sends Load every second.
///
/// Under a connect burst every client is one `Subscribe`; written one by one that is a
/// send (and a wake-up of the gateway) per connection. So a write that follows the previous
/// one within [`LINGER`] first waits out the rest of it, and takes everything queued
/// meanwhile: at most ~1,000 link writes a second however fast clients come, and no wait
/// at all when the link is quiet.
async fn writer<W: AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    mut wr: W,
    up: &UpQueue,
) -> anyhow::Result<()> {
    let mut out = Vec::with_capacity(1024);
    let mut load = tokio::time::interval(LOAD_EVERY);
    load.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Until this link holds the up queue, it only reports load.
    let mut up_rx = loop {
        tokio::select! {
            q = up.lock() => break q,
            _ = load.tick() => {
                Up::Load { connections: shared.connections() as u64 }.encode(&mut out);
                wr.write_all(&out).await?;
                wr.flush().await?;
                out.clear();
            }
        }
    };
    // What was queued for a link that is gone is moot: every connection is subscribed
    // again now, over this one.
    while up_rx.try_recv().is_ok() {}
    resubscribe_everything(shared);
    let mut batch = Vec::with_capacity(BATCH);
    let mut last_write = tokio::time::Instant::now() - LINGER;
    loop {
        tokio::select! {
            n = up_rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    // Every sender is gone: the worker is stopping.
                    return Ok(());
                }
                for up in batch.drain(..) {
                    up.encode(&mut out);
                }
            }
            _ = load.tick() => {
                Up::Load { connections: shared.connections() as u64 }.encode(&mut out);
            }
        }
        let due = last_write + LINGER;
        if tokio::time::Instant::now() < due {
            tokio::time::sleep_until(due).await;
            while batch.len() < BATCH {
                match up_rx.try_recv() {
                    Ok(up) => batch.push(up),
                    Err(_) => break,
                }
            }
            for up in batch.drain(..) {
                up.encode(&mut out);
            }
        }
        wr.write_all(&out).await?;
        // A TLS link keeps what the socket did not take inside the session until flushed.
        wr.flush().await?;
        last_write = tokio::time::Instant::now();
        if out.capacity() > 1 << 20 {
            out = Vec::with_capacity(64 * 1024);
        } else {
            out.clear();
        }
    }
}

#[cfg(test)]
mod failing_tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_cause_is_said_once_then_every_minute_and_again_when_it_changes() {
        let mut f = Failing::default();
        let t0 = Instant::now();
        assert_eq!(f.count("connect refused", t0), Some(1));
        for i in 1..20 {
            assert_eq!(
                f.count("connect refused", t0 + Duration::from_secs(2 * i)),
                None
            );
        }
        assert_eq!(f.count("link key", t0 + Duration::from_secs(41)), Some(20));
        assert_eq!(f.count("link key", t0 + Duration::from_secs(43)), None);
        assert_eq!(
            f.count("link key", t0 + Duration::from_secs(41) + SAY_AGAIN),
            Some(2)
        );
    }
}
