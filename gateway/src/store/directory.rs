//! The directory entry: who holds a channel (one client connection behind one worker link).

use crate::link::LinkHandle;
use std::sync::Arc;

/// Who holds a channel: one client connection (`sub_id`) behind one worker link.
#[derive(Clone)]
pub struct SubRef {
    /// The link (worker slot + link generation + outbound queue) the subscription came over.
    pub link: Arc<LinkHandle>,
    /// The worker's handle for the client connection.
    pub sub_id: u64,
}

impl SubRef {
    /// Whether deliveries can still reach this subscription's link.
    pub fn is_alive(&self) -> bool {
        self.link.is_alive()
    }
}

impl PartialEq for SubRef {
    fn eq(&self, other: &Self) -> bool {
        self.sub_id == other.sub_id && Arc::ptr_eq(&self.link, &other.link)
    }
}

impl Eq for SubRef {}

impl std::fmt::Debug for SubRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SubRef({}#{} sub {})",
            self.link.worker_id, self.link.generation, self.sub_id
        )
    }
}
