//! What an operator sees when a worker cannot link: both sides say why at `warn`, once per
//! cause (not once per retry), `/v1/workers` counts the refusals, and assign's 503 points
//! there. Logs written to a file carry no colour codes; `--log-format json` writes one JSON
//! object per line.

mod common;

use common::process::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn log_file(name: &str) -> (std::path::PathBuf, std::fs::File) {
    let path = std::env::temp_dir().join(format!(
        "pushgate-operator-logs-{}-{name}.log",
        std::process::id()
    ));
    let f = std::fs::File::create(&path).unwrap();
    (path, f)
}

async fn wait_up(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(&format!("{base}/healthz")).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "gateway at {base} never answered"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_worker_with_the_wrong_link_key_is_refused_and_both_sides_say_why_once() {
    let listen = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{listen}");
    let (gw_log, gw_file) = log_file("gw");
    let _gw = Killed(
        Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["--listen", &listen, "--link-key", "the-right-key"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(gw_file)
            .spawn()
            .unwrap(),
    );
    wait_up(&base).await;
    let (w_log, w_file) = log_file("worker");
    let _worker = Killed(
        Command::new(workspace_bin("worker"))
            .args([
                "--gateway",
                &base,
                "--listen",
                "127.0.0.2:0",
                "--id",
                "w-bad",
            ])
            .args(["--link-key", "a-wrong-key"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(w_file)
            .spawn()
            .unwrap(),
    );
    // Back-off 100 ms doubling to 2 s: five or more attempts in 4 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    let workers = loop {
        let (_, v) = http_get(&format!("{base}/v1/workers")).await.unwrap();
        if v["refused_links"]["link_key"].as_u64().unwrap_or(0) >= 4 {
            break v;
        }
        assert!(Instant::now() < deadline, "refusals not counted: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(workers["workers"].as_array().unwrap().len(), 0, "{workers}");
    assert_eq!(workers["refused_links"]["version"], 0, "{workers}");

    let (status, body) = http_get(&format!("{base}/v1/assign?channel=c"))
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "no_worker", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("refused_links"),
        "{body}"
    );

    let gw = std::fs::read_to_string(&gw_log).unwrap();
    let w = std::fs::read_to_string(&w_log).unwrap();
    let _ = std::fs::remove_file(&gw_log);
    let _ = std::fs::remove_file(&w_log);
    let said = |log: &str, what: &str| log.lines().filter(|l| l.contains(what)).count();
    assert_eq!(said(&gw, "worker link refused: wrong link key"), 1, "{gw}");
    assert!(gw.contains("WARN"), "{gw}");
    assert_eq!(said(&w, "refused this worker's link key"), 1, "{w}");
    assert!(w.contains("--link-key must be the gateway's"), "{w}");
    // Written to a file: plain text, no colour escape codes.
    assert!(!gw.contains('\x1b') && !w.contains('\x1b'), "{gw}\n{w}");

    let m = reqwest_metrics(&base).await;
    assert!(
        m.lines().any(
            |l| l.starts_with("pushgate_link_refused_total{reason=\"link_key\"}")
                && l.split_whitespace().last().unwrap().parse::<u64>().unwrap() >= 4
        ),
        "{m}"
    );
}

async fn reqwest_metrics(base: &str) -> String {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let resp = client
        .get(format!("{base}/metrics").parse().unwrap())
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn log_format_json_writes_one_object_per_line_for_the_gateway_and_its_workers() {
    let listen = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{listen}");
    let (path, file) = log_file("json");
    let mut gw = Killed(
        Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args([
                "--listen",
                &listen,
                "--log-format",
                "json",
                "--local-workers",
                "1",
            ])
            .args(["--worker-exe", env!("CARGO_BIN_EXE_gateway")])
            .args(["--local-worker-ip-base", "127.0.61.1"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap(),
    );
    wait_up(&base).await;
    wait_healthy(&base, 1, Duration::from_secs(20)).await;
    let _ = gw.0.kill();
    let _ = gw.0.wait();
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let message = |v: &serde_json::Value| v["fields"]["message"].as_str().unwrap_or("").to_owned();
    assert!(
        lines
            .iter()
            .any(|v| v["level"] == "INFO" && message(v).contains("gateway listening")),
        "{text}"
    );
    // The local worker logs the same way (its "listening" line and its link coming up).
    assert!(
        lines.iter().any(|v| message(v).contains("gateway link up")),
        "{text}"
    );
}
