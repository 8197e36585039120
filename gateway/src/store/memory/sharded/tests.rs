//! The sharded memory store end to end: the memory bound, the channel bound, the
//! directory (kick on replace, resume), live delivery and the sweep.

use super::*;
use crate::link::LinkHandle;
use crate::store::memory::log::MESSAGE_OVERHEAD;
use std::time::Duration;
use tokio::sync::mpsc;

/// Some wall-clock time, in ms.
const T0: u64 = 1_700_000_000_000;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn link(queue: usize) -> (Arc<LinkHandle>, mpsc::Receiver<Down>) {
    LinkHandle::new(Arc::from("w"), 0, 1, queue)
}

fn store(total: usize, max_channels: usize) -> MemoryStore {
    MemoryStore::with_shards(
        1,
        Retention {
            max_messages: 100,
            max_age: Duration::from_secs(10),
        },
        total,
        max_channels,
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
    let s = MemoryStore::with_shards(64, big, per * 640, 10_000);
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
    let (l, _rx) = link(16);
    let sub = SubRef { link: l, sub_id: 1 };
    assert_eq!(
        s.subscribe_now("d", sub, None, None, t),
        Err(StoreError::TooManyChannels)
    );
}

#[test]
fn a_resuming_worker_does_not_take_the_channel_from_a_newer_holder() {
    let s = store(1 << 20, 100);
    let t = T0;
    let (l1, mut rx1) = link(16);
    let (l2, mut rx2) = link(16);
    let old = SubRef {
        link: l1.clone(),
        sub_id: 1,
    };
    let newer = SubRef {
        link: l2.clone(),
        sub_id: 2,
    };
    // The newer client took the channel while the old one's link was down.
    s.subscribe_now("c", newer.clone(), None, None, t).unwrap();
    assert!(matches!(rx2.try_recv().unwrap(), Down::Backlog { .. }));
    s.resubscribe_now("c", old.clone(), Some(0), None, t)
        .unwrap();
    assert!(matches!(
        rx1.try_recv().unwrap(),
        Down::Kick {
            sub_id: 1,
            reason: KickReason::Replaced
        }
    ));
    assert!(rx2.try_recv().is_err(), "the newer holder is not kicked");
    s.publish_now("c", b("x"), None, t).unwrap();
    assert!(matches!(
        rx2.try_recv().unwrap(),
        Down::Deliver { sub_id: 2, .. }
    ));
    // With nobody holding the channel, a resume takes it as usual.
    s.unsubscribe_now("c", &newer, t);
    s.resubscribe_now("c", old, Some(0), None, t).unwrap();
    assert!(matches!(
        rx1.try_recv().unwrap(),
        Down::Backlog { sub_id: 1, .. }
    ));
}

#[test]
fn subscribe_backlog_then_live_and_kick_on_replace() {
    let s = store(1 << 20, 100);
    let t = T0;
    s.publish_now("c", b("1"), None, t).unwrap();
    s.publish_now("c", b("2"), None, t).unwrap();
    let (l1, mut rx1) = link(16);
    let (l2, mut rx2) = link(16);
    let first = SubRef {
        link: l1.clone(),
        sub_id: 11,
    };
    s.subscribe_now("c", first.clone(), Some(0), None, t)
        .unwrap();
    match rx1.try_recv().unwrap() {
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
        rx1.try_recv().unwrap(),
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

    let second = SubRef {
        link: l2,
        sub_id: 22,
    };
    s.subscribe_now("c", second.clone(), None, None, t).unwrap();
    assert!(matches!(
        rx1.try_recv().unwrap(),
        Down::Kick {
            sub_id: 11,
            reason: KickReason::Replaced
        }
    ));
    assert!(matches!(
        rx2.try_recv().unwrap(),
        Down::Backlog { sub_id: 22, .. }
    ));
    // The old holder's unsubscribe does not clear the new holder.
    s.unsubscribe_now("c", &first, t);
    s.publish_now("c", b("4"), None, t).unwrap();
    assert!(matches!(
        rx2.try_recv().unwrap(),
        Down::Deliver {
            sub_id: 22,
            seq: 4,
            ..
        }
    ));
    assert!(rx1.try_recv().is_err());
    s.unsubscribe_now("c", &second, t);
    assert!(!s.channel_info_now("c", t).online);
    // A duplicate is not delivered again.
    s.subscribe_now("c", second.clone(), None, None, t).unwrap();
    let _ = rx2.try_recv();
    s.publish_now("c", b("5"), Some("k"), t).unwrap();
    assert_eq!(
        s.publish_now("c", b("5"), Some("k"), t).unwrap(),
        Published {
            seq: 5,
            duplicate: true
        }
    );
    assert!(matches!(
        rx2.try_recv().unwrap(),
        Down::Deliver { seq: 5, .. }
    ));
    assert!(rx2.try_recv().is_err());
    // A dead link is offline.
    second.link.close();
    assert!(!s.channel_info_now("c", t).online);
}

#[test]
fn full_link_queue_closes_the_link() {
    let s = store(1 << 20, 100);
    let t = T0;
    let (l, _rx) = link(2);
    s.subscribe_now(
        "c",
        SubRef {
            link: l.clone(),
            sub_id: 1,
        },
        None,
        None,
        t,
    )
    .unwrap();
    let overflows = metrics::LINK_OVERFLOWS.get();
    for _ in 0..3 {
        s.publish_now("c", b("x"), None, t).unwrap();
    }
    assert!(!l.is_alive());
    assert!(metrics::LINK_OVERFLOWS.get() > overflows);
    assert!(!s.channel_info_now("c", t).online);
    // Every message is still in the store for the resume.
    assert_eq!(s.channel_info_now("c", t).buffered, 3);
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
    );
    let t = T0;
    s.publish_now("b", b("0"), None, t).unwrap();
    let (l, mut rx) = link(64);
    for (i, ch) in ["a", "b"].iter().enumerate() {
        s.subscribe_now(
            ch,
            SubRef {
                link: l.clone(),
                sub_id: i as u64,
            },
            None,
            None,
            t,
        )
        .unwrap();
        assert!(matches!(rx.try_recv().unwrap(), Down::Backlog { .. }));
    }
    let data = Bytes::from(vec![b'7'; 100]);
    let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let r = s.publish_many_now(&names, &data, Some("k"), t);
    let seqs: Vec<u64> = r.iter().map(|p| p.as_ref().unwrap().seq).collect();
    assert_eq!(seqs, [1, 2, 1, 1, 1, 1, 1, 1]);
    assert!(r.iter().all(|p| !p.as_ref().unwrap().duplicate));
    // Live deliveries carry the very same buffer, not a copy.
    let mut delivered = Vec::new();
    while let Ok(Down::Deliver {
        sub_id,
        seq,
        data: d,
        ..
    }) = rx.try_recv()
    {
        assert_eq!(d.as_ptr(), data.as_ptr());
        delivered.push((sub_id, seq));
    }
    delivered.sort();
    assert_eq!(delivered, [(0, 1), (1, 2)]);
    // Idempotency key per channel; count retention per channel.
    let again = s.publish_many_now(&["a", "b"], &data, Some("k"), t);
    assert!(again.iter().all(|p| p.as_ref().unwrap().duplicate));
    assert!(rx.try_recv().is_err());
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

#[test]
fn sweep_expires_and_forgets_idle_channels_with_a_new_epoch_later() {
    let s = store(1 << 20, 100);
    let mut t = T0;
    s.publish_now("c", b("1"), None, t).unwrap();
    let (l, mut rx) = link(16);
    s.subscribe_now(
        "c",
        SubRef {
            link: l.clone(),
            sub_id: 1,
        },
        Some(0),
        None,
        t,
    )
    .unwrap();
    let epoch = match rx.try_recv().unwrap() {
        Down::Backlog { epoch, .. } => epoch,
        other => panic!("{other:?}"),
    };
    let age = s.metrics_age_count();
    t += 11_000;
    s.sweep_all(t);
    assert!(s.metrics_age_count() > age);
    assert_eq!(s.stats_now().messages, 0);
    assert_eq!(s.stats_now().channels, 1, "subscribed channels stay");
    l.close();
    t += 11_000;
    s.sweep_all(t);
    assert_eq!(
        s.stats_now().channels,
        0,
        "idle, empty, unsubscribed: forgotten"
    );
    let (l2, mut rx2) = link(16);
    s.subscribe_now(
        "c",
        SubRef {
            link: l2,
            sub_id: 2,
        },
        Some(1),
        Some(epoch),
        t,
    )
    .unwrap();
    match rx2.try_recv().unwrap() {
        Down::Backlog {
            epoch: e2,
            gap_first_seq,
            ..
        } => {
            assert_ne!(e2, epoch);
            assert_eq!(gap_first_seq, Some(1));
        }
        other => panic!("{other:?}"),
    }
}

impl MemoryStore {
    fn metrics_age_count(&self) -> u64 {
        metrics::MESSAGES_EVICTED.with_label_values(&["age"]).get()
    }
}
