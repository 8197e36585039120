//! Hostile input to the worker (issue 12, the worker's defects 4, 5, 6 and 8): each test
//! failed before its fix. Raw sockets, a fake gateway on the link side.

mod common;

use common::*;
use protocol::link::Up;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until EOF (or a reset), within `WAIT`; returns what came.
async fn read_to_eof(s: &mut TcpStream, buf: &mut Vec<u8>) {
    tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the worker closes the connection");
}

/// No Subscribe reaches the gateway within `ms`.
async fn no_subscribe(link: &mut FakeLink, ms: u64) {
    if let Ok(up) = tokio::time::timeout(Duration::from_millis(ms), link.next()).await {
        panic!("nothing should reach the gateway, got {up:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_with_a_body_is_refused_not_read_as_the_next_request() {
    let mut h = Harness::start(&[]).await;
    // Defect 4: the body of a keep-alive poll is itself a poll request (smuggling).
    let inner = "GET /v1/poll?channel=b&since=0 HTTP/1.1\r\nHost: x\r\n\r\n";
    let raw = format!(
        "GET /v1/poll?channel=a&since=0 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{inner}",
        inner.len()
    );
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("bad_request"))
    );
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    read_to_eof(&mut s, &mut buf).await;
    assert!(
        buf.is_empty(),
        "one answer only: {:?}",
        String::from_utf8_lossy(&buf)
    );
    no_subscribe(&mut h.link, 300).await;

    for te in [
        "Transfer-Encoding: chunked",
        "Content-Length: x",
        "Content-Length: 1\r\nContent-Length: 2",
    ] {
        let raw = format!("GET /v1/sse?channel=a HTTP/1.1\r\nHost: x\r\n{te}\r\n\r\n0\r\n\r\n");
        let r = request(h.addr, &raw).await;
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (400, Some("bad_request")),
            "{te}"
        );
    }
    // An empty body is no body.
    let r = request(
        h.addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    h.stop().await;
}

