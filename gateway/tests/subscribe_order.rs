//! One client per channel when its subscribes race: a client that dropped and came back
//! on another worker has two subscribes in flight on two links, and the one it asked first
//! may land last (its link was busier). The gateway orders them by when the client asked
//! (`Subscribe::opened_us`, the worker's clock), so the late one does not take the channel
//! from the connection that is still there, against both stores: fake workers over real
//! links, a real gateway on port 0, and a real `redis-server` for the Redis store.

mod common;
mod link_support;

use common::redis::RedisServer;
use link_support::*;
use protocol::link::{Down, KickReason, Up};
use std::time::{SystemTime, UNIX_EPOCH};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The next frame for a worker that is not a store resync (the Redis store may say one
/// when it first attaches).
async fn next(w: &mut FakeWorker) -> Down {
    loop {
        match w.recv().await {
            Down::ResubscribeAll => continue,
            d => return d,
        }
    }
}

async fn backlog_for(w: &mut FakeWorker, sub: u64) {
    match next(w).await {
        Down::Backlog { sub_id, .. } if sub_id == sub => {}
        other => panic!("expected the Backlog of {sub}, got {other:?}"),
    }
}

async fn kicked(w: &mut FakeWorker, sub: u64, why: KickReason) {
    match next(w).await {
        Down::Kick { sub_id, reason } if sub_id == sub && reason == why => {}
        other => panic!("expected Kick {{ {sub}, {why:?} }}, got {other:?}"),
    }
}

async fn delivered(w: &mut FakeWorker, sub: u64, want: u64) {
    match next(w).await {
        Down::Deliver { sub_id, seq, .. } if sub_id == sub && seq == want => {}
        other => panic!("expected Deliver {{ {sub}, seq {want} }}, got {other:?}"),
    }
}

async fn holder_of(gw: &Gw, channel: &str) -> String {
    let v = gw.get(&format!("/v1/channels/{channel}")).await.json();
    v["worker"].as_str().unwrap_or_default().to_owned()
}

async fn late_subscribes_do_not_take_the_channel(store: &[&str]) {
    let gw = Gw::start(store).await;
    let mut w1 = gw.worker("w1", &["127.0.0.2:9000"], 100).await;
    let mut w2 = gw.worker("w2", &["127.0.0.3:9000"], 100).await;
    let t = now_us();
    let late_before = gw.metric("pushgate_subscribes_late_total").await;

    // The client asked on w1 at t, dropped, and asked again on w2 5 ms later; w2's
    // subscribe lands first.
    w2.subscribe_asked_at(20, "race", Some(0), None, t + 5_000)
        .await;
    backlog_for(&mut w2, 20).await;
    w1.subscribe_asked_at(10, "race", Some(0), None, t).await;
    // The late one is told to come back with `since` (if its client is still there, it
    // wins then with a newer stamp); the connection that asked last keeps the channel.
    kicked(&mut w1, 10, KickReason::Resync).await;
    assert_eq!(
        gw.metric("pushgate_subscribes_late_total").await - late_before,
        1.0
    );
    gw.post("/v1/publish/race", &[], b"1").await;
    delivered(&mut w2, 20, 1).await;
    assert_eq!(holder_of(&gw, "race").await, "w2");
    // Its late unsubscribe changes nothing either.
    w1.send(Up::Unsubscribe {
        sub_id: 10,
        channel: "race".into(),
    })
    .await;
    gw.post("/v1/publish/race", &[], b"2").await;
    delivered(&mut w2, 20, 2).await;

    // A subscribe asked later replaces the holder as ever (one client per channel: the
    // newest tab wins).
    w1.subscribe_asked_at(11, "race", Some(2), None, t + 9_000)
        .await;
    backlog_for(&mut w1, 11).await;
    kicked(&mut w2, 20, KickReason::Replaced).await;
    assert_eq!(holder_of(&gw, "race").await, "w1");

    // A subscribe that does not say when it was asked (a worker from before the stamp)
    // replaces too, whatever the holder's stamp.
    w2.subscribe(21, "race", Some(2), None).await;
    backlog_for(&mut w2, 21).await;
    kicked(&mut w1, 11, KickReason::Replaced).await;
    // And an unstamped holder is replaced by any stamped subscribe.
    w1.subscribe_asked_at(12, "race", Some(2), None, t).await;
    backlog_for(&mut w1, 12).await;
    kicked(&mut w2, 21, KickReason::Replaced).await;
    gw.post("/v1/publish/race", &[], b"3").await;
    delivered(&mut w1, 12, 3).await;
    assert_eq!(
        gw.metric("pushgate_subscribes_late_total").await - late_before,
        1.0
    );
    gw.stop().await;
}

// One test for both stores, one after the other: the counter is the process's.
#[tokio::test]
async fn late_subscribes_do_not_take_the_channel_in_either_store() {
    late_subscribes_do_not_take_the_channel(&[]).await;
    let redis = RedisServer::start(&[]);
    let url = redis.url();
    late_subscribes_do_not_take_the_channel(&["--store", &url]).await;
}
