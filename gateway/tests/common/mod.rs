//! Test support: a real gateway and real workers on 127.0.0.1 port 0, plus small clients.
#![allow(dead_code)]

pub mod certs;
pub mod process;
pub mod redis;

use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A gateway and its workers, all in this process, stopped on drop.
pub struct Cluster {
    pub gateway: SocketAddr,
    pub base: String,
    pub shutdown: CancellationToken,
    pub gateway_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub workers: Vec<worker::WorkerHandle>,
    pub worker_addrs: Vec<Vec<SocketAddr>>,
    /// Each worker's `--listen-tls` addresses, as bound.
    pub worker_tls_addrs: Vec<Vec<SocketAddr>>,
    pub http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    /// The Redis server behind the gateway, when the test crate runs the Redis store.
    pub redis: Option<redis::RedisServer>,
    /// Where the admin surface is (`--admin-listen`, else `base`) and the header it asks
    /// for (`--admin-key`).
    pub admin_base: String,
    pub admin_auth: Option<String>,
}

/// Whether this test crate runs its clusters on the Redis store (the `*_redis` test
/// targets run the same test code as their memory-store twins).
pub fn uses_redis() -> bool {
    env!("CARGO_CRATE_NAME").ends_with("_redis")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Starts a gateway with `gw_args` and `workers` in-process workers (each with `worker_args`).
pub async fn start(gw_args: &[&str], workers: usize, worker_args: &[&str]) -> Cluster {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut args = vec!["gateway".to_string(), "--listen".into(), addr.to_string()];
    let redis = uses_redis().then(|| redis::RedisServer::start(&[]));
    if let Some(r) = &redis {
        args.extend(["--store".into(), r.url()]);
    }
    args.extend(gw_args.iter().map(|s| s.to_string()));
    let config = gateway::Config::parse_from(args);
    let shutdown = CancellationToken::new();
    let gateway_task = tokio::spawn(gateway::run(listener, config, shutdown.clone()));
    let flag = |name: &str| {
        gw_args
            .iter()
            .position(|a| *a == name)
            .and_then(|i| gw_args.get(i + 1))
    };
    let admin_base =
        flag("--admin-listen").map_or(format!("http://{addr}"), |a| format!("http://{a}"));
    let admin_auth = flag("--admin-key").map(|k| format!("Bearer {k}"));
    let mut cluster = Cluster {
        admin_base,
        admin_auth,
        gateway: addr,
        base: format!("http://{addr}"),
        shutdown,
        gateway_task: Some(gateway_task),
        workers: Vec::new(),
        worker_addrs: Vec::new(),
        worker_tls_addrs: Vec::new(),
        http: Client::builder(TokioExecutor::new()).build_http(),
        redis,
    };
    for i in 0..workers {
        cluster.add_worker(&format!("w{i}"), worker_args).await;
    }
    cluster.wait_workers(workers).await;
    cluster
}

impl Cluster {
    pub async fn add_worker(&mut self, id: &str, extra: &[&str]) -> Vec<SocketAddr> {
        let mut args: Vec<String> = vec![
            "worker".into(),
            "--gateway".into(),
            self.base.clone(),
            "--id".into(),
            id.into(),
            "--threads".into(),
            "1".into(),
        ];
        if !extra.contains(&"--listen") {
            args.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let w = worker::Worker::bind(worker::Config::parse_from(args)).unwrap();
        let addrs = w.local_addrs();
        self.worker_tls_addrs.push(w.local_tls_addrs());
        self.workers.push(w.start(self.shutdown.child_token()));
        self.worker_addrs.push(addrs.clone());
        addrs
    }

    /// A worker whose only link goes to `gateway_url` (a proxy in front of this gateway,
    /// say), stopped with the cluster.
    pub async fn add_worker_via(&mut self, id: &str, gateway_url: &str) -> Vec<SocketAddr> {
        let args = [
            "worker",
            "--gateway",
            gateway_url,
            "--id",
            id,
            "--threads",
            "1",
            "--listen",
            "127.0.0.1:0",
        ];
        let w = worker::Worker::bind(worker::Config::parse_from(args)).unwrap();
        let addrs = w.local_addrs();
        self.worker_tls_addrs.push(w.local_tls_addrs());
        self.workers.push(w.start(self.shutdown.child_token()));
        self.worker_addrs.push(addrs.clone());
        addrs
    }

    /// Waits until `n` workers are registered and healthy.
    pub async fn wait_workers(&self, n: usize) {
        // `--admin-listen` is bound by the gateway task, which may not have run yet.
        let admin = self.admin_base.trim_start_matches("http://").to_string();
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(&admin).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for _ in 0..500 {
            let r = self.admin_get("/v1/workers").await;
            if r.status == 200 {
                let v = r.json();
                let healthy = v["workers"]
                    .as_array()
                    .map(|a| a.iter().filter(|w| w["state"] == "healthy").count())
                    .unwrap_or(0);
                if healthy >= n {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{n} workers never became healthy");
    }

    pub async fn request(
        &self,
        method: &str,
        path_or_url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_string()
        } else {
            format!("{}{}", self.base, path_or_url)
        };
        let mut b = hyper::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into())).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(20), self.http.request(req))
            .await
            .expect("request timed out")
            .expect("request failed");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], Bytes::new()).await
    }

    pub async fn publish(&self, channel: &str, body: &str) -> u64 {
        let r = self
            .request(
                "POST",
                &format!("/v1/publish/{channel}"),
                &[],
                body.to_string(),
            )
            .await;
        assert_eq!(
            r.status,
            202,
            "publish: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()["seq"].as_u64().unwrap()
    }

    pub async fn assign(&self, channel: &str) -> Value {
        let r = self.get(&format!("/v1/assign?channel={channel}")).await;
        assert_eq!(
            r.status,
            200,
            "assign: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()
    }

    /// Assign + open the WebSocket, waiting until the channel shows online.
    pub async fn ws(&self, channel: &str, since: Option<u64>) -> Ws {
        let a = self.assign(channel).await;
        let mut url = a["ws_url"].as_str().unwrap().to_string();
        if let Some(s) = since {
            url.push_str(&format!("&since={s}"));
        }
        let ws = ws_connect(&url).await;
        self.wait_online(channel).await;
        ws
    }

    /// GET on the admin surface (`--admin-listen`, `--admin-key` as given to `start`).
    pub async fn admin_get(&self, path: &str) -> Resp {
        let url = format!("{}{path}", self.admin_base);
        let auth: Vec<(&str, &str)> = self
            .admin_auth
            .iter()
            .map(|a| ("Authorization", a.as_str()))
            .collect();
        self.request("GET", &url, &auth, Bytes::new()).await
    }

    pub async fn wait_online(&self, channel: &str) {
        for _ in 0..500 {
            if self
                .admin_get(&format!("/v1/channels/{channel}"))
                .await
                .json()["online"]
                == true
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("channel {channel} never came online");
    }

    /// Stops everything and waits for the gateway task and worker threads.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.gateway_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        let workers = std::mem::take(&mut self.workers);
        tokio::task::spawn_blocking(move || workers.into_iter().for_each(|w| w.wait()))
            .await
            .unwrap();
    }
}

pub async fn ws_connect(url: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("ws connect timed out")
    .unwrap_or_else(|e| panic!("ws connect {url}: {e}"));
    ws
}

/// Next text frame as JSON (skips pings/pongs), within 10 s however many pings come.
pub async fn next_json(ws: &mut Ws) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no frame within 10 s")
            .expect("stream ended")
            .expect("ws error");
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// The close frame (code, reason) the server sends next, skipping anything else.
pub async fn next_close(ws: &mut Ws) -> (u16, String) {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no close within 10 s");
        match m {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("ws error before close: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

/// Asserts nothing but pings arrives for `ms` milliseconds.
pub async fn assert_quiet(ws: &mut Ws, ms: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => panic!("expected nothing, got {other:?}"),
        }
    }
}

/// Reads an SSE stream from a raw socket: returns (id, data JSON) events as they come.
pub struct Sse {
    pub stream: tokio::net::TcpStream,
    buf: Vec<u8>,
    pub head: String,
}

impl Sse {
    pub async fn open(url: &str, extra_headers: &[(&str, &str)]) -> Sse {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rest = url.strip_prefix("http://").unwrap();
        let (hostport, path) = rest.split_once('/').unwrap();
        let mut stream = tokio::net::TcpStream::connect(hostport).await.unwrap();
        let mut req =
            format!("GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nAccept: text/event-stream\r\n");
        for (k, v) in extra_headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let head = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_string();
                buf.drain(..i + 4);
                break head;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
                .await
                .expect("no SSE head")
                .unwrap();
            assert!(
                n > 0,
                "closed before head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        Sse { stream, buf, head }
    }

    /// Next event (skipping comments): (id line if any, data JSON).
    pub async fn next_event(&mut self) -> (Option<u64>, Value) {
        use tokio::io::AsyncReadExt;
        loop {
            while let Some(i) = find(&self.buf, b"\n\n") {
                let block = String::from_utf8_lossy(&self.buf[..i]).to_string();
                self.buf.drain(..i + 2);
                let mut id = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str(v.trim()).unwrap());
                    }
                }
                if let Some(d) = data {
                    return (id, d);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("no SSE event within 10 s")
                .unwrap();
            assert!(n > 0, "SSE stream closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
