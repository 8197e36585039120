//! Unit tests of the delivery order rules.

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
