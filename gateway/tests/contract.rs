//! The external contract of DESIGN.md, end to end: a real gateway and real workers on
//! loopback port 0, real WebSocket / HTTP / SSE clients.

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn ws_receives_published_messages_in_order() {
    let c = start(&[], 1, &[]).await;
    let a = c.assign("room.1").await;
    assert_eq!(a["worker"], "w0");
    for key in ["ws_url", "poll_url", "sse_url"] {
        assert!(a[key].as_str().unwrap().contains("channel=room.1"), "{a}");
    }
    assert!(a["expires_in"].as_u64().unwrap() > 0);
    let mut ws = c.ws("room.1", None).await;
    assert_eq!(c.publish("room.1", r#"{"cmd":"open","n":1}"#).await, 1);
    assert_eq!(c.publish("room.1", "plain text, not JSON").await, 2);
    assert_eq!(c.publish("room.1", "[1, 2, 3]").await, 3);
    assert_eq!(
        next_json(&mut ws).await,
        json!({"seq":1,"data":{"cmd":"open","n":1}})
    );
    assert_eq!(
        next_json(&mut ws).await,
        json!({"seq":2,"data":"plain text, not JSON"})
    );
    assert_eq!(next_json(&mut ws).await, json!({"seq":3,"data":[1,2,3]}));
    c.stop().await;
}

#[tokio::test]
async fn offline_messages_arrive_on_resume_in_order_once() {
    let c = start(&[], 1, &[]).await;
    let mut ws = c.ws("dev-7", Some(0)).await;
    c.publish("dev-7", "1").await;
    assert_eq!(next_json(&mut ws).await["seq"], 1);
    drop(ws);
    // Published while the client is away.
    for i in 2..=5 {
        assert_eq!(c.publish("dev-7", &i.to_string()).await, i);
    }
    let mut ws = c.ws("dev-7", Some(1)).await;
    for i in 2..=5u64 {
        assert_eq!(next_json(&mut ws).await, json!({"seq": i, "data": i}));
    }
    c.publish("dev-7", "6").await;
    assert_eq!(next_json(&mut ws).await["seq"], 6);
    assert_quiet(&mut ws, 200).await;
    c.stop().await;
}

#[tokio::test]
async fn resume_older_than_retention_gets_gap_first() {
    let c = start(&["--retention-messages", "3"], 1, &[]).await;
    for i in 1..=5 {
        c.publish("g", &i.to_string()).await;
    }
    let mut ws = c.ws("g", Some(0)).await;
    let gap = next_json(&mut ws).await;
    assert_eq!(gap["gap"], true, "{gap}");
    assert_eq!(gap["first_seq"], 3);
    assert!(gap["epoch"].as_u64().is_some());
    for i in 3..=5u64 {
        assert_eq!(next_json(&mut ws).await["seq"], i);
    }
    // A resume that can be served whole has no gap.
    drop(ws);
    let mut ws = c.ws("g", Some(4)).await;
    assert_eq!(next_json(&mut ws).await, json!({"seq":5,"data":5}));
    // A resume from another epoch is told so.
    let epoch = gap["epoch"].as_u64().unwrap();
    drop(ws);
    let a = c.assign("g").await;
    let url = format!(
        "{}&since=5&epoch={}",
        a["ws_url"].as_str().unwrap(),
        epoch + 1
    );
    let mut ws = ws_connect(&url).await;
    let g2 = next_json(&mut ws).await;
    assert_eq!(g2["gap"], true, "{g2}");
    assert_eq!(g2["epoch"], epoch);
    c.stop().await;
}

/// Long enough for a channel idle past a 1 s retention to be forgotten by every store's
/// sweep (the memory store visits each shard once in 4 s).
const FORGOTTEN: Duration = Duration::from_millis(6500);

#[tokio::test]
async fn an_idle_channel_goes_on_counting_after_its_messages_expired() {
    let c = start(&["--retention-secs", "1"], 1, &[]).await;
    assert_eq!(c.publish("idle.1", "1").await, 1);
    assert_eq!(c.publish("idle.1", "2").await, 2);
    tokio::time::sleep(FORGOTTEN).await;
    let info = c.get("/v1/channels/idle.1").await.json();
    assert_eq!(
        (info["last_seq"].clone(), info["buffered"].clone()),
        (json!(2), json!(0))
    );
    assert_eq!(
        c.publish("idle.1", "3").await,
        3,
        "the seq did not start over"
    );
    // A resume from before the expiry is told of its gap, in the channel's one epoch.
    let mut ws = c.ws("idle.1", Some(0)).await;
    let gap = next_json(&mut ws).await;
    assert_eq!(
        (gap["gap"].clone(), gap["first_seq"].clone()),
        (json!(true), json!(3)),
        "{gap}"
    );
    assert_eq!(next_json(&mut ws).await, json!({"seq": 3, "data": 3}));
    drop(ws);
    let a = c.assign("idle.1").await;
    let url = format!(
        "{}&since=3&epoch={}",
        a["ws_url"].as_str().unwrap(),
        gap["epoch"]
    );
    let mut ws = ws_connect(&url).await;
    c.publish("idle.1", "4").await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"seq": 4, "data": 4}),
        "no gap: same epoch"
    );
    c.stop().await;
}

