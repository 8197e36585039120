//! Per-channel delivery checking without I/O: what was published (seqs from 202 answers,
//! counts from NDJSON batches) against what a client received (loss, duplicates, order).
//!
//! A gap frame (`{"gap":true,"epoch":E,"first_seq":F}`) says the log's history changed
//! and delivery goes on at `F`: what follows is judged from there. Seqs from `F` up to the
//! highest one received before the gap may come again (the new epoch's replay of what is
//! retained): those are counted as `replayed`, not as duplicates or reordering. Loss is
//! still judged against every accepted seq: a gap excuses nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the publisher knows about one channel. Shared by publisher tasks (atomics).
#[derive(Debug)]
pub struct Published {
    /// Messages accepted for the channel.
    pub count: AtomicU64,
    /// Lowest seq seen in a 202 answer (`u64::MAX` until one is seen).
    pub min_seq: AtomicU64,
    /// Highest seq seen in a 202 answer (0 until one is seen).
    pub max_seq: AtomicU64,
    /// Last per-channel counter put in a payload (`--target nchan`: the `i` field).
    pub sent: AtomicU64,
    /// Messages accepted without a seq (NDJSON lines, broadcasts), part of `count`.
    pub unnumbered: AtomicU64,
}

impl Default for Published {
    fn default() -> Self {
        Published {
            count: AtomicU64::new(0),
            min_seq: AtomicU64::new(u64::MAX),
            max_seq: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            unnumbered: AtomicU64::new(0),
        }
    }
}

impl Published {
    /// One message accepted with a known seq.
    pub fn accepted_seq(&self, seq: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.min_seq.fetch_min(seq, Ordering::Relaxed);
        self.max_seq.fetch_max(seq, Ordering::Relaxed);
    }

    /// `n` messages accepted in a batch or a broadcast (seqs not reported).
    pub fn accepted_count(&self, n: u64) {
        self.count.fetch_add(n, Ordering::Relaxed);
        self.unnumbered.fetch_add(n, Ordering::Relaxed);
    }

    /// The inclusive seq range the channel's subscriber must receive, if anything was
    /// published. Seqs start at 1 on a fresh channel; with known seqs the range starts at
    /// the lowest one (older history on a reused channel is not expected), less the
    /// messages accepted without a seq, which may sit below it: single publishes mixed
    /// with broadcasts on a fresh channel still expect exactly `1..=count`.
    pub fn expected(&self) -> Option<(u64, u64)> {
        let count = self.count.load(Ordering::Relaxed);
        if count == 0 {
            return None;
        }
        let min = self.min_seq.load(Ordering::Relaxed);
        let max = self.max_seq.load(Ordering::Relaxed);
        let unnumbered = self.unnumbered.load(Ordering::Relaxed);
        let lo = if min == u64::MAX {
            1
        } else {
            min.saturating_sub(unnumbered).max(1)
        };
        Some((lo, max.max(lo + count - 1)))
    }
}

/// Seqs one client has received on its channel, as sorted disjoint ranges (one range when
/// delivery is in order), plus counts of what was wrong.
#[derive(Debug, Default, Clone)]
pub struct SeqChecker {
    ranges: Vec<(u64, u64)>,
    max_seen: u64,
    /// Highest seq delivered since the last gap (or the start): a new seq below it is out
    /// of order. Equal to `max_seen` until a gap moves it back to the gap's `first_seq - 1`.
    cursor: u64,
    /// After a gap: seqs up to this one that were received before it may come again.
    replay_to: Option<u64>,
    pub received: u64,
    pub unique: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub gaps: u64,
    /// Seqs received again in the replay that followed a gap.
    pub replayed: u64,
    /// Gaps whose `first_seq` was beyond everything received + 1: they said messages
    /// were gone.
    pub gaps_with_missing: u64,
    /// Unix ms of the first and the last gap (0: none).
    pub gap_first_ms: u64,
    pub gap_last_ms: u64,
    /// The channel's epoch as the last gap frame said (sent back as `epoch=` on resumes).
    pub epoch: Option<u64>,
    /// `--check-ids`: payload message number -> the seq it first came with.
    ids: Option<HashMap<u64, u64>>,
    /// `--check-ids`: messages received under a second seq.
    pub id_duplicated: u64,
    /// The first few of them: (message number, its first seq, the second seq).
    id_examples: Vec<(u64, u64, u64)>,
}

