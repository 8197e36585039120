//! loadgen against a real gateway with real local worker processes, at CI scale: loadgen's
//! own checks (no loss, no duplicates, in order) read back from its JSON.

mod common;

use common::process::*;
use std::time::Duration;

/// Runs `loadgen run <args>` against `base`; returns its JSON result after checking that it
/// passed with every client connected and nothing lost, duplicated or out of order.
async fn run_loadgen(base: &str, clients: u64, args: &[&str]) -> serde_json::Value {
    run_loadgen_cmd("run", base, clients, args).await
}

/// [`run_loadgen`] with another loadgen command (`churn`).
async fn run_loadgen_cmd(cmd: &str, base: &str, clients: u64, args: &[&str]) -> serde_json::Value {
    // One file per run: the tests of this file run side by side in one process.
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let json = std::env::temp_dir().join(format!(
        "pushgate-loadgen-{}-{run}-{clients}.json",
        std::process::id()
    ));
    let clients_arg = clients.to_string();
    let out = tokio::process::Command::new(workspace_bin("loadgen"))
        .args([cmd, "--gateway", base, "--clients", &clients_arg])
        .args(args)
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
        "loadgen failed ({:?}):\n{text}\nconnect {}\ncheck {}\nerrors {}\nstopped by {}",
        out.status,
        r["connect"],
        r["delivery"]["check"],
        r["errors"],
        r["stopped_by"]
    );
    assert_eq!(r["passed"], true, "{r}");
    let connected = if cmd == "run" { "ok" } else { "first_ok" };
    assert_eq!(r["connect"][connected], clients, "{}", r["connect"]);
    let accepted = r["publish"]["messages_accepted"].as_u64().unwrap();
    let check = &r["delivery"]["check"];
    for k in ["lost", "duplicated", "out_of_order", "gaps", "unexpected"] {
        assert_eq!(check[k], 0, "{k}: {check}");
    }
    assert_eq!(check["expected"].as_u64(), Some(accepted), "{check}");
    assert_eq!(check["received"].as_u64(), Some(accepted), "{check}");
    assert_eq!(r["errors"]["total"], 0, "{}", r["errors"]);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_run_2000_mixed_clients_loses_nothing() {
    let gw = spawn_gateway(&["--local-workers", "2"]);
    wait_healthy(&gw.base, 2, Duration::from_secs(30)).await;
    let args = [
        "--transport",
        "mixed",
        "--ramp",
        "2000/s",
        "--rate",
        "300/s",
        "--duration",
        "10s",
        "--batch",
        "10",
    ];
    let r = run_loadgen(&gw.base, 2000, &args).await;
    // Plain TCP to pushgate: `--client-plane auto` drives the clients on the lean plane.
    assert_eq!(r["parameters"]["client_plane"], "lean");
    let accepted = r["publish"]["messages_accepted"].as_u64().unwrap();
    assert!(accepted >= 2000, "published only {accepted}");
    // Both workers took clients.
    let per_worker = r["connect"]["per_worker"]
        .as_object()
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(per_worker, 2, "{}", r["connect"]["per_worker"]);
}

/// `--publish-stream`: each publish connection is one long-lived `POST
/// /v1/publish?stream=1`; every line's seq comes back on it and every message arrives once,
/// in order, on mixed transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_publish_streams_lose_nothing() {
    let gw = spawn_gateway(&["--local-workers", "1"]);
    wait_healthy(&gw.base, 1, Duration::from_secs(30)).await;
    let args = [
        "--transport",
        "mixed",
        "--rate",
        "2000/s",
        "--duration",
        "3s",
        "--publish-stream",
        "--publish-connections",
        "3",
    ];
    let r = run_loadgen(&gw.base, 600, &args).await;
    assert_eq!(r["parameters"]["publish"]["publish_stream"], true);
    let p = &r["publish"];
    assert!(p["messages_accepted"].as_u64().unwrap() >= 5_000, "{p}");
    // One request per stream, whatever the number of messages.
    assert_eq!(p["requests"], 3, "{p}");
}

