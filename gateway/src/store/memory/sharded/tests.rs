//! The sharded memory store end to end: the memory bound, the channel bound, the
//! directory (kick on replace, resume), live delivery and the sweep. Deliveries go to a
//! recording outbox: each worker records what it is handed as the frames a link would carry.

use super::*;
use crate::store::directory::WorkerRef;
use crate::store::memory::log::MESSAGE_OVERHEAD;
use protocol::link::Down;
use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// Some wall-clock time, in ms.
const T0: u64 = 1_700_000_000_000;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// One worker incarnation as the recording outbox sees it: a queue of `room` frames; a
/// frame refused for want of room makes it gone, like a full link.
struct Rec {
    worker: WorkerRef,
    frames: Mutex<VecDeque<Down>>,
    alive: AtomicBool,
    room: usize,
}

impl Rec {
    fn holder(&self, sub_id: u64) -> Holder {
        Holder {
            worker: self.worker.clone(),
            sub_id,
        }
    }
    fn try_recv(&self) -> Option<Down> {
        self.frames.lock().unwrap().pop_front()
    }
    fn close(&self) {
        self.alive.store(false, Ordering::Relaxed);
    }
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }
    fn push(&self, frame: Down) -> bool {
        let mut frames = self.frames.lock().unwrap();
        if !self.is_alive() {
            return false;
        }
        if frames.len() >= self.room {
            self.close();
            return false;
        }
        frames.push_back(frame);
        true
    }
}

/// The recording outbox: its workers.
#[derive(Default)]
struct Recorder(Mutex<Vec<Arc<Rec>>>);

impl Recorder {
    fn find(&self, w: &WorkerRef) -> Option<Arc<Rec>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.worker == *w)
            .cloned()
    }
}

impl Outbox for Recorder {
    fn deliver(&self, to: &Holder, epoch: u64, seq: u64, data: Bytes, _at_us: u64) -> bool {
        // The stamp is left out of the record, so tests compare frames by their content.
        self.find(&to.worker).is_some_and(|r| {
            r.push(Down::Deliver {
                sub_id: to.sub_id,
                epoch,
                seq,
                data,
                published_us: 0,
            })
        })
    }
    fn backlog(&self, to: &Holder, page: BacklogPage) -> bool {
        self.find(&to.worker).is_some_and(|r| {
            r.push(Down::Backlog {
                sub_id: to.sub_id,
                epoch: page.epoch,
                last_seq: page.last_seq,
                gap_first_seq: page.gap_first_seq,
                messages: page.messages,
            })
        })
    }
    fn kick(&self, to: &Holder, reason: KickReason) {
        if let Some(r) = self.find(&to.worker) {
            r.push(Down::Kick {
                sub_id: to.sub_id,
                reason,
            });
        }
    }
    fn is_live(&self, worker: &WorkerRef) -> bool {
        self.find(worker).is_some_and(|r| r.is_alive())
    }
}

/// A worker `id` (incarnation 1) the store's outbox records for, with a queue of `room`.
fn link(s: &MemoryStore<Recorder>, id: &str, room: usize) -> Arc<Rec> {
    let r = Arc::new(Rec {
        worker: WorkerRef::new(Arc::from(id), 1),
        frames: Mutex::new(VecDeque::new()),
        alive: AtomicBool::new(true),
        room,
    });
    s.outbox.0.lock().unwrap().push(r.clone());
    r
}

/// A worker re-subscribing a connection it held, after its link came back.
fn resume_from(since: u64) -> Start {
    Start {
        since: Some(since),
        epoch: None,
        max_bytes: u32::MAX,
        resume: true,
        opened_us: 0,
    }
}

fn store(total: usize, max_channels: usize) -> MemoryStore<Recorder> {
    MemoryStore::with_shards(
        1,
        Retention {
            max_messages: 100,
            max_age: Duration::from_secs(10),
        },
        total,
        max_channels,
        Recorder::default(),
    )
}

#[test]
fn channel_state_stays_small() {
    // Every channel with a subscriber or retained messages holds one of these.
    let size = std::mem::size_of::<ChannelState>();
    assert!(size <= 104, "ChannelState is {size} bytes");
}

