//! One channel's message log, pure: seq, epoch, retention by count and age, idempotency
//! keys, and the backlog a resuming subscriber gets (with its gap rules). No clock, no
//! I/O: `now_ms` (wall-clock milliseconds, which every gateway and a shared store agree
//! on, unlike a process-local `Instant`) is passed in.

use crate::metrics;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Bytes accounted per retained message on top of its data and key.
pub const MESSAGE_OVERHEAD: usize = 64;

/// Most frame bytes one `Backlog` page takes, whatever the worker asks (well under the
/// link's frame limit).
pub const BACKLOG_MAX_BYTES: usize = protocol::link::MAX_FRAME / 4;
/// Frame bytes per backlog message besides its data (seq + length).
const BACKLOG_ENTRY_OVERHEAD: usize = 12;

/// Per-channel retention limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most messages kept per channel.
    pub max_messages: usize,
    /// How long a message is kept.
    pub max_age: Duration,
}

impl Retention {
    /// [`Self::max_age`] in milliseconds.
    pub fn max_age_ms(&self) -> u64 {
        self.max_age.as_millis().try_into().unwrap_or(u64::MAX)
    }
}

/// One retained message.
#[derive(Debug, Clone)]
struct Retained {
    seq: u64,
    /// When it was appended (wall-clock ms): 8 bytes where an `Instant` takes 16.
    at_ms: u64,
    data: Bytes,
    key: Option<Arc<str>>,
}

impl Retained {
    fn cost(&self) -> usize {
        message_cost(&self.data, self.key.as_deref())
    }
}

/// What a message costs against the total memory bound.
pub fn message_cost(data: &[u8], key: Option<&str>) -> usize {
    data.len() + MESSAGE_OVERHEAD + key.map_or(0, str::len)
}

/// Messages dropped by retention during one operation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// Dropped by the per-channel count limit.
    pub by_count: u64,
    /// Dropped by age.
    pub by_age: u64,
    /// Bytes they were accounted.
    pub bytes: usize,
}

impl Evicted {
    /// Messages dropped in all.
    pub fn messages(&self) -> usize {
        (self.by_count + self.by_age) as usize
    }

    /// Counts them in `pushgate_messages_evicted_total`.
    pub fn record(&self) {
        if self.by_count > 0 {
            metrics::MESSAGES_EVICTED
                .with_label_values(&["count"])
                .inc_by(self.by_count);
        }
        if self.by_age > 0 {
            metrics::MESSAGES_EVICTED
                .with_label_values(&["age"])
                .inc_by(self.by_age);
        }
    }
}

/// Result of [`ChannelLog::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub duplicate: bool,
    /// Bytes the new message is accounted (0 for a duplicate).
    pub cost: usize,
}

/// One page of what a subscriber gets first: retained messages after `since`, oldest first,
/// and whether the resume could not be served whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    pub gap_first_seq: Option<u64>,
    pub messages: Vec<(u64, Bytes)>,
}

/// One channel's message log. Pure: no clock, no I/O.
#[derive(Debug)]
pub struct ChannelLog {
    epoch: u64,
    last_seq: u64,
    retained: VecDeque<Retained>,
    /// Idempotency keys of retained messages; boxed and absent until a key is used, so a
    /// channel that never sees one pays 8 bytes instead of an empty map's 48.
    #[allow(clippy::box_collection)] // the point: 8 bytes when absent, not 48
    keys: Option<Box<HashMap<Arc<str>, u64>>>,
}

impl ChannelLog {
    /// An empty log with the given epoch (unique per log creation).
    pub fn new(epoch: u64) -> Self {
        ChannelLog {
            epoch,
            last_seq: 0,
            retained: VecDeque::new(),
            keys: None,
        }
    }

