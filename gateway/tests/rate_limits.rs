//! Publish limits: rates per source IP and per publisher key (429 with `Retry-After` and the
//! contract's JSON error, batches and broadcasts charged per message, nothing stored for a
//! refused publish), and the bound on request bodies in flight (503 busy).

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

async fn post(c: &Cluster, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    c.request("POST", path, headers, bytes::Bytes::from(body.to_owned()))
        .await
}

#[tokio::test]
async fn a_source_ip_over_its_rate_gets_429_and_comes_back_after_retry_after() {
    let c = start(
        &["--publish-rate-per-ip", "4", "--publish-burst-secs", "1"],
        1,
        &[],
    )
    .await;
    for i in 1..=4 {
        assert_eq!(c.publish("rl", &i.to_string()).await, i);
    }
    let r = post(&c, "/v1/publish/rl", &[], "5").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "rate_limited");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("retry after"));
    assert_eq!(r.header("retry-after"), Some("1"));
    // Nothing was stored for it.
    assert_eq!(c.get("/v1/channels/rl").await.json()["last_seq"], 4);
    // A batch of three costs three: refused whole while the bucket is empty...
    let ndjson = [("Content-Type", "application/x-ndjson")];
    let lines = "{\"channel\":\"rl\",\"data\":1}\n{\"channel\":\"rl\",\"data\":2}\n{\"channel\":\"rl\",\"data\":3}\n";
    assert_eq!(post(&c, "/v1/publish", &ndjson, lines).await.status, 429);
    // ...and taken once the second has refilled it.
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    let r = post(&c, "/v1/publish", &ndjson, lines).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json(), json!({"accepted": 3, "rejected": []}));
    // One token left: a broadcast to two channels is one more than that.
    let b = json!({"channels": ["rl", "rl2"], "data": 1}).to_string();
    assert_eq!(post(&c, "/v1/broadcast", &[], &b).await.status, 429);
    let m = String::from_utf8_lossy(&c.get("/metrics").await.body).into_owned();
    assert!(
        m.lines().any(|l| l
            .starts_with("pushgate_publish_rejected_total{reason=\"rate_limited\"}")
            && !l.ends_with(" 0")),
        "{m}"
    );
    c.stop().await;
}

#[tokio::test]
async fn each_publisher_key_has_its_own_rate() {
    let c = start(
        &[
            "--publisher-key",
            "alpha,beta",
            "--publish-rate-per-key",
            "2",
            "--publish-burst-secs",
            "1",
        ],
        1,
        &[],
    )
    .await;
    let alpha = [("Authorization", "Bearer alpha")];
    let beta = [("Authorization", "Bearer beta")];
    for _ in 0..2 {
        assert_eq!(post(&c, "/v1/publish/k", &alpha, "1").await.status, 202);
    }
    assert_eq!(post(&c, "/v1/publish/k", &alpha, "1").await.status, 429);
    // Same source IP, other key: its own bucket.
    assert_eq!(post(&c, "/v1/publish/k", &beta, "1").await.status, 202);
    // A wrong key is refused as unauthorized, not charged to anyone.
    let wrong = [("Authorization", "Bearer nope")];
    assert_eq!(post(&c, "/v1/publish/k", &wrong, "1").await.status, 401);
    assert_eq!(post(&c, "/v1/publish/k", &beta, "1").await.status, 202);
    c.stop().await;
}

#[tokio::test]
async fn bodies_in_flight_are_bounded_and_a_publish_past_it_is_busy_not_queued() {
    use tokio::io::AsyncWriteExt;
    let c = start(
        &[
            "--max-inflight-body-bytes",
            "16384",
            "--max-message-bytes",
            "8192",
            "--max-batch-bytes",
            "8192",
        ],
        1,
        &[],
    )
    .await;
    // Two publishes that announce 8 KiB each and send a little: together they hold the
    // whole budget while their bodies trickle.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(c.gateway).await.unwrap();
        s.write_all(
            b"POST /v1/publish/busy HTTP/1.1\r\nHost: x\r\nContent-Length: 8192\r\n\r\n\"ab",
        )
        .await
        .unwrap();
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = post(&c, "/v1/publish/busy", &[], "1").await;
    assert_eq!(r.status, 503, "{:?}", r.json());
    assert_eq!(r.json()["error"], "busy");
    // One of them goes away: its share is back.
    drop(slow.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.publish("busy", "1").await, 1);
    c.stop().await;
}
