//! Many deliveries to one link leave the gateway in few writes (frames per batch > 1), in order.

mod link_support;

use link_support::*;
use protocol::link::Down;

// One thread: the batch handler enqueues all deliveries before the link writer runs, which
// makes the batching deterministic (with more threads it depends on scheduling).
#[tokio::test]
async fn many_delivers_are_batched_and_ordered() {
    let gw = Gw::start(&["--retention-messages", "5000"]).await;
    let mut w = gw.worker("w1", &["127.0.0.2:9000"], 100).await;
    w.subscribe(5, "hot", None, None).await;
    assert!(matches!(w.recv().await, Down::Backlog { .. }));
    let frames0 = gw.metric("pushgate_link_frames_sent_total").await;
    let batches0 = gw.metric("pushgate_link_batches_sent_total").await;

    const N: u64 = 2000;
    gw.publish_numbered("hot", N).await;
    for i in 1..=N {
        match w.recv().await {
            Down::Deliver {
                sub_id: 5,
                seq,
                data,
                ..
            } => {
                assert_eq!(seq, i);
                assert_eq!(data, i.to_string().as_bytes());
            }
            other => panic!("{other:?}"),
        }
    }
    let frames = gw.metric("pushgate_link_frames_sent_total").await - frames0;
    let batches = gw.metric("pushgate_link_batches_sent_total").await - batches0;
    assert!(frames >= N as f64, "frames {frames}");
    assert!(
        batches * 4.0 <= frames,
        "{frames} frames went out in {batches} writes"
    );
    gw.stop().await;
}

// A single publish to an idle plain link is written by the publishing task itself (no
// writer task woken); a batch request's deliveries still go out in batched writes.
#[tokio::test]
async fn single_publishes_are_written_directly_and_batches_stay_batched() {
    let gw = Gw::start(&["--retention-messages", "5000"]).await;
    let mut w = gw.worker("w1", &["127.0.0.2:9000"], 100).await;
    w.subscribe(7, "one", None, None).await;
    assert!(matches!(w.recv().await, Down::Backlog { .. }));
    let direct0 = gw.metric("pushgate_link_direct_writes_total").await;
    for i in 1..=20u64 {
        // Apart in time, as single publishes at low rates are (closer ones are batched).
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let r = gw
            .post("/v1/publish/one", &[], i.to_string().as_bytes())
            .await;
        assert_eq!(r.json()["seq"], i);
        match w.recv().await {
            Down::Deliver {
                sub_id: 7,
                seq,
                data,
                ..
            } => {
                assert_eq!(seq, i);
                assert_eq!(data, i.to_string().as_bytes());
            }
            other => panic!("{other:?}"),
        }
    }
    let direct = gw.metric("pushgate_link_direct_writes_total").await - direct0;
    // Heartbeat answers or ticket keys may use the direct path too; the 20 must have.
    assert!(
        direct >= 20.0,
        "{direct} direct writes for 20 single publishes"
    );

    let direct0 = gw.metric("pushgate_link_direct_writes_total").await;
    let batches0 = gw.metric("pushgate_link_batches_sent_total").await;
    const N: u64 = 1000;
    gw.publish_numbered("one", N).await;
    for i in 1..=N {
        match w.recv().await {
            Down::Deliver { seq, .. } => assert_eq!(seq, 20 + i),
            other => panic!("{other:?}"),
        }
    }
    let direct = gw.metric("pushgate_link_direct_writes_total").await - direct0;
    let batches = gw.metric("pushgate_link_batches_sent_total").await - batches0;
    assert!(
        direct <= 2.0,
        "{direct} of a batch request's deliveries written one by one"
    );
    assert!(
        batches * 4.0 <= N as f64,
        "{N} deliveries in {batches} writes"
    );
    gw.stop().await;
}
