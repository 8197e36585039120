//! Gateways that share a Redis agree on the fleet's ticket keys (so a worker linked to any
//! of them seals tickets every worker opens), and Redis holds them only sealed under a key
//! derived from `--link-key`.

mod common;
mod link_support;

use common::redis::RedisServer;
use link_support::{FakeWorker, Gw};
use protocol::link::Down;

/// (id, key, seals) of each key in a `TicketKeys` frame.
fn keys(d: &Down) -> Vec<([u8; 4], [u8; 32], bool)> {
    match d {
        Down::TicketKeys { keys, .. } => keys.iter().map(|k| (k.id, k.key, k.encrypt)).collect(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_on_one_redis_hand_out_the_same_ticket_keys() {
    let redis = RedisServer::start(&[]);
    let url = redis.url();
    let gw = |key: &'static str| {
        let url = url.clone();
        async move {
            Gw::start(&[
                "--listen",
                "127.0.0.1:0",
                "--store",
                &url,
                "--link-key",
                key,
            ])
            .await
        }
    };
    let (a, b, other) = (
        gw("fleet-key").await,
        gw("fleet-key").await,
        gw("another-key").await,
    );

    let mut wa = FakeWorker::connect_with_key(a.addr, Some("fleet-key")).await;
    let mut wb = FakeWorker::connect_with_key(b.addr, Some("fleet-key")).await;
    let mut wo = FakeWorker::connect_with_key(other.addr, Some("another-key")).await;
    let (ka, kb, ko) = (
        keys(&wa.hello_wanting_ticket_keys("w-a").await),
        keys(&wb.hello_wanting_ticket_keys("w-b").await),
        keys(&wo.hello_wanting_ticket_keys("w-o").await),
    );
    // The current key seals, the next one is staged (and a previous one may still open).
    assert!(
        ka.len() >= 2 && ka.iter().filter(|k| k.2).count() == 1,
        "{ka:?}"
    );
    assert_eq!(ka, kb, "two gateways of one fleet disagree on the keys");
    // A gateway with another link key cannot open the shared keys: it makes its own.
    assert!(ko
        .iter()
        .all(|k| !ka.iter().any(|a| a.0 == k.0 || a.1 == k.1)));

    // In Redis: sealed values only, never a key's bytes.
    let listed = redis.cli(&["--scan", "--pattern", "*tickets*"]).unwrap();
    let names: Vec<&str> = listed.lines().filter(|l| !l.is_empty()).collect();
    assert!(names.len() >= 2, "{listed}");
    for name in names {
        let raw = std::process::Command::new("redis-cli")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &redis.addr.port().to_string(),
                "--no-raw",
            ])
            .args(["GET", name])
            .output()
            .unwrap()
            .stdout;
        let value = String::from_utf8_lossy(&raw);
        for k in &ka {
            let hex: String = k.1.iter().map(|b| format!("\\x{b:02x}")).collect();
            assert!(
                !value.contains(&hex[..24]),
                "{name} holds a key in the clear"
            );
        }
        let ttl: i64 = redis.cli(&["TTL", name]).unwrap().trim().parse().unwrap();
        assert!(ttl > 0, "{name} never expires");
    }
    // A Redis that restarts empty is given the keys back by the gateways, not new ones:
    // tickets already sealed go on resuming.
    redis.cli(&["FLUSHALL"]).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let mut wa2 = FakeWorker::connect_with_key(a.addr, Some("fleet-key")).await;
    let mut wb2 = FakeWorker::connect_with_key(b.addr, Some("fleet-key")).await;
    let after_a = keys(&wa2.hello_wanting_ticket_keys("w-a2").await);
    let after_b = keys(&wb2.hello_wanting_ticket_keys("w-b2").await);
    let current = |k: &[([u8; 4], [u8; 32], bool)]| k.iter().find(|k| k.2).map(|k| k.0);
    assert_eq!(
        current(&after_a),
        current(&ka),
        "the sealing key changed after FLUSHALL"
    );
    assert_eq!(after_a, after_b);
    let listed = redis.cli(&["--scan", "--pattern", "*tickets*"]).unwrap();
    assert!(
        listed.lines().filter(|l| !l.is_empty()).count() >= 2,
        "{listed}"
    );
    for g in [a, b, other] {
        g.stop().await;
    }
}
