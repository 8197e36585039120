//! The memory bound's bookkeeping, apart from the channels it accounts for: every retained
//! message costs its data length + [`MESSAGE_OVERHEAD`](super::log::MESSAGE_OVERHEAD) + its
//! idempotency key length, and all of them together stay under `--retention-total-bytes`.
//!
//! Each shard keeps a [`Ledger`]: a FIFO of `(channel, epoch, seq)` in append order with
//! the bytes and count of what it holds, and adds its changes into the store-wide total of
//! the [`Budget`] when it settles. A shard may grow past its share (`bound / shards`) while
//! the total is under the bound, so one busy channel can use the whole budget; once the
//! total is over, a shard over its share evicts its own oldest down to its share (never
//! further than the total needs). FIFO entries already gone by count or age are skipped
//! lazily, and compacted when they pile up (more than `2 × retained + 1024`).
//!
//! Pure: the channels are reached through [`Channels`], so this is tested without a store.

use super::log::Evicted;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One retained message, in the order of appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FifoEntry {
    pub channel: Arc<str>,
    pub epoch: u64,
    pub seq: u64,
}

/// What a ledger asks of the channels it accounts for.
pub trait Channels {
    /// Evicts `e`'s message if it is still the oldest of its channel (same epoch); returns
    /// its cost, or `None` when that message is already gone.
    fn evict_oldest(&mut self, e: &FifoEntry) -> Option<usize>;
    /// Whether `e`'s message is still retained.
    fn retains(&self, e: &FifoEntry) -> bool;
}

/// One shard's part of the memory bound.
#[derive(Debug, Default)]
pub struct Ledger {
    fifo: VecDeque<FifoEntry>,
    bytes: usize,
    messages: usize,
    /// `bytes` as last added into the store-wide total.
    accounted: usize,
}

impl Ledger {
    /// Bytes accounted to the messages this shard retains.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages this shard retains.
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// FIFO entries, stale ones included.
    pub fn fifo_len(&self) -> usize {
        self.fifo.len()
    }

    /// A message of `cost` bytes was appended.
    pub fn appended(&mut self, channel: Arc<str>, epoch: u64, seq: u64, cost: usize) {
        self.fifo.push_back(FifoEntry {
            channel,
            epoch,
            seq,
        });
        self.bytes += cost;
        self.messages += 1;
    }

    /// Messages left by retention (count or age); their FIFO entries go stale.
    pub fn released(&mut self, evicted: &Evicted) {
        self.bytes -= evicted.bytes;
        self.messages -= evicted.messages();
    }

    /// Evicts oldest-first while over `target` bytes, then drops stale entries at the
    /// front and compacts the FIFO when most of it is stale. Returns the messages evicted.
    pub fn enforce(&mut self, target: usize, channels: &mut impl Channels) -> u64 {
        let mut evicted = 0;
        while self.bytes > target {
            let Some(e) = self.fifo.pop_front() else {
                break;
            };
            if let Some(cost) = channels.evict_oldest(&e) {
                self.bytes -= cost;
                self.messages -= 1;
                evicted += 1;
            }
        }
        while let Some(front) = self.fifo.front() {
            if channels.retains(front) {
                break;
            }
            self.fifo.pop_front();
        }
        if self.fifo.len() > 2 * self.messages + 1024 {
            let fifo = std::mem::take(&mut self.fifo);
            self.fifo = fifo.into_iter().filter(|e| channels.retains(e)).collect();
        }
        evicted
    }
}

/// The store-wide bound: `--retention-total-bytes`, one shard's share of it, and the bytes
/// all shards have accounted.
#[derive(Debug)]
pub struct Budget {
    bound: usize,
    share: usize,
    total: AtomicUsize,
}

impl Budget {
    /// `bound` bytes over `shards` shards.
    pub fn new(bound: usize, shards: usize) -> Self {
        Budget {
            bound,
            share: bound / shards.max(1),
            total: AtomicUsize::new(0),
        }
    }

    /// Bytes accounted over all shards.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Whether the total is over the bound.
    pub fn over(&self) -> bool {
        self.total() > self.bound
    }

    /// Adds what `ledger` changed since it last accounted into the total.
    pub fn account(&self, ledger: &mut Ledger) {
        if ledger.bytes == ledger.accounted {
            // No write to the shared total's cache line when nothing changed.
            return;
        }
        if ledger.bytes > ledger.accounted {
            self.total
                .fetch_add(ledger.bytes - ledger.accounted, Ordering::Relaxed);
        } else {
            self.total
                .fetch_sub(ledger.accounted - ledger.bytes, Ordering::Relaxed);
        }
        ledger.accounted = ledger.bytes;
    }

