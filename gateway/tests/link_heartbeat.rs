//! A worker that stops sending `Load` becomes stale and gets no new clients; a heartbeat
//! brings it back. (Real time: the timeout is 1 s.)

mod link_support;

use link_support::*;
use protocol::link::Up;
use std::time::Duration;

#[tokio::test]
async fn silent_worker_goes_stale_then_recovers() {
    let gw = Gw::start(&["--worker-timeout-secs", "1"]).await;
    let mut w = gw.worker("w1", &["127.0.0.2:9000"], 100).await;
    assert_eq!(gw.get("/v1/assign?channel=c").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = gw.get("/v1/assign?channel=c").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no_worker");
    assert_eq!(
        gw.get("/v1/workers").await.json()["workers"][0]["state"],
        "stale"
    );
    let metrics = gw.get("/metrics").await.text();
    assert!(
        metrics.contains("pushgate_workers{state=\"stale\"} 1"),
        "{metrics}"
    );

    w.send(Up::Load { connections: 3 }).await;
    let mut status = 0;
    for _ in 0..200 {
        status = gw.get("/v1/assign?channel=c").await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(status, 200);
    let workers = gw.get("/v1/workers").await.json();
    assert_eq!(workers["workers"][0]["state"], "healthy");
    assert_eq!(workers["workers"][0]["connections"], 3);
    gw.stop().await;
}
