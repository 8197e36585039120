//! One worker link as the rest of the gateway sees it ([`LinkHandle`]): the worker's id,
//! its registry slot and link generation, and the bounded outbound queue with its
//! backpressure. A full queue closes the link on purpose: the worker reconnects and
//! resubscribes with `since`, and the store's backlog fills the hole, so nothing is lost.

use crate::metrics;
use crate::store::contract::BacklogPage;
use crate::store::directory::WorkerRef;
use protocol::link::Down;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// One worker link as the rest of the gateway sees it: identity, generation and the
/// bounded outbound queue.
pub struct LinkHandle {
    pub worker_id: Arc<str>,
    /// The worker's registry slot.
    pub slot: usize,
    /// Bumped each time the worker (re)connects; stale handles are recognized by it.
    pub generation: u64,
    /// The same as data: what directory entries made over this link name. Its incarnation
    /// is the generation with a store of this gateway's own (entries made over a link that
    /// has since been replaced are stale), and the worker process's own incarnation with a
    /// store gateways share (every gateway must name the worker alike).
    pub worker: WorkerRef,
    tx: mpsc::Sender<Down>,
    alive: AtomicBool,
    closed: CancellationToken,
    /// Signalled by the writer each time it takes frames off the queue ([`Self::room`]).
    drained: tokio::sync::Notify,
    /// The worker asked for the fleet's ticket keys and this link may carry them.
    pub gets_ticket_keys: AtomicBool,
    /// A plain TCP link: frames are written by the sending task itself while the writer
    /// task is idle (set once, before the first frame).
    direct: std::sync::OnceLock<Direct>,
}

/// The direct path of a plain TCP link. While the writer task is idle (nothing queued,
/// nothing half-written) a frame is encoded and written by the task that sends it, with no
/// task woken; a write the socket does not take whole leaves the rest here, marks the
/// writer busy and wakes it, and frames queue behind it until the writer has written
/// everything and goes idle again. The invariant that keeps order: the queue holds frames
/// only while `busy`, and `busy` is cleared (under the lock) only with the queue empty.
pub struct Direct {
    socket: Arc<tokio::net::TcpStream>,
    state: std::sync::Mutex<DirectState>,
    /// Wakes the writer for bytes left in `state.pending`.
    pub kick: tokio::sync::Notify,
}

#[derive(Default)]
struct DirectState {
    busy: bool,
    /// When the last frame went out on the direct path.
    last: Option<std::time::Instant>,
    /// The encode buffer of the direct path; while `busy`, what a direct write left unwritten.
    pending: Vec<u8>,
}

tokio::task_local! {
    /// Set while a request that delivers many messages (NDJSON, broadcast) runs.
    static COALESCE: ();
}

/// Runs `f` with every frame it sends queued for its link's writer, which writes them in
/// batches, instead of written one by one by the direct path.
pub async fn coalesced<F: std::future::Future>(f: F) -> F::Output {
    COALESCE.scope((), f).await
}

/// Frames closer together than this go through the writer, which writes them in batches
/// (one write for many): at high rates one write per frame costs more than the wake-up it
/// saves.
const DIRECT_MIN_GAP: std::time::Duration = std::time::Duration::from_micros(100);

/// Encode buffer kept between direct writes.
const DIRECT_KEEP: usize = 16 * 1024;

impl Direct {
    /// The writer's turn: the bytes a direct write left (to go before anything queued).
    pub fn take_pending(&self) -> Vec<u8> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.busy {
            std::mem::take(&mut st.pending)
        } else {
            Vec::new()
        }
    }

    /// Ends the connection both ways (at the link's end): stale handles that still hold
    /// the socket must not keep it open, or the worker would not notice the link is gone.
    pub fn shutdown(&self) {
        let _ = socket2::SockRef::from(&*self.socket).shutdown(std::net::Shutdown::Both);
    }

    /// The writer wrote everything it had: idle again if nothing was queued meanwhile.
    pub fn idle_if_drained(&self, queue_empty: impl FnOnce() -> bool) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.busy && st.pending.is_empty() && queue_empty() {
            st.busy = false;
        }
    }
}

