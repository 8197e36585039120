//! End-to-end gateway behaviour seen by a fake worker over the link protocol: register,
//! assign, subscribe with backlog, live delivery, idempotency, replacement, disconnects.

mod link_support;

use link_support::*;
use protocol::link::{Down, KickReason, Up};

#[tokio::test]
async fn assign_needs_a_healthy_worker_then_spreads_addresses() {
    let gw = Gw::start(&[]).await;
    let r = gw.get("/v1/assign?channel=c1").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no_worker");

    let _w = gw
        .worker("w1", &["127.0.0.2:9000", "127.0.1.2:9000"], 100)
        .await;
    let a = gw.get("/v1/assign?channel=user:1@x").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("access-control-allow-origin"), Some("*"));
    let j = a.json();
    assert_eq!(j["worker"], "w1");
    assert_eq!(j["ws_url"], "ws://127.0.0.2:9000/v1/ws?channel=user:1@x");
    assert_eq!(
        j["poll_url"],
        "http://127.0.0.2:9000/v1/poll?channel=user:1@x"
    );
    assert_eq!(
        j["sse_url"],
        "http://127.0.0.2:9000/v1/sse?channel=user:1@x"
    );
    assert_eq!(j["expires_in"], 3600);
    let b = gw.get("/v1/assign?channel=c2").await.json();
    assert_eq!(b["ws_url"], "ws://127.0.1.2:9000/v1/ws?channel=c2");

    assert_eq!(gw.get("/v1/assign?channel=a%20b").await.status, 400);
    assert_eq!(gw.get("/v1/assign").await.status, 400);

    let workers = gw.get("/v1/workers").await.json();
    assert_eq!(workers["workers"][0]["id"], "w1");
    assert_eq!(workers["workers"][0]["state"], "healthy");
    assert_eq!(workers["workers"][0]["capacity"], 100);
    assert_eq!(workers["workers"][0]["addresses"][1], "127.0.1.2:9000");
    gw.stop().await;
}

