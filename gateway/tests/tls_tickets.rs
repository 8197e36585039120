//! Fleet-wide TLS resumption: the gateway hands every worker the same session-ticket keys
//! over its link, so a client that handshook with one worker resumes with another
//! (rustls and OpenSSL clients), and a rotation keeps last period's tickets and drops older
//! ones.

mod common;

use common::certs::Certs;

use common::*;
use rustls::pki_types::ServerName;
use rustls::HandshakeKind;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Starts a gateway (extra flags `gw`) with two TLS workers; their TLS addresses.
async fn fleet(certs: &Certs, gw: &[&str]) -> (Cluster, SocketAddr, SocketAddr) {
    let mut c = start(gw, 0, &[]).await;
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    let mut tls = Vec::new();
    for id in ["tk-a", "tk-b"] {
        let args = [
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ];
        c.add_worker(id, &args).await;
        tls.push(c.worker_tls_addrs.last().unwrap()[0]);
    }
    c.wait_workers(2).await;
    (c, tls[0], tls[1])
}

/// One TLS connection to `addr` asking `/healthz` (read to the end, so the tickets the
/// server sent after the handshake are in the client's cache); how it handshook.
async fn handshake(client: &TlsConnector, addr: SocketAddr) -> HandshakeKind {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = client
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    kind
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_from_one_worker_resumes_on_another() {
    let certs = Certs::new("cross");
    let (c, a, b) = fleet(&certs, &[]).await;
    // The keys reach each worker right after its Welcome; until then it seals tickets
    // only it can open, so the first round may need a retry.
    let mut client = certs.client();
    let mut resumed = false;
    for _ in 0..50 {
        assert_eq!(handshake(&client, a).await, HandshakeKind::Full);
        if handshake(&client, b).await == HandshakeKind::Resumed {
            resumed = true;
            break;
        }
        // Start over with no ticket.
        tokio::time::sleep(Duration::from_millis(100)).await;
        client = certs.client();
    }
    assert!(resumed, "a ticket from worker A never resumed on worker B");
    // B's ticket back on A, and a fresh client's ticket from A on B, every time.
    assert_eq!(handshake(&client, a).await, HandshakeKind::Resumed);
    for _ in 0..5 {
        let client = certs.client();
        assert_eq!(handshake(&client, a).await, HandshakeKind::Full);
        assert_eq!(handshake(&client, b).await, HandshakeKind::Resumed);
    }

    // OpenSSL's client: a session saved at A is reused at B.
    let sess = certs.path("openssl.sess");
    let out = s_client(a, &certs.path("cert.pem"), &["-sess_out", &sess]).await;
    assert!(out.contains("New, TLSv1.3"), "{out}");
    let out = s_client(b, &certs.path("cert.pem"), &["-sess_in", &sess]).await;
    assert!(out.contains("Reused, TLSv1.3"), "{out}");
    c.stop().await;
}

/// Runs `openssl s_client` against `addr` asking `/healthz`; its stdout.
async fn s_client(addr: SocketAddr, ca: &str, extra: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string()])
        .args([
            "-servername",
            "localhost",
            "-CAfile",
            ca,
            "-tls1_3",
            "-ign_eof",
        ])
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .expect("openssl (the openssl package) is installed");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("openssl s_client finished")
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_keeps_last_periods_tickets_and_drops_older_ones() {
    const P: u64 = 6;
    let certs = Certs::new("rotate");
    let (c, a, b) = fleet(&certs, &["--ticket-rotate-secs", "6"]).await;
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let sleep_until_ms = |t: u64| {
        let wait = t.saturating_sub(now_ms());
        tokio::time::sleep(Duration::from_millis(wait))
    };
    // Both workers have fleet keys before anything is timed.
    let probe = certs.client();
    for _ in 0..50 {
        handshake(&probe, a).await;
        if handshake(&probe, b).await == HandshakeKind::Resumed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 2.5 s into a period m (the gateway rotates within a second of its start): two clients
    // take a ticket sealed with key m.
    let m = now_ms() / 1000 / P + 1;
    sleep_until_ms(m * P * 1000 + 2500).await;
    let (last_period, two_ago) = (certs.client(), certs.client());
    assert_eq!(handshake(&last_period, a).await, HandshakeKind::Full);
    assert_eq!(handshake(&two_ago, a).await, HandshakeKind::Full);
    // Late in period m + 1, key m (now the previous one) still opens the ticket at B.
    sleep_until_ms((m + 2) * P * 1000 - 2500).await;
    assert_eq!(handshake(&last_period, b).await, HandshakeKind::Resumed);
    // In period m + 2 key m is erased everywhere: the ticket (still within the lifetime
    // the client was told, two periods) gets a full handshake, with either worker.
    sleep_until_ms((m + 2) * P * 1000 + 1000).await;
    assert_eq!(handshake(&two_ago, b).await, HandshakeKind::Full);
    c.stop().await;
}