impl LinkHandle {
    /// A handle with a queue of `queue` frames, and the receiving end for its writer; its
    /// incarnation is the generation.
    pub fn new(
        worker_id: Arc<str>,
        slot: usize,
        generation: u64,
        queue: usize,
    ) -> (Arc<Self>, mpsc::Receiver<Down>) {
        Self::with_incarnation(worker_id, slot, generation, generation, queue)
    }

    /// [`Self::new`] naming the worker by `incarnation`.
    pub fn with_incarnation(
        worker_id: Arc<str>,
        slot: usize,
        generation: u64,
        incarnation: u64,
        queue: usize,
    ) -> (Arc<Self>, mpsc::Receiver<Down>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let handle = Arc::new(LinkHandle {
            worker: WorkerRef::new(worker_id.clone(), incarnation),
            worker_id,
            slot,
            generation,
            tx,
            alive: AtomicBool::new(true),
            closed: CancellationToken::new(),
            drained: tokio::sync::Notify::new(),
            gets_ticket_keys: AtomicBool::new(false),
            direct: std::sync::OnceLock::new(),
        });
        (handle, rx)
    }

    /// Whether frames can still be queued.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Makes this a plain TCP link written directly while its writer is idle (see
    /// [`Direct`]); before the first frame is sent.
    pub fn set_direct(&self, socket: Arc<tokio::net::TcpStream>) {
        let _ = self.direct.set(Direct {
            socket,
            state: Default::default(),
            kick: tokio::sync::Notify::new(),
        });
    }

    /// The direct path, on a plain TCP link.
    pub fn direct(&self) -> Option<&Direct> {
        self.direct.get()
    }

    /// Sends `frame` without waiting: written at once on an idle plain link, else queued. A
    /// full queue closes the link (counted in `pushgate_link_overflows_total`). Returns
    /// whether the frame was written or queued.
    pub fn send(&self, frame: Down) -> bool {
        if !self.is_alive() {
            return false;
        }
        let Some(d) = self.direct.get() else {
            return self.enqueue(frame);
        };
        let mut st = d.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let close_behind = st
            .last
            .is_some_and(|t| now.duration_since(t) < DIRECT_MIN_GAP);
        if st.busy || close_behind || COALESCE.try_with(|_| ()).is_ok() {
            // Queued under the lock: the writer goes idle only with the queue empty.
            st.busy = true;
            return self.enqueue(frame);
        }
        st.last = Some(now);
        st.pending.clear();
        frame.encode(&mut st.pending);
        match d.socket.try_write(&st.pending) {
            Ok(n) if n == st.pending.len() => {
                st.pending.clear();
                if st.pending.capacity() > DIRECT_KEEP {
                    st.pending.shrink_to(DIRECT_KEEP);
                }
                metrics::LINK_FRAMES_SENT.inc();
                metrics::LINK_BATCHES_SENT.inc();
                metrics::LINK_DIRECT_WRITES.inc();
                true
            }
            Ok(n) => {
                st.pending.drain(..n);
                st.busy = true;
                drop(st);
                d.kick.notify_one();
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                st.busy = true;
                drop(st);
                d.kick.notify_one();
                true
            }
            Err(_) => {
                st.pending.clear();
                drop(st);
                self.close();
                false
            }
        }
    }

    fn enqueue(&self, frame: Down) -> bool {
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

    /// Queues `page` as the `Backlog` of subscription `sub_id` (see [`Self::send`]).
    pub fn send_backlog(&self, sub_id: u64, page: BacklogPage) -> bool {
        self.send(Down::Backlog {
            sub_id,
            epoch: page.epoch,
            last_seq: page.last_seq,
            gap_first_seq: page.gap_first_seq,
            messages: page.messages,
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn deliver(seq: u64) -> Down {
        Down::Deliver {
            sub_id: 1,
            epoch: 1,
            seq,
            data: bytes::Bytes::from_static(b"1"),
            published_us: 0,
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
