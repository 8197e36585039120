//! A link whose outbound queue fills is closed on purpose; the worker reconnects, resumes
//! with `since` and the backlog holds every message it missed.

mod link_support;

use link_support::*;
use protocol::link::Down;

// One thread: the publishes fill the 16-frame queue before the link writer runs.
#[tokio::test]
async fn overflow_closes_the_link_and_resume_loses_nothing() {
    let gw = Gw::start(&["--link-queue", "16", "--retention-messages", "100000"]).await;
    let mut w = gw.worker("w1", &["127.0.0.2:9000"], 100).await;
    w.subscribe(1, "flood", None, None).await;
    assert!(matches!(w.recv().await, Down::Backlog { .. }));

    const N: u64 = 20_000;
    gw.publish_numbered("flood", N).await;

    // Read what made it out before the link was closed.
    let mut last = 0;
    while let Some(frame) = w.try_recv().await {
        match frame {
            Down::Deliver { seq, .. } => {
                assert_eq!(seq, last + 1, "in order, no holes");
                last = seq;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(last < N, "the link was closed before everything was sent");
    assert!(gw.metric("pushgate_link_overflows_total").await >= 1.0);

    let mut w = gw.worker("w1", &["127.0.0.2:9000"], 100).await;
    w.subscribe(1, "flood", Some(last), None).await;
    match w.recv().await {
        Down::Backlog {
            gap_first_seq,
            last_seq,
            messages,
            ..
        } => {
            assert_eq!((gap_first_seq, last_seq), (None, N));
            assert_eq!(messages.len() as u64, N - last);
            assert_eq!(messages[0].0, last + 1);
        }
        other => panic!("{other:?}"),
    }
    gw.stop().await;
}