#[tokio::test]
async fn a_channel_idle_past_channel_meta_secs_starts_a_new_epoch() {
    let c = start(
        &["--retention-secs", "1", "--channel-meta-secs", "2"],
        1,
        &[],
    )
    .await;
    assert_eq!(c.publish("idle.2", "1").await, 1);
    assert_eq!(c.publish("idle.2", "2").await, 2);
    tokio::time::sleep(FORGOTTEN).await;
    assert_eq!(c.get("/v1/channels/idle.2").await.json()["last_seq"], 0);
    assert_eq!(
        c.publish("idle.2", "x").await,
        1,
        "a new epoch counts from 1"
    );
    let mut ws = c.ws("idle.2", Some(2)).await;
    let gap = next_json(&mut ws).await;
    assert_eq!(
        (gap["gap"].clone(), gap["first_seq"].clone()),
        (json!(true), json!(1)),
        "{gap}"
    );
    assert_eq!(next_json(&mut ws).await["seq"], 1);
    c.stop().await;
}

#[tokio::test]
async fn newer_connection_replaces_older_with_a_reason() {
    let c = start(&[], 2, &[]).await;
    let mut first = c.ws("solo", None).await;
    // The second connection goes to a specific worker other than the first when possible.
    let a = c.assign("solo").await;
    let mut second = ws_connect(a["ws_url"].as_str().unwrap()).await;
    let (code, reason) = next_close(&mut first).await;
    assert_eq!(code, 4001);
    assert!(reason.contains("replaced"), "{reason}");
    c.wait_online("solo").await;
    c.publish("solo", "\"hi\"").await;
    assert_eq!(next_json(&mut second).await["data"], "hi");
    c.stop().await;
}

#[tokio::test]
async fn long_poll_answers_at_once_holds_and_times_out() {
    let c = start(&[], 1, &[]).await;
    c.publish("p", "\"a\"").await;
    let poll_url = c.assign("p").await["poll_url"]
        .as_str()
        .unwrap()
        .to_string();
    // Something retained: answered at once.
    let r = c.get(&format!("{poll_url}&since=0")).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["messages"], json!([{"seq":1,"data":"a"}]));
    assert_eq!(v["next"], 1);
    // Nothing newer: held until a publish arrives.
    let held = {
        let url = format!("{poll_url}&since=1");
        let http = c.http.clone();
        tokio::spawn(async move {
            let req = hyper::Request::get(url)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let resp = http.request(req).await.unwrap();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            serde_json::from_slice::<Value>(&body).unwrap()
        })
    };
    c.wait_online("p").await;
    c.publish("p", "\"b\"").await;
    let v = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v["messages"], json!([{"seq":2,"data":"b"}]));
    assert_eq!(v["next"], 2);
    // Nothing arrives: an empty answer after the timeout.
    let t0 = std::time::Instant::now();
    let r = c.get(&format!("{poll_url}&since=2&timeout=1")).await;
    assert_eq!(r.json(), json!({"messages":[],"next":2}));
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    c.stop().await;
}

