//! The public contract and the gateway<->worker link through the fault-injection proxy
//! (`chaos`): requests and frames split into single bytes still parse; a link reset again
//! and again loses nothing; a link whose route swallows everything is closed by the
//! gateway's silence timeout and the worker comes back with every message.

mod common;

use chaos::{Faults, Proxy, Ways};
use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SEED: u64 = 20261202;

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// One HTTP/1.1 request with `Connection: close` to `addr`; (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("no answer within 20 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// `url` (`ws://ip:port/...`) with its host and port replaced by `addr`.
fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let path = &rest[rest.find('/').unwrap()..];
    format!("{scheme}://{addr}{path}")
}

fn path_of(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    rest[rest.find('/').unwrap()..].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_frames_split_into_single_bytes_still_parse() {
    let c = start(&[], 1, &[]).await;
    // What the servers read comes byte by byte (the client library refuses an answer
    // that trickles in byte by byte: it takes it for an attack); both ways for the
    // long-poll and SSE, read by this test's own code.
    let bytewise = Faults {
        seed: SEED,
        ways: Ways::ToUpstream,
        segment: Some(1),
        delay: Some(Duration::ZERO..=Duration::from_micros(20)),
        ..Faults::default()
    };
    let gw = Proxy::start(local(), c.gateway, bytewise.clone())
        .await
        .unwrap();
    let wk = Proxy::start(local(), c.worker_addrs[0][0], bytewise.clone())
        .await
        .unwrap();
    let both = Faults {
        ways: Ways::Both,
        ..bytewise
    };
    let wk2 = Proxy::start(local(), c.worker_addrs[0][0], both)
        .await
        .unwrap();
    // Assign and publish through the byte-by-byte gateway route.
    let (status, body) = http(gw.addr, "GET", "/v1/assign?channel=bytes", "").await;
    assert_eq!(status, 200, "{body}");
    let a: Value = serde_json::from_str(&body).unwrap();
    // A WebSocket (handshake and frames) through the byte-by-byte worker route.
    let mut ws = ws_connect(&via(a["ws_url"].as_str().unwrap(), wk.addr)).await;
    c.wait_online("bytes").await;
    let payloads = [json!({"k": "v", "n": [1, 2, 3]}), json!("é ü ✓"), json!(42)];
    for (i, p) in payloads.iter().enumerate() {
        let (status, body) = http(gw.addr, "POST", "/v1/publish/bytes", &p.to_string()).await;
        assert_eq!(status, 202, "{body}");
        let seq = i as u64 + 1;
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["seq"], seq);
        assert_eq!(next_json(&mut ws).await, json!({"seq": seq, "data": p}));
    }
    // SSE through the same route takes the channel over and resumes from the start.
    let sse_url = via(a["sse_url"].as_str().unwrap(), wk2.addr) + "&since=0";
    let mut sse = Sse::open(&sse_url, &[]).await;
    assert!(sse.head.starts_with("HTTP/1.1 200"), "{}", sse.head);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let (id, data) = sse.next_event().await;
        if id.is_some() {
            seen.push(data["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(seen, [1, 2, 3]);
    // A long-poll through the same route answers what is retained.
    let poll = path_of(a["poll_url"].as_str().unwrap());
    let (status, body) = http(wk2.addr, "GET", &format!("{poll}&since=1"), "").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["messages"][0], json!({"seq": 2, "data": payloads[1]}));
    assert_eq!(v["next"], 3);
    assert!(gw.control.bytes.load(std::sync::atomic::Ordering::Relaxed) > 500);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_reset_again_and_again_loses_nothing() {
    let mut c = start(&[], 0, &[]).await;
    let resets = Faults {
        seed: SEED,
        reset_after: Some(1_500..=6_000),
        ..Faults::default()
    };
    let link = Proxy::start(local(), c.gateway, resets).await.unwrap();
    // The worker's only link goes through the proxy.
    let url = format!("http://{}", link.addr);
    let addrs = c.add_worker_via("w0", &url).await;
    c.wait_workers(1).await;
    let a = c.assign("reset").await;
    let mut ws = ws_connect(a["ws_url"].as_str().unwrap()).await;
    c.wait_online("reset").await;
    assert!(!addrs.is_empty());
    const N: u64 = 300;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < N as usize {
            let v = next_json(&mut ws).await;
            if let Some(s) = v["seq"].as_u64() {
                got.push(s);
            } else {
                panic!("not a message: {v}");
            }
        }
        got
    });
    for i in 1..=N {
        assert_eq!(
            c.publish(
                "reset",
                &format!("\"{}\"", "x".repeat(40 + i as usize % 20))
            )
            .await,
            i
        );
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let got = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("every message within 30 s")
        .unwrap();
    assert_eq!(got, (1..=N).collect::<Vec<_>>(), "each once, in order");
    let r = link
        .control
        .resets
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(r >= 2, "only {r} resets: the test did not test");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_whose_route_swallows_everything_is_closed_and_comes_back_whole() {
    let mut c = start(&["--worker-timeout-secs", "1"], 0, &[]).await;
    let link = Proxy::start(local(), c.gateway, Faults::default())
        .await
        .unwrap();
    let url = format!("http://{}", link.addr);
    c.add_worker_via("w0", &url).await;
    c.wait_workers(1).await;
    let a = c.assign("hole").await;
    let mut ws = ws_connect(a["ws_url"].as_str().unwrap()).await;
    c.wait_online("hole").await;
    assert_eq!(c.publish("hole", "1").await, 1);
    assert_eq!(next_json(&mut ws).await["seq"], 1);
    // The route now accepts and drops every byte, both ways: deliveries vanish.
    link.control.set_blackhole(true);
    let t = Instant::now();
    for i in 2..=4 {
        assert_eq!(c.publish("hole", &i.to_string()).await, i);
    }
    // The gateway sees no heartbeat: stale after 1 s, the link closed after 2 s.
    loop {
        let w = c.get("/v1/workers").await.json();
        let state = w["workers"][0]["state"].clone();
        if state == "disconnected" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "still {state} after {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The route heals: the worker links again, resubscribes, and the client gets what was
    // swallowed, in order, once.
    link.control.set_blackhole(false);
    for i in 2..=4u64 {
        assert_eq!(next_json(&mut ws).await["seq"], i);
    }
    c.wait_workers(1).await;
    assert_eq!(c.publish("hole", "5").await, 5);
    assert_eq!(next_json(&mut ws).await["seq"], 5);
    assert_quiet(&mut ws, 200).await;
    c.stop().await;
}
