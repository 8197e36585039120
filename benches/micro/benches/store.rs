//! `gateway::store`: the in-memory store's publish (append, retention, directory lookup, the
//! router's lookup of the worker's link and the enqueue on it) to one channel and spread over 10,000 channels,
//! with and without a subscriber; subscribe with a 100-message backlog; and a bare
//! `ChannelLog::append`. Settings are the gateway's defaults (100 messages, 600 s,
//! 256 MiB, 64 shards). Draining the link queue is done outside the timed part.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gateway::link::LinkHandle;
use gateway::router::Router;
use gateway::store::memory::Evicted;
use gateway::store::{ChannelLog, Holder, MemoryStore, Retention};
use protocol::envelope::payload_to_data;
use protocol::link::Down;
use pushgate_benches::{json_payload, MEASUREMENT, SAMPLES, WARM_UP};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};
use tokio::sync::mpsc;

const RETENTION: Retention = Retention {
    max_messages: 100,
    max_age: Duration::from_secs(600),
};
const TOTAL_BYTES: usize = 256 * 1024 * 1024;
const MAX_CHANNELS: usize = 10_000_000;
/// Timed publishes between two (untimed) drains of the link queue.
const CHUNK: u64 = 4096;

/// A store delivering through the gateway's router, with one worker link attached.
fn store() -> (
    MemoryStore<Arc<Router>>,
    Arc<LinkHandle>,
    mpsc::Receiver<Down>,
) {
    let router = Arc::new(Router::new());
    let (link, rx) = LinkHandle::new(Arc::from("worker-0"), 0, 1, 2 * CHUNK as usize);
    router.attach(&link);
    (
        MemoryStore::new(RETENTION, TOTAL_BYTES, MAX_CHANNELS, router),
        link,
        rx,
    )
}

fn drain(rx: &mut mpsc::Receiver<Down>) -> usize {
    let mut n = 0;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    n
}

/// Publishes `iters` times round-robin over `channels` (timed in chunks), draining the
/// link queue between chunks outside the timing.
fn publish_timed(
    s: &MemoryStore<Arc<Router>>,
    channels: &[String],
    data: &Bytes,
    now: u64,
    rx: &mut Option<mpsc::Receiver<Down>>,
    cursor: &mut usize,
    iters: u64,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        let start = StdInstant::now();
        for _ in 0..n {
            let ch = &channels[*cursor];
            *cursor += 1;
            if *cursor == channels.len() {
                *cursor = 0;
            }
            black_box(s.publish_now(ch, data.clone(), None, now).unwrap());
        }
        total += start.elapsed();
        if let Some(rx) = rx {
            assert_eq!(drain(rx) as u64, n, "every publish is delivered live");
        }
        left -= n;
    }
    total
}

fn publish(c: &mut Criterion) {
    let data = payload_to_data(json_payload(64));
    let mut g = c.benchmark_group("store/publish");
    g.throughput(Throughput::Elements(1));
    for n_channels in [1usize, 10_000] {
        for subscribed in [false, true] {
            let (s, l, rx) = store();
            let now = gateway::store::now_ms();
            let channels: Vec<String> = (0..n_channels)
                .map(|i| format!("user:{i}.notifications"))
                .collect();
            let mut rx = if subscribed {
                let mut rx = rx;
                for (i, ch) in channels.iter().enumerate() {
                    let sub = Holder {
                        worker: l.worker.clone(),
                        sub_id: i as u64,
                    };
                    s.subscribe_now(ch, sub, None, None, now).unwrap();
                    if i as u64 % CHUNK == CHUNK - 1 {
                        drain(&mut rx);
                    }
                }
                drain(&mut rx);
                Some(rx)
            } else {
                None
            };
            // Steady state: every channel already holds its full retention.
            let mut cursor = 0;
            publish_timed(
                &s,
                &channels,
                &data,
                now,
                &mut rx,
                &mut cursor,
                (n_channels * RETENTION.max_messages) as u64,
            );
            let name = format!(
                "{}_{}",
                if n_channels == 1 {
                    "1_channel".to_string()
                } else {
                    format!("{n_channels}_channels")
                },
                if subscribed {
                    "subscribed"
                } else {
                    "no_subscriber"
                }
            );
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    publish_timed(&s, &channels, &data, now, &mut rx, &mut cursor, iters)
                })
            });
            assert!(l.is_alive(), "the link queue never overflowed");
        }
    }
    g.finish();
}

fn subscribe(c: &mut Criterion) {
    let data = payload_to_data(json_payload(64));
    let mut g = c.benchmark_group("store/subscribe");
    let (s, l, mut rx) = store();
    let now = gateway::store::now_ms();
    for _ in 0..RETENTION.max_messages {
        s.publish_now("room", data.clone(), None, now).unwrap();
    }
    let sub = Holder {
        worker: l.worker.clone(),
        sub_id: 1,
    };
    // since=0: the whole retained log (100 messages) in one Backlog; since=last: none.
    for (name, since) in [("backlog_100", Some(0)), ("backlog_0", Some(100))] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(CHUNK);
                    let start = StdInstant::now();
                    for _ in 0..n {
                        s.subscribe_now("room", sub.clone(), since, None, now)
                            .unwrap();
                    }
                    total += start.elapsed();
                    assert_eq!(drain(&mut rx) as u64, n);
                    left -= n;
                }
                total
            })
        });
    }
    assert!(l.is_alive());
    g.finish();
}

fn channel_log(c: &mut Criterion) {
    let data = payload_to_data(json_payload(64));
    let mut g = c.benchmark_group("store/channel_log");
    g.throughput(Throughput::Elements(1));
    let mut log = ChannelLog::new(1);
    let now = gateway::store::now_ms();
    let mut evicted = Evicted::default();
    g.bench_function("append_at_retention", |b| {
        b.iter(|| {
            log.append(data.clone(), None, now, &RETENTION, &mut evicted)
                .seq
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(MEASUREMENT)
        .warm_up_time(WARM_UP)
        .sample_size(SAMPLES);
    targets = publish, subscribe, channel_log
}
criterion_main!(benches);
