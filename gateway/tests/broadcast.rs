//! `POST /v1/broadcast` end to end: a real gateway and real workers on loopback port 0, real
//! WebSocket clients.

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const JSON: (&str, &str) = ("Content-Type", "application/json");

async fn broadcast(c: &Cluster, headers: &[(&str, &str)], body: &Value) -> Resp {
    let mut h = vec![JSON];
    h.extend_from_slice(headers);
    c.request("POST", "/v1/broadcast", &h, body.to_string())
        .await
}

#[tokio::test]
async fn broadcast_reaches_every_channel_with_its_own_seq() {
    let c = start(&[], 2, &[]).await;
    // Online channels with different histories, so each has its own next seq.
    let online: Vec<String> = (0..50).map(|i| format!("bc.on.{i}")).collect();
    for (i, ch) in online.iter().enumerate() {
        for n in 0..(i % 3) {
            c.publish(ch, &n.to_string()).await;
        }
    }
    let mut clients = Vec::new();
    for ch in &online {
        clients.push(c.ws(ch, None).await);
    }
    let workers: HashSet<String> = {
        let mut w = HashSet::new();
        for ch in &online {
            let info = c.get(&format!("/v1/channels/{ch}")).await.json();
            w.insert(info["worker"].as_str().unwrap().to_string());
        }
        w
    };
    assert_eq!(workers.len(), 2, "clients on both workers: {workers:?}");
    // Offline channels, some with history.
    let offline: Vec<String> = (0..10).map(|i| format!("bc.off.{i}")).collect();
    for (i, ch) in offline.iter().enumerate() {
        for n in 0..(i % 2) {
            c.publish(ch, &n.to_string()).await;
        }
    }
    let mut channels: Vec<Value> = online.iter().map(|s| json!(s)).collect();
    channels.extend(offline.iter().map(|s| json!(s)));
    channels.insert(7, json!("bad name!"));
    let data = json!({"cmd": "refresh", "list": [1, 2, 3]});
    let r = broadcast(&c, &[], &json!({"channels": channels, "data": data})).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["accepted"], 60, "{v}");
    let rejected = v["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{v}");
    assert_eq!(rejected[0]["channel"], "bad name!");
    assert!(
        rejected[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("bad channel"),
        "{v}"
    );
    // Every live client gets it with its channel's own next seq, once.
    for (i, ws) in clients.iter_mut().enumerate() {
        let seq = (i % 3) as u64 + 1;
        assert_eq!(
            next_json(ws).await,
            json!({"seq": seq, "data": data}),
            "{}",
            online[i]
        );
    }
    for ws in clients.iter_mut().take(5) {
        assert_quiet(ws, 50).await;
    }
    // Offline channels get it on resume with since.
    for (i, ch) in offline.iter().enumerate() {
        let before = (i % 2) as u64;
        let mut ws = c.ws(ch, Some(before)).await;
        assert_eq!(
            next_json(&mut ws).await,
            json!({"seq": before + 1, "data": data}),
            "{ch}"
        );
        assert_eq!(
            c.get(&format!("/v1/channels/{ch}")).await.json()["last_seq"],
            before + 1
        );
    }
    let metrics = String::from_utf8_lossy(&c.get("/metrics").await.body).to_string();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("pushgate_broadcast_total "))
        .expect("pushgate_broadcast_total exported");
    let n: f64 = line.rsplit(' ').next().unwrap().trim().parse().unwrap();
    assert!(n >= 1.0, "{line}");
    c.stop().await;
}

#[tokio::test]
async fn broadcast_idempotency_key_is_per_channel() {
    let c = start(&[], 1, &[]).await;
    let mut a = c.ws("idem.a", None).await;
    c.publish("idem.b", "0").await;
    let mut b = c.ws("idem.b", None).await;
    let body = json!({"channels": ["idem.a", "idem.b"], "data": "x", "id": "k-1"});
    let r = broadcast(&c, &[], &body).await;
    assert_eq!(r.json(), json!({"accepted": 2, "rejected": []}));
    assert_eq!(next_json(&mut a).await, json!({"seq": 1, "data": "x"}));
    assert_eq!(next_json(&mut b).await, json!({"seq": 2, "data": "x"}));
    // A repeat is accepted but not delivered again.
    let r = broadcast(&c, &[], &body).await;
    assert_eq!(r.json(), json!({"accepted": 2, "rejected": []}));
    assert_quiet(&mut a, 150).await;
    assert_quiet(&mut b, 50).await;
    // The key is per channel: a single publish with it on idem.a is a duplicate too.
    let r = c
        .request(
            "POST",
            "/v1/publish/idem.a",
            &[("Idempotency-Key", "k-1")],
            "\"y\"",
        )
        .await;
    assert_eq!(r.json(), json!({"seq": 1}));
    // A repeated channel in one list gets the message once.
    let r = broadcast(
        &c,
        &[],
        &json!({"channels": ["idem.a", "idem.a"], "data": 5}),
    )
    .await;
    let v = r.json();
    assert_eq!(v["accepted"], 1, "{v}");
    assert_eq!(v["rejected"][0]["error"], "duplicate channel");
    assert_eq!(next_json(&mut a).await, json!({"seq": 2, "data": 5}));
    assert_quiet(&mut a, 100).await;
    c.stop().await;
}

