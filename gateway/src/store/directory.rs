//! The directory entry as data, not a transport handle: which worker (its id and
//! incarnation) and which subscription on it (`sub_id`) holds a channel. A Redis store
//! keeps the same two facts in Redis; who can reach that worker is the
//! [`Outbox`](super::contract::Outbox)'s business.

use std::sync::Arc;

/// A worker process in one incarnation. For the memory store the incarnation is the link
/// generation the registry assigns, so entries made over a link that has since been
/// replaced are recognised as stale.
///
/// An `Arc` of a small ident: cloned per subscription without an allocation, and 8 bytes in
/// every directory entry.
#[derive(Clone)]
pub struct WorkerRef(Arc<WorkerIdent>);

#[derive(Debug, PartialEq, Eq)]
struct WorkerIdent {
    id: Arc<str>,
    incarnation: u64,
}

impl WorkerRef {
    pub fn new(id: Arc<str>, incarnation: u64) -> Self {
        WorkerRef(Arc::new(WorkerIdent { id, incarnation }))
    }

    /// The worker's id (`--id`).
    pub fn id(&self) -> &Arc<str> {
        &self.0.id
    }

    pub fn incarnation(&self) -> u64 {
        self.0.incarnation
    }
}

impl PartialEq for WorkerRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for WorkerRef {}

impl std::fmt::Debug for WorkerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.0.id, self.0.incarnation)
    }
}

/// Who holds a channel: one client connection (`sub_id`, the worker's handle for it) on
/// one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub worker: WorkerRef,
    pub sub_id: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_stays_small() {
        // One per subscribed channel, inside ChannelState (see channel_state_stays_small).
        assert_eq!(std::mem::size_of::<Holder>(), 16);
        assert_eq!(std::mem::size_of::<Option<Holder>>(), 16);
    }

    #[test]
    fn workers_are_equal_by_id_and_incarnation() {
        let a = WorkerRef::new(Arc::from("w"), 1);
        assert_eq!(a, a.clone());
        assert_eq!(a, WorkerRef::new(Arc::from("w"), 1), "rebuilt from data");
        assert_ne!(a, WorkerRef::new(Arc::from("w"), 2), "another incarnation");
        assert_ne!(a, WorkerRef::new(Arc::from("v"), 1));
        assert_eq!(format!("{a:?}"), "w#1");
        let h = Holder {
            worker: a.clone(),
            sub_id: 7,
        };
        assert_ne!(
            h,
            Holder {
                worker: a,
                sub_id: 8
            }
        );
    }
}
