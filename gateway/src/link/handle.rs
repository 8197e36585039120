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
