//! The coarse timing wheel of a loop thread.

/// Entries (8 bytes each) a wheel slot keeps room for once fired or compacted.
pub(super) const WHEEL_SLOT_KEEP: usize = 256;

/// Coarse timing wheel: 1 s slots of `(key, gen)`; an entry whose generation no longer
/// matches its slot is ignored when it fires.
pub(super) struct Wheel {
    pub(super) slots: Vec<Vec<(u32, u32)>>,
    /// Next second to fire.
    pub(super) next: u32,
    /// Entries in all slots, stale ones included.
    pub(super) len: usize,
    /// Entries left by the last [`Wheel::compact`].
    pub(super) compacted_len: usize,
}

impl Wheel {
    pub(super) fn new(span: u32, now: u32) -> Wheel {
        Wheel {
            slots: (0..span + 2).map(|_| Vec::new()).collect(),
            next: now,
            len: 0,
            compacted_len: 0,
        }
    }

    pub(super) fn add(&mut self, at: u32, key: usize, gen: u32) {
        let len = self.slots.len() as u32;
        let at = at.clamp(self.next, self.next + len - 1);
        self.slots[(at % len) as usize].push((key as u32, gen));
        self.len += 1;
    }

    /// Takes the entries of second `sec` (only when it is the next one due).
    pub(super) fn take(&mut self, sec: u32) -> Vec<(u32, u32)> {
        let len = self.slots.len() as u32;
        let v = std::mem::take(&mut self.slots[(sec % len) as usize]);
        self.len -= v.len();
        v
    }

    /// Drops the entries `live` rejects (a re-held long-poll leaves its previous deadlines
    /// behind, up to two minutes ahead) and gives back the room they took.
    pub(super) fn compact(&mut self, live: impl Fn(u32, u32) -> bool) {
        self.len = 0;
        for slot in &mut self.slots {
            slot.retain(|&(key, gen)| live(key, gen));
            if slot.capacity() > WHEEL_SLOT_KEEP && slot.capacity() > 2 * slot.len() {
                slot.shrink_to_fit();
            }
            self.len += slot.len();
        }
        self.compacted_len = self.len;
    }

    /// Whether stale entries are worth a [`Wheel::compact`] with `conns` connections open:
    /// the entries grew past twice both what the last compaction left and the connections,
    /// so a compaction (one pass over every entry) comes after at least as many adds as it
    /// visits, and stale entries stay a bounded multiple of live ones.
    pub(super) fn wants_compact(&self, conns: usize) -> bool {
        self.len > 2 * self.compacted_len.max(conns) + 1024
    }

    pub(super) fn put_back(&mut self, sec: u32, mut v: Vec<(u32, u32)>) {
        let len = self.slots.len() as u32;
        let slot = &mut self.slots[(sec % len) as usize];
        v.clear();
        if v.capacity() > WHEEL_SLOT_KEEP {
            // Its next use is a wheel turn away: no room is kept for a burst that passed.
            v = Vec::new();
        }
        if slot.is_empty() {
            // Keep the allocation unless entries were added to this slot meanwhile.
            v.append(slot);
            *slot = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_fires_in_order_and_clamps() {
        let mut w = Wheel::new(5, 10);
        w.add(12, 1, 1);
        w.add(100, 2, 2); // clamped to the wheel's span
        w.add(3, 3, 3); // in the past: next due second
        assert_eq!(w.take(10), vec![(3, 3)]);
        w.put_back(10, Vec::new());
        w.next = 11;
        assert!(w.take(11).is_empty());
        w.next = 12;
        assert_eq!(w.take(12), vec![(1, 1)]);
    }

    #[test]
    fn wheel_compaction_drops_stale_entries_and_is_amortized() {
        let mut w = Wheel::new(120, 0);
        // 2,000 connections, each re-armed 5 times: only the newest generation is live.
        for gen in 1..=5u32 {
            for key in 0..2000usize {
                w.add(gen * 10, key, gen);
            }
        }
        assert_eq!(w.len, 10_000);
        assert!(w.wants_compact(2000));
        w.compact(|_, gen| gen == 5);
        assert_eq!(w.len, 2000);
        assert!(!w.wants_compact(2000));
        // The live entries survive, in their slot.
        assert_eq!(w.slots[50].len(), 2000);
        assert!(w.slots[10].is_empty() && w.slots[10].capacity() == 0);
        // With many live entries left, the next compaction waits for as many adds again,
        // even if the connections went away meanwhile.
        for i in 0..=(2000 + 1024) {
            assert!(!w.wants_compact(0), "after {i} adds");
            w.add(60, i, 6);
        }
        assert!(w.wants_compact(0));
    }
}
