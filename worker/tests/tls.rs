//! TLS listeners (`--listen-tls`): the three transports over TLS with real rustls clients,
//! resumption, bad input on both kinds of port, certificate reload on SIGHUP.

mod common;

use bytes::Bytes;
use common::*;
use protocol::link::{Down, Up};
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A self-signed certificate for `localhost` written as PEM into a fresh directory.
struct Cert {
    dir: PathBuf,
    der: CertificateDer<'static>,
}

impl Cert {
    fn new() -> Cert {
        let dir = std::env::temp_dir().join(format!(
            "pg-tls-it-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let c = Cert {
            der: CertificateDer::from(Vec::new()),
            dir,
        };
        c.rewrite()
    }

    /// A new key and certificate in the same files.
    fn rewrite(mut self) -> Cert {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(self.cert(), cert.pem()).unwrap();
        std::fs::write(self.key(), key.serialize_pem()).unwrap();
        self.der = cert.der().clone();
        self
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// A client that trusts only this certificate (sessions cached per config).
    fn client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    }
}

fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

async fn start(cert: &Cert, extra: &[&str]) -> Harness {
    let (c, k) = (path_str(&cert.cert()), path_str(&cert.key()));
    let mut args = vec![
        "--listen-tls",
        "127.0.0.1:0",
        "--tls-cert",
        &c,
        "--tls-key",
        &k,
    ];
    args.extend_from_slice(extra);
    Harness::start(&args).await
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(config.clone()).connect(name, tcp).await
}

fn deliver(sub_id: u64, seq: u64, data: &'static str) -> Down {
    Down::Deliver {
        epoch: 1,
        sub_id,
        seq,
        data: Bytes::from_static(data.as_bytes()),
        published_us: 0,
    }
}

fn backlog(sub_id: u64) -> Down {
    Down::Backlog {
        sub_id,
        epoch: 1,
        last_seq: 0,
        gap_first_seq: None,
        messages: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_poll_and_sse_over_tls() {
    let cert = Cert::new();
    let mut h = start(&cert, &[]).await;
    let tls_addr = h.tls_addr.unwrap();
    assert_eq!(h.hello.tls_addrs, vec![tls_addr.to_string()]);
    assert_eq!(h.hello.addrs, vec![h.addr.to_string()]);
    let client = cert.client();
    let handshakes = |h: &Harness| {
        let addr = h.addr;
        async move {
            metric(addr, "pushgate_tls_handshakes_total{kind=\"full\"}").await
                + metric(addr, "pushgate_tls_handshakes_total{kind=\"resumed\"}").await
        }
    };
    let before = handshakes(&h).await;

    // wss://
    let tls = tls_connect(tls_addr, &client).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let url = format!("wss://localhost:{}/v1/ws?channel=t1", tls_addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let (sub, ..) = h.link.subscribed().await;
    h.link.send(backlog(sub)).await;
    h.link.send(deliver(sub, 1, r#"{"over":"tls"}"#)).await;
    assert_eq!(
        ws_text(&mut ws).await,
        serde_json::json!({"seq": 1, "data": {"over": "tls"}})
    );
    // A message larger than a TLS record (16 KiB) arrives whole.
    let big: &'static str = Box::leak(format!("\"{}\"", "x".repeat(40_000)).into_boxed_str());
    h.link.send(deliver(sub, 2, big)).await;
    let m = ws_text(&mut ws).await;
    assert_eq!(
        (m["seq"].as_u64(), m["data"].as_str().map(str::len)),
        (Some(2), Some(40_000))
    );

    // https:// long-poll: held, then answered by a delivery.
    let mut p = tls_connect(tls_addr, &client).await.unwrap();
    p.write_all(b"GET /v1/poll?channel=t2&timeout=5 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (sub2, ..) = h.link.subscribed().await;
    h.link.send(backlog(sub2)).await;
    h.link.send(deliver(sub2, 1, "\"polled\"")).await;
    let mut buf = Vec::new();
    let head = read_until(&mut p, &mut buf, b"\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    read_until(&mut p, &mut buf, b"\"polled\"").await;
    // The answered poll's subscription ends.
    assert!(matches!(h.link.next().await, Up::Unsubscribe { .. }));

    // https:// Server-Sent Events.
    let mut s = tls_connect(tls_addr, &client).await.unwrap();
    s.write_all(b"GET /v1/sse?channel=t3 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (sub3, ..) = h.link.subscribed().await;
    h.link.send(backlog(sub3)).await;
    h.link.send(deliver(sub3, 1, "[3]")).await;
    let mut buf = Vec::new();
    let head = read_until(&mut s, &mut buf, b"\r\n\r\n").await;
    assert!(head.contains("Content-Type: text/event-stream"), "{head}");
    let ev = read_until(&mut s, &mut buf, b"\n\n").await;
    assert_eq!(ev, "id: 1\ndata: {\"seq\":1,\"data\":[3]}\n\n");

    // The WebSocket close handshake, then the server's close_notify: a clean TLS end.
    ws.close(None).await.unwrap();
    // Three handshakes (the later two resumed: one client config, one session cache).
    let after = handshakes(&h).await;
    assert!(after - before >= 3.0, "{before} -> {after}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_client_resumes_its_session() {
    let cert = Cert::new();
    let h = start(&cert, &[]).await;
    let tls_addr = h.tls_addr.unwrap();
    let client = cert.client();
    let resumed_before = metric(h.addr, "pushgate_tls_handshakes_total{kind=\"resumed\"}").await;
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let mut t = tls_connect(tls_addr, &client).await.unwrap();
        kinds.push(t.get_ref().1.handshake_kind());
        t.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = Vec::new();
        // The answer, then close_notify: read_to_end sees a clean end of the stream.
        t.read_to_end(&mut body).await.unwrap();
        assert!(
            body.starts_with(b"HTTP/1.1 200 OK\r\n"),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    use rustls::HandshakeKind::{Full, Resumed};
    assert_eq!(kinds, [Some(Full), Some(Resumed), Some(Resumed)]);
    let resumed_after = metric(h.addr, "pushgate_tls_handshakes_total{kind=\"resumed\"}").await;
    assert!(resumed_after - resumed_before >= 2.0);
    h.stop().await;
}

async fn failures(h: &Harness, reason: &str) -> f64 {
    metric(
        h.addr,
        &format!("pushgate_tls_handshake_failures_total{{reason=\"{reason}\"}}"),
    )
    .await
}

async fn read_to_eof<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("closed in time");
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_a_tls_port_is_refused_and_counted() {
    let cert = Cert::new();
    let h = start(&cert, &["--handshake-timeout-secs", "1"]).await;
    let tls_addr = h.tls_addr.unwrap();

    // Plain HTTP on the TLS port: a plain JSON 400, then the close.
    let before = failures(&h, "plain_http").await;
    let mut s = TcpStream::connect(tls_addr).await.unwrap();
    s.write_all(b"GET /v1/ws?channel=a HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = String::from_utf8(read_to_eof(&mut s).await).unwrap();
    assert!(got.starts_with("HTTP/1.1 400 "), "{got}");
    assert!(got.contains(r#""error":"tls_required""#), "{got}");
    assert_eq!(failures(&h, "plain_http").await, before + 1.0);

    // Garbage, and a handshake record that is no ClientHello: closed.
    for (bytes, reason) in [
        (&b"\x00\x00\x00garbage"[..], "not_tls"),
        (&b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"[..], "refused"),
    ] {
        let before = failures(&h, reason).await;
        let mut s = TcpStream::connect(tls_addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        read_to_eof(&mut s).await;
        assert_eq!(failures(&h, reason).await, before + 1.0, "{reason}");
    }

    // A handshake that never finishes: closed by the handshake timeout.
    let before = failures(&h, "timeout").await;
    let mut s = TcpStream::connect(tls_addr).await.unwrap();
    s.write_all(b"\x16\x03\x01\x02\x00\x01\x00").await.unwrap(); // a ClientHello begun
    let t0 = std::time::Instant::now();
    read_to_eof(&mut s).await;
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    assert_eq!(failures(&h, "timeout").await, before + 1.0);

    // A client that rejects the certificate (it trusts another one): its alert ends the
    // handshake; the worker goes on.
    let before = failures(&h, "refused").await;
    let stranger = Cert::new();
    let e = tls_connect(tls_addr, &stranger.client()).await.unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(failures(&h, "refused").await, before + 1.0);
    tls_connect(tls_addr, &cert.client()).await.unwrap();

    // An SNI the certificate does not carry: the worker has one certificate and shows it;
    // the client finds the name missing and aborts, which is counted.
    let before = failures(&h, "refused").await;
    let tcp = TcpStream::connect(tls_addr).await.unwrap();
    let other = ServerName::try_from("other.example").unwrap();
    let e = TlsConnector::from(cert.client())
        .connect(other, tcp)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(failures(&h, "refused").await, before + 1.0);

    // A TLS ClientHello on the plain port gets the plain port's 400 and a close.
    let r = tls_connect(h.addr, &cert.client()).await;
    assert!(r.is_err());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connect_rate_a_tls_port_closes_without_an_answer() {
    let cert = Cert::new();
    let h = start(&cert, &["--connect-rate-per-ip", "2"]).await;
    let tls_addr = h.tls_addr.unwrap();
    // Metrics are read from an address of their own: each read is a connection.
    let watcher: std::net::IpAddr = "127.0.0.6".parse().unwrap();
    let refused = || async {
        let body = get_from(watcher, h.addr, "/metrics").await.body;
        let name = "pushgate_connections_refused_total{reason=\"connect_rate_limited\"}";
        String::from_utf8(body)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .expect("the metric")
    };
    let before = refused().await;
    for _ in 0..2 {
        tls_connect(tls_addr, &cert.client()).await.unwrap();
    }
    // The third within the second: a TLS client could not read a plain 429, so the
    // connection is closed at accept, with not one byte written.
    let mut s = TcpStream::connect(tls_addr).await.unwrap();
    assert_eq!(read_to_eof(&mut s).await, b"");
    assert!(tls_connect(tls_addr, &cert.client()).await.is_err());
    assert_eq!(refused().await, before + 2.0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_open_sessions_go_on() {
    let cert = Cert::new();
    let mut h = start(&cert, &[]).await;
    let tls_addr = h.tls_addr.unwrap();
    let old_client = cert.client();
    // A client that trusts the old certificate and has no session to resume.
    let old_fresh = cert.client();
    let tls = tls_connect(tls_addr, &old_client).await.unwrap();
    let url = format!("wss://localhost:{}/v1/ws?channel=r", tls_addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let (sub, ..) = h.link.subscribed().await;
    h.link.send(backlog(sub)).await;

    let cert = cert.rewrite();
    // SAFETY: kill(2) on this process; the worker's link thread has a SIGHUP handler.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);
    let new_client = cert.client();
    let mut ok = false;
    for _ in 0..50 {
        if tls_connect(tls_addr, &new_client).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the new certificate is served after SIGHUP");
    assert!(
        tls_connect(tls_addr, &old_fresh).await.is_err(),
        "the old one is not"
    );
    // A session from before the reload still resumes (the ticket key did not change).
    let t = tls_connect(tls_addr, &old_client).await.unwrap();
    assert_eq!(
        t.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    // The session opened before the reload still gets its messages.
    h.link.send(deliver(sub, 1, "\"after reload\"")).await;
    assert_eq!(
        ws_text(&mut ws).await,
        serde_json::json!({"seq": 1, "data": "after reload"})
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_websocket_that_stops_reading_gets_whole_frames_then_4003() {
    let cert = Cert::new();
    let mut h = start(&cert, SLOW).await;
    let tls_addr = h.tls_addr.unwrap();
    let tls = tls_connect(tls_addr, &cert.client()).await.unwrap();
    let url = format!("wss://localhost:{}/v1/ws?channel=slow", tls_addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let (sub, ..) = h.link.subscribed().await;
    h.link.send(backlog(sub)).await;
    // 13 MB: more than the client's socket buffers take.
    let payload: &'static str =
        Box::leak(format!("\"{}\"", "y".repeat(32 * 1024)).into_boxed_str());
    let mut batch = Vec::new();
    for seq in 1..=400 {
        batch.push(deliver(sub, seq, payload));
    }
    h.link.send_all(batch).await;
    match h.link.next().await {
        Up::Unsubscribe { sub_id, .. } => assert_eq!(sub_id, sub),
        other => panic!("{other:?}"),
    }
    // Whole frames in order, then the close: no frame is cut by it, and the TLS records
    // around them stay whole.
    let (next, code) = seqs_then_close(&mut ws).await;
    assert_eq!(code, 4003);
    assert!(
        next > 1 && next <= 400,
        "some whole messages, then the close: {next}"
    );
    h.stop().await;
}
