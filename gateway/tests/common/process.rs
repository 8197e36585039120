//! Test support for the real binaries: a `gateway` process with its local workers, and the
//! workspace's other binaries (loadgen) found next to it.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A gateway process; killed (with its workers, via PDEATHSIG) on drop.
pub struct GatewayProcess {
    pub child: Child,
    pub base: String,
    /// Its Redis, when the test crate runs the Redis store (see `uses_redis`).
    pub redis: Option<super::redis::RedisServer>,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `gateway --listen 127.0.0.1:<free port> <args>` from this package's binary.
pub fn spawn_gateway(args: &[&str]) -> GatewayProcess {
    let listen = format!("127.0.0.1:{}", free_port());
    let redis = super::uses_redis().then(|| super::redis::RedisServer::start(&[]));
    let store: Vec<String> = redis
        .iter()
        .flat_map(|r| ["--store".to_string(), r.url()])
        .collect();
    let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--listen",
            &listen,
            "--worker-exe",
            env!("CARGO_BIN_EXE_gateway"),
        ])
        .args(&store)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    GatewayProcess {
        child,
        base: format!("http://{listen}"),
        redis,
    }
}

/// Starts `gateway <args>` (its own `--listen` included), memory store, no Redis.
pub fn spawn_gateway_args(args: &[&str]) -> GatewayProcess {
    let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--worker-exe", env!("CARGO_BIN_EXE_gateway")])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    GatewayProcess {
        child,
        base: String::new(),
        redis: None,
    }
}

/// Another binary of the workspace, built beside `gateway` (cargo builds every package's
/// binaries for `cargo test --workspace`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_gateway")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p {name}` first",
        path.display()
    );
    path
}

pub async fn http_get(url: &str) -> Option<(u16, Value)> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(url.parse().ok()?))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, serde_json::from_slice(&body).ok()?))
}

pub async fn http_post(url: &str, body: &str) -> (u16, Value) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = hyper::Request::post(url)
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Waits until `n` workers are healthy; returns the /v1/workers body.
pub async fn wait_healthy(base: &str, n: usize, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some((200, v)) = http_get(&format!("{base}/v1/workers")).await {
            let healthy = v["workers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["state"] == "healthy")
                .count();
            if healthy >= n {
                return v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{n} local workers never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pids of the gateway's direct children (its local workers).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        if let Ok(s) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}
