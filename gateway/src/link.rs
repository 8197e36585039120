//! Worker links: `GET /v1/link` with `Upgrade: pushgate-link/1` turns an HTTP connection into
//! a stream of binary frames ([`protocol::link`]). The worker says `Hello`, the gateway
//! registers it and answers `Welcome`; then `Load` heartbeats, `Subscribe` and `Unsubscribe`
//! come up, `Backlog`, `Deliver` and `Kick` go down.
//!
//! Outbound frames go through a bounded queue per link ([`LinkHandle`]); one writer drains it
//! in batches (`recv_many`) into one reused buffer, one `write_all` per batch. A full queue
//! closes the link on purpose: the worker reconnects and resubscribes with `since`, and the
//! store's backlog fills the hole, so nothing is lost.

use crate::http::App;
use crate::metrics;
use crate::store::{Store, SubRef};
use bytes::BytesMut;
use protocol::link::{split_frame, Down, KickReason, Up};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a new link may take to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most frames drained into one write.
const BATCH_FRAMES: usize = 4096;
/// Write buffer kept between batches; a larger one (a big backlog) is released after use.
const KEEP_BUFFER: usize = 1024 * 1024;

/// One worker link as the rest of the gateway sees it: identity, generation and the
/// bounded outbound queue.
pub struct LinkHandle {
    pub worker_id: Arc<str>,
    /// The worker's registry slot.
    pub slot: usize,
    /// Bumped each time the worker (re)connects; stale handles are recognized by it.
    pub generation: u64,
    tx: mpsc::Sender<Down>,
    alive: AtomicBool,
    closed: CancellationToken,
    /// Signalled by the writer each time it takes frames off the queue ([`Self::room`]).
    drained: tokio::sync::Notify,
}

impl LinkHandle {
    /// A handle with a queue of `queue` frames, and the receiving end for its writer.
    pub fn new(
        worker_id: Arc<str>,
        slot: usize,
        generation: u64,
        queue: usize,
    ) -> (Arc<Self>, mpsc::Receiver<Down>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let handle = Arc::new(LinkHandle {
            worker_id,
            slot,
            generation,
            tx,
            alive: AtomicBool::new(true),
            closed: CancellationToken::new(),
            drained: tokio::sync::Notify::new(),
        });
        (handle, rx)
    }

    /// Whether frames can still be queued.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Queues `frame` without waiting. A full queue closes the link (counted in
    /// `pushgate_link_overflows_total`). Returns whether the frame was queued.
    pub fn send(&self, frame: Down) -> bool {
        if !self.is_alive() {
            return false;
        }
        match self.tx.try_send(frame) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                if self.alive.swap(false, Ordering::AcqRel) {
                    metrics::LINK_OVERFLOWS.inc();
                    warn!(worker = %self.worker_id, "worker link queue full; closing the link so the worker resumes");
                }
                self.closed.cancel();
                false
            }
            Err(TrySendError::Closed(_)) => {
                self.close();
                false
            }
        }
    }

    /// Waits until at least `n` frames fit in the queue (or the link is closed). The link
    /// reader calls it before each `Subscribe`, so a reconnecting worker that resubscribes
    /// many connections at once is slowed down by TCP backpressure instead of overflowing
    /// its own queue with backlogs.
    ///
    /// It only watches the free space: it takes no permits, so publishes keep their queue
    /// room while it waits (reserving permits would starve them into an overflow).
    pub async fn room(&self, n: usize) {
        let n = n.clamp(1, self.tx.max_capacity());
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.tx.capacity() >= n || !self.is_alive() {
                return;
            }
            tokio::select! {
                _ = drained => {}
                _ = self.closed.cancelled() => return,
            }
        }
    }

    /// Wakes [`Self::room`] waiters: the writer took frames off the queue.
    pub fn notify_drained(&self) {
        self.drained.notify_waiters();
    }

    /// Marks the link dead and wakes its tasks so the connection is dropped.
    pub fn close(&self) {
        self.alive.store(false, Ordering::Release);
        self.closed.cancel();
    }

    /// Completes when the link is closed.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }
}

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
    #[error("bad frame: {0}")]
    Frame(#[from] protocol::link::LinkError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs one upgraded link connection to its end. `read_buf` holds bytes the HTTP layer
/// had already read past the upgrade request.
pub async fn serve_link<R, W>(app: Arc<App>, mut reader: R, writer: W, read_buf: BytesMut)
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let mut buf = read_buf;
    let hello = tokio::select! {
        r = tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut reader, &mut buf)) => match r {
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
    let mut rx_slot = None;
    let link = app
        .registry
        .register(&hello, Instant::now(), |slot, generation, id| {
            let (link, rx) = LinkHandle::new(id, slot, generation, queue);
            rx_slot = Some(rx);
            link
        });
    let rx = rx_slot.expect("register calls make_link");
    link.send(Down::Welcome {
        gateway_id: app.gateway_id.clone(),
    });
    metrics::LINKS_OPEN.inc();
    info!(
        worker = %hello.id,
        generation = link.generation,
        addrs = ?hello.addrs,
        capacity = hello.capacity,
        "worker link up"
    );

    let end = tokio::select! {
        r = read_loop(&app, &link, &mut reader, &mut buf) => r,
        r = write_loop(&link, rx, writer) => r,
        _ = link.closed() => LinkEnd::Closed,
        _ = app.shutdown.cancelled() => LinkEnd::Shutdown,
    };
    app.registry.disconnect(&link);
    metrics::LINKS_OPEN.dec();
    info!(worker = %hello.id, generation = link.generation, reason = %end, "worker link down");
}

