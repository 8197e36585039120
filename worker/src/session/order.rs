//! Delivery order is the worker's rule: per connection the worker knows the last seq it
//! sent ([`Position`]) and decides what a `Backlog` or a `Deliver` from the gateway makes
//! of it, whatever order the links brought them in. Output goes to a [`Sink`] (the
//! per-transport rendering); questions to the store come out as a fetch to send. No I/O.
//!
//! - `seq <= pos`: a duplicate, dropped. `seq == pos + 1`: sent.
//! - `seq > pos + 1`: a hole. The delivery is held (bounded per thread, [`HoldRoom`]) and
//!   the hole is filled from the store (`Fetch { since: pos }`) once `hole_wait` passed
//!   without the missing seqs arriving; the answer fills it, or its gap tells the client.
//!   Over the bound the held copies go and the fetch brings them: correctness never
//!   depends on holding.
//! - Another epoch than the connection's: the log's history changed; fetch at once, the
//!   store's gap says so.
//! - A delivery before the subscription's first Backlog is held until it arrives.
//! - A Backlog is one page: at most `page_bytes` are rendered (at least one message); when
//!   its `last_seq` says more exists, the next page is fetched (once the caller sees the
//!   connection drained: [`Behind::fetch_due`] only says when it may go).

use bytes::Bytes;
use std::time::{Duration, Instant};

/// Where a connection stands in its channel's log (kept in `Conn`: `pos`, `epoch` and
/// three flag bits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    /// Every message with `seq <= pos` was sent (or told to be gone by a gap). `None` until
    /// the first Backlog of a live-only subscription.
    pub pos: Option<u64>,
    /// The log's epoch `pos` counts in (until the first Backlog: the client's `epoch=`).
    pub epoch: Option<u64>,
    /// The subscription's first Backlog arrived.
    pub live: bool,
}

/// Where the rules put what the client is to be sent, in order.
pub trait Sink {
    /// The resume could not be served whole: messages go on at `first_seq` of `epoch`.
    fn gap(&mut self, epoch: u64, first_seq: u64);
    fn message(&mut self, seq: u64, data: &[u8]);
}

/// The fields of a `Down::Backlog`.
#[derive(Debug, Clone, Copy)]
pub struct Backlog<'a> {
    pub epoch: u64,
    /// The channel's newest seq when the Backlog was read: more exists past the page.
    pub last_seq: u64,
    /// The resume could not be served whole: the first seq that follows.
    pub gap_first_seq: Option<u64>,
    pub messages: &'a [(u64, Bytes)],
}

/// Bytes of held deliveries a loop thread may still take (`--max-held-bytes`).
#[derive(Debug)]
pub struct HoldRoom(pub usize);

/// Counted per held delivery besides its payload (the entry and the allocation).
pub const HELD_OVERHEAD: usize = 48;
/// Counted per rendered page message besides its payload (frame or event framing).
pub const PAGE_OVERHEAD: usize = 32;

/// A delivery not sent yet (a copy: the link's read buffer is not kept alive by it).
#[derive(Debug)]
struct Held {
    epoch: u64,
    seq: u64,
    data: Bytes,
}

impl Held {
    fn cost(&self) -> usize {
        self.data.len() + HELD_OVERHEAD
    }
}

/// What a connection keeps while it is not simply in order: deliveries held across a
/// hole, what the store is known to have, the fetch in flight. The event loop keeps one
/// per such connection in a per-thread side table, none for a connection in order.
#[derive(Debug, Default)]
pub struct Behind {
    /// The store's newest seq in the connection's epoch, from the last Backlog: what is
    /// above `pos` up to it can be fetched at once.
    known: u64,
    /// The newest seq a delivery of the connection's epoch showed (held or not).
    seen: u64,
    /// Held deliveries, by seq; all above `pos + 1` once the first Backlog came.
    held: Vec<Held>,
    held_bytes: usize,
    /// Deliveries the store must be asked about at once (another epoch; dropped before
    /// the first Backlog).
    refetch: bool,
    /// Since when the current hole waits for late deliveries.
    hole_since: Option<Instant>,
    /// A Fetch is out and its Backlog not back.
    fetching: bool,
}

impl Behind {
    /// A Backlog (the answer to Subscribe or Fetch). Returns whether a hole wait began
    /// (the caller looks again after `hole_wait`).
    pub fn backlog(
        &mut self,
        at: &mut Position,
        b: &Backlog<'_>,
        page_bytes: usize,
        room: &mut HoldRoom,
        now: Instant,
        sink: &mut impl Sink,
    ) -> bool {
        let answered_fetch = std::mem::take(&mut self.fetching);
        // A Backlog again for the same subscription and epoch (a resubscribe, or a
        // duplicate from a reconnect race) must not move the position back.
        let again = at.live && at.epoch == Some(b.epoch);
        if !again {
            // Another log (or the first answer): what was known of the old one is moot.
            self.known = 0;
            self.seen = 0;
        }
        at.live = true;
        at.epoch = Some(b.epoch);
        let mut gap = false;
        if let Some(first) = b
            .gap_first_seq
            .filter(|f| !again || at.pos.is_none_or(|p| f.saturating_sub(1) > p))
        {
            // The resume could not be served whole: positions restart here.
            at.pos = Some(first.saturating_sub(1));
            sink.gap(b.epoch, first);
            gap = true;
        }
        let mut rendered = 0usize;
        let mut sent_any = false;
        for (seq, data) in b.messages {
            if at.pos.is_some_and(|p| *seq <= p) {
                continue;
            }
            let cost = data.len() + PAGE_OVERHEAD;
            if sent_any && rendered + cost > page_bytes {
                // The rest comes with the next page.
                break;
            }
            rendered += cost;
            sent_any = true;
            at.pos = Some(*seq);
            sink.message(*seq, data);
        }
        let p = *at.pos.get_or_insert(b.last_seq);
        self.known = self.known.max(b.last_seq);
        if answered_fetch && !gap && b.messages.is_empty() && self.known > p {
            // The store says more exists but gave none of it, nor a gap: it is gone.
            at.pos = Some(self.known);
            sink.gap(b.epoch, self.known + 1);
        }
        self.replay(at, room, sink);
        self.settle(at, now)
    }

