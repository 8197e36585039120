//! Hostile input to the worker (issue 12, the worker's defects 4, 5, 6 and 8): each test
//! failed before its fix. Raw sockets, a fake gateway on the link side.

mod common;

use common::*;
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
