//! The per-thread side table of connections that are not simply in order (a hole, held
//! deliveries, a fetch out; `session::order::Behind`), keyed by slab key, with the hole
//! timers. A connection in order has no entry: nothing per idle connection.

use super::EventLoop;
use crate::metrics::metrics;
use crate::session::order::{Behind, HoldRoom, Position};
use crate::shared::sub_id;
use protocol::link::Up;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::error::TrySendError;

/// Entries a thread keeps room for once a burst of holes has passed.
const KEEP_ENTRIES: usize = 64;

/// The connections of one loop thread that are behind.
#[derive(Debug)]
pub(super) struct SideTable {
    entries: HashMap<usize, (u32, Behind)>,
    /// When to look at a connection's hole again, in time order (`hole_wait` is fixed).
    timers: VecDeque<(Instant, usize, u32)>,
    /// Bytes of held deliveries this thread may still take.
    pub(super) room: HoldRoom,
}

impl SideTable {
    pub(super) fn new(max_held_bytes: usize) -> SideTable {
        SideTable {
            entries: HashMap::new(),
            timers: VecDeque::new(),
            room: HoldRoom(max_held_bytes),
        }
    }

    /// The entry of connection `key` in generation `gen` (a default one if it has none).
    pub(super) fn take(&mut self, key: usize, gen: u32) -> Behind {
        if self.entries.is_empty() {
            return Behind::default();
        }
        match self.entries.remove(&key) {
            Some((g, b)) if g == gen => b,
            Some((_, mut stale)) => {
                stale.release(&mut self.room);
                Behind::default()
            }
            None => Behind::default(),
        }
    }

    /// Puts an entry back unless there is nothing left in it.
    pub(super) fn put(&mut self, key: usize, gen: u32, b: Behind, at: &Position) {
        if !b.is_clear(at) {
            self.entries.insert(key, (gen, b));
        } else if self.entries.is_empty() && self.entries.capacity() > KEEP_ENTRIES {
            self.entries = HashMap::new();
        }
    }

    pub(super) fn has(&self, key: usize) -> bool {
        !self.entries.is_empty() && self.entries.contains_key(&key)
    }

    /// The connection is gone (or its subscription is over).
    pub(super) fn forget(&mut self, key: usize) {
        if let Some((_, mut b)) = self.entries.remove(&key) {
            b.release(&mut self.room);
        }
    }

    pub(super) fn arm(&mut self, at: Instant, key: usize, gen: u32) {
        self.timers.push_back((at, key, gen));
    }

    /// The next timer, for the loop's poll timeout.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        self.timers.front().map(|t| t.0)
    }

    /// The link came back: fetches that were out are lost with the old one.
    pub(super) fn link_lost(&mut self) {
        for (_, b) in self.entries.values_mut() {
            b.link_lost();
        }
    }
}

impl EventLoop {
    /// Sends the connection's Fetch if one is due, its output has drained and the link
    /// queue has room; otherwise looks again when it may be due.
    pub(super) fn fetch_if_due(&mut self, key: usize) {
        let hole_wait = self.hole_wait();
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let (gen, at) = (conn.gen, conn.position());
        let mut b = self.side.take(key, gen);
        let due = b.fetch_due(&at, self.now.at, hole_wait);
        match due {
            // A hole's timer was armed when it opened; a drain (a writable event) comes
            // back here too.
            Some(t) if t > self.now.at || conn.pending() > 0 => {}
            Some(_) => {
                let up = Up::Fetch {
                    sub_id: sub_id(self.index, key, gen),
                    since: at.pos.unwrap_or(0),
                    epoch: at.epoch,
                    max_bytes: self.page_bytes() as u32,
                    channel: conn.channel.as_deref().unwrap_or_default().to_owned(),
                };
                match self.shared.up_tx.try_send(up) {
                    Ok(()) => {
                        metrics().fetches.inc();
                        b.fetch_sent();
                    }
                    Err(TrySendError::Full(_)) => {
                        metrics().link_queue_full.inc();
                        self.side.arm(self.now.at + hole_wait, key, gen);
                    }
                    // The worker is stopping.
                    Err(TrySendError::Closed(_)) => {}
                }
            }
            None => {}
        }
        self.side.put(key, gen, b, &at);
    }

    /// Looks again at the connections whose hole wait is over.
    pub(super) fn fire_hole_timers(&mut self) {
        while let Some(&(t, key, gen)) = self.side.timers.front() {
            if t > self.now.at {
                break;
            }
            self.side.timers.pop_front();
            if self.conns.get(key).is_some_and(|c| c.gen == gen) && self.side.has(key) {
                self.fetch_if_due(key);
            }
        }
        if self.side.timers.is_empty() && self.side.timers.capacity() > KEEP_ENTRIES {
            self.side.timers = VecDeque::new();
        }
    }

    pub(super) fn hole_wait(&self) -> Duration {
        Duration::from_millis(self.shared.config.hole_wait_ms)
    }

    /// Most payload bytes one Backlog page may carry (`Subscribe`/`Fetch` `max_bytes`, and
    /// what is rendered of a Backlog whatever the gateway sent): half of
    /// `--max-pending-bytes`, so a page and what is pending of live output fit the bound.
    pub(super) fn page_bytes(&self) -> usize {
        self.shared.config.max_pending_bytes / 2
    }
}
