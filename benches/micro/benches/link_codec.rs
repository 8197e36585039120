//! `protocol::link`: the gateway writing a batch of 1,000 `Deliver` frames into its one
//! reused buffer, and the worker splitting and decoding that batch (payloads are slices).

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use protocol::envelope::payload_to_data;
use protocol::link::{encode_deliver, split_frame, Down};
use pushgate_benches::{json_payload, MEASUREMENT, SAMPLES, WARM_UP};
use std::hint::black_box;

const BATCH: u64 = 1000;

fn encode(out: &mut Vec<u8>, data: &[u8]) {
    for i in 0..BATCH {
        encode_deliver(out, (i << 32) | 7, 3, 1_000_000 + i, data, 0);
    }
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("link_codec");
    g.throughput(Throughput::Elements(BATCH));
    for size in [64usize, 1024] {
        let data = payload_to_data(json_payload(size));
        let mut out = Vec::with_capacity(BATCH as usize * (size + 64));
        g.bench_function(format!("encode_deliver_1000x{size}B"), |b| {
            b.iter(|| {
                out.clear();
                encode(&mut out, black_box(&data));
                black_box(out.len())
            })
        });

        out.clear();
        encode(&mut out, &data);
        let wire = out.clone();
        g.bench_function(format!("split_decode_1000x{size}B"), |b| {
            b.iter_batched(
                || BytesMut::from(&wire[..]),
                |mut buf| {
                    let mut n = 0u64;
                    while let Some(frame) = split_frame(&mut buf).unwrap() {
                        match Down::decode(frame).unwrap() {
                            Down::Deliver {
                                sub_id, seq, data, ..
                            } => {
                                black_box((sub_id, seq, data));
                                n += 1;
                            }
                            other => panic!("unexpected frame {other:?}"),
                        }
                    }
                    assert_eq!(n, BATCH);
                    buf
                },
                BatchSize::SmallInput,
            )
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
    targets = codec
}
criterion_main!(benches);