/// How many id duplicates a checker keeps as examples.
const ID_EXAMPLES: usize = 4;

/// How one received seq was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    OutOfOrder,
    Duplicate,
    /// Sent again after a gap (see the module doc).
    Replayed,
}

impl Seen {
    /// Received for the first time (in order or not).
    pub fn is_first(self) -> bool {
        matches!(self, Seen::New | Seen::OutOfOrder)
    }
}

impl SeqChecker {
    /// A checker that also checks payload message numbers (`--check-ids`).
    pub fn with_ids() -> SeqChecker {
        SeqChecker {
            ids: Some(HashMap::new()),
            ..SeqChecker::default()
        }
    }

    /// Records the payload message number `id` that came with `seq` (`--check-ids` only):
    /// the same message under another seq is a duplicate. Returns whether it was one.
    pub fn observe_id(&mut self, id: u64, seq: u64) -> bool {
        let Some(ids) = &mut self.ids else {
            return false;
        };
        match ids.get(&id) {
            Some(&first) if first != seq => {
                self.id_duplicated += 1;
                if self.id_examples.len() < ID_EXAMPLES {
                    self.id_examples.push((id, first, seq));
                }
                true
            }
            Some(_) => false,
            None => {
                ids.insert(id, seq);
                false
            }
        }
    }

    /// The first id duplicates seen: (message number, first seq, second seq).
    pub fn id_duplicate_examples(&self) -> &[(u64, u64, u64)] {
        &self.id_examples
    }

    /// Records one received seq.
    pub fn observe(&mut self, seq: u64) -> Seen {
        self.received += 1;
        // Index of the first range whose end is >= seq - 1 (could touch or hold seq).
        let i = self
            .ranges
            .partition_point(|&(_, hi)| hi.saturating_add(1) < seq);
        if let Some(&(lo, hi)) = self.ranges.get(i) {
            if lo <= seq && seq <= hi {
                if self.replay_to.is_some_and(|to| seq <= to) && seq > self.cursor {
                    self.replayed += 1;
                    self.advance(seq);
                    return Seen::Replayed;
                }
                self.duplicated += 1;
                return Seen::Duplicate;
            }
        }
        let verdict = if seq < self.cursor {
            Seen::OutOfOrder
        } else {
            Seen::New
        };
        if verdict == Seen::OutOfOrder {
            self.out_of_order += 1;
        }
        self.unique += 1;
        self.max_seen = self.max_seen.max(seq);
        self.advance(seq);
        match self.ranges.get_mut(i) {
            Some(r) if r.1 + 1 == seq => {
                r.1 = seq;
                // Join with the next range if now adjacent.
                if let Some(&(nlo, nhi)) = self.ranges.get(i + 1) {
                    if nlo == seq + 1 {
                        self.ranges[i].1 = nhi;
                        self.ranges.remove(i + 1);
                    }
                }
            }
            Some(r) if r.0 == seq + 1 => r.0 = seq,
            _ => self.ranges.insert(i, (seq, seq)),
        }
        verdict
    }

    /// Delivery reached `seq`; a replay ends once it is past what it replays.
    fn advance(&mut self, seq: u64) {
        self.cursor = self.cursor.max(seq);
        if self.replay_to.is_some_and(|to| self.cursor >= to) {
            self.replay_to = None;
        }
    }

    /// A gap signal from the server at `now_ms`: delivery goes on at `first_seq` (when the
    /// frame says) of `epoch`.
    pub fn gap(&mut self, epoch: Option<u64>, first_seq: Option<u64>, now_ms: u64) {
        self.gaps += 1;
        if self.gap_first_ms == 0 {
            self.gap_first_ms = now_ms;
        }
        self.gap_last_ms = now_ms;
        if epoch.is_some() {
            self.epoch = epoch;
        }
        let Some(first) = first_seq else {
            return;
        };
        if first > self.max_seen + 1 {
            self.gaps_with_missing += 1;
        }
        self.cursor = first.saturating_sub(1);
        self.replay_to = (self.max_seen >= first).then_some(self.max_seen);
    }

    /// Highest seq received (the `since` to resume from).
    pub fn last_seq(&self) -> u64 {
        self.max_seen
    }

