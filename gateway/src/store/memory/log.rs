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

/// Most payload bytes one `Backlog` frame carries (well under the link's frame limit).
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

/// What a subscriber gets first: retained messages after `since`, and whether the resume
/// could not be served whole.
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

    /// The backlog for a subscriber resuming after `since` (live only when `None`) that
    /// last saw `epoch`.
    ///
    /// Gap (the resume cannot be served whole; everything retained is sent, preceded by
    /// `gap_first_seq` = the first seq that follows): another epoch, `since` beyond
    /// `last_seq`, or messages between `since` and the oldest retained are gone.
    pub fn backlog(&self, since: Option<u64>, epoch: Option<u64>) -> Backlog {
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
        let mut gap_first_seq = gap.then_some(first);
        let wanted = self.retained.iter().filter(|m| gap || m.seq > since);
        // A backlog is one link frame: keep the newest messages that fit and say so.
        let mut bytes = 0usize;
        let fitting = wanted
            .clone()
            .rev()
            .take_while(|m| {
                bytes += m.data.len() + BACKLOG_ENTRY_OVERHEAD;
                bytes <= BACKLOG_MAX_BYTES
            })
            .count();
        let total = wanted.clone().count();
        let messages: Vec<(u64, Bytes)> = wanted
            .skip(total - fitting)
            .map(|m| (m.seq, m.data.clone()))
            .collect();
        if fitting < total {
            gap_first_seq = Some(messages.first().map_or(self.last_seq + 1, |m| m.0));
        }
        Backlog {
            gap_first_seq,
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
        assert_eq!(log.backlog(Some(0), None).gap_first_seq, None);
        assert_eq!(
            log.backlog(Some(3), None).gap_first_seq,
            Some(1),
            "since beyond last_seq"
        );
        for _ in 0..5 {
            log.append(b("m"), None, t, &R, &mut ev);
        }
        // Retained 3, 4, 5.
        let live = log.backlog(None, None);
        assert_eq!((live.gap_first_seq, live.messages.len()), (None, 0));
        let whole = log.backlog(Some(2), Some(42));
        assert_eq!(whole.gap_first_seq, None);
        assert_eq!(
            whole.messages.iter().map(|m| m.0).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        let tail = log.backlog(Some(4), None);
        assert_eq!(tail.messages.iter().map(|m| m.0).collect::<Vec<_>>(), [5]);
        assert_eq!(
            log.backlog(Some(5), None),
            Backlog {
                gap_first_seq: None,
                messages: vec![]
            }
        );
        // 2 is gone: since=1 cannot be served whole.
        let gap = log.backlog(Some(1), None);
        assert_eq!(gap.gap_first_seq, Some(3));
        assert_eq!(gap.messages.len(), 3);
        // Another epoch: gap even though since looks fine; everything retained follows.
        let other = log.backlog(Some(4), Some(41));
        assert_eq!(other.gap_first_seq, Some(3));
        assert_eq!(other.messages.len(), 3);
        // since beyond last_seq (e.g. from a lost history).
        assert_eq!(log.backlog(Some(9), None).gap_first_seq, Some(3));
        // Nothing retained but messages existed: since < last_seq is a gap, since == last_seq not.
        log.expire(t + 60_000, &R, &mut ev);
        assert_eq!(log.backlog(Some(2), None).gap_first_seq, Some(6));
        assert_eq!(log.backlog(Some(5), None).gap_first_seq, None);
        assert_eq!(log.backlog(Some(5), Some(1)).gap_first_seq, Some(6));
    }

    #[test]
    fn backlog_is_capped_to_one_frame() {
        let t = T0;
        let big = Retention {
            max_messages: 10,
            max_age: Duration::from_secs(10),
        };
        let mut log = ChannelLog::new(1);
        let mut ev = Evicted::default();
        let chunk = Bytes::from(vec![b'1'; BACKLOG_MAX_BYTES / 3 - 100]);
        for _ in 0..5 {
            log.append(chunk.clone(), None, t, &big, &mut ev);
        }
        let b = log.backlog(Some(0), None);
        assert_eq!(
            b.messages.iter().map(|m| m.0).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!(b.gap_first_seq, Some(3));
    }
}
