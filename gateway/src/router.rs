//! How a delivery reaches a worker: the store's [`Outbox`] over this gateway's worker links.
//! A directory entry names a worker by id and incarnation; the router keeps each worker's
//! current link by id and hands a frame to it only when the incarnation is that link's
//! generation (an entry made over a link that has since been replaced is stale: the frame
//! is refused and the store forgets the entry, the worker resubscribes with `since`).
//!
//! Hot path: one read lock and one hash of the worker id per delivery, no allocation (the
//! payload `Bytes` is moved into the frame). The map changes only when a link comes or goes.
//!
//! With a shared store a delivery may name a worker that has no link to this gateway yet
//! (this gateway just started; the worker links to it within a second or so). Such
//! deliveries are parked, bounded in bytes and age (`--parked-delivery-bytes`,
//! `--parked-delivery-ms`), and sent when that worker's link comes; the worker's order
//! rules drop what it got meanwhile another way. Past the bounds the message waits in the
//! store for the client's next message or resume, as before. The fleet registry
//! ([`Fleet`], read each second) says when such a worker is gone: once the lease of the
//! incarnation an entry names has ended, or another incarnation holds it, nothing is
//! parked or sent for it.

use crate::fleet::Fleet;
use crate::link::LinkHandle;
use crate::store::contract::{now_ms, BacklogPage, Outbox};
use crate::store::directory::{Holder, WorkerRef};
use bytes::Bytes;
use protocol::link::{Down, KickReason};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The current link of every connected worker, by worker id.
#[derive(Default)]
pub struct Router {
    links: RwLock<HashMap<Arc<str>, Arc<LinkHandle>>>,
    parked: Mutex<Parked>,
    /// The shared store's worker registry as last read (empty with the memory store).
    pub fleet: Fleet,
}

/// Deliveries for workers with no link here yet, oldest first.
#[derive(Default)]
struct Parked {
    queue: VecDeque<(Instant, Holder, u64, u64, Bytes, u64)>,
    bytes: usize,
    max_bytes: usize,
    max_age: Duration,
}

impl Parked {
    fn expire(&mut self, now: Instant) {
        while let Some((at, ..)) = self.queue.front() {
            if now.duration_since(*at) < self.max_age && self.bytes <= self.max_bytes {
                break;
            }
            let (.., data, _) = self.queue.pop_front().expect("front exists");
            self.bytes -= data.len() + PARKED_OVERHEAD;
        }
    }
}