#[tokio::test]
async fn sse_streams_events_with_ids_and_resumes() {
    let c = start(&[], 1, &[]).await;
    for i in 1..=3 {
        c.publish("s", &format!("{{\"i\":{i}}}")).await;
    }
    let sse_url = c.assign("s").await["sse_url"].as_str().unwrap().to_string();
    let mut sse = Sse::open(&format!("{sse_url}&since=1"), &[]).await;
    assert!(sse.head.starts_with("HTTP/1.1 200"), "{}", sse.head);
    assert!(
        sse.head
            .to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{}",
        sse.head
    );
    assert_eq!(
        sse.next_event().await,
        (Some(2), json!({"seq":2,"data":{"i":2}}))
    );
    assert_eq!(
        sse.next_event().await,
        (Some(3), json!({"seq":3,"data":{"i":3}}))
    );
    c.publish("s", "4").await;
    assert_eq!(sse.next_event().await, (Some(4), json!({"seq":4,"data":4})));
    drop(sse);
    // Last-Event-ID (a browser's own reconnect) wins over since.
    let mut sse = Sse::open(&format!("{sse_url}&since=0"), &[("Last-Event-ID", "3")]).await;
    assert_eq!(sse.next_event().await.0, Some(4));
    c.stop().await;
}

#[tokio::test]
async fn publish_errors_are_json_with_fitting_status() {
    let c = start(
        &["--max-message-bytes", "16", "--publisher-key", "k1"],
        1,
        &[],
    )
    .await;
    let auth = [("Authorization", "Bearer k1")];
    let r = c.request("POST", "/v1/publish/ok", &[], "1").await;
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].is_string());
    let r = c
        .request(
            "POST",
            "/v1/publish/ok",
            &[("Authorization", "Bearer nope")],
            "1",
        )
        .await;
    assert_eq!(r.status, 401);
    let r = c
        .request("POST", "/v1/publish/bad%20name", &auth, "1")
        .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].is_string());
    let long = "x".repeat(129);
    let r = c
        .request("POST", &format!("/v1/publish/{long}"), &auth, "1")
        .await;
    assert_eq!(r.status, 400);
    let r = c
        .request("POST", "/v1/publish/ok", &auth, "\"0123456789abcdefg\"")
        .await;
    assert_eq!(r.status, 413);
    let r = c.request("POST", "/v1/publish/ok", &auth, "1").await;
    assert_eq!((r.status, r.json()), (202, json!({"seq":1})));
    let r = c.get("/v1/channels/ok").await;
    assert_eq!(
        r.json()["last_seq"],
        1,
        "a refused publish must not take a seq"
    );
    let r = c.get("/v1/nope").await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    let r = c.get("/v1/assign?channel=a/b").await;
    assert_eq!(r.status, 400);
    c.stop().await;
}

#[tokio::test]
async fn idempotency_key_is_accepted_but_delivered_once() {
    let c = start(&[], 1, &[]).await;
    let mut ws = c.ws("idem", None).await;
    let h = [("Idempotency-Key", "order-42")];
    let r1 = c.request("POST", "/v1/publish/idem", &h, "\"x\"").await;
    let r2 = c.request("POST", "/v1/publish/idem", &h, "\"x\"").await;
    assert_eq!((r1.status, r2.status), (202, 202));
    assert_eq!(r1.json()["seq"], 1);
    assert_eq!(r2.json()["seq"], 1);
    c.publish("idem", "\"y\"").await;
    assert_eq!(next_json(&mut ws).await, json!({"seq":1,"data":"x"}));
    assert_eq!(next_json(&mut ws).await, json!({"seq":2,"data":"y"}));
    assert_quiet(&mut ws, 200).await;
    c.stop().await;
}