/// Reads one frame body, buffering as needed.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<bytes::Bytes, LinkEnd> {
    loop {
        if let Some(frame) = split_frame(buf)? {
            return Ok(frame);
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        if reader.read_buf(buf).await? == 0 {
            return Err(LinkEnd::Eof);
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    app: &App,
    link: &Arc<LinkHandle>,
    reader: &mut R,
    buf: &mut BytesMut,
) -> LinkEnd {
    // Room kept free for deliveries while backlogs are queued.
    let room = app.config.link_queue / 4;
    loop {
        let frame = match read_frame(reader, buf).await {
            Ok(f) => f,
            Err(e) => return e,
        };
        let up = match Up::decode(frame) {
            Ok(u) => u,
            Err(e) => return e.into(),
        };
        let now = Instant::now();
        match up {
            Up::Load { connections } => {
                app.registry.heartbeat(link, connections, now);
            }
            Up::Subscribe {
                sub_id,
                since,
                epoch,
                resume,
                channel,
                ..
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
                let sub = SubRef {
                    link: link.clone(),
                    sub_id,
                };
                if let Err(e) = app
                    .store
                    .subscribe(&channel, sub, since, epoch, resume, now)
                    .await
                {
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
                channel,
                ..
            } => {
                if protocol::validate_channel(&channel).is_err() {
                    continue;
                }
                link.room(room).await;
                match app.store.fetch(&channel, since, epoch, now).await {
                    Ok(Down::Backlog {
                        epoch,
                        last_seq,
                        gap_first_seq,
                        messages,
                        ..
                    }) => {
                        link.send(Down::Backlog {
                            sub_id,
                            epoch,
                            last_seq,
                            gap_first_seq,
                            messages,
                        });
                    }
                    Ok(_) => {}
                    Err(e) => debug!(worker = %link.worker_id, error = %e, "fetch refused"),
                }
            }
            Up::Unsubscribe { sub_id, channel } => {
                let sub = SubRef {
                    link: link.clone(),
                    sub_id,
                };
                app.store.unsubscribe(&channel, &sub, now).await;
            }
            Up::Hello(_) => {
                debug!(worker = %link.worker_id, "repeated Hello on a link; ignored");
            }
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
    loop {
        let n = rx.recv_many(&mut frames, BATCH_FRAMES).await;
        if n == 0 || !link.is_alive() {
            return LinkEnd::Closed;
        }
        link.notify_drained();
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
        metrics::LINK_FRAMES_SENT.inc_by(n as u64);
        metrics::LINK_BATCHES_SENT.inc();
        out.clear();
        if out.capacity() > KEEP_BUFFER {
            out.shrink_to(64 * 1024);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver(seq: u64) -> Down {
        Down::Deliver {
            sub_id: 1,
            epoch: 1,
            seq,
            data: bytes::Bytes::from_static(b"1"),
        }
    }

    #[tokio::test]
    async fn room_waits_for_the_writer_and_overflow_closes() {
        let (link, mut rx) = LinkHandle::new(Arc::from("w"), 0, 1, 8);
        for i in 0..8 {
            assert!(link.send(deliver(i)));
        }
        let waiter = {
            let link = link.clone();
            tokio::spawn(async move { link.room(4).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        // A publish while room() waits still finds the space the writer frees: the waiter
        // takes none of it.
        rx.recv().await.unwrap();
        link.notify_drained();
        tokio::task::yield_now().await;
        assert!(
            link.send(deliver(100)),
            "a publish must not be starved by room()"
        );
        assert!(link.is_alive());
        assert!(!waiter.is_finished());
        for _ in 0..5 {
            rx.recv().await.unwrap();
        }
        link.notify_drained();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        for i in 0..5 {
            assert!(link.send(deliver(i)));
        }
        assert!(!link.send(deliver(99)), "full queue: refused");
        assert!(!link.is_alive(), "and the link is closed");
        tokio::time::timeout(Duration::from_secs(5), link.closed())
            .await
            .unwrap();
    }
}