#[tokio::test]
async fn broadcast_limits_are_json_errors() {
    let c = start(
        &[
            "--max-broadcast-channels",
            "3",
            "--max-batch-bytes",
            "300",
            "--max-message-bytes",
            "16",
        ],
        1,
        &[],
    )
    .await;
    let check = |r: &Resp, status: u16, code: &str| {
        assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v = r.json();
        assert_eq!(v["error"], code, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    };
    let r = broadcast(
        &c,
        &[],
        &json!({"channels": ["a", "b", "c", "d"], "data": 1}),
    )
    .await;
    check(&r, 413, "too_many_channels");
    let r = broadcast(&c, &[], &json!({"channels": ["a", "b", "c"], "data": 1})).await;
    assert_eq!(r.json(), json!({"accepted": 3, "rejected": []}));
    let big = "x".repeat(400);
    let r = broadcast(&c, &[], &json!({"channels": ["a"], "data": big})).await;
    check(&r, 413, "payload_too_large");
    let r = broadcast(
        &c,
        &[],
        &json!({"channels": ["a"], "data": "0123456789abcdef"}),
    )
    .await;
    check(&r, 413, "payload_too_large");
    let r = c
        .request("POST", "/v1/broadcast", &[JSON], "{not json")
        .await;
    check(&r, 400, "bad_request");
    let r = broadcast(&c, &[], &json!({"channels": ["a"]})).await;
    check(&r, 400, "bad_request");
    let r = broadcast(&c, &[], &json!({"channels": [1, 2], "data": 1})).await;
    check(&r, 400, "bad_request");
    let r = c.get("/v1/broadcast").await;
    check(&r, 405, "method_not_allowed");
    // Nothing of the refused requests was appended.
    assert_eq!(
        c.get("/v1/channels/a").await.json()["last_seq"],
        1,
        "only the accepted broadcast"
    );
    c.stop().await;
}

#[tokio::test]
async fn broadcast_needs_a_publisher_key_and_follows_publish_cors() {
    let c = start(
        &[
            "--publisher-key",
            "k1",
            "--publish-allow-origin",
            "https://ops.example",
        ],
        1,
        &[],
    )
    .await;
    let body = json!({"channels": ["auth.a"], "data": 1});
    for headers in [
        vec![],
        vec![("Authorization", "Bearer nope")],
        vec![("Authorization", "k1")],
    ] {
        let r = broadcast(&c, &headers, &body).await;
        assert_eq!(r.status, 401, "{headers:?}");
        assert_eq!(r.json()["error"], "unauthorized");
    }
    assert_eq!(c.get("/v1/channels/auth.a").await.json()["last_seq"], 0);
    let r = broadcast(
        &c,
        &[
            ("Authorization", "Bearer k1"),
            ("Origin", "https://ops.example"),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["accepted"], 1);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://ops.example")
    );
    let pre = c
        .request(
            "OPTIONS",
            "/v1/broadcast",
            &[
                ("Origin", "https://ops.example"),
                ("Access-Control-Request-Method", "POST"),
            ],
            "",
        )
        .await;
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("https://ops.example")
    );
    assert!(pre
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("POST")));
    let other = broadcast(
        &c,
        &[
            ("Authorization", "Bearer k1"),
            ("Origin", "https://evil.example"),
        ],
        &body,
    )
    .await;
    assert_eq!(other.header("access-control-allow-origin"), None);
    c.stop().await;
}

