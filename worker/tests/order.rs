//! Delivery order as the worker's rule, over real sockets: holes filled from the store
//! (`Fetch`), deliveries before the Backlog, another epoch. The fake gateway plays a
//! store whose deliveries come out of order, as two gateways' links would bring them.

mod common;

use bytes::Bytes;
use common::*;
use protocol::link::{Down, Up};
use std::time::{Duration, Instant};

fn msg(seq: u64) -> (u64, Bytes) {
    (seq, Bytes::from(seq.to_string()))
}

fn deliver(sub_id: u64, epoch: u64, seq: u64) -> Down {
    Down::Deliver {
        sub_id,
        epoch,
        seq,
        data: Bytes::from(seq.to_string()),
        published_us: 0,
    }
}

fn backlog(sub_id: u64, epoch: u64, last_seq: u64, gap: Option<u64>, m: Vec<(u64, Bytes)>) -> Down {
    Down::Backlog {
        sub_id,
        epoch,
        last_seq,
        gap_first_seq: gap,
        messages: m,
    }
}

/// The next frame, expected to be a Fetch: `(sub_id, since, epoch)`.
async fn fetched(link: &mut FakeLink) -> (u64, u64, Option<u64>, u32) {
    match link.next().await {
        Up::Fetch {
            sub_id,
            since,
            epoch,
            max_bytes,
            ..
        } => (sub_id, since, epoch, max_bytes),
        other => panic!("expected Fetch, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_is_filled_from_the_store_after_the_hole_wait() {
    let mut h = Harness::start(&["--hole-wait-ms", "200"]).await;
    let mut ws = ws_connect(&h.ws_url("channel=h&since=0")).await;
    let (sub, ..) = h.link.subscribed().await;
    h.link.send(backlog(sub, 1, 1, None, vec![msg(1)])).await;
    assert_eq!(ws_text(&mut ws).await["seq"], 1);
    let t0 = Instant::now();
    h.link.send(deliver(sub, 1, 3)).await;
    let (id, since, epoch, _) = fetched(&mut h.link).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(190),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!((id, since, epoch), (sub, 1, Some(1)));
    h.link
        .send(backlog(sub, 1, 3, None, vec![msg(2), msg(3)]))
        .await;
    h.link.send(deliver(sub, 1, 4)).await;
    for seq in 2..=4 {
        assert_eq!(ws_text(&mut ws).await["seq"], seq, "in order, once");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_delivery_fills_the_hole_without_a_fetch() {
    let mut h = Harness::start(&["--hole-wait-ms", "300"]).await;
    let mut ws = ws_connect(&h.ws_url("channel=late&since=0")).await;
    let (sub, ..) = h.link.subscribed().await;
    h.link
        .send_all(vec![
            backlog(sub, 1, 0, None, vec![]),
            deliver(sub, 1, 2),
            deliver(sub, 1, 1),
        ])
        .await;
    assert_eq!(ws_text(&mut ws).await["seq"], 1);
    assert_eq!(ws_text(&mut ws).await["seq"], 2);
    // Nothing but Loads for longer than the hole wait.
    let quiet = tokio::time::timeout(Duration::from_millis(600), h.link.next()).await;
    assert!(quiet.is_err(), "no Fetch: {quiet:?}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_before_the_first_backlog_wait_for_it() {
    let mut h = Harness::start(&[]).await;
    let mut ws = ws_connect(&h.ws_url("channel=early&since=0")).await;
    let (sub, ..) = h.link.subscribed().await;
    h.link
        .send_all(vec![deliver(sub, 2, 3), deliver(sub, 2, 2)])
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.link.send(backlog(sub, 2, 1, None, vec![msg(1)])).await;
    for seq in 1..=3 {
        assert_eq!(ws_text(&mut ws).await["seq"], seq);
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_epoch_is_asked_at_once_and_told_as_a_gap() {
    let mut h = Harness::start(&["--hole-wait-ms", "5000"]).await;
    let mut ws = ws_connect(&h.ws_url("channel=ep&since=0")).await;
    let (sub, ..) = h.link.subscribed().await;
    h.link
        .send(backlog(sub, 1, 2, None, vec![msg(1), msg(2)]))
        .await;
    assert_eq!(ws_text(&mut ws).await["seq"], 1);
    assert_eq!(ws_text(&mut ws).await["seq"], 2);
    // The log was reset: its first message arrives with the new epoch.
    h.link.send(deliver(sub, 8, 1)).await;
    let (_, since, epoch, _) = fetched(&mut h.link).await;
    assert_eq!((since, epoch), (2, Some(1)), "the old position and epoch");
    h.link.send(backlog(sub, 8, 1, Some(1), vec![msg(1)])).await;
    assert_eq!(
        ws_text(&mut ws).await,
        serde_json::json!({"gap": true, "epoch": 8, "first_seq": 1})
    );
    assert_eq!(ws_text(&mut ws).await["seq"], 1);
    h.link.send(deliver(sub, 8, 2)).await;
    assert_eq!(ws_text(&mut ws).await["seq"], 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_poll_is_answered_once_its_hole_is_filled() {
    let mut h = Harness::start(&["--hole-wait-ms", "100"]).await;
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        b"GET /v1/poll?channel=ph&since=4 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let (sub, ..) = h.link.subscribed().await;
    h.link
        .send_all(vec![backlog(sub, 1, 4, None, vec![]), deliver(sub, 1, 6)])
        .await;
    let (_, since, ..) = fetched(&mut h.link).await;
    assert_eq!(since, 4);
    h.link
        .send(backlog(sub, 1, 6, None, vec![msg(5), msg(6)]))
        .await;
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(
        r.json(),
        serde_json::json!({"messages":[{"seq":5,"data":5},{"seq":6,"data":6}],"next":6})
    );
    h.stop().await;
}
