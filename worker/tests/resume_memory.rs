//! Issue 12, defect 3: a resume backlog is streamed within `--max-pending-bytes`, page by
//! page as the socket drains, so per-connection memory is bounded by configuration
//! whatever the client does. Its own test binary: it reads a process-wide gauge.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use protocol::link::{Down, Up};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type RawWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket client with a small receive buffer, that reads nothing after the upgrade
/// until the test says so.
async fn stuck_client(addr: std::net::SocketAddr, channel: &str) -> RawWs {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    sock.set_nonblocking(true).unwrap();
    let stream = tokio::net::TcpStream::from_std(sock.into()).unwrap();
    let url = format!("ws://{addr}/v1/ws?channel={channel}&since=0");
    tokio_tungstenite::client_async(url, stream)
        .await
        .unwrap()
        .0
}

/// What today's gateway answers whatever `max_bytes` asks: everything after `since`.
fn everything_after(sub_id: u64, since: u64, all: &[(u64, Bytes)]) -> Down {
    Down::Backlog {
        sub_id,
        epoch: 1,
        last_seq: all.len() as u64,
        gap_first_seq: None,
        messages: all.iter().filter(|m| m.0 > since).cloned().collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_backlogs_to_clients_that_never_read_stay_within_the_pending_bound() {
    const MAX_PENDING: usize = 256 * 1024;
    let mut h = Harness::start(&[
        "--max-pending-bytes",
        "262144",
        "--socket-send-buffer",
        "4096",
    ])
    .await;
    let pad = Bytes::from(format!("\"{}\"", "x".repeat(60_000)));
    let all: Vec<(u64, Bytes)> = (1..=100).map(|s| (s, pad.clone())).collect();
    let slow_before = metric(h.addr, "pushgate_slow_client_closes_total").await;
    let mut clients = Vec::new();
    let mut subs = Vec::new();
    for i in 0..8 {
        clients.push(stuck_client(h.addr, &format!("big-{i}")).await);
        let (sub, since, _, _) = h.link.subscribed().await;
        assert_eq!(since, Some(0));
        h.link.send(everything_after(sub, 0, &all)).await;
        subs.push(sub);
    }
    // Let the worker queue what it will.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pending = metric(h.addr, "pushgate_pending_bytes").await as usize;
    // 8 x 6 MB if a backlog were queued whole; within the bound each when streamed.
    assert!(
        pending <= 8 * MAX_PENDING,
        "{pending} bytes pending for 8 clients (bound {MAX_PENDING} each)"
    );
    assert_eq!(
        metric(h.addr, "pushgate_slow_client_closes_total").await,
        slow_before,
        "a big resume is not a slow client"
    );

    // One of them reads now: it gets all 100, in order, page by page.
    let mut ws = clients.swap_remove(0);
    let mut next = 1u64;
    while next <= 100 {
        tokio::select! {
            m = ws.next() => match m.expect("open").expect("frame") {
                Message::Text(t) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    assert_eq!(v["seq"], next, "in order, once");
                    next += 1;
                }
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("{other:?}"),
            },
            up = h.link.next() => match up {
                Up::Fetch { sub_id, since, max_bytes, .. } => {
                    assert_eq!(sub_id, subs[0]);
                    assert!(max_bytes as usize <= MAX_PENDING, "{max_bytes}");
                    h.link.send(everything_after(sub_id, since, &all)).await;
                }
                other => panic!("{other:?}"),
            },
            _ = tokio::time::sleep(WAIT) => panic!("stalled at seq {next}"),
        }
    }
    drop(clients);
    h.stop().await;
}