/// Latency of one broadcast to many live clients: from sending the POST to the last client
/// receiving its frame. `BROADCAST_CLIENTS` (default 4000) live WebSocket clients over two
/// workers, plus offline channels up to `BROADCAST_CHANNELS` (default 10000) in total.
///
/// `cargo test --release -p gateway --test broadcast -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly"]
async fn broadcast_latency_to_many_clients() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n_clients = env("BROADCAST_CLIENTS", 4000);
    let n_channels = env("BROADCAST_CHANNELS", 10_000).max(n_clients);
    let c = start(&[], 2, &[]).await;
    let names: Vec<String> = (0..n_channels).map(|i| format!("lat.{i}")).collect();
    let mut urls = Vec::with_capacity(n_clients);
    for ch in &names[..n_clients] {
        urls.push(c.assign(ch).await["ws_url"].as_str().unwrap().to_string());
    }
    // The clients run on their own thread and runtime, so the gateway's runtime serves
    // only the gateway (as in production); they share this machine's cores, though.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let clients = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            for chunk in urls.chunks(200) {
                let set: Vec<_> = chunk
                    .iter()
                    .cloned()
                    .map(|url| tokio::spawn(async move { ws_connect(&url).await }))
                    .collect();
                for t in set {
                    let mut ws = t.await.unwrap();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        while let Some(Ok(m)) = ws.next().await {
                            if let Message::Text(_) = m {
                                let _ = tx.send(std::time::Instant::now());
                            }
                        }
                    });
                }
            }
            let _ = ready_tx.send(());
            let _ = done_rx.await;
        });
    });
    ready_rx.await.unwrap();
    for ch in &names[..n_clients] {
        c.wait_online(ch).await;
    }
    let body = json!({"channels": names, "data": {"cmd": "refresh"}}).to_string();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = std::time::Instant::now();
    let r = c
        .request("POST", "/v1/broadcast", &[JSON], body.clone())
        .await;
    let answered = t0.elapsed();
    assert_eq!(r.json()["accepted"], n_channels as u64);
    let mut last = t0;
    for _ in 0..n_clients {
        let t = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a client never received the broadcast")
            .expect("client task ended");
        last = last.max(t);
    }
    let total = last - t0;
    // The same request against channels that exist, and against fresh offline channels.
    let t1 = std::time::Instant::now();
    let r2 = c
        .request("POST", "/v1/broadcast", &[JSON], body.clone())
        .await;
    let second = t1.elapsed();
    assert_eq!(r2.json()["accepted"], n_channels as u64);
    let fresh: Vec<String> = (0..n_channels).map(|i| format!("fresh.{i}")).collect();
    let fresh = json!({"channels": fresh, "data": 1}).to_string();
    let t2 = std::time::Instant::now();
    let r3 = c.request("POST", "/v1/broadcast", &[JSON], fresh).await;
    let offline = t2.elapsed();
    assert_eq!(r3.json()["accepted"], n_channels as u64);
    println!("second broadcast answered after {second:?}; to {n_channels} new offline channels after {offline:?}");
    println!(
        "broadcast to {n_channels} channels ({n_clients} live clients on 2 workers): \
         POST answered after {answered:?}, last client received after {total:?}"
    );
    let _ = done_tx.send(());
    clients.join().unwrap();
    c.stop().await;
}

/// Store-side cost of one broadcast to 10,000 channels (4,000 of them with a live
/// subscriber on one link): first round creates 6,000 channels, later rounds append only.
///
/// `cargo test --release -p gateway --test broadcast -- --ignored --nocapture store_cost`
#[test]
#[ignore = "measurement; run explicitly"]
fn broadcast_store_cost_for_10k_channels() {
    use bytes::Bytes;
    use gateway::link::LinkHandle;
    use gateway::router::Router;
    use gateway::store::{Holder, MemoryStore, Retention};
    use std::sync::Arc;

    let router = Arc::new(Router::new());
    let s = MemoryStore::new(
        Retention {
            max_messages: 100,
            max_age: Duration::from_secs(600),
        },
        256 << 20,
        10_000_000,
        router.clone(),
    );
    let (link, mut rx) = LinkHandle::new(Arc::from("w"), 0, 1, 262_144);
    router.attach(&link);
    let names: Vec<String> = (0..10_000).map(|i| format!("lat.{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for (i, n) in refs.iter().enumerate().take(4000) {
        let sub = Holder {
            worker: link.worker.clone(),
            sub_id: i as u64,
        };
        s.subscribe_now(n, sub, None, None, gateway::store::now_ms())
            .unwrap();
    }
    while rx.try_recv().is_ok() {}
    let body = json!({"channels": names, "data": {"cmd": "refresh"}}).to_string();
    let t0 = std::time::Instant::now();
    let parsed = gateway::broadcast::parse(body.as_bytes(), 100_000, 65_536).unwrap();
    let (good, _) = gateway::broadcast::split_channels(&parsed.channels);
    println!("parse + split of {} names: {:?}", good.len(), t0.elapsed());
    let data = Bytes::from_static(br#"{"cmd":"refresh"}"#);
    for round in 0..4 {
        let t0 = std::time::Instant::now();
        let r = s.publish_many_now(&refs, &data, None, gateway::store::now_ms());
        let took = t0.elapsed();
        let mut delivered = 0;
        while rx.try_recv().is_ok() {
            delivered += 1;
        }
        assert_eq!((r.len(), delivered), (10_000, 4000));
        println!("round {round}: publish_many of 10000 channels in {took:?}");
    }
}
