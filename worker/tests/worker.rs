//! End-to-end tests of the worker over real sockets: a fake gateway on the link side,
//! WebSocket / long-poll / SSE / plain HTTP clients on the other.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use protocol::link::{Down, KickReason, Up};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn data(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_backlog_gap_deliver_dedupe_and_kick() {
    let mut h = Harness::start(&[]).await;
    let mut ws = ws_connect(&h.ws_url("channel=dev%3A1&since=3&epoch=2")).await;
    let (sub, since, epoch, channel) = h.link.subscribed().await;
    assert_eq!(
        (since, epoch, channel.as_str()),
        (Some(3), Some(2), "dev:1")
    );

    h.link
        .send(Down::Backlog {
            sub_id: sub,
            epoch: 7,
            last_seq: 6,
            gap_first_seq: Some(5),
            messages: vec![(5, data(r#"{"a":1}"#)), (6, data(r#""x""#))],
        })
        .await;
    assert_eq!(
        ws_text(&mut ws).await,
        serde_json::json!({"gap": true, "epoch": 7, "first_seq": 5})
    );
    assert_eq!(
        ws_text(&mut ws).await,
        serde_json::json!({"seq": 5, "data": {"a": 1}})
    );
    assert_eq!(
        ws_text(&mut ws).await,
        serde_json::json!({"seq": 6, "data": "x"})
    );

    // Duplicates (seq <= last sent) are dropped; a stale sub_id is ignored.
    h.link
        .send_all(vec![
            Down::Deliver {
                epoch: 7,
                sub_id: sub,
                seq: 6,
                data: data("0"),
                published_us: 0,
            },
            Down::Deliver {
                epoch: 7,
                sub_id: sub ^ 1,
                seq: 100,
                data: data("0"),
                published_us: 0,
            },
            Down::Deliver {
                epoch: 7,
                sub_id: sub,
                seq: 7,
                data: data("7"),
                published_us: 0,
            },
            Down::Deliver {
                epoch: 7,
                sub_id: sub,
                seq: 7,
                data: data("0"),
                published_us: 0,
            },
            Down::Deliver {
                epoch: 7,
                sub_id: sub,
                seq: 8,
                data: data("8"),
                published_us: 0,
            },
        ])
        .await;
    assert_eq!(
        ws_text(&mut ws).await,
        serde_json::json!({"seq": 7, "data": 7})
    );
    assert_eq!(
        ws_text(&mut ws).await,
        serde_json::json!({"seq": 8, "data": 8})
    );

    // Client ping is answered, client text is ignored.
    ws.send(Message::Text("hello?".into())).await.unwrap();
    ws.send(Message::Ping(Bytes::from_static(b"p1")))
        .await
        .unwrap();
    match tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        Message::Pong(p) => assert_eq!(&p[..], b"p1"),
        other => panic!("expected pong, got {other:?}"),
    }

    h.link
        .send(Down::Kick {
            sub_id: sub,
            reason: KickReason::Replaced,
        })
        .await;
    assert_eq!(
        ws_close(&mut ws).await,
        (
            4001,
            "replaced by a newer connection on this channel".to_string()
        )
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_client_close_unsubscribes() {
    let mut h = Harness::start(&[]).await;
    let mut ws = ws_connect(&h.ws_url("channel=c")).await;
    let (sub, since, _, _) = h.link.subscribed().await;
    assert_eq!(since, None);
    ws.close(None).await.unwrap();
    match h.link.next().await {
        Up::Unsubscribe { sub_id, channel } => {
            assert_eq!(sub_id, sub);
            assert_eq!(channel, "c");
        }
        other => panic!("{other:?}"),
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_immediate_held_timeout_and_keep_alive() {
    let mut h = Harness::start(&["--allow-origin", "https://app.example"]).await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let mut buf = Vec::new();

    // 1. Backlog non-empty: answered at once, with the gap fields.
    s.write_all(b"GET /v1/poll?channel=p&since=1 HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n\r\n")
        .await
        .unwrap();
    let (sub, since, _, _) = h.link.subscribed().await;
    assert_eq!(since, Some(1));
    h.link
        .send(Down::Backlog {
            sub_id: sub,
            epoch: 4,
            last_seq: 3,
            gap_first_seq: Some(2),
            messages: vec![(2, data("2")), (3, data(r#"{"k":3}"#))],
        })
        .await;
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    assert_eq!(r.header("connection").as_deref(), Some("keep-alive"));
    assert_eq!(
        r.json(),
        serde_json::json!({"messages":[{"seq":2,"data":2},{"seq":3,"data":{"k":3}}],"next":3,"gap":true,"epoch":4,"first_seq":2})
    );
    match h.link.next().await {
        Up::Unsubscribe { sub_id, .. } => assert_eq!(sub_id, sub),
        other => panic!("{other:?}"),
    }

    // 2. Same socket (keep-alive): empty backlog, held until a Deliver.
    s.write_all(b"GET /v1/poll?channel=p&since=3 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (sub2, since, epoch, _) = h.link.subscribed().await;
    assert_ne!(sub2, sub, "a new generation per subscription");
    assert_eq!((since, epoch), (Some(3), None));
    h.link
        .send(Down::Backlog {
            sub_id: sub2,
            epoch: 4,
            last_seq: 3,
            gap_first_seq: None,
            messages: vec![],
        })
        .await;
    h.link
        .send(Down::Deliver {
            epoch: 4,
            sub_id: sub2,
            seq: 4,
            data: data("4"),
            published_us: 0,
        })
        .await;
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(
        r.json(),
        serde_json::json!({"messages":[{"seq":4,"data":4}],"next":4})
    );
    assert!(matches!(h.link.next().await, Up::Unsubscribe { .. }));

    // 3. Nothing arrives: answered empty after timeout=1.
    s.write_all(b"GET /v1/poll?channel=p&since=4&timeout=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (sub3, _, _, _) = h.link.subscribed().await;
    h.link
        .send(Down::Backlog {
            sub_id: sub3,
            epoch: 4,
            last_seq: 4,
            gap_first_seq: None,
            messages: vec![],
        })
        .await;
    let t0 = std::time::Instant::now();
    let r = read_response(&mut s, &mut buf).await;
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(r.json(), serde_json::json!({"messages":[],"next":4}));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_kicks() {
    let mut h = Harness::start(&[]).await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /v1/poll?channel=k&since=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (sub, _, _, _) = h.link.subscribed().await;
    h.link
        .send_all(vec![
            Down::Backlog {
                sub_id: sub,
                epoch: 1,
                last_seq: 0,
                gap_first_seq: None,
                messages: vec![],
            },
            Down::Kick {
                sub_id: sub,
                reason: KickReason::Resync,
            },
        ])
        .await;
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"messages":[],"next":0}));

    s.write_all(b"GET /v1/poll?channel=k&since=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (sub, _, _, _) = h.link.subscribed().await;
    h.link
        .send(Down::Kick {
            sub_id: sub,
            reason: KickReason::Replaced,
        })
        .await;
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["error"], "replaced");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_last_event_id_and_kick() {
    let mut h = Harness::start(&[]).await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"GET /v1/sse?channel=s&since=2 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 9\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let head = read_until(&mut s, &mut buf, b"\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/event-stream\r\n"));
    assert!(head.contains("Cache-Control: no-cache\r\n"));
    assert!(head.contains("X-Accel-Buffering: no\r\n"));
    assert!(head.contains("Access-Control-Allow-Origin: *\r\n"));
    let (sub, since, _, _) = h.link.subscribed().await;
    assert_eq!(since, Some(9), "Last-Event-ID wins over since");
    h.link
        .send_all(vec![
            Down::Backlog {
                sub_id: sub,
                epoch: 3,
                last_seq: 11,
                gap_first_seq: Some(10),
                messages: vec![(10, data("10")), (11, data(r#""eleven""#))],
            },
            Down::Deliver {
                epoch: 3,
                sub_id: sub,
                seq: 12,
                data: data("[12]"),
                published_us: 0,
            },
        ])
        .await;
    let ev = read_until(
        &mut s,
        &mut buf,
        b"id: 12\ndata: {\"seq\":12,\"data\":[12]}\n\n",
    )
    .await;
    assert_eq!(
        ev,
        "data: {\"gap\":true,\"epoch\":3,\"first_seq\":10}\n\n\
         id: 10\ndata: {\"seq\":10,\"data\":10}\n\n\
         id: 11\ndata: {\"seq\":11,\"data\":\"eleven\"}\n\n\
         id: 12\ndata: {\"seq\":12,\"data\":[12]}\n\n"
    );
    h.link
        .send(Down::Kick {
            sub_id: sub,
            reason: KickReason::Replaced,
        })
        .await;
    let ev = read_until(&mut s, &mut buf, b"\n\n").await;
    assert_eq!(
        ev,
        "id: replaced\ndata: {\"closed\":\"replaced\",\"message\":\"replaced by a newer connection on this channel\"}\n\n"
    );
    let r = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf))
        .await
        .unwrap();
    assert!(r.is_ok());
    h.stop().await;
}

/// Two pages with a plain `EventSource` on one channel: the one replaced must not come back
/// by itself and take the channel from the newer one (which would then do the same, every
/// few seconds, forever). Its browser reconnect carries the replaced stream's last event id
/// and is answered 204, which stops an `EventSource`; any other request still subscribes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_reconnect_of_a_replaced_stream_is_told_to_stop() {
    let mut h = Harness::start(&[]).await;
    let stops = || metric(h.addr, "pushgate_sse_replaced_stops_total");
    let before = stops().await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(
        b"GET /v1/sse?channel=two&since=0 HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, b"\r\n\r\n").await;
    let (sub, _, _, _) = h.link.subscribed().await;
    h.link
        .send(Down::Backlog {
            sub_id: sub,
            epoch: 1,
            last_seq: 1,
            gap_first_seq: None,
            messages: vec![(1, data("1"))],
        })
        .await;
    let events = read_until(&mut s, &mut buf, b"}\n\n").await;
    assert_eq!(events, "id: 1\ndata: {\"seq\":1,\"data\":1}\n\n");
    h.link
        .send(Down::Kick {
            sub_id: sub,
            reason: KickReason::Replaced,
        })
        .await;
    let last = read_until(&mut s, &mut buf, b"\n\n").await;
    assert!(
        last.starts_with("id: replaced\ndata: {\"closed\":\"replaced\""),
        "{last}"
    );

    // What the browser sends by itself a few seconds later.
    let back =
        "GET /v1/sse?channel=two&since=0 HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\n\
                Accept: text/event-stream\r\nLast-Event-ID: replaced\r\n\r\n";
    let r = request(h.addr, back).await;
    assert_eq!(r.status, 204, "{}", r.head);
    assert!(r.body.is_empty());
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert_eq!(r.header("content-type"), None);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    if let Ok(up) = tokio::time::timeout(Duration::from_millis(300), h.link.next()).await {
        panic!("the replaced stream's reconnect must not subscribe, got {up:?}");
    }
    assert_eq!(stops().await, before + 1.0);

    // A page that opens a new EventSource, or resumes from a seq, subscribes as ever.
    let fresh = "GET /v1/sse?channel=two&since=1 HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut s2 = TcpStream::connect(h.addr).await.unwrap();
    s2.write_all(fresh.as_bytes()).await.unwrap();
    let mut buf2 = Vec::new();
    let head = read_until(&mut s2, &mut buf2, b"\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let (_, since, _, channel) = h.link.subscribed().await;
    assert_eq!((since, channel.as_str()), (Some(1), "two"));
    let resumed = "GET /v1/sse?channel=two HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1\r\n\r\n";
    let mut s3 = TcpStream::connect(h.addr).await.unwrap();
    s3.write_all(resumed.as_bytes()).await.unwrap();
    let (_, since, _, _) = h.link.subscribed().await;
    assert_eq!(since, Some(1));
    assert_eq!(stops().await, before + 1.0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_routes_and_errors() {
    let h = Harness::start(&[
        "--allow-origin",
        "https://a.example",
        "--allow-origin",
        "https://b.example",
    ])
    .await;
    let r = get(h.addr, "/healthz").await;
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"status":"ok"}))
    );

    let r = get(h.addr, "/metrics").await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.contains("process_resident_memory_bytes"), "{text}");
    assert!(text.contains("pushgate_connections_open"));
    assert!(text.contains("pushgate_link_up"));

    let r = get(h.addr, "/nope").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (404, Some("not_found"))
    );

    let r = get(h.addr, "/v1/poll?channel=bad%20name&since=0").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("bad_channel"))
    );
    let r = get(h.addr, "/v1/sse?since=1").await;
    assert_eq!(r.status, 400);
    let r = get(h.addr, "/v1/poll?channel=a&since=x").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("bad_since"))
    );

    let r = request(
        h.addr,
        "POST /v1/poll?channel=a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 405);

    // CORS preflight: the matching origin is echoed.
    let r = request(
        h.addr,
        "OPTIONS /v1/sse?channel=a HTTP/1.1\r\nHost: x\r\nOrigin: https://b.example\r\nAccess-Control-Request-Method: GET\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://b.example")
    );
    assert_eq!(
        r.header("access-control-allow-methods").as_deref(),
        Some("GET, OPTIONS")
    );
    assert_eq!(
        r.header("access-control-allow-headers").as_deref(),
        Some("Last-Event-ID, Cache-Control, Content-Type, Authorization")
    );
    assert_eq!(r.header("access-control-max-age").as_deref(), Some("600"));
    let r = request(
        h.addr,
        "OPTIONS /v1/poll HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), None);

    // WebSocket from a foreign origin: 403.
    let r = request(
        h.addr,
        "GET /v1/ws?channel=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 403);

    // Oversize head: 431.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let r = request(h.addr, &big).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (431, Some("headers_too_large"))
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_one_byte_at_a_time() {
    let mut h = Harness::start(&[]).await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let req = b"GET /v1/poll?channel=slow&since=5&timeout=30 HTTP/1.1\r\nHost: x\r\n\r\n";
    for b in req {
        s.write_all(&[*b]).await.unwrap();
        s.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    let (sub, since, _, channel) = h.link.subscribed().await;
    assert_eq!((since, channel.as_str()), (Some(5), "slow"));
    h.link
        .send(Down::Backlog {
            sub_id: sub,
            epoch: 1,
            last_seq: 6,
            gap_first_seq: None,
            messages: vec![(6, data("6"))],
        })
        .await;
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(
        r.json(),
        serde_json::json!({"messages":[{"seq":6,"data":6}],"next":6})
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_before_subscribing() {
    let secret = "s3cret";
    let mut h = Harness::start(&["--subscriber-secret", secret]).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = protocol::token::sign(secret.as_bytes(), "t", now - 10);
    let other = protocol::token::sign(secret.as_bytes(), "other", now + 600);
    let bad_sig = protocol::token::sign(b"wrong", "t", now + 600);
    // alg none, hand-built.
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(format!(r#"{{"channel":"t","exp":{}}}"#, now + 600).as_bytes())
    );
    for (token, status, code) in [
        ("", 401, "token_missing"),
        (expired.as_str(), 401, "token_expired"),
        (other.as_str(), 403, "token_wrong_channel"),
        (bad_sig.as_str(), 401, "token_invalid"),
        (none.as_str(), 401, ""),
    ] {
        for path in ["/v1/poll", "/v1/sse"] {
            let r = get(h.addr, &format!("{path}?channel=t&since=0&token={token}")).await;
            assert_eq!(r.status, status, "{path} {code}");
            if !code.is_empty() {
                assert_eq!(r.json()["error"], code);
            }
        }
        let ws =
            tokio_tungstenite::connect_async(h.ws_url(&format!("channel=t&token={token}"))).await;
        match ws {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), status)
            }
            other => panic!("expected an HTTP refusal, got {other:?}"),
        }
    }
    // None of the above subscribed: the first Subscribe the gateway sees is this one.
    let good = protocol::token::sign(secret.as_bytes(), "t", now + 600);
    let _ws = ws_connect(&h.ws_url(&format!("channel=t&token={good}&since=1"))).await;
    let (_, since, _, channel) = h.link.subscribed().await;
    assert_eq!((since, channel.as_str()), (Some(1), "t"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_drop_resubscribes_from_last_seq() {
    let mut h = Harness::start(&[]).await;
    let mut ws = ws_connect(&h.ws_url("channel=r&since=1")).await;
    let mut ws_live = ws_connect(&h.ws_url("channel=r2")).await;
    let mut subs = std::collections::HashMap::new();
    for _ in 0..2 {
        let (sub, since, _, channel) = h.link.subscribed().await;
        subs.insert(channel, (sub, since));
    }
    let (sub, _) = subs["r"];
    let (sub_live, since_live) = subs["r2"];
    assert_eq!(since_live, None);
    h.link
        .send_all(vec![
            Down::Backlog {
                sub_id: sub,
                epoch: 5,
                last_seq: 2,
                gap_first_seq: None,
                messages: vec![(2, data("2"))],
            },
            Down::Deliver {
                epoch: 5,
                sub_id: sub,
                seq: 3,
                data: data("3"),
                published_us: 0,
            },
            Down::Backlog {
                sub_id: sub_live,
                epoch: 6,
                last_seq: 40,
                gap_first_seq: None,
                messages: vec![],
            },
        ])
        .await;
    assert_eq!(ws_text(&mut ws).await["seq"], 2);
    assert_eq!(ws_text(&mut ws).await["seq"], 3);

    h.relink().await;
    let mut resubs = std::collections::HashMap::new();
    for _ in 0..2 {
        let (sub_id, since, epoch, channel) = h.link.subscribed().await;
        resubs.insert(channel, (sub_id, since, epoch));
    }
    assert_eq!(
        resubs["r"],
        (sub, Some(3), Some(5)),
        "since = last seq sent"
    );
    assert_eq!(
        resubs["r2"],
        (sub_live, Some(40), Some(6)),
        "live-only resumes at the channel's last_seq"
    );

    // The new link serves the same connections: its backlog fills the hole once.
    h.link
        .send(Down::Backlog {
            sub_id: sub,
            epoch: 5,
            last_seq: 4,
            gap_first_seq: None,
            messages: vec![(3, data("3")), (4, data("4"))],
        })
        .await;
    assert_eq!(
        ws_text(&mut ws).await,
        serde_json::json!({"seq": 4, "data": 4})
    );
    h.link
        .send(Down::Deliver {
            epoch: 6,
            sub_id: sub_live,
            seq: 41,
            data: data("41"),
            published_us: 0,
        })
        .await;
    assert_eq!(
        ws_text(&mut ws_live).await,
        serde_json::json!({"seq": 41, "data": 41})
    );
    h.stop().await;
}

fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The `opened_us` of the next frame, expected to be a Subscribe.
async fn opened_us(link: &mut FakeLink) -> (u64, bool) {
    match link.next().await {
        Up::Subscribe {
            opened_us, resume, ..
        } => (opened_us, resume),
        other => panic!("expected Subscribe, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_say_when_their_client_asked_and_resumes_do_not() {
    // The gateway orders racing subscribes of one channel by this stamp.
    let mut h = Harness::start(&[]).await;
    let before = unix_us();
    let _ws = ws_connect(&h.ws_url("channel=a")).await;
    let (first, resume) = opened_us(&mut h.link).await;
    assert!(!resume);
    let between = unix_us();
    assert!(
        (before..=between).contains(&first),
        "{before} <= {first} <= {between}"
    );
    let _ws2 = ws_connect(&h.ws_url("channel=b")).await;
    let (second, _) = opened_us(&mut h.link).await;
    assert!((between..=unix_us()).contains(&second));
    // A poll asks each time it comes.
    let r = get(h.addr, "/v1/poll?channel=c&since=0&timeout=0");
    let (poll, _) = tokio::join!(r, async {
        let (at, _) = opened_us(&mut h.link).await;
        assert!(at >= second);
    });
    assert_eq!(poll.status, 200, "timeout=0: answered at once");
    // After the link came back, the resubscribes carry no stamp (not kept per
    // connection).
    h.relink().await;
    for _ in 0..2 {
        assert_eq!(opened_us(&mut h.link).await, (0, true));
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_down_refuses_new_subscribers() {
    let mut h = Harness::start(&[]).await;
    h.link.close();
    // Until the worker notices the drop, requests may still subscribe; once it has
    // noticed, they get 503. Poll until the refusal shows (bounded by WAIT).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = get(h.addr, "/v1/poll?channel=d&since=0&timeout=0").await;
        if r.status == 503 {
            assert_eq!(r.json()["error"], "unavailable");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never refused");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_websockets_with_1001_and_answers_polls() {
    let mut h = Harness::start(&[]).await;
    let mut ws = ws_connect(&h.ws_url("channel=z")).await;
    let _ = h.link.subscribed().await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"GET /v1/poll?channel=y&since=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let _ = h.link.subscribed().await;
    h.shutdown.cancel();
    assert_eq!(
        ws_close(&mut ws).await,
        (1001, "server shutting down".to_string())
    );
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"messages":[],"next":0}));
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_ping_websockets_and_comment_sse() {
    let mut h = Harness::start(&["--ping-interval-secs", "1"]).await;
    let mut ws = ws_connect(&h.ws_url("channel=hb")).await;
    let _ = h.link.subscribed().await;
    let m = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(m, Message::Ping(_)), "{m:?}");

    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"GET /v1/sse?channel=hb2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, b"\r\n\r\n").await;
    assert_eq!(read_until(&mut s, &mut buf, b"\n\n").await, ":\n\n");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_closed_and_counted() {
    let mut h = Harness::start(SLOW).await;
    let before = metric(h.addr, "pushgate_slow_client_closes_total").await;
    // A client that never reads.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"GET /v1/sse?channel=slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (sub, _, _, _) = h.link.subscribed().await;
    let payload = Bytes::from(format!("\"{}\"", "x".repeat(16 * 1024)));
    // As a gateway does: the subscription's Backlog first, then live deliveries.
    let mut frames = vec![Down::Backlog {
        sub_id: sub,
        epoch: 1,
        last_seq: 0,
        gap_first_seq: None,
        messages: vec![],
    }];
    for seq in 1..=200 {
        frames.push(Down::Deliver {
            epoch: 1,
            sub_id: sub,
            seq,
            data: payload.clone(),
            published_us: 0,
        });
    }
    h.link.send_all(frames).await;
    // The worker gives up on it: Unsubscribe, and the counter moves.
    match h.link.next().await {
        Up::Unsubscribe { sub_id, .. } => assert_eq!(sub_id, sub),
        other => panic!("{other:?}"),
    }
    let after = metric(h.addr, "pushgate_slow_client_closes_total").await;
    assert!(after > before, "{before} -> {after}");
    drop(s);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_websocket_gets_whole_frames_then_a_4003_close() {
    let mut h = Harness::start(SLOW).await;
    // A client that reads nothing until the worker has given up on it.
    let mut ws = ws_connect(&h.ws_url("channel=slow-ws")).await;
    let (sub, _, _, _) = h.link.subscribed().await;
    h.link
        .send_all(vec![Down::Backlog {
            sub_id: sub,
            epoch: 1,
            last_seq: 0,
            gap_first_seq: None,
            messages: vec![],
        }])
        .await;
    let payload = Bytes::from(format!("\"{}\"", "x".repeat(32 * 1024)));
    let frames = (1..=400)
        .map(|seq| Down::Deliver {
            epoch: 1,
            sub_id: sub,
            seq,
            data: payload.clone(),
            published_us: 0,
        })
        .collect();
    h.link.send_all(frames).await;
    match h.link.next().await {
        Up::Unsubscribe { sub_id, .. } => assert_eq!(sub_id, sub),
        other => panic!("{other:?}"),
    }
    // Everything that arrives is whole frames in order, then a clean close: no frame is
    // cut by the close.
    let (expect, code) = seqs_then_close(&mut ws).await;
    assert_eq!(code, 4003);
    assert!(
        expect > 1 && expect < 401,
        "some, not all, were sent: {expect}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_backlog_does_not_send_messages_twice() {
    let mut h = Harness::start(&[]).await;
    let mut ws = ws_connect(&h.ws_url("channel=twice&since=0")).await;
    let (sub, _, _, _) = h.link.subscribed().await;
    let backlog = || Down::Backlog {
        sub_id: sub,
        epoch: 7,
        last_seq: 5,
        gap_first_seq: Some(3),
        messages: (3..=5).map(|s| (s, Bytes::from(s.to_string()))).collect(),
    };
    // The same answer twice (a resubscribe racing a reconnect), then a live message.
    h.link
        .send_all(vec![
            backlog(),
            backlog(),
            Down::Deliver {
                epoch: 7,
                sub_id: sub,
                seq: 6,
                data: Bytes::from_static(b"6"),
                published_us: 0,
            },
        ])
        .await;
    let gap = ws_text(&mut ws).await;
    assert_eq!(
        (gap["gap"].as_bool(), gap["first_seq"].as_u64()),
        (Some(true), Some(3))
    );
    for seq in 3..=6u64 {
        assert_eq!(ws_text(&mut ws).await["seq"], seq, "once each, in order");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_capacity_gets_503() {
    let mut h = Harness::start(&["--capacity", "1"]).await;
    let mut ws = ws_connect(&h.ws_url("channel=cap")).await;
    let _ = h.link.subscribed().await;
    // Refused at accept: the 503 is written at once (before any request is read).
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (503, Some("over_capacity"))
    );
    // Once the first one leaves, there is room again.
    ws.close(None).await.unwrap();
    assert!(matches!(h.link.next().await, Up::Unsubscribe { .. }));
    drop(ws);
    // A refusal may arrive as a 503 or, when the request crossed the close, a reset.
    wait_for_room(&h, "capacity never freed").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_ip_holds_at_most_its_share_of_connections() {
    let mut h = Harness::start(&["--max-connections-per-ip", "2"]).await;
    let mut a = ws_connect(&h.ws_url("channel=ip1")).await;
    let _ = h.link.subscribed().await;
    let _b = ws_connect(&h.ws_url("channel=ip2")).await;
    let _ = h.link.subscribed().await;
    // A third from the same address: refused at accept, as JSON.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (429, Some("too_many_connections"))
    );
    // Once one leaves, the address has room again (counted over every loop thread).
    a.close(None).await.unwrap();
    assert!(matches!(h.link.next().await, Up::Unsubscribe { .. }));
    drop(a);
    wait_for_room(&h, "the address never got room back").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_ip_opening_connections_too_fast_gets_429_until_retry_after() {
    let h = Harness::start(&["--connect-rate-per-ip", "5"]).await;
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let (me, other, watcher) = (ip("127.0.0.1"), ip("127.0.0.5"), ip("127.0.0.6"));
    let name = "pushgate_connections_refused_total{reason=\"connect_rate_limited\"}";
    let refused_metric = |text: Vec<u8>| -> f64 {
        let text = String::from_utf8(text).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing: {text}"))
    };
    // The metric is read from an address of its own (each read is a connection).
    let before = refused_metric(get_from(watcher, h.addr, "/metrics").await.body);
    // A burst of one second's worth: 5 connections in quick succession are served...
    for i in 0..5 {
        let r = get_from(me, h.addr, "/healthz").await;
        assert_eq!(r.status, 200, "connection {i}");
    }
    // ...the next ones are refused at accept, before any request is read, on whichever
    // loop thread took them (the table is shared).
    let mut retry_after = 0;
    for i in 0..3 {
        let mut s = connect_from(me, h.addr).await;
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf).await;
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (429, Some("connect_rate_limited")),
            "connection {} from the same address: {r:?}",
            i + 6
        );
        assert!(r.json()["message"].as_str().is_some_and(|m| !m.is_empty()));
        retry_after = r
            .header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .expect("a Retry-After in whole seconds");
        // Then closed.
        let mut rest = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut rest).await;
        assert!(rest.is_empty() && buf.is_empty(), "{rest:?}");
    }
    // One token comes back each 200 ms: rounded up to whole seconds.
    assert_eq!(retry_after, 1);
    // Another source address has its own bucket.
    for i in 0..5 {
        let r = get_from(other, h.addr, "/healthz").await;
        assert_eq!(r.status, 200, "connection {i} from {other}");
    }
    let after = refused_metric(get_from(watcher, h.addr, "/metrics").await.body);
    assert_eq!(after - before, 3.0);
    // Retry-After tells the truth: after it the address is served again.
    tokio::time::sleep(std::time::Duration::from_secs(retry_after)).await;
    for i in 0..2 {
        let r = get_from(me, h.addr, "/healthz").await;
        assert_eq!(r.status, 200, "connection {i} after Retry-After");
    }
    h.stop().await;
}

/// Waits until the worker answers a new connection's `GET /healthz` with 200 (room again
/// after a refusal at accept; a refusal may arrive as a JSON error or a reset).
async fn wait_for_room(h: &Harness, why: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut s = TcpStream::connect(h.addr).await.unwrap();
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut out = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut out).await;
        if out.starts_with(b"HTTP/1.1 200") {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{why}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
