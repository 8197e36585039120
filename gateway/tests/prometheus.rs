//! `/metrics` as Prometheus sees it: the latency histograms count what was published and
//! delivered, `promtool check metrics` accepts the gateway's and a worker's exposition, a
//! real Prometheus scrapes a gateway and its two workers, and the Grafana dashboard in
//! `deploy/grafana/` asks only for metrics the binaries expose, in expressions Prometheus
//! parses and answers. Needs Debian's `prometheus` package (`prometheus` and `promtool` on
//! the PATH; `.ci/run` installs it).

mod common;

use common::process::*;
use common::*;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The value of the sample `name` (with its labels, as rendered) in an exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn get_text(url: &str) -> String {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(url.parse().unwrap()))
        .await
        .expect("answered in time")
        .expect("answered");
    assert_eq!(resp.status(), 200, "{url}");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn latency_histograms_count_each_publish_and_each_live_delivery() {
    // The only in-process gateway and worker of this test binary: the counts are exact.
    let c = start(&[], 1, &[]).await;
    let mut ws = c.ws("latency", None).await;
    const N: u64 = 50;
    for i in 0..N {
        c.publish("latency", &i.to_string()).await;
    }
    for i in 0..N {
        assert_eq!(next_json(&mut ws).await["seq"], i + 1);
    }
    let worker = format!("http://{}/metrics", c.worker_addrs[0][0]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = get_text(&worker).await;
        if sample(&text, "pushgate_delivery_latency_seconds_count") == Some(N as f64)
            || Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        sample(&text, "pushgate_delivery_latency_seconds_count"),
        Some(N as f64),
        "{text}"
    );
    let sum = sample(&text, "pushgate_delivery_latency_seconds_sum").unwrap();
    // Gateway and worker share a clock here: each delivery took more than nothing and
    // well under a second.
    assert!(
        sum > 0.0 && sum / (N as f64) < 0.5,
        "mean {}",
        sum / N as f64
    );
    assert_eq!(
        sample(&text, "pushgate_delivery_latency_seconds_bucket{le=\"5\"}"),
        Some(N as f64),
        "{text}"
    );

    let gw = get_text(&format!("{}/metrics", c.base)).await;
    assert_eq!(
        sample(&gw, "pushgate_publish_seconds_count{kind=\"single\"}"),
        Some(N as f64),
        "{gw}"
    );
    assert_eq!(
        sample(&gw, "pushgate_publish_seconds_count{kind=\"ndjson\"}"),
        Some(0.0)
    );

    // A resume's backlog is not a live delivery: it is not counted.
    drop(ws);
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.publish("latency", "offline").await;
    let mut ws = c.ws("latency", Some(N)).await;
    assert_eq!(next_json(&mut ws).await["seq"], N + 1);
    let text = get_text(&worker).await;
    assert_eq!(
        sample(&text, "pushgate_delivery_latency_seconds_count"),
        Some(N as f64)
    );
    drop(ws);
    c.stop().await;
}

const DASHBOARD: &str = include_str!("../../deploy/grafana/pushgate.json");

/// Every `expr` of the Grafana dashboard, with Grafana's `$__rate_interval` made concrete.
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => {
                            out.push(e.replace("$__rate_interval", "1m"))
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&serde_json::from_str(DASHBOARD).unwrap(), &mut out);
    out
}

/// The metric names an expression reads (`pushgate_*` and `process_*`).
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("pushgate_") || w.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

/// Whether an exposition has a family (or a histogram's series) named `name`.
fn exposes(text: &str, name: &str) -> bool {
    let family = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .filter(|base| text.contains(&format!("# TYPE {base} histogram")))
        .unwrap_or(name);
    text.lines()
        .any(|l| l.strip_prefix("# TYPE ").and_then(|l| l.split(' ').next()) == Some(family))
}

