//! `protocol::envelope`: rendering `{"seq":N,"data":...}` into a reused buffer (every
//! delivery) and `payload_to_data` (once per publish).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use protocol::envelope::{payload_to_data, write_message};
use pushgate_benches::{json_payload, text_payload, MEASUREMENT, SAMPLES, WARM_UP};
use std::hint::black_box;

fn write(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope/write_message");
    for size in [64usize, 1024] {
        let data = payload_to_data(json_payload(size));
        let mut out = Vec::with_capacity(4096);
        let mut seq = 1_000_000u64;
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                out.clear();
                seq += 1;
                write_message(&mut out, black_box(seq), black_box(&data));
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn to_data(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope/payload_to_data");
    for size in [64usize, 1024] {
        let json = json_payload(size);
        let text = text_payload(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("json_{size}B"), |b| {
            b.iter(|| payload_to_data(black_box(json.clone())))
        });
        g.bench_function(format!("text_{size}B"), |b| {
            b.iter(|| payload_to_data(black_box(text.clone())))
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
    targets = write, to_data
}
criterion_main!(benches);
