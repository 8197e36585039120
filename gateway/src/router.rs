//! How a delivery reaches a worker: the store's [`Outbox`] over this gateway's worker links.
//! A directory entry names a worker by id and incarnation; the router keeps each worker's
//! current link by id and hands a frame to it only when the incarnation is that link's
//! generation (an entry made over a link that has since been replaced is stale: the frame
//! is refused and the store forgets the entry, the worker resubscribes with `since`).
//!
//! Hot path: one read lock and one hash of the worker id per delivery, no allocation (the
//! payload `Bytes` is moved into the frame). The map changes only when a link comes or goes.

use crate::link::LinkHandle;
use crate::store::contract::{BacklogPage, Outbox};
use crate::store::directory::{Holder, WorkerRef};
use bytes::Bytes;
use protocol::link::{Down, KickReason};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The current link of every connected worker, by worker id.
#[derive(Default)]
pub struct Router {
    links: RwLock<HashMap<Arc<str>, Arc<LinkHandle>>>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// `link` is now its worker's current link (a reconnect replaces the older one).
    pub fn attach(&self, link: &Arc<LinkHandle>) {
        self.write()
            .insert(link.worker_id.clone(), Arc::clone(link));
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
    fn deliver(&self, to: &Holder, epoch: u64, seq: u64, data: Bytes) -> bool {
        self.with_link(&to.worker, |l| {
            l.send(Down::Deliver {
                sub_id: to.sub_id,
                epoch,
                seq,
                data,
            })
        })
        .unwrap_or(false)
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics;
    use crate::store::memory::{MemoryStore, Retention};
    use std::time::Duration;

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
        assert!(r.deliver(&h1, 9, 1, Bytes::from_static(b"1")));
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
        assert!(!r.deliver(&h1, 9, 2, Bytes::new()));
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