#[tokio::test]
async fn the_grafana_dashboard_asks_only_for_exposed_metrics_in_valid_promql() {
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "{exprs:?}");
    let c = start(&[], 1, &[]).await;
    let gateway = get_text(&format!("{}/metrics", c.base)).await;
    let worker = get_text(&format!("http://{}/metrics", c.worker_addrs[0][0])).await;
    let mut names: Vec<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 15, "{names:?}");
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !exposes(&gateway, n) && !exposes(&worker, n))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries unexposed metrics: {missing:?}"
    );
    c.stop().await;

    // Each expression as a recording rule: `promtool check rules` parses it as Prometheus would.
    let dir =
        TempDir(std::env::temp_dir().join(format!("pushgate-grafana-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:panel_{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        ));
    }
    let path = dir.0.join("rules.yml");
    std::fs::write(&path, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `promtool check metrics` on an exposition; panics with its output on a complaint.
fn promtool_check(what: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on the {what}'s /metrics: {said}"
    );
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn promtool_accepts_both_expositions_and_prometheus_scrapes_gateway_and_workers() {
    let gw = spawn_gateway(&["--local-workers", "2"]);
    let workers = wait_healthy(&gw.base, 2, Duration::from_secs(20)).await;
    let worker_addrs: Vec<String> = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["addresses"][0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(worker_addrs.len(), 2);

    // Traffic first, so the histograms and labelled series have samples.
    let (status, a) = http_get(&format!("{}/v1/assign?channel=prom", gw.base))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let mut ws = ws_connect(a["ws_url"].as_str().unwrap()).await;
    let (status, _) = http_post(&format!("{}/v1/publish/prom", gw.base), "hello").await;
    assert_eq!(status, 202);
    assert_eq!(next_json(&mut ws).await["data"], "hello");

    promtool_check("gateway", &get_text(&format!("{}/metrics", gw.base)).await);
    for w in &worker_addrs {
        promtool_check("worker", &get_text(&format!("http://{w}/metrics")).await);
    }

    let dir = TempDir(std::env::temp_dir().join(format!("pushgate-prom-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let gateway_target = gw.base.trim_start_matches("http://");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n\
         \x20 - job_name: gateway\n    static_configs:\n      - targets: ['{gateway_target}']\n\
         \x20 - job_name: worker\n    static_configs:\n      - targets: ['{}', '{}']\n",
        worker_addrs[0], worker_addrs[1]
    );
    let config_path = dir.0.join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let check = Command::new("promtool")
        .args(["check", "config"])
        .arg(&config_path)
        .output()
        .expect("promtool runs");
    assert!(check.status.success(), "{check:?}");
    let listen = format!("127.0.0.1:{}", free_port());
    let _prom = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (Debian's prometheus package)"),
    );

    // Every target up, and the numbers of each role there, within 30 s.
    let query = |q: &str| {
        let url = format!(
            "http://{listen}/api/v1/query?query={}",
            q.replace(' ', "%20")
                .replace('{', "%7B")
                .replace('}', "%7D")
                .replace('"', "%22")
        );
        async move { http_get(&url).await }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        let up = query("up == 1").await;
        let latency = query("pushgate_delivery_latency_seconds_count").await;
        let published = query("pushgate_publish_total{job=\"gateway\"}").await;
        let done = match (&up, &latency, &published) {
            (Some((200, u)), Some((200, l)), Some((200, p))) => {
                let n = |v: &serde_json::Value| v["data"]["result"].as_array().map_or(0, Vec::len);
                // One live delivery, on whichever worker held the channel.
                let delivered: f64 = l["data"]["result"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
                    .sum();
                n(u) == 3
                    && n(l) == 2
                    && delivered == 1.0
                    && p["data"]["result"][0]["value"][1] == "1"
            }
            _ => false,
        };
        if done {
            break;
        }
        last = Some((up, latency, published));
        assert!(
            Instant::now() < deadline,
            "Prometheus did not see the gateway and both workers: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(last);
    for e in dashboard_exprs() {
        let url = format!(
            "http://{listen}/api/v1/query?query={}",
            e.bytes()
                .map(|b| if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                })
                .collect::<String>()
        );
        let (status, v) = http_get(&url).await.expect("Prometheus answers");
        assert_eq!(
            (status, &v["status"]),
            (200, &serde_json::json!("success")),
            "{e}: {v}"
        );
    }
    drop(gw);
}
