//! The gateway's own TLS (`--tls-cert`/`--tls-key`): the API over https://, worker links
//! over TLS (`--gateway https://... --gateway-ca`), plain HTTP and garbage on the TLS port
//! refused and counted, API clients resuming, and `--local-workers` linking over TLS.

mod common;

use common::certs::Certs;

use clap::Parser;
use common::process::{free_port, spawn_gateway_args};
use futures_util::StreamExt;
use rustls::pki_types::ServerName;
use rustls::HandshakeKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

/// One HTTP/1.1 request over TLS (`Connection: close`): status, body, handshake kind.
async fn https(
    client: &TlsConnector,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String, HandshakeKind) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = client
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body, kind)
}

/// Polls `/v1/workers` over TLS until `n` workers are healthy.
async fn wait_healthy(client: &TlsConnector, gw: SocketAddr, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, body, _) = https(client, gw, "GET", "/v1/workers", "").await;
        if status == 200 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let healthy = v["workers"]
                .as_array()
                .map(|a| a.iter().filter(|w| w["state"] == "healthy").count())
                .unwrap_or(0);
            if healthy >= n {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{n} workers never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_worker_links_over_tls() {
    let certs = Certs::new("api");
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = listener.local_addr().unwrap();
    let config = gateway::Config::parse_from([
        "gateway",
        "--listen",
        &gw.to_string(),
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--link-key",
        "k3y",
    ]);
    let shutdown = CancellationToken::new();
    let gateway = tokio::spawn(gateway::run(listener, config, shutdown.clone()));

    // A worker that dials the gateway by IP and checks the name on its certificate.
    let url = format!("https://127.0.0.1:{}", gw.port());
    let w = worker::Worker::bind(worker::Config::parse_from([
        "worker",
        "--gateway",
        &url,
        "--gateway-ca",
        &cert,
        "--gateway-tls-name",
        "localhost",
        "--link-key",
        "k3y",
        "--threads",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--listen-tls",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]))
    .unwrap();
    let _worker = w.start(shutdown.child_token());

    let client = certs.client();
    wait_healthy(&client, gw, 1, Duration::from_secs(10)).await;
    let (status, body, _) = https(&client, gw, "GET", "/v1/assign?channel=tls-gw", "").await;
    assert_eq!(status, 200, "{body}");
    let a: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ws_url = a["ws_url"].as_str().unwrap().to_owned();
    assert!(ws_url.starts_with("wss://"), "{a}");

    // Subscribe over wss, publish over https: the delivery crossed the TLS link.
    let host_port = ws_url["wss://".len()..].split('/').next().unwrap();
    let tcp = TcpStream::connect(host_port).await.unwrap();
    let tls = client
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(ws_url.as_str(), tls)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body, _) = https(&client, gw, "GET", "/v1/channels/tls-gw", "").await;
        if body.contains("\"online\":true") {
            break;
        }
        assert!(Instant::now() < deadline, "never online: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body, kind) = https(&client, gw, "POST", "/v1/publish/tls-gw", "{\"go\":1}").await;
    assert_eq!((status, body.as_str()), (202, "{\"seq\":1}"));
    // The gateway issued a ticket on an earlier request: this one resumed.
    assert_eq!(kind, HandshakeKind::Resumed);
    let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.to_text().unwrap(), r#"{"seq":1,"data":{"go":1}}"#);

    // Plain HTTP on the TLS port: a plain JSON refusal, then the close.
    let mut plain = TcpStream::connect(gw).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains(r#""error":"tls_required""#), "{text}");

    // A handshake record of garbage: closed, and counted.
    let mut junk = TcpStream::connect(gw).await.unwrap();
    junk.write_all(&[0x16, 3, 1, 0, 5, 9, 9, 9, 9, 9])
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), junk.read_to_end(&mut out)).await;
    let (_, metrics, _) = https(&client, gw, "GET", "/metrics", "").await;
    for line in [
        "pushgate_tls_handshake_failures_total{reason=\"plain_http\"} 1",
        "pushgate_tls_handshake_failures_total{reason=\"refused\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing");
    }
    assert!(!metrics.contains("pushgate_tls_handshakes_total{kind=\"resumed\"} 0"));

    shutdown.cancel();
    gateway.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_workers_link_to_a_tls_gateway() {
    let certs = Certs::new("local");
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _gw = spawn_gateway_args(&[
        "--listen",
        &listen,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--local-workers",
        "1",
    ]);
    let client = certs.client();
    let gw: SocketAddr = listen.parse().unwrap();
    // Up once the listener answers, then the worker's TLS link.
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(gw).await.is_err() {
        assert!(Instant::now() < deadline, "gateway never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_healthy(&client, gw, 1, Duration::from_secs(30)).await;
    let (status, body, _) = https(&client, gw, "GET", "/v1/assign?channel=l", "").await;
    assert_eq!(status, 200, "{body}");
}