fn backlog(sub_id: u64, last_seq: u64, seqs: &[u64]) -> protocol::link::Down {
    protocol::link::Down::Backlog {
        sub_id,
        epoch: 1,
        last_seq,
        gap_first_seq: None,
        messages: seqs
            .iter()
            .map(|&s| (s, bytes::Bytes::from(s.to_string())))
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_polls_get_an_answer_that_says_close() {
    let mut h = Harness::start(&[]).await;
    // Defect 5: two polls in one write; the second used to be dropped silently while the
    // first was answered keep-alive, and the connection idled until the timeout.
    let one = "GET /v1/poll?channel=p1&since=0 HTTP/1.1\r\nHost: x\r\n\r\n";
    let two = "GET /v1/poll?channel=p1&since=1 HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(format!("{one}{two}").as_bytes()).await.unwrap();
    let (sub, since, ..) = h.link.subscribed().await;
    assert_eq!(since, Some(0));
    h.link.send(backlog(sub, 1, &[1])).await;
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(r.json()["next"], 1);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    read_to_eof(&mut s, &mut buf).await;
    assert!(buf.is_empty());

    // The same when the second request arrives while the first is held.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(one.as_bytes()).await.unwrap();
    let (sub, ..) = loop {
        match h.link.next().await {
            Up::Subscribe { sub_id, .. } => break (sub_id, ()),
            _ => continue,
        }
    };
    h.link.send(backlog(sub, 0, &[])).await;
    s.write_all(two.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.link
        .send(protocol::link::Down::Deliver {
            sub_id: sub,
            epoch: 1,
            seq: 1,
            data: bytes::Bytes::from_static(b"1"),
            published_us: 0,
        })
        .await;
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(r.json()["next"], 1);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    read_to_eof(&mut s, &mut buf).await;
    h.stop().await;
}

/// A masked client frame.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    assert!(payload.len() < 126);
    out.push(0x80 | payload.len() as u8);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    out
}

const UPGRADE: &str = "GET /v1/ws?channel=raw HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                       Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                       Sec-WebSocket-Version: 13\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_right_behind_the_upgrade_request_are_read() {
    let mut h = Harness::start(&[]).await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let mut raw = UPGRADE.as_bytes().to_vec();
    raw.extend(client_frame(0x89, b"hi"));
    s.write_all(&raw).await.unwrap();
    let mut buf = Vec::new();
    let head = read_until(&mut s, &mut buf, b"\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let _ = h.link.subscribed().await;
    while buf.len() < 4 {
        let mut chunk = [0u8; 64];
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "EOF before the pong");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(buf[..4], [0x8a, 2, b'h', b'i'], "the pong");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_websocket_that_reads_again_late_still_gets_its_4003() {
    // Defect 6: a client that starts reading again more than 2 s after the cut-off got a
    // cut frame, then EOF; the close code is what tells it to resume.
    let mut h = Harness::start(SLOW).await;
    let mut ws = ws_connect(&format!("ws://{}/v1/ws?channel=late", h.addr)).await;
    let (sub, ..) = h.link.subscribed().await;
    let payload = bytes::Bytes::from(format!("\"{}\"", "x".repeat(32 * 1024)));
    let mut frames = vec![backlog(sub, 0, &[])];
    frames.extend((1..=400).map(|seq| protocol::link::Down::Deliver {
        sub_id: sub,
        epoch: 1,
        seq,
        data: payload.clone(),
        published_us: 0,
    }));
    h.link.send_all(frames).await;
    match h.link.next().await {
        Up::Unsubscribe { sub_id, .. } => assert_eq!(sub_id, sub),
        other => panic!("{other:?}"),
    }
    // The cut-off happened; the client reads again 5 s later.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (expect, code) = seqs_then_close(&mut ws).await;
    assert_eq!(code, 4003);
    assert!(expect > 1 && expect < 401, "some, not all: {expect}");
    h.stop().await;
}

/// Opens a raw WebSocket, sends `frames` right after the 101, and returns the close code
/// the worker answers with.
async fn close_code_for(h: &mut Harness, frames: &[Vec<u8>]) -> u16 {
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(UPGRADE.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, b"\r\n\r\n").await;
    let sub = loop {
        // (The previous connection's Unsubscribe may come first.)
        if let Up::Subscribe { sub_id, .. } = h.link.next().await {
            break sub_id;
        }
    };
    h.link.send(backlog(sub, 0, &[])).await;
    for f in frames {
        s.write_all(f).await.unwrap();
    }
    // Pings may come first; the close frame is 0x88, its code the next two payload bytes.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        while buf.len() >= 2 && buf[0] != 0x88 {
            let len = 2 + (buf[1] & 0x7f) as usize;
            if buf.len() < len {
                break;
            }
            buf.drain(..len);
        }
        if buf.len() >= 4 && buf[0] == 0x88 {
            return u16::from_be_bytes([buf[2], buf[3]]);
        }
        let mut chunk = [0u8; 256];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("a close frame in time")
            .unwrap();
        assert!(n > 0, "EOF without a close frame: {buf:x?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_utf8_is_1007_and_bad_fragmentation_1002() {
    let mut h = Harness::start(&[]).await;
    // Defect 8: these were ignored.
    let not_utf8 = client_frame(0x81, &[b'o', b'k', 0xc3, 0x28]);
    assert_eq!(close_code_for(&mut h, &[not_utf8]).await, 1007);
    // Invalid across fragments: a character that never completes.
    let start = client_frame(0x01, &[0xe2, 0x82]);
    let end = client_frame(0x80, b"x");
    assert_eq!(close_code_for(&mut h, &[start, end]).await, 1007);
    // A continuation with no message started.
    assert_eq!(
        close_code_for(&mut h, &[client_frame(0x80, b"x")]).await,
        1002
    );
    // A new message while one is unfinished.
    let first = client_frame(0x01, b"a");
    let second = client_frame(0x81, b"b");
    assert_eq!(close_code_for(&mut h, &[first, second]).await, 1002);
    // Valid text split inside a character, a ping between the fragments: fine.
    let euro = "€".as_bytes();
    let frames = [
        client_frame(0x01, &euro[..1]),
        client_frame(0x89, b"p"),
        client_frame(0x80, &euro[1..]),
        client_frame(0x88, &[0x03, 0xe8]),
    ];
    assert_eq!(close_code_for(&mut h, &frames).await, 1000);
    h.stop().await;
}
