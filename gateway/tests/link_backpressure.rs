//! A worker that stops reading its link while publishers push hundreds of megabytes at its
//! channels: the gateway's memory stays within its bounds (the link queue, the store's
//! byte bound, bodies in flight), the link is closed on purpose, every publish is answered
//! 202 or 503 (never accepted and then forgotten), and the worker that comes back finds
//! every accepted seq in the store: the newest messages, and a gap for what the byte bound
//! evicted. Its own test binary: the gateway runs in this process and its RSS is read.

mod link_support;

use link_support::*;
use protocol::link::Down;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CHANNELS: u64 = 20;
const LINES: u64 = 1000;
const BATCHES: u64 = 80;
const DATA: usize = 4000;
const STORE_BYTES: u64 = 32 << 20;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_reading_costs_the_gateway_bounded_memory_and_loses_nothing() {
    let store = STORE_BYTES.to_string();
    let gw = Gw::start(&[
        "--link-queue",
        "512",
        "--retention-total-bytes",
        &store,
        "--retention-messages",
        "1000000",
        "--max-inflight-body-bytes",
        "33554432",
    ])
    .await;
    let mut w = gw.worker("stuck", &["127.0.0.2:9000"], 100).await;
    for c in 0..CHANNELS {
        w.subscribe(c + 1, &format!("bp-{c}"), None, None).await;
        assert!(matches!(w.recv().await, Down::Backlog { .. }));
    }
    // From here on the worker reads nothing.

    let base = rss_bytes();
    let peak = Arc::new(AtomicU64::new(base));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let pad = "x".repeat(DATA);
    let addr = gw.addr;
    let mut publishers = tokio::task::JoinSet::new();
    for p in 0..4u64 {
        let pad = pad.clone();
        publishers.spawn(async move {
            let (mut accepted, mut busy) = (vec![0u64; CHANNELS as usize], 0u64);
            for b in (p..BATCHES).step_by(4) {
                let mut body = String::with_capacity((LINES as usize) * (DATA + 40));
                for i in 0..LINES {
                    let c = (b * LINES + i) % CHANNELS;
                    body.push_str(&format!("{{\"channel\":\"bp-{c}\",\"data\":\"{pad}\"}}\n"));
                }
                let r = http(
                    addr,
                    "POST",
                    "/v1/publish",
                    &[("Content-Type", "application/x-ndjson")],
                    body.as_bytes(),
                )
                .await;
                match r.status {
                    200 | 202 => {
                        let v = r.json();
                        assert_eq!(v["accepted"], LINES, "{v}");
                        for i in 0..LINES {
                            accepted[((b * LINES + i) % CHANNELS) as usize] += 1;
                        }
                    }
                    // Refused whole (bodies in flight at their bound): nothing accepted.
                    503 => busy += 1,
                    other => panic!("publish answered {other}: {}", r.text()),
                }
            }
            (accepted, busy)
        });
    }
    let mut accepted = vec![0u64; CHANNELS as usize];
    let mut busy = 0;
    while let Some(r) = publishers.join_next().await {
        let (a, b) = r.unwrap();
        for (t, x) in accepted.iter_mut().zip(a) {
            *t += x;
        }
        busy += b;
    }
    sampler.abort();
    let published: u64 = accepted.iter().sum::<u64>() * DATA as u64;
    let grew = peak.load(Ordering::Relaxed).saturating_sub(base);
    assert!(
        published > 4 * STORE_BYTES,
        "{published} B accepted ({busy} batches refused busy): too few to tell a bound"
    );
    // The store's bound, the link queue (512 frames of ~4 KB), the bodies in flight and
    // their parsing (32 MiB, about twice over), and the allocator's slack; an unbounded
    // link would hold most of what was published.
    let bound = STORE_BYTES + (2 << 20) + (96 << 20) + (32 << 20);
    eprintln!(
        "RSS grew {} MiB while {} MiB were published ({busy} batches refused busy)",
        grew >> 20,
        published >> 20
    );
    assert!(
        grew < bound,
        "RSS grew {} MiB while {} MiB were published (bound {} MiB)",
        grew >> 20,
        published >> 20,
        bound >> 20
    );
    assert!(gw.metric("pushgate_link_overflows_total").await >= 1.0);

    // The stuck link was closed; the worker comes back and asks for everything.
    let mut w = gw.worker("stuck", &["127.0.0.2:9000"], 100).await;
    for c in 0..CHANNELS {
        w.subscribe(c + 1, &format!("bp-{c}"), Some(0), None).await;
        match w.recv().await {
            Down::Backlog {
                gap_first_seq,
                last_seq,
                messages,
                ..
            } => {
                assert_eq!(
                    last_seq, accepted[c as usize],
                    "every accepted seq is known"
                );
                let first = messages.first().map(|m| m.0).unwrap_or(last_seq + 1);
                // What the byte bound evicted is told as a gap, never skipped silently.
                assert_eq!(gap_first_seq.is_some(), first > 1, "channel bp-{c}");
                assert!(!messages.is_empty(), "the newest messages are kept");
                for (k, m) in messages.iter().enumerate() {
                    assert_eq!(m.0, first + k as u64, "contiguous up to the last");
                }
            }
            other => panic!("{other:?}"),
        }
    }
    gw.stop().await;
}
