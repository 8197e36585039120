//! loadgen against a real gateway with two real local worker processes, at CI scale:
//! 2,000 clients over mixed transports, a publish load, and loadgen's own checks (no loss,
//! no duplicates, in order) read back from its JSON.

mod common;

use common::process::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_run_2000_mixed_clients_loses_nothing() {
    let gw = spawn_gateway(&["--local-workers", "2"]);
    wait_healthy(&gw.base, 2, Duration::from_secs(30)).await;
    let json = std::env::temp_dir().join(format!("pushgate-loadgen-{}.json", std::process::id()));
    let out = tokio::process::Command::new(workspace_bin("loadgen"))
        .args([
            "run",
            "--gateway",
            &gw.base,
            "--clients",
            "2000",
            "--transport",
            "mixed",
        ])
        .args([
            "--ramp",
            "2000/s",
            "--rate",
            "300/s",
            "--duration",
            "10s",
            "--batch",
            "10",
        ])
        .args([
            "--source-ips",
            "127.0.1.1-127.0.1.4",
            "--max-duration",
            "120s",
            "--quiet",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap_or_default())
        .unwrap_or_else(|e| panic!("no JSON result ({e}); loadgen said:\n{text}"));
    let _ = std::fs::remove_file(&json);
    assert!(
        out.status.success(),
        "loadgen failed ({:?}):\n{text}",
        out.status
    );
    assert_eq!(r["passed"], true, "{r}");
    assert_eq!(r["connect"]["ok"], 2000, "{}", r["connect"]);
    let accepted = r["publish"]["messages_accepted"].as_u64().unwrap();
    assert!(accepted >= 2000, "published only {accepted}");
    let check = &r["delivery"]["check"];
    for k in ["lost", "duplicated", "out_of_order", "gaps", "unexpected"] {
        assert_eq!(check[k], 0, "{k}: {check}");
    }
    assert_eq!(check["expected"].as_u64(), Some(accepted), "{check}");
    assert_eq!(check["received"].as_u64(), Some(accepted), "{check}");
    assert_eq!(r["errors"]["total"], 0, "{}", r["errors"]);
    // Both workers took clients.
    let per_worker = r["connect"]["per_worker"]
        .as_object()
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(per_worker, 2, "{}", r["connect"]["per_worker"]);
}
