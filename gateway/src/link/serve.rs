//! One upgraded worker link, run to its end. The worker says `Hello`, the gateway
//! registers it and answers `Welcome`; then `Load` heartbeats, `Subscribe`, `Fetch` and
//! `Unsubscribe` come up, `Backlog`, `Deliver` and `Kick` go down.
//!
//! Outbound frames go through the link's bounded queue ([`LinkHandle`]); one writer drains
//! it in batches (`recv_many`) into one reused buffer, one `write_all` per batch. On a
//! plain TCP link a frame sent while the writer is idle is written by the sending task
//! itself ([`super::handle::Direct`]): no task is woken per message.

use super::handle::LinkHandle;
use crate::app::App;
use crate::metrics;
use crate::store::{now_ms, Holder, Start, Store};
use bytes::BytesMut;
use protocol::link::{split_frame, Down, KickReason, Up};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info};

/// How long a new link may take to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most frames drained into one write.
const BATCH_FRAMES: usize = 4096;
/// Write buffer kept between batches; a larger one (a big backlog) is released after use.
const KEEP_BUFFER: usize = 1024 * 1024;

/// Why a link ended (for the log line).
#[derive(Debug, thiserror::Error)]
enum LinkEnd {
    #[error("worker closed the link")]
    Eof,
    #[error("link closed by the gateway")]
    Closed,
    #[error("gateway shutting down")]
    Shutdown,
    #[error("no Hello within {0:?}")]
    HelloTimeout(Duration),
    #[error("first frame was not Hello")]
    NoHello,
    #[error("nothing from the worker for {0:?} (a dead route: it reconnects and resubscribes)")]
    Silent(Duration),
    #[error("bad frame: {0}")]
    Frame(#[from] protocol::link::LinkError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Where a link comes from: what decides whether ticket keys may cross it.
#[derive(Debug, Clone, Copy)]
pub struct LinkPeer {
    pub ip: std::net::IpAddr,
    /// The link runs over the gateway's TLS listener.
    pub tls: bool,
}

impl LinkPeer {
    /// Ticket keys cross a link on loopback, or a TLS link that the link key
    /// authenticated; never a plain link between hosts.
    pub fn may_carry_ticket_keys(&self, link_key_set: bool) -> bool {
        self.ip.is_loopback() || (self.tls && link_key_set)
    }
}

/// Runs one upgraded link connection to its end. `read_buf` holds bytes the HTTP layer
/// had already read past the upgrade request.
pub async fn serve_link<R, W>(
    app: Arc<App>,
    peer: LinkPeer,
    mut reader: R,
    writer: W,
    read_buf: BytesMut,
    direct: Option<Arc<tokio::net::TcpStream>>,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let mut buf = read_buf;
    let hello = tokio::select! {
        r = tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut reader, &mut buf, None)) => match r {
            Err(_) => Err(LinkEnd::HelloTimeout(HELLO_TIMEOUT)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(frame)) => match Up::decode(frame) {
                Ok(Up::Hello(h)) => Ok(h),
                Ok(_) => Err(LinkEnd::NoHello),
                Err(e) => Err(e.into()),
            },
        },
        _ = app.shutdown.cancelled() => Err(LinkEnd::Shutdown),
    };
    let hello = match hello {
        Ok(h) => h,
        Err(e) => {
            debug!(error = %e, "worker link refused before Hello");
            return;
        }
    };
    let queue = app.config.link_queue;
    let shared_store = app.store.is_shared();
    let mut rx_slot = None;
    let link = app
        .registry
        .register(&hello, Instant::now(), |slot, generation, id| {
            let incarnation = if shared_store {
                hello.incarnation
            } else {
                generation
            };
            let (link, rx) = LinkHandle::with_incarnation(id, slot, generation, incarnation, queue);
            rx_slot = Some(rx);
            link
        });
    let rx = rx_slot.expect("register calls make_link");
    if let Some(socket) = direct {
        link.set_direct(socket);
    }
    // Welcome first: the worker takes nothing else before it, and attaching sends what
    // was parked for this worker.
    link.send(Down::Welcome {
        gateway_id: app.gateway_id.clone(),
    });
    if hello.wants_ticket_keys {
        if peer.may_carry_ticket_keys(app.config.link_key.is_some()) {
            link.gets_ticket_keys
                .store(true, std::sync::atomic::Ordering::Relaxed);
            link.send(app.tickets.frame(now_ms()));
        } else {
            tracing::warn!(
                worker = %hello.id,
                peer = %peer.ip,
                "worker link is plain (or has no --link-key) and not on loopback: no fleet ticket keys for it (serve the gateway with --tls-cert and set --link-key); its TLS clients resume only with it"
            );
        }
    }
    app.router.attach(&link);
    metrics::LINKS_OPEN.inc();
    info!(
        worker = %hello.id,
        generation = link.generation,
        addrs = ?hello.addrs,
        capacity = hello.capacity,
        "worker link up"
    );