    /// A live delivery. Returns whether a hole wait began (the caller looks again after
    /// `hole_wait`).
    #[allow(clippy::too_many_arguments)]
    pub fn deliver(
        &mut self,
        at: &mut Position,
        epoch: u64,
        seq: u64,
        data: &[u8],
        room: &mut HoldRoom,
        now: Instant,
        sink: &mut impl Sink,
    ) -> bool {
        if !at.live {
            // Before the first Backlog: kept until it comes.
            self.hold(at, epoch, seq, data, room);
            return false;
        }
        if at.epoch != Some(epoch) {
            // The log's history changed (or a straggler of an older log): the store says.
            self.refetch = true;
            return self.settle(at, now);
        }
        let p = at.pos.unwrap_or(0);
        if seq <= p {
            return self.settle(at, now);
        }
        if seq == p + 1 {
            at.pos = Some(seq);
            sink.message(seq, data);
            if !self.held.is_empty() {
                self.replay(at, room, sink);
            }
        } else {
            self.seen = self.seen.max(seq);
            self.hold(at, epoch, seq, data, room);
        }
        self.settle(at, now)
    }

    /// When the next Fetch may go (`Some(t <= now)`: now), if one is wanted. The caller
    /// also waits for the connection's pending output to drain.
    pub fn fetch_due(&self, at: &Position, now: Instant, hole_wait: Duration) -> Option<Instant> {
        if !at.live || self.fetching {
            return None;
        }
        let p = at.pos?;
        if self.refetch || self.known > p {
            return Some(now);
        }
        (self.seen > p).then(|| self.hole_since.unwrap_or(now) + hole_wait)
    }

    /// The Fetch asked for everything known missing: wait for its Backlog.
    pub fn fetch_sent(&mut self) {
        self.fetching = true;
        self.refetch = false;
        self.hole_since = None;
    }

    /// The link the Fetch went on is gone (its answer with it).
    pub fn link_lost(&mut self) {
        self.fetching = false;
    }

    /// Nothing held, nothing missing, nothing asked: the entry can go.
    pub fn is_clear(&self, at: &Position) -> bool {
        let p = at.pos.unwrap_or(0);
        self.held.is_empty()
            && !self.fetching
            && !self.refetch
            && (!at.live || (self.known <= p && self.seen <= p))
    }

    /// Gives the held bytes back to the thread's room (the connection is gone).
    pub fn release(&mut self, room: &mut HoldRoom) {
        room.0 += std::mem::take(&mut self.held_bytes);
        self.held = Vec::new();
    }

    fn hold(&mut self, at: &Position, epoch: u64, seq: u64, data: &[u8], room: &mut HoldRoom) {
        let h = Held {
            epoch,
            seq,
            data: Bytes::copy_from_slice(data),
        };
        if h.cost() > room.0 {
            // Over the bound: the fetch brings them instead (before the first Backlog
            // there is no position to tell the hole from: ask once it came).
            self.release(room);
            self.refetch |= !at.live;
            return;
        }
        match self
            .held
            .binary_search_by_key(&(seq, epoch), |h| (h.seq, h.epoch))
        {
            Ok(_) => {}
            Err(i) => {
                room.0 -= h.cost();
                self.held_bytes += h.cost();
                self.held.insert(i, h);
            }
        }
    }

    /// Sends the held deliveries that are next in order; drops the covered ones and those
    /// of another epoch (the store is asked about those).
    fn replay(&mut self, at: &mut Position, room: &mut HoldRoom, sink: &mut impl Sink) {
        if self.held.is_empty() {
            return;
        }
        let mut p = at.pos.unwrap_or(0);
        let epoch = at.epoch;
        let mut freed = 0;
        let mut other_epoch = false;
        self.held.retain(|h| {
            let keep = Some(h.epoch) == epoch && h.seq > p;
            if keep && h.seq == p + 1 {
                p = h.seq;
                sink.message(h.seq, &h.data);
            } else if keep {
                return true;
            }
            other_epoch |= Some(h.epoch) != epoch;
            freed += h.cost();
            false
        });
        // In seq order: a run that follows `p` is sent; what is past a hole stays held.
        at.pos = Some(p);
        self.held_bytes -= freed;
        room.0 += freed;
        self.refetch |= other_epoch;
        if let Some(last) = self.held.last() {
            self.seen = self.seen.max(last.seq);
        }
    }

    /// Starts the hole wait when a hole opened (returns true); ends it when it is gone.
    fn settle(&mut self, at: &Position, now: Instant) -> bool {
        let p = at.pos.unwrap_or(0);
        if self.seen <= p {
            self.hole_since = None;
            return false;
        }
        if self.hole_since.is_some() {
            return false;
        }
        self.hole_since = Some(now);
        true
    }
}

#[cfg(test)]
mod tests;
