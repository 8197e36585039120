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
mod tests {
    use super::*;

    /// What a client was sent: `Gap(epoch, first)` and `Msg(seq)` in order.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Sent {
        Gap(u64, u64),
        Msg(u64),
    }
    use Sent::*;

    #[derive(Debug, Default)]
    struct Client(Vec<Sent>);

    impl Sink for Client {
        fn gap(&mut self, epoch: u64, first_seq: u64) {
            self.0.push(Gap(epoch, first_seq));
        }
        fn message(&mut self, seq: u64, data: &[u8]) {
            assert_eq!(
                data,
                seq.to_string().as_bytes(),
                "seq {seq} carries its own data"
            );
            self.0.push(Msg(seq));
        }
    }

    fn msgs(seqs: impl IntoIterator<Item = u64>) -> Vec<(u64, Bytes)> {
        seqs.into_iter()
            .map(|s| (s, Bytes::from(s.to_string())))
            .collect()
    }

    const WAIT: Duration = Duration::from_millis(100);
    const PAGE: usize = 1 << 20;

    /// One connection and the side of it the loop keeps, driven like the loop drives it.
    struct Conn {
        at: Position,
        behind: Behind,
        room: HoldRoom,
        client: Client,
        t0: Instant,
        now: Instant,
        /// Fetches sent: `since` of each.
        fetches: Vec<u64>,
    }

    impl Conn {
        fn resume(since: Option<u64>, epoch: Option<u64>) -> Conn {
            let t0 = Instant::now();
            Conn {
                at: Position {
                    pos: since,
                    epoch,
                    live: false,
                },
                behind: Behind::default(),
                room: HoldRoom(1 << 20),
                client: Client::default(),
                t0,
                now: t0,
                fetches: Vec::new(),
            }
        }

        fn backlog_page(
            &mut self,
            epoch: u64,
            last: u64,
            gap: Option<u64>,
            m: &[(u64, Bytes)],
            page: usize,
        ) {
            let b = Backlog {
                epoch,
                last_seq: last,
                gap_first_seq: gap,
                messages: m,
            };
            self.behind.backlog(
                &mut self.at,
                &b,
                page,
                &mut self.room,
                self.now,
                &mut self.client,
            );
            self.maybe_fetch();
        }

        fn backlog(&mut self, epoch: u64, last: u64, gap: Option<u64>, m: &[(u64, Bytes)]) {
            self.backlog_page(epoch, last, gap, m, PAGE);
        }

        fn deliver(&mut self, epoch: u64, seq: u64) {
            let data = seq.to_string();
            self.behind.deliver(
                &mut self.at,
                epoch,
                seq,
                data.as_bytes(),
                &mut self.room,
                self.now,
                &mut self.client,
            );
            self.maybe_fetch();
        }

        fn after(&mut self, ms: u64) {
            self.now = self.t0 + Duration::from_millis(ms);
            self.maybe_fetch();
        }

        /// What the loop does after every event (the socket is drained here).
        fn maybe_fetch(&mut self) {
            if let Some(due) = self.behind.fetch_due(&self.at, self.now, WAIT) {
                if due <= self.now {
                    self.fetches.push(self.at.pos.unwrap());
                    self.behind.fetch_sent();
                }
            }
        }

        fn clear(&self) -> bool {
            self.behind.is_clear(&self.at)
        }
    }

    #[test]
    fn in_order_and_duplicates() {
        let mut c = Conn::resume(Some(3), None);
        c.backlog(1, 5, None, &msgs(4..=5));
        for seq in [5, 6, 6, 4, 7] {
            c.deliver(1, seq);
        }
        assert_eq!(c.client.0, [Msg(4), Msg(5), Msg(6), Msg(7)]);
        assert_eq!(c.at.pos, Some(7));
        assert!(c.clear() && c.fetches.is_empty());
    }

    #[test]
    fn a_gap_restarts_the_position_and_is_told_once() {
        let mut c = Conn::resume(Some(3), Some(2));
        let m = msgs(5..=6);
        c.backlog(7, 6, Some(5), &m);
        // The same answer again (a resubscribe racing a reconnect): nothing new.
        c.backlog(7, 6, Some(5), &m);
        assert_eq!(c.client.0, [Gap(7, 5), Msg(5), Msg(6)]);
        assert_eq!((c.at.pos, c.at.epoch, c.at.live), (Some(6), Some(7), true));
        assert!(c.clear());
    }

    #[test]
    fn live_only_starts_at_the_last_seq() {
        let mut c = Conn::resume(None, None);
        c.backlog(3, 40, None, &[]);
        c.deliver(3, 40);
        c.deliver(3, 41);
        assert_eq!(c.client.0, [Msg(41)]);
        assert!(c.clear());
    }

    #[test]
    fn a_hole_filled_by_a_late_delivery_needs_no_fetch() {
        let mut c = Conn::resume(Some(0), None);
        c.backlog(1, 1, None, &msgs([1]));
        c.deliver(1, 3);
        c.deliver(1, 4);
        assert_eq!(c.client.0, [Msg(1)], "3 and 4 wait for 2");
        assert!(!c.clear());
        c.after(50);
        c.deliver(1, 2);
        assert_eq!(c.client.0, [Msg(1), Msg(2), Msg(3), Msg(4)]);
        c.after(200);
        assert!(c.fetches.is_empty() && c.clear());
    }

    #[test]
    fn a_hole_is_filled_from_the_store_after_the_wait() {
        let mut c = Conn::resume(Some(0), None);
        c.backlog(1, 1, None, &msgs([1]));
        c.deliver(1, 3);
        c.after(99);
        assert!(c.fetches.is_empty(), "waits for a slower link first");
        c.after(100);
        assert_eq!(c.fetches, [1]);
        // Deliveries meanwhile are held or dropped as usual.
        c.deliver(1, 4);
        c.backlog(1, 4, None, &msgs(2..=4));
        assert_eq!(c.client.0, [Msg(1), Msg(2), Msg(3), Msg(4)]);
        c.deliver(1, 3);
        c.deliver(1, 5);
        assert_eq!(c.client.0.last(), Some(&Msg(5)));
        assert!(c.clear() && c.fetches.len() == 1);
    }

    #[test]
    fn an_unfillable_hole_is_a_gap() {
        let mut c = Conn::resume(Some(0), None);
        c.backlog(1, 1, None, &msgs([1]));
        c.deliver(1, 5);
        c.after(100);
        assert_eq!(c.fetches, [1]);
        // 2..=4 were evicted meanwhile: the store's answer says where messages go on.
        c.backlog(1, 5, Some(5), &msgs([5]));
        assert_eq!(c.client.0, [Msg(1), Gap(1, 5), Msg(5)]);
        assert!(c.clear());
    }

    #[test]
    fn a_store_answer_without_the_missing_messages_is_a_gap_not_a_loop() {
        let mut c = Conn::resume(Some(0), None);
        c.backlog(1, 1, None, &msgs([1]));
        c.deliver(1, 3);
        c.after(100);
        // An answer that claims seq 3 exists but brings nothing and no gap.
        c.backlog(1, 3, None, &[]);
        assert_eq!(c.client.0, [Msg(1), Gap(1, 4)]);
        assert_eq!(c.fetches, [1]);
        assert!(c.clear());
    }

    #[test]
    fn another_epoch_asks_the_store_at_once() {
        let mut c = Conn::resume(Some(0), None);
        c.backlog(1, 2, None, &msgs(1..=2));
        c.deliver(9, 1);
        assert_eq!(c.fetches, [2], "no wait: the history changed");
        assert_eq!(c.client.0, [Msg(1), Msg(2)]);
        // The store's current log: a gap, then its messages.
        c.backlog(9, 1, Some(1), &msgs([1]));
        c.deliver(9, 2);
        assert_eq!(c.client.0, [Msg(1), Msg(2), Gap(9, 1), Msg(1), Msg(2)]);
        assert_eq!(c.at.epoch, Some(9));
        assert!(c.clear());
    }

    #[test]
    fn deliveries_before_the_first_backlog_wait_for_it() {
        let mut c = Conn::resume(Some(2), None);
        c.deliver(1, 5);
        c.deliver(1, 4);
        c.after(500);
        assert!(c.client.0.is_empty() && c.fetches.is_empty());
        c.backlog(1, 3, None, &msgs([3]));
        assert_eq!(c.client.0, [Msg(3), Msg(4), Msg(5)]);
        assert!(c.clear() && c.fetches.is_empty());
    }

    #[test]
    fn over_the_bound_the_held_copies_go_and_the_fetch_brings_them() {
        let mut c = Conn::resume(Some(0), None);
        c.room = HoldRoom(2 * (HELD_OVERHEAD + 1));
        c.backlog(1, 1, None, &msgs([1]));
        for seq in 3..=9 {
            c.deliver(1, seq);
        }
        assert!(c.room.0 <= 2 * (HELD_OVERHEAD + 1));
        c.after(100);
        assert_eq!(c.fetches, [1]);
        c.backlog(1, 9, None, &msgs(2..=9));
        assert_eq!(c.client.0, (1..=9).map(Msg).collect::<Vec<_>>());
        assert!(c.clear());
        assert_eq!(c.room.0, 2 * (HELD_OVERHEAD + 1), "all room given back");
    }

    #[test]
    fn a_large_resume_comes_page_by_page() {
        let mut c = Conn::resume(Some(0), None);
        let all = msgs(1..=10);
        // A gateway that ignores the page size sends everything; one page is rendered.
        let page = 3 * (1 + PAGE_OVERHEAD) + 2;
        c.backlog_page(1, 10, None, &all, page);
        assert_eq!(c.client.0, [Msg(1), Msg(2), Msg(3)]);
        assert_eq!(
            c.fetches,
            [3],
            "the next page is asked for at once (drained)"
        );
        // A live delivery meanwhile is a hole; the pages bring it in order.
        c.deliver(1, 11);
        c.backlog_page(1, 11, None, &msgs(4..=11), page);
        assert_eq!(c.fetches, [3, 6]);
        c.backlog_page(1, 11, None, &msgs(7..=9), page);
        c.backlog_page(1, 11, None, &msgs(10..=11), page);
        assert_eq!(c.client.0, (1..=11).map(Msg).collect::<Vec<_>>());
        assert_eq!(c.fetches, [3, 6, 9]);
        assert!(c.clear());
    }

    #[test]
    fn one_message_per_page_at_least() {
        let mut c = Conn::resume(Some(0), None);
        c.backlog_page(1, 2, None, &msgs(1..=2), 1);
        assert_eq!(c.client.0, [Msg(1)]);
        c.backlog_page(1, 2, None, &msgs([2]), 1);
        assert_eq!(c.client.0, [Msg(1), Msg(2)]);
        assert!(c.clear());
    }

    #[test]
    fn a_lost_link_forgets_the_fetch_in_flight() {
        let mut c = Conn::resume(Some(0), None);
        c.backlog_page(1, 3, None, &msgs(1..=3), 1);
        assert_eq!(c.fetches, [1]);
        c.behind.link_lost();
        // The resubscription's Backlog carries on from the position.
        c.backlog_page(1, 3, None, &msgs(2..=3), 1);
        assert_eq!(c.fetches, [1, 2]);
    }
}
