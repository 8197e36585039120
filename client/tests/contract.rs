//! `pushgate_client` against a real gateway and real workers in this process (port 0):
//! order without duplicates on every transport, resume after the worker dies, replaced
//! subscribers stop, gaps are told, refusals carry their status and code, tokens, TLS.

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pushgate_client::{
    tls_config_with_ca, Error, Event, Gap, Line, Message, Publisher, Result, SubscribeOptions,
    Subscriber, Transport,
};
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TRANSPORTS: [Transport; 3] = [Transport::Ws, Transport::Sse, Transport::Poll];

/// Every test's bound.
async fn bounded<F: Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {secs} s"));
}

/// A gateway and workers, each worker stoppable on its own.
struct Fleet {
    base: String,
    shutdown: CancellationToken,
    worker_args: Vec<String>,
    workers: Vec<Option<(CancellationToken, worker::WorkerHandle)>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Fleet {
    /// A gateway with `gw_args` and one worker `w0` with `worker_args`.
    async fn start(gw_args: &[&str], worker_args: &[&str]) -> Fleet {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let listen = addr.to_string();
        let mut args = vec!["gateway", "--listen", &listen];
        args.extend(gw_args);
        let shutdown = CancellationToken::new();
        tokio::spawn(gateway::run(
            listener,
            gateway::Config::parse_from(args),
            shutdown.clone(),
        ));
        let mut fleet = Fleet {
            base: format!("http://{addr}"),
            shutdown,
            worker_args: worker_args.iter().map(|s| s.to_string()).collect(),
            workers: Vec::new(),
        };
        fleet.add_worker("w0").await;
        fleet
    }

    /// Starts a worker and waits until the gateway counts it healthy.
    async fn add_worker(&mut self, id: &str) {
        let mut args: Vec<String> = ["worker", "--gateway", &self.base, "--id", id]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--threads", "1", "--listen", "127.0.0.1:0"].map(String::from));
        args.extend(self.worker_args.iter().cloned());
        let w = worker::Worker::bind(worker::Config::parse_from(args)).unwrap();
        let token = self.shutdown.child_token();
        self.workers.push(Some((token.clone(), w.start(token))));
        let want = self.workers.iter().flatten().count();
        for _ in 0..1000 {
            let (_, v) = self.get("/v1/workers").await;
            let healthy = v["workers"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|w| w["state"] == "healthy").count());
            if healthy >= want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("worker {id} never became healthy");
    }

    /// Stops worker `i` (its clients are told it shuts down) and waits until it is gone.
    async fn stop_worker(&mut self, i: usize) {
        let (token, handle) = self.workers[i].take().expect("a running worker");
        token.cancel();
        tokio::task::spawn_blocking(move || handle.wait())
            .await
            .unwrap();
    }

    async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let resp = client
            .get(format!("{}{path}", self.base).parse().unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    async fn wait_online(&self, channel: &str) {
        for _ in 0..1000 {
            if self.get(&format!("/v1/channels/{channel}")).await.1["online"] == true {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{channel} never came online");
    }

    fn publisher(&self) -> Publisher {
        Publisher::new(&self.base).unwrap()
    }

    fn options(&self, channel: &str, transport: Transport) -> SubscribeOptions {
        SubscribeOptions::new(&self.base, channel).transport(transport)
    }
}

/// A subscription driven on a task of its own (as an application's would be), its items
/// forwarded; the receiver closes when the subscription has stopped.
fn drive(opts: SubscribeOptions) -> mpsc::UnboundedReceiver<Result<Event>> {
    let mut sub = Subscriber::connect(opts).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(item) = sub.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next item (`None`: the subscription stopped), within 20 s.
async fn item(rx: &mut mpsc::UnboundedReceiver<Result<Event>>) -> Option<Result<Event>> {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("nothing from the subscriber within 20 s")
}

/// The next message or gap, skipping connection events.
async fn next_data(rx: &mut mpsc::UnboundedReceiver<Result<Event>>) -> Event {
    loop {
        match item(rx).await {
            Some(Ok(Event::Open { .. } | Event::Reconnecting { .. })) => continue,
            Some(Ok(ev)) => return ev,
            Some(Err(e)) => panic!("the subscription stopped: {e}"),
            None => panic!("the subscription ended"),
        }
    }
}

async fn next_message(rx: &mut mpsc::UnboundedReceiver<Result<Event>>) -> Message {
    match next_data(rx).await {
        Event::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Waits for the next `Open`, answering its worker.
async fn opened(rx: &mut mpsc::UnboundedReceiver<Result<Event>>) -> String {
    loop {
        match item(rx).await {
            Some(Ok(Event::Open { worker, .. })) => return worker,
            Some(Ok(Event::Reconnecting { .. })) => continue,
            other => panic!("expected Open, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_delivers_in_order_once() {
    bounded(60, async {
        let fleet = Fleet::start(&[], &[]).await;
        let publisher = fleet.publisher();
        for t in TRANSPORTS {
            let channel = format!("order-{t:?}");
            // Three retained before the subscriber comes, seven live after.
            for i in 1..=3 {
                let p = publisher
                    .publish(&channel, format!(r#"{{"n":{i}}}"#))
                    .await
                    .unwrap();
                assert_eq!(p.seq, i);
            }
            let mut rx = drive(fleet.options(&channel, t));
            opened(&mut rx).await;
            for i in 4..=9 {
                publisher
                    .publish(&channel, format!(r#"{{"n":{i}}}"#))
                    .await
                    .unwrap();
            }
            publisher.publish(&channel, "not JSON").await.unwrap();
            for i in 1..=9 {
                let m = next_message(&mut rx).await;
                assert_eq!(m.seq, i, "{t:?}");
                let v: serde_json::Value = m.json().unwrap();
                assert_eq!(v["n"], i, "{t:?}");
            }
            let m = next_message(&mut rx).await;
            assert_eq!((m.seq, m.data.get()), (10, r#""not JSON""#), "{t:?}");
            // Nothing more: no message twice.
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(rx.try_recv().is_err(), "{t:?}: more than was published");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_on_another_worker_after_its_worker_stops() {
    bounded(120, async {
        for t in TRANSPORTS {
            let mut fleet = Fleet::start(&[], &[]).await;
            let publisher = fleet.publisher();
            let channel = format!("resume-{t:?}");
            let mut rx = drive(fleet.options(&channel, t));
            assert_eq!(opened(&mut rx).await, "w0");
            for i in 1..=3 {
                publisher.publish(&channel, i.to_string()).await.unwrap();
                assert_eq!(next_message(&mut rx).await.seq, i, "{t:?}");
            }
            fleet.stop_worker(0).await;
            // Published while the subscriber has no worker: kept by the gateway.
            for i in 4..=6 {
                publisher.publish(&channel, i.to_string()).await.unwrap();
            }
            fleet.add_worker("w1").await;
            let worker = loop {
                match item(&mut rx).await {
                    Some(Ok(Event::Open { worker, .. })) => break worker,
                    Some(Ok(Event::Reconnecting { .. })) => continue,
                    other => panic!("{t:?}: expected a reconnect, got {other:?}"),
                }
            };
            assert_eq!(worker, "w1", "{t:?}");
            for i in 4..=6 {
                assert_eq!(next_message(&mut rx).await.seq, i, "{t:?}");
            }
            publisher.publish(&channel, "7").await.unwrap();
            assert_eq!(next_message(&mut rx).await.seq, 7, "{t:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_subscriber_stops_and_does_not_come_back() {
    bounded(60, async {
        let fleet = Fleet::start(&[], &[]).await;
        let publisher = fleet.publisher();
        for t in TRANSPORTS {
            let channel = format!("replace-{t:?}");
            let mut first = drive(fleet.options(&channel, t));
            opened(&mut first).await;
            fleet.wait_online(&channel).await;
            let mut second = drive(fleet.options(&channel, t));
            opened(&mut second).await;
            loop {
                match item(&mut first).await {
                    Some(Err(Error::Replaced)) => break,
                    Some(Ok(Event::Reconnecting { reason, .. })) => {
                        panic!("{t:?}: the first reconnects ({reason}) instead of stopping")
                    }
                    Some(Ok(_)) => continue,
                    other => panic!("{t:?}: expected Replaced, got {other:?}"),
                }
            }
            assert!(item(&mut first).await.is_none(), "{t:?}: stopped for good");
            // The channel stays with the second one.
            let p = publisher.publish(&channel, "after").await.unwrap();
            assert_eq!(next_message(&mut second).await.seq, p.seq, "{t:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(
                fleet.get(&format!("/v1/channels/{channel}")).await.1["online"],
                true
            );
            assert!(
                second.try_recv().is_err(),
                "{t:?}: the second was disturbed"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_past_retention_is_told_as_a_gap() {
    bounded(60, async {
        let mut fleet = Fleet::start(&["--retention-messages", "3"], &[]).await;
        let publisher = fleet.publisher();
        let mut rx = drive(fleet.options("gappy", Transport::Auto));
        opened(&mut rx).await;
        publisher.publish("gappy", "1").await.unwrap();
        assert_eq!(next_message(&mut rx).await.seq, 1);
        fleet.stop_worker(0).await;
        // Seven while disconnected; only the last three (6, 7, 8) are retained.
        for i in 2..=8 {
            publisher.publish("gappy", i.to_string()).await.unwrap();
        }
        fleet.add_worker("w1").await;
        let epoch = match next_data(&mut rx).await {
            Event::Gap(g) => {
                assert_eq!((g.first_seq, g.since, g.previous_epoch), (6, Some(1), None));
                g.epoch
            }
            other => panic!("expected a gap, got {other:?}"),
        };
        for i in 6..=8 {
            let m = next_message(&mut rx).await;
            assert_eq!((m.seq, m.epoch), (i, Some(epoch)));
        }
        // A subscriber that reopens with since and epoch is told the same, on every
        // transport; one with an epoch that is not the channel's is told of the new one.
        for t in TRANSPORTS {
            for (e, since) in [(epoch, 2), (epoch + 1000, 8)] {
                let opts = fleet.options("gappy", t).since(Some(since)).epoch(Some(e));
                let mut rx = drive(opts);
                let want = Gap {
                    epoch,
                    first_seq: 6,
                    since: Some(since),
                    previous_epoch: Some(e),
                };
                match next_data(&mut rx).await {
                    Event::Gap(g) => assert_eq!(g, want, "{t:?}"),
                    other => panic!("{t:?}: expected a gap, got {other:?}"),
                }
                assert_eq!(next_message(&mut rx).await.seq, 6, "{t:?}");
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_refusals_carry_status_and_code() {
    bounded(30, async {
        let fleet = Fleet::start(
            &["--publisher-key", "k1", "--max-message-bytes", "100"],
            &[],
        )
        .await;
        let anonymous = fleet.publisher();
        let e = anonymous.publish("p", "x").await.unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (Some(401), Some("unauthorized")),
            "{e}"
        );
        let wrong = fleet.publisher().key("k2");
        assert_eq!(
            wrong.publish("p", "x").await.unwrap_err().status(),
            Some(401)
        );

        let p = fleet.publisher().key("k1");
        assert_eq!(p.publish("p", "x").await.unwrap().seq, 1);
        let e = p.publish("p", vec![b'a'; 150]).await.unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (Some(413), Some("payload_too_large")),
            "{e}"
        );
        let e = p.publish("not a channel", "x").await.unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (Some(400), Some("bad_channel")),
            "{e}"
        );
        match &e {
            Error::Refused(r) => assert!(!r.message.is_empty()),
            other => panic!("{other:?}"),
        }

        // An idempotency key: the repeat answers the first seq and publishes nothing.
        let a = p.publish_with_key("p", "once", "key-1").await.unwrap();
        let b = p.publish_with_key("p", "once", "key-1").await.unwrap();
        assert_eq!((a.seq, b.seq), (2, 2));
        assert_eq!(p.publish("p", "y").await.unwrap().seq, 3);

        let batch = p
            .publish_batch([
                Line::new("b1", serde_json::json!({"k": 1})),
                Line::new("bad channel", serde_json::json!(2)),
                Line::new("b2", serde_json::json!("s")).id("i1"),
            ])
            .await
            .unwrap();
        assert_eq!(batch.accepted, 2);
        assert_eq!(batch.rejected.len(), 1);
        assert_eq!(batch.rejected[0].line, 2);

        let b = p
            .broadcast(
                &["b1", "b2", "no good"],
                &serde_json::json!({"all": true}),
                None,
            )
            .await
            .unwrap();
        assert_eq!(b.accepted, 2);
        assert_eq!(b.rejected[0].channel, "no good");
        // The batch and the broadcast each took the next seq of b1.
        let mut rx = drive(fleet.options("b1", Transport::Ws));
        assert_eq!(next_message(&mut rx).await.seq, 1);
        let m = next_message(&mut rx).await;
        assert_eq!((m.seq, m.data.get()), (2, r#"{"all":true}"#));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_publishes_say_when_to_retry() {
    bounded(30, async {
        let fleet = Fleet::start(&["--publish-rate-per-ip", "1"], &[]).await;
        let p = fleet.publisher();
        let mut refused = None;
        for _ in 0..5 {
            if let Err(e) = p.publish("r", "x").await {
                refused = Some(e);
                break;
            }
        }
        match refused.expect("a 429 within five publishes") {
            Error::Refused(r) => {
                assert_eq!((r.status, r.code.as_str()), (429, "rate_limited"));
                assert!(r.retry_after.is_some(), "{r:?}");
            }
            other => panic!("{other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_subscribe_and_a_refused_token_stops() {
    bounded(30, async {
        let secret = "a-subscriber-secret";
        let fleet = Fleet::start(
            &["--subscriber-secret", secret],
            &["--subscriber-secret", secret],
        )
        .await;
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        for t in TRANSPORTS {
            let channel = format!("tok-{t:?}");
            let token = protocol::token::sign(secret.as_bytes(), &channel, exp);
            let opts = SubscribeOptions::with_token(&fleet.base, token).transport(t);
            let mut rx = drive(opts);
            opened(&mut rx).await;
            fleet.publisher().publish(&channel, "hi").await.unwrap();
            assert_eq!(next_message(&mut rx).await.data.get(), r#""hi""#, "{t:?}");
        }
        let forged = protocol::token::sign(b"another secret", "tok-x", exp);
        let mut rx = drive(SubscribeOptions::with_token(&fleet.base, forged));
        match item(&mut rx).await {
            Some(Err(Error::Refused(r))) => assert!(matches!(r.status, 401 | 403), "{r:?}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(item(&mut rx).await.is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_gateway_and_worker() {
    bounded(60, async {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = std::env::temp_dir().join(format!("pg-client-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let (c, k) = (c.display().to_string(), k.display().to_string());

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shutdown = CancellationToken::new();
        let _stop = shutdown.clone().drop_guard();
        let listen = format!("127.0.0.1:{port}");
        let config = gateway::Config::parse_from([
            "gateway",
            "--listen",
            &listen,
            "--tls-cert",
            &c,
            "--tls-key",
            &k,
        ]);
        tokio::spawn(gateway::run(listener, config, shutdown.clone()));
        let base = format!("https://localhost:{port}");
        let w = worker::Worker::bind(worker::Config::parse_from([
            "worker",
            "--gateway",
            &base,
            "--gateway-ca",
            &c,
            "--threads",
            "1",
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            &c,
            "--tls-key",
            &k,
            "--advertise",
            "localhost",
        ]))
        .unwrap();
        let _worker = w.start(shutdown.child_token());

        let tls = tls_config_with_ca(cert.pem().as_bytes()).unwrap();
        let publisher = Publisher::new(&base).unwrap().tls_config(tls.clone());
        for t in TRANSPORTS {
            let channel = format!("tls-{t:?}");
            let opts = SubscribeOptions::new(&base, &channel)
                .transport(t)
                .tls_config(tls.clone());
            // Until the worker has linked, assign answers 503 and the subscriber backs off.
            let mut rx = drive(opts);
            opened(&mut rx).await;
            publisher
                .publish(&channel, r#"{"tls":true}"#)
                .await
                .unwrap();
            assert_eq!(
                next_message(&mut rx).await.data.get(),
                r#"{"tls":true}"#,
                "{t:?}"
            );
        }
        // Without the CA the gateway's certificate is not trusted.
        let untrusting = Publisher::new(&base).unwrap();
        assert!(matches!(
            untrusting.publish("x", "y").await,
            Err(Error::Tls(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// A gateway stand-in whose assign hands out the real `poll_url` but a `ws_url` and an
/// `sse_url` on itself, where a WebSocket upgrade is answered 404 and the event stream is
/// not one (as behind a proxy that passes neither).
async fn assign_through_a_bad_proxy(real: serde_json::Value) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let real = real.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let (status, kind, body) = if head.starts_with("GET /v1/assign") {
                    let v = serde_json::json!({
                        "worker": "behind-proxy",
                        "ws_url": format!("ws://{addr}/v1/ws?channel=fallback"),
                        "sse_url": format!("http://{addr}/v1/sse?channel=fallback"),
                        "poll_url": real["poll_url"],
                        "expires_in": 3600,
                    });
                    ("200 OK", "application/json", v.to_string())
                } else if head.starts_with("GET /v1/sse") {
                    (
                        "200 OK",
                        "text/html",
                        "<html>a proxy's page</html>".to_string(),
                    )
                } else {
                    let v =
                        serde_json::json!({"error": "not_found", "message": "no such endpoint"});
                    ("404 Not Found", "application/json", v.to_string())
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_from_websocket_to_sse_to_poll() {
    bounded(30, async {
        let fleet = Fleet::start(&[], &[]).await;
        let (status, real) = fleet.get("/v1/assign?channel=fallback").await;
        assert_eq!(status, 200);
        let proxy = assign_through_a_bad_proxy(real).await;
        let mut rx = drive(SubscribeOptions::new(&proxy, "fallback"));
        let mut reasons = Vec::new();
        let transport = loop {
            match item(&mut rx).await {
                Some(Ok(Event::Reconnecting { reason, .. })) => reasons.push(reason),
                Some(Ok(Event::Open { transport, .. })) => break transport,
                other => panic!("expected a fallback, got {other:?}"),
            }
        };
        assert_eq!(transport, Transport::Poll);
        assert_eq!(reasons, ["not_found", "not_an_event_stream"]);
        let p = fleet
            .publisher()
            .publish("fallback", "through")
            .await
            .unwrap();
        let m = next_message(&mut rx).await;
        assert_eq!((m.seq, m.data.get()), (p.seq, r#""through""#));
    })
    .await;
}