    /// How many seqs of `lo..=hi` were received.
    pub fn covered(&self, lo: u64, hi: u64) -> u64 {
        self.ranges
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (a.max(lo), b.min(hi));
                if a <= b {
                    b - a + 1
                } else {
                    0
                }
            })
            .sum()
    }

    /// Seqs of `expected` never received.
    pub fn lost(&self, expected: Option<(u64, u64)>) -> u64 {
        match expected {
            Some((lo, hi)) => (hi - lo + 1) - self.covered(lo, hi),
            None => 0,
        }
    }

    /// Received seqs outside `expected` (neither published by this run nor older history
    /// below it): a server inventing messages.
    pub fn unexpected(&self, expected: Option<(u64, u64)>) -> u64 {
        let hi = expected.map(|e| e.1).unwrap_or(0);
        self.ranges
            .iter()
            .map(|&(a, b)| if b > hi { b - a.max(hi + 1) + 1 } else { 0 })
            .sum()
    }
}

/// Totals of a checked run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckTotals {
    pub expected: u64,
    pub received: u64,
    pub unique: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub gaps: u64,
    pub unexpected: u64,
    pub channels_with_loss: u64,
    /// Seqs sent again by the replay after a gap (not duplicates).
    #[serde(default)]
    pub replayed: u64,
    /// Gaps that said messages were gone (`first_seq` beyond what was received + 1).
    #[serde(default)]
    pub gaps_with_missing: u64,
    #[serde(default)]
    pub channels_with_gaps: u64,
    #[serde(default)]
    pub max_gaps_per_channel: u64,
    /// Unix ms of the first and the last gap frame (0: none).
    #[serde(default)]
    pub gap_first_unix_ms: u64,
    #[serde(default)]
    pub gap_last_unix_ms: u64,
    /// `--check-ids`: messages received under a second seq.
    #[serde(default)]
    pub id_duplicated: u64,
}

