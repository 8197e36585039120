//! A worker with TLS listeners behind the gateway: `/v1/assign` hands out `wss://` and
//! `https://` URLs with the advertised name (plain ones with `tls=false`), and a client
//! that follows them gets its messages.

mod common;

use common::*;
use futures_util::StreamExt;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assign_hands_out_tls_urls_and_they_work() {
    let certs = common::certs::Certs::new("assign");
    let (cert_path, key_path) = (certs.path("cert.pem"), certs.path("key.pem"));

    let mut c = start(&[], 0, &[]).await;
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--listen-tls",
        "127.0.0.1:0",
        "--tls-cert",
        &cert_path,
        "--tls-key",
        &key_path,
        "--advertise",
        "localhost",
    ];
    let plain = c.add_worker("tls-worker", &args).await;
    c.wait_workers(1).await;

    let a = c.assign("secure-1").await;
    let ws_url = a["ws_url"].as_str().unwrap().to_owned();
    assert!(ws_url.starts_with("wss://localhost:"), "{a}");
    assert!(
        a["poll_url"]
            .as_str()
            .unwrap()
            .starts_with("https://localhost:"),
        "{a}"
    );
    assert!(
        a["sse_url"]
            .as_str()
            .unwrap()
            .starts_with("https://localhost:"),
        "{a}"
    );
    let tls_port: u16 = ws_url["wss://localhost:".len()..]
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(tls_port, plain[0].port());

    // tls=false: the worker's plain listener, under the advertised name too.
    let r = c.get("/v1/assign?channel=secure-1&tls=false").await;
    assert_eq!(r.status, 200);
    let want = format!("ws://localhost:{}/v1/ws?channel=secure-1", plain[0].port());
    assert_eq!(r.json()["ws_url"], want.as_str());
    let r = c.get("/v1/assign?channel=secure-1&tls=maybe").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("bad_query"))
    );

    // /v1/workers lists both kinds of address.
    let w = c.get("/v1/workers").await.json();
    assert_eq!(
        w["workers"][0]["tls_addresses"][0],
        format!("localhost:{tls_port}").as_str()
    );

    // Follow the wss:// URL with a client that trusts the certificate.
    let tcp = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
    let tls = certs
        .client()
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(ws_url, tls).await.unwrap();
    c.wait_online("secure-1").await;
    let seq = c.publish("secure-1", r#"{"cmd":"unlock"}"#).await;
    let m = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"seq": seq, "data": {"cmd": "unlock"}})
    );
    c.stop().await;
}