/// `--broadcast`: each request is one `POST /v1/broadcast` naming 500 channels; 3 rounds
/// reach every one of 500 mixed clients 3 times, each with its channel's own seqs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_broadcast_reaches_every_channel_in_order() {
    let gw = spawn_gateway(&["--local-workers", "1"]);
    wait_healthy(&gw.base, 1, Duration::from_secs(30)).await;
    let args = [
        "--transport",
        "mixed",
        "--ramp",
        "2000/s",
        "--rate",
        "500/s",
        "--duration",
        "3s",
        "--batch",
        "500",
        "--broadcast",
        "--publish-connections",
        "1",
        "--memory-after-drain",
        "--settle",
        "1s",
        // The task-per-client plane, on plain TCP too.
        "--client-plane",
        "tasks",
    ];
    let r = run_loadgen(&gw.base, 500, &args).await;
    assert_eq!(r["parameters"]["client_plane"], "tasks");
    assert_eq!(r["publish"]["requests"], 3, "{}", r["publish"]);
    assert_eq!(r["publish"]["messages_accepted"], 1500, "{}", r["publish"]);
    assert_eq!(r["delivery"]["check"]["received"], 1500);
    // Three broadcasts one second apart: first sent -> last received spans the two gaps
    // (less the publisher's timer jitter: a first send stamped a few ms late shortens it;
    // seen: 1,993 ms), and covers every single message's latency.
    let span = r["delivery"]["span_ms"].as_f64().expect("span_ms");
    let max_latency_ms = r["delivery"]["latency_us"]["max"].as_f64().unwrap() / 1000.0;
    assert!((1800.0..10_000.0).contains(&span), "span {span} ms");
    assert!(
        span >= max_latency_ms,
        "span {span} ms < max latency {max_latency_ms} ms"
    );
    // --memory-after-drain: the worker's RSS read again after the messages passed, over
    // the same 500 connections and against the same baseline as the idle reading.
    let (idle, drained) = (&r["memory"], &r["memory_after_drain"]);
    assert_eq!(drained["connections"], 500, "{drained}");
    assert_eq!(
        drained["workers"][0]["rss_before"],
        idle["workers"][0]["rss_before"]
    );
    assert!(
        drained["workers"][0]["rss_after"].as_u64().unwrap() > 0,
        "{drained}"
    );
}

/// `--broadcast-every` beside 100 single publishes a second: every 2 s one broadcast to 200
/// random channels of 300, which a gateway taking at most 150 per broadcast gets as two
/// requests. Every broadcast message is expected and checked on its channel like a single
/// publish, and its delivery latency is counted apart from the stream's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_periodic_broadcasts_are_checked_and_timed_apart() {
    let gw = spawn_gateway(&["--local-workers", "1", "--max-broadcast-channels", "150"]);
    wait_healthy(&gw.base, 1, Duration::from_secs(30)).await;
    let args = [
        "--transport",
        "mixed",
        "--rate",
        "100/s",
        "--duration",
        "6s",
        "--broadcast-every",
        "2s",
        "--broadcast-channels",
        "200",
        "--max-broadcast-channels",
        "150",
        "--settle",
        "0s",
    ];
    let r = run_loadgen(&gw.base, 300, &args).await;
    // Broadcasts at 2 s and 4 s of the 6 s (not at 0, none at the end).
    let b = &r["broadcasts"];
    assert_eq!(b["sent"], 2, "{b}");
    assert_eq!(b["requests"], 4, "{b}");
    assert_eq!(b["channels"], 400, "{b}");
    assert_eq!(b["accepted"], 400, "{b}");
    assert_eq!(b["delivered"], 400, "{b}");
    for each in b["each"].as_array().unwrap() {
        let last = each["to_last_client_ms"]
            .as_f64()
            .expect("to_last_client_ms");
        assert!((0.0..5_000.0).contains(&last), "{each}");
    }
    // 600 single publishes (100/s for 6 s) and 2 x 200 broadcast messages, all expected
    // and received once (run_loadgen checked expected = received = accepted).
    assert_eq!(r["publish"]["messages_accepted"], 1000, "{}", r["publish"]);
    let d = &r["delivery"];
    assert_eq!(d["broadcast_latency_us"]["count"], 400, "{d}");
    assert_eq!(d["steady_latency_us"]["count"], 600, "{d}");
    assert_eq!(d["latency_us"]["count"], 1000, "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_tls_churn_resumes_on_whichever_worker_it_is_sent_to() {
    let certs = common::certs::Certs::new("lg-tls");
    let worker_args = format!(
        "--local-worker-arg=--listen-tls=127.0.0.1:0,--tls-cert={},--tls-key={},--advertise=localhost",
        certs.path("cert.pem"),
        certs.path("key.pem")
    );
    let gw = spawn_gateway(&["--local-workers", "2", &worker_args]);
    wait_healthy(&gw.base, 2, Duration::from_secs(30)).await;
    let ca = certs.path("cert.pem");
    let ca = ca.as_str();
    let args = [
        "--tls",
        "--ca",
        ca,
        "--transport",
        "mixed",
        "--ramp",
        "500/s",
        "--rate",
        "100/s",
        "--duration",
        "8s",
        "--fraction",
        "1",
        "--churn-rate",
        "100/s",
    ];
    let r = run_loadgen_cmd("churn", &gw.base, 300, &args).await;
    let tls = &r["tls"];
    // Every client's first handshake is full; after that clients come back (through a
    // fresh assign, to either worker) with a ticket, and the fleet's shared keys open it.
    let offered = tls["offered"].as_u64().unwrap();
    assert!(offered >= 300, "{tls}");
    let share = tls["resumed_of_offered"].as_f64().unwrap();
    assert!(share >= 0.95, "{tls}");
    assert!(
        r["connect"]["reconnects"].as_u64().unwrap() >= 300,
        "{}",
        r["connect"]
    );
    let per_worker = r["connect"]["per_worker"].as_object().map(|m| m.len());
    assert_eq!(per_worker, Some(2), "{}", r["connect"]["per_worker"]);
}