    /// The bytes `ledger` must come down to now: with the total over the bound and the
    /// shard over its share, its share or as much as the total needs, whichever is more;
    /// otherwise no limit (`usize::MAX`).
    pub fn target(&self, ledger: &Ledger) -> usize {
        let total = self.total();
        if total > self.bound && ledger.bytes > self.share {
            ledger
                .bytes
                .saturating_sub(total - self.bound)
                .max(self.share)
        } else {
            usize::MAX
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Channels as lists of `(epoch, seq, cost)`, oldest first.
    #[derive(Default)]
    struct Fake(HashMap<Arc<str>, VecDeque<(u64, u64, usize)>>);

    impl Fake {
        fn append(&mut self, l: &mut Ledger, ch: &str, cost: usize) {
            let q = self.0.entry(Arc::from(ch)).or_default();
            let seq = q.back().map_or(1, |m| m.1 + 1);
            q.push_back((1, seq, cost));
            l.appended(Arc::from(ch), 1, seq, cost);
        }
        fn seqs(&self, ch: &str) -> Vec<u64> {
            self.0[ch].iter().map(|m| m.1).collect()
        }
    }

    impl Channels for Fake {
        fn evict_oldest(&mut self, e: &FifoEntry) -> Option<usize> {
            let q = self.0.get_mut(&e.channel)?;
            if q.front().is_some_and(|m| (m.0, m.1) == (e.epoch, e.seq)) {
                q.pop_front().map(|m| m.2)
            } else {
                None
            }
        }
        fn retains(&self, e: &FifoEntry) -> bool {
            self.0
                .get(&e.channel)
                .is_some_and(|q| q.iter().any(|m| (m.0, m.1) == (e.epoch, e.seq)))
        }
    }

    #[test]
    fn evicts_oldest_first_across_channels_down_to_the_target() {
        let (mut l, mut ch) = (Ledger::default(), Fake::default());
        for c in ["a", "b", "a", "b", "a"] {
            ch.append(&mut l, c, 10);
        }
        assert_eq!((l.bytes(), l.messages()), (50, 5));
        assert_eq!(l.enforce(usize::MAX, &mut ch), 0);
        assert_eq!(l.enforce(25, &mut ch), 3, "a1, b1, a2 go");
        assert_eq!((ch.seqs("a"), ch.seqs("b")), (vec![3], vec![2]));
        assert_eq!((l.bytes(), l.messages(), l.fifo_len()), (20, 2, 2));
    }

    #[test]
    fn entries_gone_by_count_or_age_are_skipped_then_compacted() {
        let (mut l, mut ch) = (Ledger::default(), Fake::default());
        for _ in 0..3 {
            ch.append(&mut l, "a", 10);
        }
        // Retention drops a1 and a2 on its own: the ledger is told, its entries go stale.
        ch.0.get_mut("a").unwrap().drain(..2);
        l.released(&Evicted {
            by_count: 2,
            by_age: 0,
            bytes: 20,
        });
        // Stale entries cost nothing when skipped: only a3 is evicted to reach 0.
        assert_eq!(l.enforce(0, &mut ch), 1);
        assert_eq!((l.bytes(), l.messages(), l.fifo_len()), (0, 0, 0));
        // Piled-up stale entries behind a live front are compacted.
        for _ in 0..2000 {
            ch.append(&mut l, "b", 1);
        }
        let q = ch.0.get_mut("b").unwrap();
        let live = q.pop_front().unwrap();
        q.clear();
        q.push_back(live);
        l.released(&Evicted {
            by_count: 1999,
            by_age: 0,
            bytes: 1999,
        });
        l.enforce(usize::MAX, &mut ch);
        assert_eq!(l.fifo_len(), 1);
    }

    #[test]
    fn a_shard_over_its_share_comes_down_only_as_far_as_the_total_needs() {
        let b = Budget::new(100, 4); // share 25
        let (mut hot, mut cold) = (Ledger::default(), Ledger::default());
        let mut ch = Fake::default();
        for _ in 0..9 {
            ch.append(&mut hot, "hot", 10);
        }
        b.account(&mut hot);
        assert_eq!(b.total(), 90);
        assert!(!b.over());
        assert_eq!(b.target(&hot), usize::MAX, "under the bound: no limit");
        for _ in 0..2 {
            ch.append(&mut cold, "cold", 10);
        }
        b.account(&mut cold);
        assert_eq!(b.total(), 110);
        assert!(b.over());
        assert_eq!(b.target(&cold), usize::MAX, "cold is within its share");
        assert_eq!(b.target(&hot), 80, "90 - (110 - 100)");
        assert_eq!(hot.enforce(b.target(&hot), &mut ch), 1);
        b.account(&mut hot);
        assert_eq!(b.total(), 100);
        // Far over the bound, a shard still keeps its share.
        let tight = Budget::new(40, 4); // share 10
        let (mut small, mut large) = (Ledger::default(), Ledger::default());
        for _ in 0..3 {
            ch.append(&mut small, "s", 5);
        }
        for _ in 0..9 {
            ch.append(&mut large, "l", 5);
        }
        tight.account(&mut small);
        tight.account(&mut large);
        assert_eq!(tight.total(), 60);
        assert_eq!(tight.target(&small), 10, "15 - 20 would go below its share");
        assert_eq!(tight.target(&large), 25, "45 - 20");
        // Releasing lowers the total at the next account.
        large.released(&Evicted {
            by_count: 9,
            by_age: 0,
            bytes: 45,
        });
        tight.account(&mut large);
        assert_eq!(tight.total(), 15);
    }
}
