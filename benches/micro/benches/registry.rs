//! `gateway::registry`: the least-loaded pick (`/v1/assign`) over 16 and 256 healthy
//! workers with uneven load.

use criterion::{criterion_group, criterion_main, Criterion};
use gateway::link::LinkHandle;
use gateway::registry::Registry;
use protocol::link::Hello;
use pushgate_benches::{MEASUREMENT, SAMPLES, WARM_UP};
use std::hint::black_box;
use std::time::Duration;
use tokio::time::Instant;

fn pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("registry/pick");
    for n in [16u64, 256] {
        let r = Registry::new(Duration::from_secs(3600));
        let now = Instant::now();
        for i in 0..n {
            let hello = Hello {
                id: format!("worker-{i}"),
                incarnation: 1,
                addrs: (0..4).map(|j| format!("10.0.{j}.{i}:8081")).collect(),
                // Huge capacity: the pick never runs out while criterion iterates.
                capacity: 1 << 40,
                connections: (i * 7919) % 50_000,
                tls_addrs: vec![],
                wants_ticket_keys: false,
            };
            let link = r.register(&hello, now, |slot, generation, id| {
                LinkHandle::new(id, slot, generation, 16).0
            });
            // The first Load makes the worker healthy, as on a real link.
            r.heartbeat(&link, hello.connections, now);
        }
        assert_eq!(r.counts(now), [n, 0, 0, 0]);
        g.bench_function(format!("{n}_workers"), |b| {
            b.iter(|| black_box(r.pick(black_box(now)).unwrap()))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(MEASUREMENT)
        .warm_up_time(WARM_UP)
        .sample_size(SAMPLES);
    targets = pick
}
criterion_main!(benches);