#[tokio::test]
async fn backlog_then_live_delivery_in_order_and_idempotency() {
    let gw = Gw::start(&[]).await;
    let mut w = gw.worker("w1", &["127.0.0.2:9000"], 100).await;
    for i in 1..=3 {
        let r = gw
            .post("/v1/publish/ch", &[], format!("{{\"n\":{i}}}").as_bytes())
            .await;
        assert_eq!(r.status, 202, "{}", r.text());
        assert_eq!(r.json()["seq"], i);
    }
    w.subscribe(7, "ch", Some(1), None).await;
    let epoch = match w.recv().await {
        Down::Backlog {
            sub_id,
            epoch,
            last_seq,
            gap_first_seq,
            messages,
        } => {
            assert_eq!((sub_id, last_seq, gap_first_seq), (7, 3, None));
            let got: Vec<_> = messages
                .iter()
                .map(|(s, d)| (*s, String::from_utf8_lossy(d).into_owned()))
                .collect();
            assert_eq!(
                got,
                vec![(2, r#"{"n":2}"#.to_string()), (3, r#"{"n":3}"#.to_string())]
            );
            epoch
        }
        other => panic!("{other:?}"),
    };
    assert!(epoch > 0 && epoch < (1 << 53));

    let info = gw.get("/v1/channels/ch").await.json();
    assert_eq!(
        info,
        serde_json::json!({"online": true, "worker": "w1", "last_seq": 3, "buffered": 3})
    );

    // Non-JSON payloads become JSON strings.
    assert_eq!(
        gw.post("/v1/publish/ch", &[], b"plain text").await.json()["seq"],
        4
    );
    match w.recv().await {
        Down::Deliver {
            sub_id, seq, data, ..
        } => {
            assert_eq!((sub_id, seq), (7, 4));
            assert_eq!(&data[..], br#""plain text""#);
        }
        other => panic!("{other:?}"),
    }
    // A repeated idempotency key is accepted with the original seq and not delivered again.
    let key = [("Idempotency-Key", "order-17")];
    assert_eq!(gw.post("/v1/publish/ch", &key, b"1").await.json()["seq"], 5);
    assert_eq!(gw.post("/v1/publish/ch", &key, b"1").await.json()["seq"], 5);
    assert_eq!(gw.post("/v1/publish/ch", &[], b"2").await.json()["seq"], 6);
    assert!(matches!(w.recv().await, Down::Deliver { seq: 5, .. }));
    assert!(matches!(w.recv().await, Down::Deliver { seq: 6, .. }));

    // Resume from another epoch: told explicitly, everything retained follows.
    w.subscribe(8, "ch", Some(6), Some(epoch + 1)).await;
    // sub 7 held the channel: it is replaced first (directory before backlog).
    assert!(matches!(
        w.recv().await,
        Down::Kick {
            sub_id: 7,
            reason: KickReason::Replaced
        }
    ));
    match w.recv().await {
        Down::Backlog {
            sub_id: 8,
            gap_first_seq,
            messages,
            ..
        } => {
            assert_eq!(gap_first_seq, Some(1));
            assert_eq!(messages.len(), 6);
        }
        other => panic!("{other:?}"),
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_new_subscriber_kicks_the_old_one_on_another_worker() {
    let gw = Gw::start(&[]).await;
    let mut w1 = gw.worker("w1", &["127.0.0.2:9000"], 100).await;
    let mut w2 = gw.worker("w2", &["127.0.0.3:9000"], 100).await;
    w1.subscribe(1, "room", None, None).await;
    assert!(matches!(w1.recv().await, Down::Backlog { sub_id: 1, .. }));
    w2.subscribe(2, "room", Some(0), None).await;
    assert!(matches!(w2.recv().await, Down::Backlog { sub_id: 2, .. }));
    assert!(matches!(
        w1.recv().await,
        Down::Kick {
            sub_id: 1,
            reason: KickReason::Replaced
        }
    ));
    gw.post("/v1/publish/room", &[], b"\"hi\"").await;
    assert!(matches!(
        w2.recv().await,
        Down::Deliver {
            sub_id: 2,
            seq: 1,
            ..
        }
    ));
    assert_eq!(gw.get("/v1/channels/room").await.json()["worker"], "w2");

    // The old holder's late unsubscribe does not take the channel from the new one.
    w1.send(Up::Unsubscribe {
        sub_id: 1,
        channel: "room".into(),
    })
    .await;
    w2.send(Up::Unsubscribe {
        sub_id: 99,
        channel: "room".into(),
    })
    .await;
    gw.post("/v1/publish/room", &[], b"2").await;
    assert!(matches!(
        w2.recv().await,
        Down::Deliver {
            sub_id: 2,
            seq: 2,
            ..
        }
    ));
    w2.send(Up::Unsubscribe {
        sub_id: 2,
        channel: "room".into(),
    })
    .await;
    // Readiness: a Load round-trip is not acknowledged, so wait on the channel view.
    for _ in 0..200 {
        if gw.get("/v1/channels/room").await.json()["online"] == false {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(gw.get("/v1/channels/room").await.json()["online"], false);
    gw.stop().await;
}

#[tokio::test]
async fn link_loss_disconnects_the_worker_and_a_reconnect_resumes() {
    let gw = Gw::start(&[]).await;
    let mut w = gw.worker("w1", &["127.0.0.2:9000"], 100).await;
    w.subscribe(1, "c", None, None).await;
    assert!(matches!(w.recv().await, Down::Backlog { .. }));
    drop(w);
    let mut state = String::new();
    for _ in 0..500 {
        state = gw.get("/v1/workers").await.json()["workers"][0]["state"]
            .as_str()
            .unwrap()
            .to_owned();
        if state == "disconnected" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(state, "disconnected");
    assert_eq!(gw.get("/v1/assign?channel=c").await.status, 503);
    // Published while the worker is away: kept, offline.
    assert_eq!(gw.post("/v1/publish/c", &[], b"1").await.json()["seq"], 1);
    assert_eq!(gw.get("/v1/channels/c").await.json()["online"], false);
    let mut w = gw.worker("w1", &["127.0.0.2:9000"], 100).await;
    w.subscribe(1, "c", Some(0), None).await;
    match w.recv().await {
        Down::Backlog {
            messages,
            gap_first_seq: None,
            ..
        } => assert_eq!(messages.len(), 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        gw.get("/v1/workers").await.json()["workers"][0]["state"],
        "healthy"
    );
    assert_eq!(
        gw.get("/v1/workers").await.json()["workers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_re_hello_with_the_same_id_replaces_the_old_link() {
    let gw = Gw::start(&[]).await;
    let mut old = gw.worker("w1", &["127.0.0.2:9000"], 100).await;
    let mut new = gw.worker("w1", &["127.0.0.2:9000"], 100).await;
    assert!(old.try_recv().await.is_none(), "old link is closed");
    new.subscribe(1, "c", None, None).await;
    assert!(matches!(new.recv().await, Down::Backlog { .. }));
    assert_eq!(
        gw.get("/v1/workers").await.json()["workers"][0]["state"],
        "healthy"
    );
    gw.stop().await;
}

#[tokio::test]
async fn ndjson_batch_delivers_good_lines_and_reports_bad_ones() {
    let gw = Gw::start(&["--max-message-bytes", "32"]).await;
    let mut w = gw.worker("w1", &["127.0.0.2:9000"], 100).await;
    w.subscribe(1, "b1", None, None).await;
    assert!(matches!(w.recv().await, Down::Backlog { .. }));
    let body = concat!(
        "{\"channel\":\"b1\",\"data\":{\"a\":1}}\n",
        "oops\n",
        "\n",
        "{\"channel\":\"b1\",\"data\":\"this string is far too long for 32 bytes\"}\n",
        "{\"channel\":\"b1\",\"data\":[2],\"id\":\"k\"}\n",
        "{\"channel\":\"b1\",\"data\":[2],\"id\":\"k\"}\n",
    );
    let r = gw
        .post(
            "/v1/publish",
            &[("Content-Type", "application/x-ndjson")],
            body.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["accepted"], 3);
    let lines: Vec<u64> = j["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![2, 4]);
    assert!(matches!(w.recv().await, Down::Deliver { seq: 1, .. }));
    match w.recv().await {
        Down::Deliver { seq: 2, data, .. } => assert_eq!(&data[..], b"[2]"),
        other => panic!("{other:?}"),
    }
    assert_eq!(gw.get("/v1/channels/b1").await.json()["last_seq"], 2);
    // Channel names may arrive percent-encoded in the path.
    assert_eq!(
        gw.post("/v1/publish/user%3A1%40eu", &[], b"1").await.status,
        202
    );
    assert_eq!(gw.get("/v1/channels/user:1@eu").await.json()["last_seq"], 1);
    let r = gw
        .post(
            "/v1/publish",
            &[("Content-Type", "text/plain")],
            body.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 415);
    assert_eq!(r.json()["error"], "unsupported_media_type");
    gw.stop().await;
}

/// Seqs of a `Backlog` for `sub`, with its gap and `last_seq`.
fn page_of(frame: Down, sub: u64) -> (Vec<u64>, Option<u64>, u64, u64) {
    match frame {
        Down::Backlog {
            sub_id,
            epoch,
            last_seq,
            gap_first_seq,
            messages,
        } => {
            assert_eq!(sub_id, sub);
            (
                messages.iter().map(|m| m.0).collect(),
                gap_first_seq,
                last_seq,
                epoch,
            )
        }
        other => panic!("expected a Backlog for {sub}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_resume_is_paged_and_fetch_answers_the_next_page() {
    let gw = Gw::start(&[]).await;
    let mut w = gw.worker("w1", &["127.0.0.2:9000"], 100).await;
    // Data 1..=5: one byte each.
    gw.publish_numbered("pg", 5).await;
    // A page budget of 2 bytes: the two oldest, no gap, last_seq says more exists.
    w.send(Up::Subscribe {
        sub_id: 3,
        since: Some(0),
        epoch: None,
        resume: false,
        max_bytes: 2,
        channel: "pg".into(),
        opened_us: 0,
    })
    .await;
    let (seqs, gap, last, epoch) = page_of(w.recv().await, 3);
    assert_eq!((seqs, gap, last), (vec![1, 2], None, 5));
    // The worker asks for the rest as its client drains.
    let fetch = |sub_id, since, epoch| Up::Fetch {
        sub_id,
        since,
        epoch,
        max_bytes: 2,
        channel: "pg".into(),
    };
    w.send(fetch(3, 2, Some(epoch))).await;
    assert_eq!(page_of(w.recv().await, 3).0, [3, 4]);
    w.send(fetch(3, 4, Some(epoch))).await;
    assert_eq!(page_of(w.recv().await, 3).0, [5]);
    // A Fetch from another epoch is told so; one for another sub_id is answered for it.
    w.send(fetch(9, 4, Some(epoch + 1))).await;
    let (seqs, gap, _, _) = page_of(w.recv().await, 9);
    assert_eq!((seqs, gap), (vec![1, 2], Some(1)));
    // Fetch never touches the directory: sub 3 still holds the channel and gets live ones.
    let info = gw.get("/v1/channels/pg").await.json();
    assert_eq!(
        (info["online"].as_bool(), info["worker"].as_str()),
        (Some(true), Some("w1"))
    );
    assert_eq!(gw.post("/v1/publish/pg", &[], b"6").await.json()["seq"], 6);
    assert!(matches!(
        w.recv().await,
        Down::Deliver {
            sub_id: 3,
            seq: 6,
            ..
        }
    ));
    gw.stop().await;
}
