//! `worker::ws`: the server-side WebSocket text frame of one message (header + envelope)
//! into the loop thread's reused scratch buffer, plus the handshake answer; SSE and
//! long-poll renderings of the same message for comparison.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use protocol::envelope::payload_to_data;
use pushgate_benches::{json_payload, MEASUREMENT, SAMPLES, WARM_UP};
use std::hint::black_box;

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws_frame/write_message");
    g.throughput(Throughput::Elements(1));
    // 64 B: 2-byte header; 1 KiB: 16-bit length; 70 KiB: 64-bit length.
    for size in [64usize, 1024, 70 * 1024] {
        let data = payload_to_data(json_payload(size));
        let mut out = Vec::with_capacity(128 * 1024);
        let mut seq = 1_000_000u64;
        g.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                out.clear();
                seq += 1;
                worker::ws::write_message(&mut out, black_box(seq), black_box(&data));
                black_box(out.len())
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("ws_frame/batch");
    let data = payload_to_data(json_payload(64));
    let mut out = Vec::with_capacity(256 * 1024);
    g.throughput(Throughput::Elements(1000));
    g.bench_function("1000x64B", |b| {
        b.iter(|| {
            out.clear();
            for seq in 1..=1000u64 {
                worker::ws::write_message(&mut out, black_box(seq), black_box(&data));
            }
            black_box(out.len())
        })
    });
    g.finish();
}

fn others(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws_frame/other");
    let data = payload_to_data(json_payload(64));
    let mut out = Vec::with_capacity(4096);
    g.bench_function("handshake", |b| {
        b.iter(|| {
            out.clear();
            worker::ws::write_handshake(&mut out, black_box(b"dGhlIHNhbXBsZSBub25jZQ=="));
            black_box(out.len())
        })
    });
    g.bench_function("sse_event_64B", |b| {
        b.iter(|| {
            out.clear();
            worker::sse::write_message(&mut out, black_box(42), black_box(&data));
            black_box(out.len())
        })
    });
    let mut body = worker::poll::PollBody::default();
    g.bench_function("poll_body_10x64B", |b| {
        b.iter(|| {
            body.clear();
            for seq in 1..=10u64 {
                body.push(black_box(seq), black_box(&data));
            }
            black_box(body.finish(11, None).len())
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
    targets = frames, others
}
criterion_main!(benches);