#[test]
fn one_busy_channel_may_use_the_whole_budget_and_the_total_holds() {
    // 64 shards: a channel's shard owns 1/64 of the bound, but while the total fits, one
    // channel keeps everything its own retention allows.
    let per = 10 + MESSAGE_OVERHEAD;
    let big = Retention {
        max_messages: 1000,
        max_age: Duration::from_secs(600),
    };
    let s = MemoryStore::with_shards(64, big, per * 640, 10_000, Recorder::default());
    let t = T0;
    for _ in 0..600 {
        s.publish_now("hot", b("0123456789"), None, t).unwrap();
    }
    assert_eq!(
        s.channel_info_now("hot", t).buffered,
        600,
        "evicted under the bound"
    );
    // Past the total, other channels' appends bring it back, whichever shard they hit.
    for i in 0..400 {
        s.publish_now(&format!("c{i}"), b("0123456789"), None, t)
            .unwrap();
    }
    let st = s.stats_now();
    assert!(st.bytes <= (per * 640) as u64, "{} > bound", st.bytes);
    assert_eq!(s.budget.total() as u64, st.bytes);
    // The hot channel lost its oldest messages; the newcomers kept theirs.
    let hot = s.channel_info_now("hot", t).buffered;
    assert!(hot < 600, "{hot}");
    assert_eq!(s.channel_info_now("c399", t).buffered, 1);
}

#[test]
fn total_bytes_evicts_oldest_first_across_channels() {
    let per = 10 + MESSAGE_OVERHEAD;
    let s = store(per * 4, 100);
    let t = T0;
    let memory = metrics::MESSAGES_EVICTED.with_label_values(&["memory"]);
    let before = memory.get();
    for i in 0..6 {
        let ch = if i % 2 == 0 { "a" } else { "b" };
        s.publish_now(ch, b("0123456789"), None, t).unwrap();
    }
    // a: 1,2,3  b: 1,2,3 in order a1 b1 a2 b2 a3 b3; budget 4 -> a1 and b1 evicted.
    assert!(memory.get() - before >= 2);
    let st = s.stats_now();
    assert_eq!(
        (st.bytes, st.messages, st.channels),
        ((per * 4) as u64, 4, 2)
    );
    assert_eq!(s.channel_info_now("a", t).buffered, 2);
    assert_eq!(s.channel_info_now("b", t).buffered, 2);
    assert_eq!(s.channel_info_now("a", t).last_seq, 3);
    // Count-evicted entries leave stale FIFO entries that are skipped, not double-counted.
    let lone = store(per * 1000, 100);
    for _ in 0..5000 {
        lone.publish_now("c", b("0123456789"), None, t).unwrap();
    }
    let st = lone.stats_now();
    assert_eq!((st.messages, st.bytes), (100, (per * 100) as u64));
    assert!(lone.shards[0].lock().unwrap().ledger.fifo_len() <= 2 * 100 + 1024);
}

#[test]
fn max_channels_bounds_new_channels() {
    let s = store(1 << 20, 2);
    let t = T0;
    s.publish_now("a", b("1"), None, t).unwrap();
    s.publish_now("b", b("1"), None, t).unwrap();
    assert_eq!(
        s.publish_now("c", b("1"), None, t),
        Err(StoreError::TooManyChannels)
    );
    assert_eq!(s.publish_now("a", b("2"), None, t).unwrap().seq, 2);
    let l = link(&s, "w", 16);
    let sub = l.holder(1);
    assert_eq!(
        s.subscribe_now("d", sub, None, None, t),
        Err(StoreError::TooManyChannels)
    );
}

#[test]
fn a_resuming_worker_does_not_take_the_channel_from_a_newer_holder() {
    let s = store(1 << 20, 100);
    let t = T0;
    let l1 = link(&s, "w", 16);
    let l2 = link(&s, "w2", 16);
    let old = l1.holder(1);
    let newer = l2.holder(2);
    // The newer client took the channel while the old one's link was down.
    s.subscribe_now("c", newer.clone(), None, None, t).unwrap();
    assert!(matches!(l2.try_recv().unwrap(), Down::Backlog { .. }));
    s.subscribe_start("c", old.clone(), resume_from(0), t)
        .unwrap();
    assert!(matches!(
        l1.try_recv().unwrap(),
        Down::Kick {
            sub_id: 1,
            reason: KickReason::Replaced
        }
    ));
    assert!(l2.try_recv().is_none(), "the newer holder is not kicked");
    s.publish_now("c", b("x"), None, t).unwrap();
    assert!(matches!(
        l2.try_recv().unwrap(),
        Down::Deliver { sub_id: 2, .. }
    ));
    // With nobody holding the channel, a resume takes it as usual.
    s.unsubscribe_now("c", &newer, t);
    s.subscribe_start("c", old, resume_from(0), t).unwrap();
    assert!(matches!(
        l1.try_recv().unwrap(),
        Down::Backlog { sub_id: 1, .. }
    ));
}

