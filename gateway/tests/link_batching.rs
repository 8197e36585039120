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