/// The lean client plane through churn on every transport: 600 mixed clients over two
/// workers, steady for 2 s (`--churn-after`), then each dropping and coming back with
/// `since` (resumes on whichever worker assign picks), while single publishes go on;
/// nothing lost, duplicated or out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_lean_plane_churns_every_transport_without_loss() {
    let gw = spawn_gateway(&["--local-workers", "2"]);
    wait_healthy(&gw.base, 2, Duration::from_secs(30)).await;
    let args = [
        "--client-plane",
        "lean",
        "--transport",
        "mixed",
        "--ramp",
        "3000/s",
        "--rate",
        "400/s",
        "--duration",
        "6s",
        "--fraction",
        "1",
        "--churn-rate",
        "200/s",
        "--backoff",
        "50ms",
        "--churn-after",
        "2s",
        "--poll-timeout",
        "2",
        // A client churned right after it connected can meet its own older subscription
        // landing late (the store then replaces the newer one: 4001 / SSE `replaced`) and
        // resumes; counted as a drop. Loss, duplicates and reordering still fail the run.
        "--allow-drops",
    ];
    let r = run_loadgen_cmd("churn", &gw.base, 600, &args).await;
    assert_eq!(r["parameters"]["client_plane"], "lean");
    // Two seconds of steady publishing, then four of churn (200 drops/s).
    let reconnects = r["connect"]["reconnects"].as_u64().unwrap();
    assert!(reconnects >= 500, "{}", r["connect"]);
    let phases = r["phases"].as_array().expect("phases");
    let phase = |name: &str| {
        phases
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no {name} phase: {phases:?}"))
    };
    let (steady, churn) = (phase("publish"), phase("churn"));
    let steady_secs = steady["end_secs"].as_f64().unwrap() - steady["start_secs"].as_f64().unwrap();
    assert!((1.9..2.5).contains(&steady_secs), "{phases:?}");
    let (churn_start, steady_end) = (churn["start_secs"].as_f64(), steady["end_secs"].as_f64());
    assert!(
        churn_start.unwrap() >= steady_end.unwrap() - 0.05,
        "{phases:?}"
    );
    assert!(
        r["publish"]["messages_accepted"].as_u64().unwrap() >= 2000,
        "{}",
        r["publish"]
    );
    // Every transport received its share.
    for lane in r["by_transport"].as_array().expect("by_transport") {
        assert!(lane["delivered"].as_u64().unwrap() > 500, "{lane}");
    }
}