/// A fresh subscribe whose client asked at `opened_us`.
fn asked_at(opened_us: u64) -> Start {
    Start {
        since: Some(0),
        epoch: None,
        max_bytes: u32::MAX,
        resume: false,
        opened_us,
    }
}

#[test]
fn a_subscribe_asked_before_the_holders_takes_the_channel_only_from_a_dead_one() {
    let s = store(1 << 20, 100);
    let t = T0;
    let l1 = link(&s, "w", 16);
    let l2 = link(&s, "w2", 16);
    s.subscribe_start("c", l2.holder(2), asked_at(2_000), t)
        .unwrap();
    assert!(matches!(l2.try_recv().unwrap(), Down::Backlog { .. }));
    // Asked before the holder's, landed after: refused with resync, the holder stays.
    s.subscribe_start("c", l1.holder(1), asked_at(1_000), t)
        .unwrap();
    assert!(matches!(
        l1.try_recv().unwrap(),
        Down::Kick {
            sub_id: 1,
            reason: KickReason::Resync
        }
    ));
    assert!(l2.try_recv().is_none(), "the holder is not kicked");
    // The same holder subscribing again keeps its stamp when the new one is unknown.
    s.subscribe_start("c", l2.holder(2), resume_from(0), t)
        .unwrap();
    assert!(matches!(l2.try_recv().unwrap(), Down::Backlog { .. }));
    s.subscribe_start("c", l1.holder(3), asked_at(1_500), t)
        .unwrap();
    assert!(matches!(
        l1.try_recv().unwrap(),
        Down::Kick {
            sub_id: 3,
            reason: KickReason::Resync
        }
    ));
    // Once the holder's worker is gone, the older subscribe takes the channel.
    l2.close();
    s.subscribe_start("c", l1.holder(4), asked_at(1_000), t)
        .unwrap();
    assert!(matches!(
        l1.try_recv().unwrap(),
        Down::Backlog { sub_id: 4, .. }
    ));
    s.publish_now("c", b("x"), None, t).unwrap();
    assert!(matches!(
        l1.try_recv().unwrap(),
        Down::Deliver { sub_id: 4, .. }
    ));
}

#[test]
fn subscribe_backlog_then_live_and_kick_on_replace() {
    let s = store(1 << 20, 100);
    let t = T0;
    s.publish_now("c", b("1"), None, t).unwrap();
    s.publish_now("c", b("2"), None, t).unwrap();
    let l1 = link(&s, "w", 16);
    let l2 = link(&s, "w2", 16);
    let first = l1.holder(11);
    s.subscribe_now("c", first.clone(), Some(0), None, t)
        .unwrap();
    match l1.try_recv().unwrap() {
        Down::Backlog {
            sub_id,
            last_seq,
            gap_first_seq,
            messages,
            ..
        } => {
            assert_eq!((sub_id, last_seq, gap_first_seq), (11, 2, None));
            assert_eq!(messages.iter().map(|m| m.0).collect::<Vec<_>>(), [1, 2]);
        }
        other => panic!("{other:?}"),
    }
    s.publish_now("c", b("3"), None, t).unwrap();
    assert!(matches!(
        l1.try_recv().unwrap(),
        Down::Deliver {
            sub_id: 11,
            seq: 3,
            ..
        }
    ));
    let info = s.channel_info_now("c", t);
    assert_eq!(
        (info.online, info.worker.as_deref(), info.last_seq),
        (true, Some("w"), 3)
    );

    let second = l2.holder(22);
    s.subscribe_now("c", second.clone(), None, None, t).unwrap();
    assert!(matches!(
        l1.try_recv().unwrap(),
        Down::Kick {
            sub_id: 11,
            reason: KickReason::Replaced
        }
    ));
    assert!(matches!(
        l2.try_recv().unwrap(),
        Down::Backlog { sub_id: 22, .. }
    ));
    // The old holder's unsubscribe does not clear the new holder.
    s.unsubscribe_now("c", &first, t);
    s.publish_now("c", b("4"), None, t).unwrap();
    assert!(matches!(
        l2.try_recv().unwrap(),
        Down::Deliver {
            sub_id: 22,
            seq: 4,
            ..
        }
    ));
    assert!(l1.try_recv().is_none());
    s.unsubscribe_now("c", &second, t);
    assert!(!s.channel_info_now("c", t).online);
    // A duplicate is not delivered again.
    s.subscribe_now("c", second.clone(), None, None, t).unwrap();
    let _ = l2.try_recv();
    s.publish_now("c", b("5"), Some("k"), t).unwrap();
    assert_eq!(
        s.publish_now("c", b("5"), Some("k"), t).unwrap(),
        Published {
            seq: 5,
            duplicate: true
        }
    );
    assert!(matches!(
        l2.try_recv().unwrap(),
        Down::Deliver { seq: 5, .. }
    ));
    assert!(l2.try_recv().is_none());
    // A dead link is offline.
    l2.close();
    assert!(!s.channel_info_now("c", t).online);
}