    /// An empty log that goes on after `last_seq` in `epoch`: a channel forgotten while
    /// idle and seen again within `--channel-meta-secs`.
    pub fn continued(epoch: u64, last_seq: u64) -> Self {
        ChannelLog {
            last_seq,
            ..ChannelLog::new(epoch)
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Seq of the newest message ever accepted (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Messages retained now.
    pub fn len(&self) -> usize {
        self.retained.len()
    }

    pub fn is_empty(&self) -> bool {
        self.retained.is_empty()
    }

    /// Seq of the oldest retained message.
    pub fn front_seq(&self) -> Option<u64> {
        self.retained.front().map(|m| m.seq)
    }

    /// The first seq a resume can be served from: the oldest retained, or the next one
    /// when nothing is retained.
    pub fn first_seq(&self) -> u64 {
        self.front_seq().unwrap_or(self.last_seq + 1)
    }

    /// Appends a message (or recognizes a repeated idempotency key), then applies age and
    /// count retention.
    pub fn append(
        &mut self,
        data: Bytes,
        key: Option<&str>,
        now_ms: u64,
        retention: &Retention,
        evicted: &mut Evicted,
    ) -> Appended {
        self.expire(now_ms, retention, evicted);
        if let Some(k) = key {
            if let Some(&seq) = self.keys.as_ref().and_then(|m| m.get(k)) {
                return Appended {
                    seq,
                    duplicate: true,
                    cost: 0,
                };
            }
        }
        self.last_seq += 1;
        let seq = self.last_seq;
        let key: Option<Arc<str>> = key.map(Arc::from);
        if let Some(k) = &key {
            self.keys
                .get_or_insert_with(Default::default)
                .insert(k.clone(), seq);
        }
        let msg = Retained {
            seq,
            at_ms: now_ms,
            data,
            key,
        };
        let cost = msg.cost();
        self.retained.push_back(msg);
        while self.retained.len() > retention.max_messages {
            let m = self.pop_front().expect("non-empty");
            evicted.by_count += 1;
            evicted.bytes += m.cost();
        }
        Appended {
            seq,
            duplicate: false,
            cost,
        }
    }

    /// Drops messages older than the retention age.
    pub fn expire(&mut self, now_ms: u64, retention: &Retention, evicted: &mut Evicted) {
        let max_age = retention.max_age_ms();
        while let Some(front) = self.retained.front() {
            if now_ms.saturating_sub(front.at_ms) < max_age {
                break;
            }
            let m = self.pop_front().expect("non-empty");
            evicted.by_age += 1;
            evicted.bytes += m.cost();
        }
    }

    /// Drops the oldest retained message (memory bound); returns its cost.
    pub fn evict_oldest(&mut self) -> Option<usize> {
        self.pop_front().map(|m| m.cost())
    }

    fn pop_front(&mut self) -> Option<Retained> {
        let m = self.retained.pop_front()?;
        if let (Some(k), Some(keys)) = (&m.key, &mut self.keys) {
            keys.remove(k);
            if keys.is_empty() {
                self.keys = None;
            }
        }
        Some(m)
    }

    /// One page of the backlog for a subscriber resuming after `since` (live only when
    /// `None`) that last saw `epoch`: the oldest wanted messages that fit `max_bytes` of
    /// payload and one link frame ([`BACKLOG_MAX_BYTES`]), and always at least one. More
    /// remaining is not a gap: the page's last seq below `last_seq` tells the worker to
    /// `Fetch` the rest, as its client drains.
    ///
    /// Gap (the resume cannot be served whole; everything retained is wanted, preceded by
    /// `gap_first_seq` = the first seq that follows): another epoch, `since` beyond
    /// `last_seq`, or messages between `since` and the oldest retained are gone.
    pub fn backlog(&self, since: Option<u64>, epoch: Option<u64>, max_bytes: usize) -> Backlog {
        let Some(since) = since else {
            return Backlog {
                gap_first_seq: None,
                messages: Vec::new(),
            };
        };
        let first = self.first_seq();
        let gap = epoch.is_some_and(|e| e != self.epoch)
            || since > self.last_seq
            || since.saturating_add(1) < first;
        // Retained seqs are consecutive (appends at the back, evictions at the front), so
        // the first wanted one is found by arithmetic, not a scan.
        let skip = if gap { 0 } else { (since + 1 - first) as usize };
        let (mut payload, mut frame) = (0usize, 0usize);
        let mut messages = Vec::new();
        for m in self.retained.range(skip..) {
            payload += m.data.len();
            frame += m.data.len() + BACKLOG_ENTRY_OVERHEAD;
            if !messages.is_empty() && (payload > max_bytes || frame > BACKLOG_MAX_BYTES) {
                break;
            }
            messages.push((m.seq, m.data.clone()));
        }
        Backlog {
            gap_first_seq: gap.then_some(first),
            messages,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Retention = Retention {
        max_messages: 3,
        max_age: Duration::from_secs(10),
    };

    /// Some wall-clock time, in ms.
    const T0: u64 = 1_700_000_000_000;
    /// A page budget that takes everything (up to the frame limit).
    const ALL: usize = usize::MAX;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn seqs(log: &ChannelLog) -> Vec<u64> {
        log.retained.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn seq_starts_at_one_and_count_retention_drops_oldest() {
        let t = T0;
        let mut log = ChannelLog::new(7);
        let mut ev = Evicted::default();
        for i in 1..=5 {
            let a = log.append(b("1"), None, t, &R, &mut ev);
            assert_eq!((a.seq, a.duplicate), (i, false));
            assert_eq!(a.cost, 1 + MESSAGE_OVERHEAD);
        }
        assert_eq!(seqs(&log), [3, 4, 5]);
        assert_eq!(ev.by_count, 2);
        assert_eq!(ev.bytes, 2 * (1 + MESSAGE_OVERHEAD));
        assert_eq!((log.last_seq(), log.epoch(), log.first_seq()), (5, 7, 3));
    }

    #[test]
    fn age_retention() {
        let t0 = T0;
        let mut log = ChannelLog::new(1);
        let mut ev = Evicted::default();
        log.append(b("1"), None, t0, &R, &mut ev);
        log.append(b("2"), None, t0 + 5_000, &R, &mut ev);
        log.expire(t0 + 9_999, &R, &mut ev);
        assert_eq!(seqs(&log), [1, 2]);
        log.expire(t0 + 10_000, &R, &mut ev);
        assert_eq!(seqs(&log), [2]);
        log.expire(t0 + 16_000, &R, &mut ev);
        assert!(log.is_empty());
        assert_eq!((ev.by_age, log.last_seq(), log.first_seq()), (2, 2, 3));
    }

    #[test]
    fn idempotency_within_retention() {
        let t = T0;
        let mut log = ChannelLog::new(1);
        let mut ev = Evicted::default();
        assert_eq!(log.append(b("a"), Some("k"), t, &R, &mut ev).seq, 1);
        let again = log.append(b("a"), Some("k"), t, &R, &mut ev);
        assert_eq!((again.seq, again.duplicate, again.cost), (1, true, 0));
        assert_eq!(log.len(), 1);
        // Once the keyed message leaves retention the key is forgotten.
        for _ in 0..3 {
            log.append(b("x"), None, t, &R, &mut ev);
        }
        let later = log.append(b("a"), Some("k"), t, &R, &mut ev);
        assert_eq!((later.seq, later.duplicate), (5, false));
        assert_eq!(later.cost, 1 + 1 + MESSAGE_OVERHEAD);
    }

    #[test]
    fn backlog_and_gap_rules() {
        let t = T0;
        let mut log = ChannelLog::new(42);
        let mut ev = Evicted::default();
        // Nothing published yet.
        assert_eq!(log.backlog(Some(0), None, ALL).gap_first_seq, None);
        assert_eq!(
            log.backlog(Some(3), None, ALL).gap_first_seq,
            Some(1),
            "since beyond last_seq"
        );
        for _ in 0..5 {
            log.append(b("m"), None, t, &R, &mut ev);
        }
        // Retained 3, 4, 5.
        let live = log.backlog(None, None, ALL);
        assert_eq!((live.gap_first_seq, live.messages.len()), (None, 0));
        let whole = log.backlog(Some(2), Some(42), ALL);
        assert_eq!(whole.gap_first_seq, None);
        assert_eq!(
            whole.messages.iter().map(|m| m.0).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        let tail = log.backlog(Some(4), None, ALL);
        assert_eq!(tail.messages.iter().map(|m| m.0).collect::<Vec<_>>(), [5]);
        assert_eq!(
            log.backlog(Some(5), None, ALL),
            Backlog {
                gap_first_seq: None,
                messages: vec![]
            }
        );
        // 2 is gone: since=1 cannot be served whole.
        let gap = log.backlog(Some(1), None, ALL);
        assert_eq!(gap.gap_first_seq, Some(3));
        assert_eq!(gap.messages.len(), 3);
        // Another epoch: gap even though since looks fine; everything retained follows.
        let other = log.backlog(Some(4), Some(41), ALL);
        assert_eq!(other.gap_first_seq, Some(3));
        assert_eq!(other.messages.len(), 3);
        // since beyond last_seq (e.g. from a lost history).
        assert_eq!(log.backlog(Some(9), None, ALL).gap_first_seq, Some(3));
        // Nothing retained but messages existed: since < last_seq is a gap, since == last_seq not.
        log.expire(t + 60_000, &R, &mut ev);
        assert_eq!(log.backlog(Some(2), None, ALL).gap_first_seq, Some(6));
        assert_eq!(log.backlog(Some(5), None, ALL).gap_first_seq, None);
        assert_eq!(log.backlog(Some(5), Some(1), ALL).gap_first_seq, Some(6));
    }

    /// Seqs of a page.
    fn page(b: &Backlog) -> Vec<u64> {
        b.messages.iter().map(|m| m.0).collect()
    }

    #[test]
    fn backlog_pages_are_the_oldest_messages_and_more_is_not_a_gap() {
        let big = Retention {
            max_messages: 10,
            max_age: Duration::from_secs(10),
        };
        let mut log = ChannelLog::new(1);
        let mut ev = Evicted::default();
        for _ in 0..5 {
            log.append(b("0123456789"), None, T0, &big, &mut ev);
        }
        // 25 bytes of payload: two 10-byte messages per page, oldest first, no gap.
        let first = log.backlog(Some(0), None, 25);
        assert_eq!((page(&first), first.gap_first_seq), (vec![1, 2], None));
        // The worker asks for the rest from the page's last seq, as its client drains.
        assert_eq!(page(&log.backlog(Some(2), Some(1), 25)), [3, 4]);
        assert_eq!(page(&log.backlog(Some(4), Some(1), 25)), [5]);
        assert!(log.backlog(Some(5), Some(1), 25).messages.is_empty());
        // Exactly the budget fits.
        assert_eq!(page(&log.backlog(Some(0), None, 30)), [1, 2, 3]);
    }

    #[test]
    fn a_backlog_page_carries_at_least_one_message() {
        let mut log = ChannelLog::new(1);
        let mut ev = Evicted::default();
        log.append(b("0123456789"), None, T0, &R, &mut ev);
        log.append(b("0123456789"), None, T0, &R, &mut ev);
        assert_eq!(page(&log.backlog(Some(0), None, 0)), [1]);
        assert_eq!(page(&log.backlog(Some(0), None, 9)), [1]);
        assert_eq!(page(&log.backlog(Some(1), None, 1)), [2]);
    }

    #[test]
    fn a_gap_page_starts_at_the_oldest_retained_and_the_rest_follows_without_one() {
        let mut log = ChannelLog::new(1);
        let mut ev = Evicted::default();
        for _ in 0..5 {
            log.append(b("0123456789"), None, T0, &R, &mut ev);
        }
        // Retained 3, 4, 5: since=0 cannot be served whole.
        let gap = log.backlog(Some(0), None, 10);
        assert_eq!((page(&gap), gap.gap_first_seq), (vec![3], Some(3)));
        let rest = log.backlog(Some(3), Some(1), 10);
        assert_eq!((page(&rest), rest.gap_first_seq), (vec![4], None));
    }

    #[test]
    fn a_backlog_page_never_passes_the_frame_limit() {
        let big = Retention {
            max_messages: 10,
            max_age: Duration::from_secs(10),
        };
        let mut log = ChannelLog::new(1);
        let mut ev = Evicted::default();
        let chunk = Bytes::from(vec![b'1'; BACKLOG_MAX_BYTES / 3 - 100]);
        for _ in 0..5 {
            log.append(chunk.clone(), None, T0, &big, &mut ev);
        }
        // Whatever the worker allows, a page is one frame: three of these fit, the oldest.
        let b = log.backlog(Some(0), None, usize::MAX);
        assert_eq!((page(&b), b.gap_first_seq), (vec![1, 2, 3], None));
        assert_eq!(page(&log.backlog(Some(3), None, usize::MAX)), [4, 5]);
    }
}