/// The earlier of two unix-ms stamps where 0 means none.
fn min_stamp(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

impl CheckTotals {
    /// Adds one channel's result.
    pub fn add_channel(&mut self, c: &SeqChecker, p: &Published) {
        let exp = p.expected();
        let lost = c.lost(exp);
        self.expected += exp.map(|(lo, hi)| hi - lo + 1).unwrap_or(0);
        self.received += c.received;
        self.unique += c.unique;
        self.lost += lost;
        self.duplicated += c.duplicated;
        self.out_of_order += c.out_of_order;
        self.gaps += c.gaps;
        self.unexpected += c.unexpected(exp);
        self.channels_with_loss += u64::from(lost > 0);
        self.replayed += c.replayed;
        self.gaps_with_missing += c.gaps_with_missing;
        self.channels_with_gaps += u64::from(c.gaps > 0);
        self.max_gaps_per_channel = self.max_gaps_per_channel.max(c.gaps);
        self.gap_first_unix_ms = min_stamp(self.gap_first_unix_ms, c.gap_first_ms);
        self.gap_last_unix_ms = self.gap_last_unix_ms.max(c.gap_last_ms);
        self.id_duplicated += c.id_duplicated;
    }

    pub fn merge(&mut self, o: &CheckTotals) {
        self.expected += o.expected;
        self.received += o.received;
        self.unique += o.unique;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.gaps += o.gaps;
        self.unexpected += o.unexpected;
        self.channels_with_loss += o.channels_with_loss;
        self.replayed += o.replayed;
        self.gaps_with_missing += o.gaps_with_missing;
        self.channels_with_gaps += o.channels_with_gaps;
        self.max_gaps_per_channel = self.max_gaps_per_channel.max(o.max_gaps_per_channel);
        self.gap_first_unix_ms = min_stamp(self.gap_first_unix_ms, o.gap_first_unix_ms);
        self.gap_last_unix_ms = self.gap_last_unix_ms.max(o.gap_last_unix_ms);
        self.id_duplicated += o.id_duplicated;
    }

    /// No loss, duplicate, reordering, gap (unless `allow_gaps`) or invented message.
    pub fn clean(&self, allow_gaps: bool) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.id_duplicated == 0
            && self.out_of_order == 0
            && (allow_gaps || self.gaps == 0)
            && self.unexpected == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(seqs: &[u64]) -> Published {
        let p = Published::default();
        for &s in seqs {
            p.accepted_seq(s);
        }
        p
    }

    #[test]
    fn in_order_is_clean() {
        let mut c = SeqChecker::default();
        for s in 1..=100 {
            assert_eq!(c.observe(s), Seen::New);
        }
        assert_eq!(c.ranges, vec![(1, 100)]);
        let p = published(&(1..=100).collect::<Vec<_>>());
        let mut t = CheckTotals::default();
        t.add_channel(&c, &p);
        assert!(t.clean(false), "{t:?}");
        assert_eq!((t.expected, t.unique), (100, 100));
        assert_eq!(c.last_seq(), 100);
    }

    #[test]
    fn loss_is_counted() {
        let mut c = SeqChecker::default();
        for s in [1, 2, 4, 5, 9] {
            c.observe(s);
        }
        let p = published(&(1..=10).collect::<Vec<_>>());
        assert_eq!(c.lost(p.expected()), 5); // 3, 6, 7, 8, 10
        let mut t = CheckTotals::default();
        t.add_channel(&c, &p);
        assert_eq!(
            (t.lost, t.channels_with_loss, t.duplicated, t.out_of_order),
            (5, 1, 0, 0)
        );
        assert!(!t.clean(true));
        // Nothing received at all.
        let empty = SeqChecker::default();
        assert_eq!(empty.lost(p.expected()), 10);
    }

    #[test]
    fn duplicates_are_counted() {
        let mut c = SeqChecker::default();
        for s in [1, 2, 3, 2, 3, 3, 4] {
            c.observe(s);
        }
        assert_eq!(
            (c.received, c.unique, c.duplicated, c.out_of_order),
            (7, 4, 3, 0)
        );
        assert_eq!(c.lost(published(&[1, 2, 3, 4]).expected()), 0);
    }

    #[test]
    fn reordering_is_counted_and_fills_holes() {
        let mut c = SeqChecker::default();
        assert_eq!(c.observe(1), Seen::New);
        assert_eq!(c.observe(3), Seen::New);
        assert_eq!(c.observe(5), Seen::New);
        assert_eq!(c.observe(2), Seen::OutOfOrder);
        assert_eq!(c.ranges, vec![(1, 3), (5, 5)]);
        assert_eq!(c.observe(4), Seen::OutOfOrder);
        assert_eq!(c.ranges, vec![(1, 5)]);
        assert_eq!(c.observe(4), Seen::Duplicate);
        assert_eq!((c.out_of_order, c.duplicated, c.unique), (2, 1, 5));
        assert_eq!(c.lost(published(&[1, 2, 3, 4, 5]).expected()), 0);
        // A range extended downwards.
        let mut c = SeqChecker::default();
        c.observe(10);
        c.observe(9);
        assert_eq!(c.ranges, vec![(9, 10)]);
    }

    #[test]
    fn a_gaps_replay_is_not_a_duplicate() {
        let mut c = SeqChecker::default();
        for s in 1..=5 {
            c.observe(s);
        }
        // The history changed: delivery goes on at 2 of epoch 9, and 2..=5 come again.
        c.gap(Some(9), Some(2), 1_000);
        assert_eq!(c.epoch, Some(9));
        for s in 2..=5 {
            assert_eq!(c.observe(s), Seen::Replayed);
        }
        assert_eq!(c.observe(6), Seen::New);
        // The replay is over: a copy now is a duplicate again, and an old seq too.
        assert_eq!(c.observe(5), Seen::Duplicate);
        assert_eq!(c.observe(3), Seen::Duplicate);
        assert_eq!(
            (c.replayed, c.duplicated, c.out_of_order, c.unique),
            (4, 2, 0, 6)
        );
        assert_eq!((c.gaps, c.gaps_with_missing, c.last_seq()), (1, 0, 6));
        let mut t = CheckTotals::default();
        t.add_channel(&c, &published(&(1..=6).collect::<Vec<_>>()));
        assert_eq!((t.replayed, t.channels_with_gaps, t.lost), (4, 1, 0));
        // The two copies after the replay fail it, gaps allowed or not.
        assert!(!t.clean(true));
    }

    #[test]
    fn after_a_gap_order_counts_from_its_first_seq() {
        let mut c = SeqChecker::default();
        for s in [1, 2, 4] {
            c.observe(s);
        }
        // 3 was never received; the replay brings it, in order.
        c.gap(None, Some(1), 5);
        for s in [1, 2, 3, 4, 5] {
            assert!(matches!(c.observe(s), Seen::Replayed | Seen::New), "{s}");
        }
        assert_eq!((c.replayed, c.unique, c.out_of_order), (3, 5, 0));
        // Going backwards within the new order is reordering.
        c.gap(None, Some(4), 6);
        assert_eq!(c.observe(5), Seen::Replayed);
        assert_eq!(c.observe(4), Seen::Duplicate);
        // A gap that says messages are gone: 6..=8 never come.
        c.gap(None, Some(9), 7);
        assert_eq!(c.observe(9), Seen::New);
        assert_eq!((c.gaps, c.gaps_with_missing), (3, 1));
        assert_eq!((c.gap_first_ms, c.gap_last_ms), (5, 7));
        assert_eq!(
            c.lost(published(&(1..=9).collect::<Vec<_>>()).expected()),
            3
        );
    }

    #[test]
    fn one_message_under_two_seqs_is_an_id_duplicate() {
        let mut c = SeqChecker::default();
        // Without --check-ids nothing is kept.
        assert!(!c.observe_id(7, 1));
        assert!(!c.observe_id(7, 2));
        let mut c = SeqChecker::with_ids();
        assert!(!c.observe_id(7, 1));
        // The same seq again (a replay, a duplicate) is the seq check's business.
        assert!(!c.observe_id(7, 1));
        assert!(c.observe_id(7, 2));
        assert!(!c.observe_id(8, 3));
        assert_eq!(c.id_duplicated, 1);
        assert_eq!(c.id_duplicate_examples(), &[(7, 1, 2)]);
        let mut t = CheckTotals::default();
        t.add_channel(&c, &Published::default());
        assert_eq!(t.id_duplicated, 1);
        assert!(!t.clean(true));
    }

    #[test]
    fn gap_figures_merge() {
        let mut a = CheckTotals {
            gaps: 1,
            gap_first_unix_ms: 50,
            gap_last_unix_ms: 60,
            max_gaps_per_channel: 1,
            ..CheckTotals::default()
        };
        let b = CheckTotals {
            gaps: 3,
            gap_first_unix_ms: 40,
            gap_last_unix_ms: 55,
            max_gaps_per_channel: 2,
            ..CheckTotals::default()
        };
        a.merge(&b);
        a.merge(&CheckTotals::default());
        assert_eq!(
            (
                a.gaps,
                a.gap_first_unix_ms,
                a.gap_last_unix_ms,
                a.max_gaps_per_channel
            ),
            (4, 40, 60, 2)
        );
        assert!(a.clean(true) && !a.clean(false));
    }

    #[test]
    fn batch_counts_and_history() {
        // Batches: only counts are known; the range is 1..=count.
        let p = Published::default();
        p.accepted_count(3);
        p.accepted_count(2);
        assert_eq!(p.expected(), Some((1, 5)));
        // Known seqs on a reused channel: older history is not expected, and not unexpected.
        let p = published(&[41, 42, 43]);
        assert_eq!(p.expected(), Some((41, 43)));
        let mut c = SeqChecker::default();
        for s in 35..=43 {
            c.observe(s);
        }
        assert_eq!((c.lost(p.expected()), c.unexpected(p.expected())), (0, 0));
        // A seq above everything published was invented by the server.
        c.observe(50);
        assert_eq!(c.unexpected(p.expected()), 1);
        assert_eq!(Published::default().expected(), None);
    }

    #[test]
    fn single_publishes_mixed_with_broadcasts() {
        // Fresh channel: a broadcast took seq 1, singles 2 and 4, another broadcast 3.
        let p = published(&[2, 4]);
        p.accepted_count(2);
        assert_eq!(p.expected(), Some((1, 4)));
        // The last message was a broadcast: its seq is above every known one.
        let p = published(&[1, 2]);
        p.accepted_count(1);
        assert_eq!(p.expected(), Some((1, 3)));
        let mut c = SeqChecker::default();
        for s in 1..=2 {
            c.observe(s);
        }
        assert_eq!(c.lost(p.expected()), 1);
        c.observe(3);
        assert_eq!((c.lost(p.expected()), c.unexpected(p.expected())), (0, 0));
        // A reused channel (`--channel-prefix` again): the range starts as far below the
        // lowest known seq as the messages without one could reach, so older history may
        // be expected there.
        let p = published(&[41, 42]);
        p.accepted_count(1);
        assert_eq!(p.expected(), Some((40, 42)));
    }
}
