//! `gateway --local-workers N` as an operator runs it: the real binary, real child worker
//! processes, a worker killed mid-stream and restarted, nothing lost for a client that
//! resumes with `since`, and a clean stop on SIGTERM.

mod common;

use common::process::*;
use common::*;
use std::time::{Duration, Instant};

#[tokio::test]
async fn local_workers_start_restart_and_lose_nothing() {
    let gw = spawn_gateway(&["--local-workers", "2"]);
    let workers = wait_healthy(&gw.base, 2, Duration::from_secs(30)).await;
    let list = workers["workers"].as_array().unwrap();
    let ips: Vec<String> = list
        .iter()
        .map(|w| {
            w["addresses"][0]
                .as_str()
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        ips.contains(&"127.0.0.2".to_string()) && ips.contains(&"127.0.0.3".to_string()),
        "{ips:?}"
    );
    let pids = children(gw.child.id());
    assert_eq!(pids.len(), 2, "{pids:?}");

    // A client on some worker sees messages, then its worker is killed.
    let (_, a) = http_get(&format!("{}/v1/assign?channel=crash", gw.base))
        .await
        .unwrap();
    let mut ws = ws_connect(a["ws_url"].as_str().unwrap()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(&format!("{}/v1/channels/crash", gw.base))
        .await
        .unwrap()
        .1["online"]
        != true
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        http_post(&format!("{}/v1/publish/crash", gw.base), "1")
            .await
            .0,
        202
    );
    let m = next_json(&mut ws).await;
    assert_eq!(m["seq"], 1);
    let victim = list.iter().position(|w| w["id"] == a["worker"]).unwrap();
    let victim_ip = &ips[victim];
    let victim_pid = pids
        .iter()
        .copied()
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(victim_ip.as_str()))
                .unwrap_or(false)
        })
        .expect("the victim's pid");
    unsafe { libc::kill(victim_pid as i32, libc::SIGKILL) };

    // Published while the client has no connection: accepted and retained.
    for i in 2..=4 {
        assert_eq!(
            http_post(&format!("{}/v1/publish/crash", gw.base), &i.to_string()).await,
            (202, serde_json::json!({"seq": i}))
        );
    }
    // The gateway restarts the dead worker.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now: Vec<u32> = children(gw.child.id());
        if now.len() == 2 && !now.contains(&victim_pid) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker was not restarted: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_healthy(&gw.base, 2, Duration::from_secs(30)).await;
    // The client comes back with since = last seq it saw and gets 2..4, in order, once.
    let (_, a) = http_get(&format!("{}/v1/assign?channel=crash", gw.base))
        .await
        .unwrap();
    let mut ws = ws_connect(&format!("{}&since=1", a["ws_url"].as_str().unwrap())).await;
    for i in 2..=4u64 {
        assert_eq!(
            next_json(&mut ws).await,
            serde_json::json!({"seq": i, "data": i})
        );
    }
    assert_quiet(&mut ws, 200).await;

    // SIGTERM: the gateway stops its workers and exits.
    let mut gw = gw;
    let all = children(gw.child.id());
    unsafe { libc::kill(gw.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = gw.child.try_wait().unwrap() {
            assert!(status.success() || status.code().is_some(), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "gateway did not exit on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for p in all {
        let alive = std::fs::read_to_string(format!("/proc/{p}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false);
        assert!(!alive, "worker {p} outlived the gateway");
    }
}

/// A gateway and its local workers whose stderr's reader has gone (a log pipe that broke)
/// go on: lines that cannot be written are dropped, not a panic at the first one.
#[tokio::test]
async fn a_broken_log_pipe_stops_neither_the_gateway_nor_its_workers() {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--listen", &listen, "--local-workers", "1"])
        .args(["--worker-exe", env!("CARGO_BIN_EXE_gateway")])
        .env("RUST_LOG", "debug")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the only reader: every write to stderr now fails with EPIPE.
    drop(child.stderr.take());
    let base = format!("http://{listen}");
    wait_healthy(&base, 1, Duration::from_secs(30)).await;
    let (status, _) = http_post(&format!("{base}/v1/publish/logpipe"), "hi").await;
    assert_eq!(status, 202);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the gateway is still running"
    );
    let _ = child.kill();
    let _ = child.wait();
}