    // Store work (subscribe, fetch, unsubscribe) runs in order beside the reader, so a
    // slow store call does not hold up the worker's heartbeats behind it.
    let (ops_tx, ops_rx) = mpsc::channel(STORE_OPS_QUEUE);
    let end = tokio::select! {
        r = read_loop(&app, &link, &mut reader, &mut buf, ops_tx) => r,
        r = store_loop(&app, &link, ops_rx) => r,
        r = write_loop(&link, rx, writer) => r,
        _ = link.closed() => LinkEnd::Closed,
        _ = app.shutdown.cancelled() => LinkEnd::Shutdown,
    };
    app.router.detach(&link);
    app.registry.disconnect(&link);
    if let Some(d) = link.direct() {
        d.shutdown();
    }
    metrics::LINKS_OPEN.dec();
    info!(worker = %hello.id, generation = link.generation, reason = %end, "worker link down");
}

/// Reads one frame body, buffering as needed. With `silence`, a read that waits longer
/// than that for a byte ends the link (frames already buffered need no timer).
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    silence: Option<Duration>,
) -> Result<bytes::Bytes, LinkEnd> {
    loop {
        if let Some(frame) = split_frame(buf)? {
            return Ok(frame);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        let n = match silence {
            Some(d) => tokio::time::timeout(d, reader.read_buf(buf))
                .await
                .map_err(|_| LinkEnd::Silent(d))??,
            None => reader.read_buf(buf).await?,
        };
        if n == 0 {
            return Err(LinkEnd::Eof);
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    app: &App,
    link: &Arc<LinkHandle>,
    reader: &mut R,
    buf: &mut BytesMut,
    ops: mpsc::Sender<Up>,
) -> LinkEnd {
    // A worker sends `Load` every second; twice the stale timeout of silence is a route
    // that drops what it is given (deliveries sent into it are lost to the worker), so the
    // link is closed: the worker reconnects and resubscribes every connection with
    // `since`, and what it missed comes from the store.
    let silence = app.config.worker_timeout() * 2;
    loop {
        let frame = match read_frame(reader, buf, Some(silence)).await {
            Ok(f) => f,
            Err(e) => return e,
        };
        let up = match Up::decode(frame) {
            Ok(u) => u,
            Err(e) => return e.into(),
        };
        match up {
            Up::Load { connections } => {
                app.registry.heartbeat(link, connections, Instant::now());
            }
            Up::Hello(_) => {
                debug!(worker = %link.worker_id, "repeated Hello on a link; ignored");
            }
            // A full queue holds the reader: backpressure on the worker, as before.
            other => {
                if ops.send(other).await.is_err() {
                    return LinkEnd::Closed;
                }
            }
        }
    }
}

/// The link's store work, one frame at a time in the order the worker sent them.
async fn store_loop(app: &App, link: &Arc<LinkHandle>, mut ops: mpsc::Receiver<Up>) -> LinkEnd {
    // Room kept free for deliveries while backlogs are queued.
    let room = app.config.link_queue / 4;
    while let Some(up) = ops.recv().await {
        let now = now_ms();
        match up {
            Up::Subscribe {
                sub_id,
                since,
                epoch,
                resume,
                max_bytes,
                channel,
                opened_us,
            } => {
                if protocol::validate_channel(&channel).is_err() {
                    debug!(worker = %link.worker_id, "subscribe for an invalid channel name");
                    link.send(Down::Kick {
                        sub_id,
                        reason: KickReason::Refused,
                    });
                    continue;
                }
                link.room(room).await;
                let holder = Holder {
                    worker: link.worker.clone(),
                    sub_id,
                };
                let start = Start {
                    since,
                    epoch,
                    max_bytes,
                    resume,
                    opened_us,
                };
                if let Err(e) = subscribe_with_retry(app, &channel, holder, start).await {
                    debug!(worker = %link.worker_id, error = %e, "subscribe refused");
                    link.send(Down::Kick {
                        sub_id,
                        reason: KickReason::Refused,
                    });
                }
            }
            Up::Fetch {
                sub_id,
                since,
                epoch,
                max_bytes,
                channel,
            } => {
                if protocol::validate_channel(&channel).is_err() {
                    continue;
                }
                link.room(room).await;
                match app
                    .store
                    .fetch(&channel, since, epoch, max_bytes, now)
                    .await
                {
                    // The page goes to the asking subscription on this link; the directory
                    // is not consulted.
                    Ok(page) => {
                        link.send_backlog(sub_id, page);
                    }
                    Err(e) => debug!(worker = %link.worker_id, error = %e, "fetch refused"),
                }
            }
            Up::Unsubscribe { sub_id, channel } => {
                let holder = Holder {
                    worker: link.worker.clone(),
                    sub_id,
                };
                app.store.unsubscribe(&channel, &holder, now).await;
            }
            Up::Load { .. } | Up::Hello(_) => {}
        }
    }
    LinkEnd::Closed
}

/// Store frames a link may have queued behind a slow store call before its reader waits.
const STORE_OPS_QUEUE: usize = 1024;

/// A subscribe that fails fast because the store is briefly unavailable (a cluster that
/// is not whole again yet, a node still loading) is tried again a few times, in order on
/// this link, before the worker is told to refuse it: a store that comes back must not
/// cost its connected clients a disconnect. Slow failures (timeouts) are not retried.
async fn subscribe_with_retry(
    app: &App,
    channel: &str,
    holder: Holder,
    start: Start,
) -> Result<(), crate::store::StoreError> {
    let began = Instant::now();
    let mut tries = 0;
    loop {
        match app
            .store
            .subscribe(channel, holder.clone(), start, now_ms())
            .await
        {
            Err(crate::store::StoreError::Unavailable(_))
                if tries < 5 && began.elapsed() < Duration::from_secs(1) =>
            {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100 * tries)).await;
            }
            r => return r,
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    link: &LinkHandle,
    mut rx: mpsc::Receiver<Down>,
    mut writer: W,
) -> LinkEnd {
    let mut frames: Vec<Down> = Vec::with_capacity(BATCH_FRAMES);
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let direct = link.direct();
    loop {
        let n = match direct {
            None => rx.recv_many(&mut frames, BATCH_FRAMES).await,
            // Woken by a queued frame or by bytes a direct write left.
            Some(d) => tokio::select! {
                n = rx.recv_many(&mut frames, BATCH_FRAMES) => n,
                _ = d.kick.notified() => usize::MAX,
            },
        };
        if n == 0 || !link.is_alive() {
            return LinkEnd::Closed;
        }
        let n = if n == usize::MAX { 0 } else { n };
        if n > 0 {
            link.notify_drained();
        }
        // What a direct write left goes first: everything queued came after it.
        if let Some(d) = direct {
            let pending = d.take_pending();
            if !pending.is_empty() {
                if let Err(e) = writer.write_all(&pending).await {
                    return e.into();
                }
            }
        }
        for frame in frames.drain(..) {
            frame.encode(&mut out);
            // Backlogs can be large: write as the buffer fills rather than holding a whole
            // batch of them in memory at once.
            if out.len() >= KEEP_BUFFER {
                if let Err(e) = writer.write_all(&out).await {
                    return e.into();
                }
                out.clear();
            }
        }
        if let Err(e) = writer.write_all(&out).await {
            return e.into();
        }
        // Over TLS, what the socket did not take stays in the session until flushed (a
        // no-op on a plain socket).
        if let Err(e) = writer.flush().await {
            return e.into();
        }
        if n > 0 {
            metrics::LINK_FRAMES_SENT.inc_by(n as u64);
            metrics::LINK_BATCHES_SENT.inc();
        }
        out.clear();
        if out.capacity() > KEEP_BUFFER {
            out.shrink_to(64 * 1024);
        }
        if let Some(d) = direct {
            d.idle_if_drained(|| rx.is_empty());
        }
    }
}

#[cfg(test)]
mod peer_tests {
    use super::LinkPeer;

    #[test]
    fn ticket_keys_never_cross_a_plain_link_between_hosts() {
        let remote = "10.0.0.7".parse().unwrap();
        let lo = "127.0.0.3".parse().unwrap();
        let peer = |ip, tls| LinkPeer { ip, tls };
        assert!(peer(lo, false).may_carry_ticket_keys(false));
        assert!(peer("::1".parse().unwrap(), false).may_carry_ticket_keys(false));
        assert!(!peer(remote, false).may_carry_ticket_keys(true));
        assert!(!peer(remote, true).may_carry_ticket_keys(false));
        assert!(peer(remote, true).may_carry_ticket_keys(true));
    }
}