#[tokio::test]
async fn ndjson_batch_keeps_good_lines_and_reports_bad_ones() {
    let c = start(&[], 1, &[]).await;
    let mut ws = c.ws("b1", None).await;
    let body = [
        r#"{"channel":"b1","data":{"k":1}}"#,
        r#"not json"#,
        r#"{"channel":"bad channel","data":1}"#,
        r#"{"channel":"b2","data":"two","id":"once"}"#,
        r#"{"channel":"b1","data":[2]}"#,
        r#"{"channel":"b2","data":"two","id":"once"}"#,
        r#"{"data":3}"#,
    ]
    .join("\n");
    let r = c
        .request(
            "POST",
            "/v1/publish",
            &[("Content-Type", "application/x-ndjson")],
            body,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let v = r.json();
    assert_eq!(v["accepted"], 4, "{v}");
    let lines: Vec<u64> = v["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![2, 3, 7], "{v}");
    assert_eq!(next_json(&mut ws).await, json!({"seq":1,"data":{"k":1}}));
    assert_eq!(next_json(&mut ws).await, json!({"seq":2,"data":[2]}));
    assert_eq!(c.get("/v1/channels/b2").await.json()["last_seq"], 1);
    let r = c
        .request(
            "POST",
            "/v1/publish",
            &[("Content-Type", "text/plain")],
            "x",
        )
        .await;
    assert!(r.status == 415 || r.status == 400, "{}", r.status);
    c.stop().await;
}

#[tokio::test]
async fn channel_info_workers_health_metrics() {
    let c = start(&[], 1, &[]).await;
    assert_eq!(
        c.get("/v1/channels/nobody").await.json(),
        json!({"online":false,"worker":null,"last_seq":0,"buffered":0})
    );
    let ws = c.ws("info", None).await;
    c.publish("info", "1").await;
    c.publish("info", "2").await;
    let v = c.get("/v1/channels/info").await.json();
    assert_eq!(
        v,
        json!({"online":true,"worker":"w0","last_seq":2,"buffered":2})
    );
    drop(ws);
    for _ in 0..200 {
        if c.get("/v1/channels/info").await.json()["online"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(c.get("/v1/channels/info").await.json()["online"], false);
    let w = c.get("/v1/workers").await.json();
    let w0 = &w["workers"][0];
    assert_eq!(w0["id"], "w0");
    assert_eq!(w0["state"], "healthy");
    assert!(w0["capacity"].as_u64().unwrap() > 0);
    assert_eq!(w0["addresses"].as_array().unwrap().len(), 1);
    assert_eq!(c.get("/healthz").await.status, 200);
    let m = c.get("/metrics").await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(text.contains("pushgate_publish_total"), "{text}");
    let wm = c
        .get(&format!("http://{}/metrics", c.worker_addrs[0][0]))
        .await;
    assert!(String::from_utf8_lossy(&wm.body).contains("process_resident_memory_bytes"));
    assert_eq!(
        c.get(&format!("http://{}/healthz", c.worker_addrs[0][0]))
            .await
            .status,
        200
    );
    let page = c.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    c.stop().await;
}

#[tokio::test]
async fn assign_picks_least_loaded_and_spreads_over_bound_ips() {
    let c = start(&[], 0, &[]).await;
    let mut c = c;
    c.add_worker(
        "w0",
        &["--listen", "127.0.0.1:0", "--listen", "127.0.0.2:0"],
    )
    .await;
    c.add_worker("w1", &[]).await;
    c.wait_workers(2).await;
    let mut per_worker: HashMap<String, usize> = HashMap::new();
    let mut hosts: HashMap<String, usize> = HashMap::new();
    let mut clients = Vec::new();
    for i in 0..20 {
        let a = c.assign(&format!("lb{i}")).await;
        *per_worker
            .entry(a["worker"].as_str().unwrap().into())
            .or_default() += 1;
        let url = a["ws_url"].as_str().unwrap().to_string();
        if a["worker"] == "w0" {
            let host = url
                .split('/')
                .nth(2)
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .to_string();
            *hosts.entry(host).or_default() += 1;
        }
        clients.push(ws_connect(&url).await);
    }
    // Even within one client: a load report landing between an assign and its connect may
    // shift one client.
    let (w0, w1) = (
        per_worker.get("w0").copied().unwrap_or(0),
        per_worker.get("w1").copied().unwrap_or(0),
    );
    assert_eq!(w0 + w1, 20, "{per_worker:?}");
    assert!(w0.abs_diff(w1) <= 2, "{per_worker:?}");
    // A worker's bound IPs are handed out round-robin.
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    let counts: Vec<usize> = hosts.values().copied().collect();
    assert!(counts[0].abs_diff(counts[1]) <= 1, "{hosts:?}");
    c.stop().await;
}

#[tokio::test]
async fn no_healthy_worker_is_503() {
    let c = start(&[], 0, &[]).await;
    let r = c.get("/v1/assign?channel=x").await;
    assert_eq!(r.status, 503);
    assert!(r.json()["error"].is_string());
    c.stop().await;
}

#[tokio::test]
async fn subscriber_tokens_are_checked_by_gateway_and_worker() {
    let secret = "topsecret";
    let c = start(
        &["--subscriber-secret", secret],
        1,
        &["--subscriber-secret", secret],
    )
    .await;
    let now = unix_now();
    // Assign takes a token; the channel comes from it.
    assert_eq!(c.get("/v1/assign?channel=t1").await.status, 401);
    let good = protocol::token::sign(secret.as_bytes(), "t1", now + 60);
    let a = c.get(&format!("/v1/assign?token={good}")).await;
    assert_eq!(a.status, 200);
    let a = a.json();
    let exp = a["expires_in"].as_u64().unwrap();
    assert!((50..=60).contains(&exp), "{a}");
    let ws_url = a["ws_url"].as_str().unwrap().to_string();
    assert!(ws_url.contains("token="), "{ws_url}");
    let mut ws = ws_connect(&ws_url).await;
    c.wait_online("t1").await;
    c.publish("t1", "\"ok\"").await;
    assert_eq!(next_json(&mut ws).await["data"], "ok");

    let worker = c.worker_addrs[0][0];
    let expired = protocol::token::sign(secret.as_bytes(), "t2", now - 1);
    let wrong_sig = protocol::token::sign(b"other", "t2", now + 60);
    let other_channel = protocol::token::sign(secret.as_bytes(), "t3", now + 60);
    let none_alg = {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            e.encode(br#"{"alg":"none","typ":"JWT"}"#),
            e.encode(format!(r#"{{"channel":"t2","exp":{}}}"#, now + 60))
        )
    };
    for (token, status) in [
        ("", 401),
        (expired.as_str(), 401),
        (wrong_sig.as_str(), 401),
        (none_alg.as_str(), 401),
        (other_channel.as_str(), 403),
    ] {
        for path in ["/v1/poll", "/v1/sse", "/v1/ws"] {
            let r = c
                .request(
                    "GET",
                    &format!("http://{worker}{path}?channel=t2&since=0&token={token}"),
                    &[
                        ("Connection", "Upgrade"),
                        ("Upgrade", "websocket"),
                        ("Sec-WebSocket-Version", "13"),
                        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                    ],
                    bytes::Bytes::new(),
                )
                .await;
            assert_eq!(r.status, status, "{path} with {token:?}");
            assert!(r.json()["error"].is_string());
        }
        if status == 401 {
            let r = c.get(&format!("/v1/assign?token={token}")).await;
            assert_eq!(r.status, 401, "assign with {token:?}");
        }
    }
    // None of the refused connections subscribed.
    assert_eq!(c.get("/v1/channels/t2").await.json()["online"], false);
    c.stop().await;
}

#[tokio::test]
async fn browsers_get_cors_on_subscribe_side_only() {
    let c = start(&[], 1, &[]).await;
    let r = c
        .request(
            "OPTIONS",
            "/v1/assign?channel=x",
            &[
                ("Origin", "https://app.example"),
                ("Access-Control-Request-Method", "GET"),
            ],
            bytes::Bytes::new(),
        )
        .await;
    assert!(r.status == 204 || r.status == 200, "{}", r.status);
    assert!(r.header("access-control-allow-origin").is_some());
    let r = c
        .request(
            "GET",
            "/v1/assign?channel=x",
            &[("Origin", "https://app.example")],
            bytes::Bytes::new(),
        )
        .await;
    assert!(r.header("access-control-allow-origin").is_some());
    let a = r.json();
    let poll = a["poll_url"].as_str().unwrap();
    let r = c
        .request(
            "OPTIONS",
            poll,
            &[
                ("Origin", "https://app.example"),
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "last-event-id"),
            ],
            bytes::Bytes::new(),
        )
        .await;
    assert!(
        r.header("access-control-allow-origin").is_some(),
        "worker preflight"
    );
    let r = c
        .request(
            "POST",
            "/v1/publish/x",
            &[("Origin", "https://app.example")],
            "1",
        )
        .await;
    assert_eq!(r.status, 202);
    assert!(
        r.header("access-control-allow-origin").is_none(),
        "publish must not answer CORS by default"
    );
    c.stop().await;
}

#[tokio::test]
async fn shutdown_closes_websockets_and_answers_held_polls() {
    let c = start(&[], 1, &[]).await;
    let mut ws = c.ws("bye", None).await;
    let poll_url = c.assign("bye-poll").await["poll_url"]
        .as_str()
        .unwrap()
        .to_string();
    let http = c.http.clone();
    let held = tokio::spawn(async move {
        let req = hyper::Request::get(format!("{poll_url}&since=0&timeout=60"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = http.request(req).await.unwrap();
        resp.status().as_u16()
    });
    c.wait_online("bye-poll").await;
    c.shutdown.cancel();
    let (code, _) = next_close(&mut ws).await;
    assert_eq!(code, 1001);
    let status = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    c.stop().await;
}

#[tokio::test]
async fn client_pings_get_pongs() {
    let c = start(&[], 1, &[]).await;
    let mut ws = c.ws("pp", None).await;
    ws.send(Message::Ping(b"hey".to_vec().into()))
        .await
        .unwrap();
    loop {
        let m = tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::StreamExt::next(&mut ws),
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        if let Message::Pong(p) = m {
            assert_eq!(&p[..], b"hey");
            break;
        }
    }
    c.stop().await;
}

#[tokio::test]
async fn a_large_resume_backlog_is_not_mistaken_for_a_slow_client() {
    // 90 retained messages of 60 KB = 5.4 MB, far over the worker's 64 KiB pending bound.
    let c = start(&[], 1, &["--max-pending-bytes", "65536"]).await;
    let pad = "x".repeat(60_000);
    for i in 1..=90u64 {
        assert_eq!(
            c.publish("big", &format!("{{\"i\":{i},\"pad\":\"{pad}\"}}"))
                .await,
            i
        );
    }
    let mut ws = c.ws("big", Some(0)).await;
    // Let the worker fill the socket before the client reads anything.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 1..=90u64 {
        let m = next_json(&mut ws).await;
        assert_eq!(
            (m["seq"].as_u64(), m["data"]["i"].as_u64()),
            (Some(i), Some(i))
        );
    }
    c.publish("big", "\"after\"").await;
    assert_eq!(next_json(&mut ws).await, json!({"seq":91,"data":"after"}));
    c.stop().await;
}

#[tokio::test]
async fn worker_links_need_the_link_key_when_one_is_set() {
    let mut c = start(&["--link-key", "k-123"], 0, &[]).await;
    for auth in [None, Some("Bearer wrong"), Some("k-123")] {
        let mut headers = vec![
            ("Connection", "Upgrade"),
            ("Upgrade", protocol::link::LINK_UPGRADE),
        ];
        if let Some(a) = auth {
            headers.push(("Authorization", a));
        }
        let r = c
            .request("GET", "/v1/link", &headers, bytes::Bytes::new())
            .await;
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(r.json()["error"], "link_key");
    }
    c.add_worker("good", &["--link-key", "k-123"]).await;
    c.wait_workers(1).await;
    let workers = c.get("/v1/workers").await.json();
    assert_eq!(workers["workers"].as_array().unwrap().len(), 1, "{workers}");
    assert_eq!(workers["workers"][0]["id"], "good");
    c.stop().await;
}
