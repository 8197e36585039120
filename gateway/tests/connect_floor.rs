//! `connect-floor` (benches/micro), the connect-rate tool of benches/RESULTS.md, against
//! a real gateway with a real local worker: every client gets its `/v1/assign` answer and a
//! `101` from the worker (the tool fails otherwise).

mod common;

use common::process::*;
use std::time::Duration;

fn run(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(workspace_bin("connect-floor"))
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "connect-floor failed:\n{text}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_floor_upgrades_every_client_through_assign() {
    let gw = spawn_gateway(&["--local-workers", "1"]);
    wait_healthy(&gw.base, 1, Duration::from_secs(30)).await;
    let addr = gw.base.trim_start_matches("http://").to_owned();
    let r = tokio::task::spawn_blocking(move || {
        run(&[
            "--gateway",
            &addr,
            "--clients",
            "500",
            "--assign-connections",
            "8",
            "--source-ips",
            "4",
        ])
    })
    .await
    .unwrap();
    assert_eq!(r["target"], "pushgate", "{r}");
    assert_eq!(r["clients"], 500, "{r}");
    assert!(r["rate_per_sec"].as_f64().unwrap() > 0.0, "{r}");
}