/// Bytes a parked delivery is accounted besides its data.
const PARKED_OVERHEAD: usize = 64;

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// A router that parks deliveries for not-yet-linked workers (shared store), up to
    /// `max_bytes` for up to `max_age`.
    pub fn with_parking(max_bytes: usize, max_age: Duration) -> Self {
        let r = Self::default();
        {
            let mut p = r.parked.lock().unwrap_or_else(|e| e.into_inner());
            p.max_bytes = max_bytes;
            p.max_age = max_age;
        }
        r
    }

    /// `link` is now its worker's current link (a reconnect replaces the older one); what
    /// was parked for it goes out first.
    pub fn attach(&self, link: &Arc<LinkHandle>) {
        self.write()
            .insert(link.worker_id.clone(), Arc::clone(link));
        let mut p = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        if p.queue.is_empty() {
            return;
        }
        p.expire(Instant::now());
        let mut sent = 0usize;
        let mut bytes = 0usize;
        p.queue.retain(|(_, to, epoch, seq, data, published_us)| {
            if to.worker != link.worker {
                return true;
            }
            bytes += data.len() + PARKED_OVERHEAD;
            sent += usize::from(link.send(Down::Deliver {
                sub_id: to.sub_id,
                epoch: *epoch,
                seq: *seq,
                data: data.clone(),
                published_us: *published_us,
            }));
            false
        });
        p.bytes -= bytes;
        crate::metrics::PARKED_SENT.inc_by(sent as u64);
    }

    /// Parks a delivery for `to`, whose worker has no link here (yet).
    fn park(&self, to: &Holder, epoch: u64, seq: u64, data: Bytes, published_us: u64) -> bool {
        let mut p = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        let cost = data.len() + PARKED_OVERHEAD;
        if cost > p.max_bytes {
            return false;
        }
        // The link may have come between the caller's look and this lock: `attach` adds
        // the link before it drains, so either it drains this entry or this sees the link.
        if let Some(sent) = self.with_link(&to.worker, |l| {
            l.send(Down::Deliver {
                sub_id: to.sub_id,
                epoch,
                seq,
                data: data.clone(),
                published_us,
            })
        }) {
            return sent;
        }
        p.bytes += cost;
        p.queue
            .push_back((Instant::now(), to.clone(), epoch, seq, data, published_us));
        p.expire(Instant::now());
        crate::metrics::PARKED.inc();
        true
    }

    /// `link` ended: it is forgotten unless a newer link of its worker took its place.
    pub fn detach(&self, link: &LinkHandle) {
        let mut links = self.write();
        if links
            .get(&link.worker_id)
            .is_some_and(|l| l.generation == link.generation)
        {
            links.remove(&link.worker_id);
        }
    }

    /// Tells every connected worker to subscribe all its connections again (the store
    /// lost its directory). Returns how many were told.
    pub fn resubscribe_all(&self) -> usize {
        let links = self.links.read().unwrap_or_else(|e| e.into_inner());
        links
            .values()
            .filter(|l| l.send(Down::ResubscribeAll))
            .count()
    }

    /// Sends the fleet's ticket keys down every link that takes them. Returns how many.
    pub fn send_ticket_keys(&self, frame: &Down) -> usize {
        let links = self.links.read().unwrap_or_else(|e| e.into_inner());
        links
            .values()
            .filter(|l| {
                l.gets_ticket_keys
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .filter(|l| l.send(frame.clone()))
            .count()
    }

    /// Runs `f` on `worker`'s link when that link is the incarnation the entry names and
    /// still open.
    fn with_link<R>(&self, worker: &WorkerRef, f: impl FnOnce(&LinkHandle) -> R) -> Option<R> {
        let links = self.links.read().unwrap_or_else(|e| e.into_inner());
        links
            .get(worker.id())
            .filter(|l| l.worker == *worker && l.is_alive())
            .map(|l| f(l))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Arc<str>, Arc<LinkHandle>>> {
        self.links.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Outbox for Router {
    fn deliver(&self, to: &Holder, epoch: u64, seq: u64, data: Bytes, published_us: u64) -> bool {
        let links = self.links.read().unwrap_or_else(|e| e.into_inner());
        match links.get(to.worker.id()) {
            Some(l) if l.worker == to.worker && l.is_alive() => l.send(Down::Deliver {
                sub_id: to.sub_id,
                epoch,
                seq,
                data,
                published_us,
            }),
            // Another incarnation is linked: the entry is stale.
            Some(_) => false,
            None => {
                drop(links);
                if self
                    .fleet
                    .holds(to.worker.id(), to.worker.incarnation(), now_ms())
                    == Some(false)
                {
                    // That incarnation's lease ended (it died or restarted): the message
                    // waits in the store for the client's resume.
                    crate::metrics::LEASE_ENDED_DROPS.inc();
                    return false;
                }
                self.park(to, epoch, seq, data, published_us)
            }
        }
    }

    fn backlog(&self, to: &Holder, page: BacklogPage) -> bool {
        self.with_link(&to.worker, |l| l.send_backlog(to.sub_id, page))
            .unwrap_or(false)
    }

    fn kick(&self, to: &Holder, reason: KickReason) {
        self.with_link(&to.worker, |l| {
            l.send(Down::Kick {
                sub_id: to.sub_id,
                reason,
            })
        });
    }

    fn is_live(&self, worker: &WorkerRef) -> bool {
        self.with_link(worker, |_| ()).is_some()
            || self
                .fleet
                .holds(worker.id(), worker.incarnation(), now_ms())
                == Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics;
    use crate::store::memory::{MemoryStore, Retention};
    use std::time::Duration;

    #[test]
    fn deliveries_for_a_worker_not_linked_yet_wait_for_its_link() {
        let r = Router::with_parking(200, Duration::from_secs(5));
        let w = WorkerRef::new(Arc::from("w"), 7);
        let to = |sub_id| Holder {
            worker: w.clone(),
            sub_id,
        };
        assert!(r.deliver(&to(1), 3, 1, Bytes::from_static(b"a"), 0));
        assert!(r.deliver(&to(2), 3, 4, Bytes::from_static(b"b"), 0));
        // Too big for the bound: refused, the message waits in the store.
        assert!(!r.deliver(&to(1), 3, 2, Bytes::from(vec![0u8; 300]), 0));
        // Another worker's link takes nothing of it.
        let (other, mut other_rx) = LinkHandle::new(Arc::from("v"), 0, 1, 8);
        r.attach(&other);
        assert!(other_rx.try_recv().is_err());
        // The worker links (the incarnation its entries name): parked frames go out, in order.
        let (link, mut rx) = LinkHandle::with_incarnation(Arc::from("w"), 1, 1, 7, 8);
        r.attach(&link);
        let got: Vec<(u64, u64)> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|d| match d {
                Down::Deliver { sub_id, seq, .. } => (sub_id, seq),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, vec![(1, 1), (2, 4)]);
        // A link of another incarnation means the entry is stale: nothing is parked.
        let old = Holder {
            worker: WorkerRef::new(Arc::from("w"), 6),
            sub_id: 1,
        };
        assert!(!r.deliver(&old, 3, 5, Bytes::from_static(b"c"), 0));
        // Without parking (memory store) a missing link is a refusal, as before.
        let plain = Router::new();
        assert!(!plain.deliver(&to(1), 3, 1, Bytes::from_static(b"a"), 0));
    }

    #[test]
    fn parked_deliveries_expire() {
        let r = Router::with_parking(1 << 20, Duration::from_millis(0));
        let w = WorkerRef::new(Arc::from("w"), 7);
        let h = Holder {
            worker: w,
            sub_id: 1,
        };
        r.deliver(&h, 3, 1, Bytes::from_static(b"a"), 0);
        let (link, mut rx) = LinkHandle::with_incarnation(Arc::from("w"), 1, 1, 7, 8);
        r.attach(&link);
        assert!(rx.try_recv().is_err(), "expired before the link came");
    }

    #[test]
    fn frames_reach_the_current_incarnation_only() {
        let r = Router::new();
        let (old, mut old_rx) = LinkHandle::new(Arc::from("w"), 0, 1, 8);
        r.attach(&old);
        let h1 = Holder {
            worker: old.worker.clone(),
            sub_id: 5,
        };
        assert!(r.is_live(&h1.worker));
        assert!(r.deliver(&h1, 9, 1, Bytes::from_static(b"1"), 0));
        assert!(matches!(
            old_rx.try_recv().unwrap(),
            Down::Deliver {
                sub_id: 5,
                epoch: 9,
                seq: 1,
                ..
            }
        ));
        // The worker reconnects: the entry made over the old link is stale.
        let (new, mut new_rx) = LinkHandle::new(Arc::from("w"), 0, 2, 8);
        old.close();
        r.attach(&new);
        assert!(!r.is_live(&h1.worker));
        assert!(!r.deliver(&h1, 9, 2, Bytes::new(), 0));
        r.kick(&h1, KickReason::Replaced);
        assert!(new_rx.try_recv().is_err(), "nothing for the stale entry");
        // An entry rebuilt from data (as a shared store would) reaches the new link.
        let h2 = Holder {
            worker: WorkerRef::new(Arc::from("w"), 2),
            sub_id: 6,
        };
        assert!(r.backlog(
            &h2,
            BacklogPage {
                epoch: 9,
                last_seq: 2,
                gap_first_seq: None,
                messages: vec![],
            }
        ));
        assert!(matches!(
            new_rx.try_recv().unwrap(),
            Down::Backlog { sub_id: 6, .. }
        ));
        // The old link's end does not forget the new one; the new one's end does.
        r.detach(&old);
        assert!(r.is_live(&h2.worker));
        r.detach(&new);
        assert!(!r.is_live(&h2.worker));
        assert!(!r.is_live(&WorkerRef::new(Arc::from("nobody"), 1)));
    }

    #[test]
    fn full_link_queue_closes_the_link() {
        // The store's deliveries through the router onto a real link queue of 2 frames.
        let router = Arc::new(Router::new());
        let s = MemoryStore::with_shards(
            1,
            Retention {
                max_messages: 100,
                max_age: Duration::from_secs(10),
            },
            1 << 20,
            100,
            router.clone(),
        );
        let t = 1_700_000_000_000;
        let (l, _rx) = LinkHandle::new(Arc::from("w"), 0, 1, 2);
        router.attach(&l);
        s.subscribe_now(
            "c",
            Holder {
                worker: l.worker.clone(),
                sub_id: 1,
            },
            None,
            None,
            t,
        )
        .unwrap();
        let overflows = metrics::LINK_OVERFLOWS.get();
        for _ in 0..3 {
            s.publish_now("c", Bytes::from_static(b"x"), None, t)
                .unwrap();
        }
        assert!(!l.is_alive());
        assert!(metrics::LINK_OVERFLOWS.get() > overflows);
        assert!(!s.channel_info_now("c", t).online);
        // Every message is still in the store for the resume.
        assert_eq!(s.channel_info_now("c", t).buffered, 3);
    }

    #[test]
    fn a_closed_link_is_not_live() {
        let r = Router::new();
        let (l, _rx) = LinkHandle::new(Arc::from("w"), 0, 1, 8);
        r.attach(&l);
        l.close();
        assert!(!r.is_live(&l.worker));
    }
}