#[test]
fn group_by_shard_keeps_order_within_a_shard() {
    let g = group_by_shard([2usize, 0, 2, 1, 0].into_iter(), 4);
    assert_eq!(g, vec![(0, vec![1, 4]), (1, vec![3]), (2, vec![0, 2])]);
    assert!(group_by_shard(std::iter::empty(), 4).is_empty());
}

#[test]
fn publish_many_appends_per_channel_and_shares_the_payload() {
    let s = MemoryStore::with_shards(
        4,
        Retention {
            max_messages: 2,
            max_age: Duration::from_secs(10),
        },
        1 << 20,
        100,
        Recorder::default(),
    );
    let t = T0;
    s.publish_now("b", b("0"), None, t).unwrap();
    let l = link(&s, "w", 64);
    for (i, ch) in ["a", "b"].iter().enumerate() {
        s.subscribe_now(ch, l.holder(i as u64), None, None, t)
            .unwrap();
        assert!(matches!(l.try_recv().unwrap(), Down::Backlog { .. }));
    }
    let data = Bytes::from(vec![b'7'; 100]);
    let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let r = s.publish_many_now(&names, &data, Some("k"), t);
    let seqs: Vec<u64> = r.iter().map(|p| p.as_ref().unwrap().seq).collect();
    assert_eq!(seqs, [1, 2, 1, 1, 1, 1, 1, 1]);
    assert!(r.iter().all(|p| !p.as_ref().unwrap().duplicate));
    // Live deliveries carry the very same buffer, not a copy.
    let mut delivered = Vec::new();
    while let Some(Down::Deliver {
        sub_id,
        seq,
        data: d,
        ..
    }) = l.try_recv()
    {
        assert_eq!(d.as_ptr(), data.as_ptr());
        delivered.push((sub_id, seq));
    }
    delivered.sort();
    assert_eq!(delivered, [(0, 1), (1, 2)]);
    // Idempotency key per channel; count retention per channel.
    let again = s.publish_many_now(&["a", "b"], &data, Some("k"), t);
    assert!(again.iter().all(|p| p.as_ref().unwrap().duplicate));
    assert!(l.try_recv().is_none());
    s.publish_many_now(&["b"], &data, None, t);
    let info = s.channel_info_now("b", t);
    assert_eq!((info.last_seq, info.buffered), (3, 2));
    let st = s.stats_now();
    assert_eq!((st.channels, st.messages), (8, 9));
    // The channel bound is per channel, not per request.
    let small = store(1 << 20, 2);
    let r = small.publish_many_now(&["x", "y", "z"], &data, None, t);
    assert_eq!(r.iter().filter(|p| p.is_ok()).count(), 2);
    assert_eq!(r.iter().filter(|p| p.is_err()).count(), 1, "{r:?}");
}

/// The first frame `l` was handed, as (epoch, gap_first_seq, seqs).
fn backlog_of(l: &Rec) -> (u64, Option<u64>, Vec<u64>) {
    match l.try_recv().unwrap() {
        Down::Backlog {
            epoch,
            gap_first_seq,
            messages,
            ..
        } => (epoch, gap_first_seq, messages.iter().map(|m| m.0).collect()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn sweep_expires_and_forgets_idle_channels_but_keeps_their_seq_and_epoch() {
    let s = store(1 << 20, 100);
    let mut t = T0;
    s.publish_now("c", b("1"), None, t).unwrap();
    s.publish_now("c", b("2"), None, t).unwrap();
    let l = link(&s, "w", 16);
    s.subscribe_now("c", l.holder(1), Some(0), None, t).unwrap();
    let (epoch, _, _) = backlog_of(&l);
    let age = s.metrics_age_count();
    t += 11_000;
    s.sweep_all(t);
    assert!(s.metrics_age_count() > age);
    assert_eq!(s.stats_now().messages, 0);
    assert_eq!(s.stats_now().channels, 1, "subscribed channels stay");
    l.close();
    t += 11_000;
    s.sweep_all(t);
    let st = s.stats_now();
    assert_eq!(
        (st.channels, st.idle_channels),
        (0, 1),
        "idle, empty, unsubscribed: forgotten, its meta kept"
    );
    assert_eq!(s.channel_info_now("c", t).last_seq, 2);
    // A resume from before the expiry is told of its gap, in the same epoch.
    let l2 = link(&s, "w2", 16);
    s.subscribe_now("c", l2.holder(2), Some(1), Some(epoch), t)
        .unwrap();
    assert_eq!(backlog_of(&l2), (epoch, Some(3), vec![]));
    assert_eq!(
        s.stats_now().idle_channels,
        0,
        "the meta is a channel again"
    );
    // The next publish goes on counting and reaches the subscriber live.
    assert_eq!(s.publish_now("c", b("3"), None, t).unwrap().seq, 3);
    match l2.try_recv().unwrap() {
        Down::Deliver { seq, epoch: e, .. } => assert_eq!((seq, e), (3, epoch)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_meta_older_than_channel_meta_is_forgotten_and_the_seq_starts_over() {
    let s = store(1 << 20, 100).with_channel_meta(Duration::from_secs(60));
    let mut t = T0;
    s.publish_now("c", b("1"), None, t).unwrap();
    t += 11_000;
    s.sweep_all(t);
    assert_eq!(s.stats_now().idle_channels, 1);
    t += 49_000;
    s.sweep_all(t);
    assert_eq!(
        s.stats_now().idle_channels,
        1,
        "60 s after its last publish: kept"
    );
    t += 1_000;
    s.sweep_all(t);
    assert_eq!(s.stats_now().idle_channels, 0);
    let l = link(&s, "w", 16);
    s.subscribe_now("c", l.holder(1), Some(1), Some(1), t)
        .unwrap();
    let (epoch, gap, _) = backlog_of(&l);
    assert_eq!(gap, Some(1), "another epoch: the gap frame");
    assert_ne!(epoch, 1);
    assert_eq!(s.publish_now("c", b("x"), None, t).unwrap().seq, 1);
}

#[test]
fn metas_are_bounded_by_max_channels() {
    let s = store(1 << 20, 3);
    let mut t = T0;
    for c in ["a", "b", "c"] {
        s.publish_now(c, b("1"), None, t).unwrap();
    }
    t += 11_000;
    s.sweep_all(t);
    assert_eq!(s.stats_now().idle_channels, 3);
    let dropped = metrics::CHANNEL_METAS_DROPPED.get();
    // Three more channels come and go: the metas stay at three, the oldest go first.
    for c in ["d", "e", "f"] {
        s.publish_now(c, b("1"), None, t).unwrap();
        s.publish_now(c, b("2"), None, t).unwrap();
        t += 11_000;
        s.sweep_all(t);
        let st = s.stats_now();
        assert_eq!((st.channels, st.idle_channels), (0, 3), "after {c}");
    }
    assert!(metrics::CHANNEL_METAS_DROPPED.get() >= dropped + 3);
    for c in ["d", "e", "f"] {
        assert_eq!(s.channel_info_now(c, t).last_seq, 2, "{c} kept");
        assert_eq!(s.channel_info_now(c, t).last_seq, 2);
    }
    for c in ["a", "b", "c"] {
        assert_eq!(s.channel_info_now(c, t).last_seq, 0, "{c} was the oldest");
    }
}

impl<O> MemoryStore<O> {
    fn metrics_age_count(&self) -> u64 {
        metrics::MESSAGES_EVICTED.with_label_values(&["age"]).get()
    }
}
