//! `deploy/local-cluster.sh` says it is up only when it is, and fails loudly otherwise:
//! missing binaries, a gateway that cannot bind, a worker that stops.

mod common;

use common::process::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn script() -> Command {
    let mut c = Command::new("bash");
    c.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/local-cluster.sh"
    ));
    c.stdin(Stdio::null());
    c
}

fn bin_dir() -> std::path::PathBuf {
    workspace_bin("worker").parent().unwrap().to_path_buf()
}

fn logs(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("pushgate-cluster-{}-{name}", std::process::id()))
}

#[test]
fn missing_binaries_fail_at_once() {
    let out = script()
        .env("BIN", "/nonexistent/pushgate-bin")
        .env("LOGS", logs("missing"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no gateway and worker binaries"), "{err}");
    assert!(out.stdout.is_empty(), "no success banner");
}

#[test]
fn a_gateway_that_cannot_bind_fails_with_its_log() {
    // An address of no interface here (TEST-NET-1): the bind fails.
    let out = script()
        .env("BIN", bin_dir())
        .env("LOGS", logs("taken"))
        .env("GATEWAY_LISTEN", "192.0.2.1:8080")
        .args(["1", "1", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the gateway stopped at start"), "{err}");
    assert!(
        err.contains("binding"),
        "the gateway's own error is shown: {err}"
    );
    assert!(out.stdout.is_empty(), "no success banner");
    let _ = std::fs::remove_dir_all(logs("taken"));
}

#[tokio::test]
async fn up_means_linked_and_a_worker_that_stops_ends_it_loudly() {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = script()
        .env("BIN", bin_dir())
        .env("LOGS", logs("up"))
        .env("GATEWAY_LISTEN", &listen)
        .args(["1", "1", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    assert!(banner.contains("1 workers x 1 IPs"), "{banner:?}");
    // By the banner the worker has linked: assign works at once.
    let (status, v) = http_get(&format!("http://{listen}/v1/assign?channel=c"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");

    let script_pid = child.id();
    let worker = children(script_pid)
        .into_iter()
        .find(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains("worker-0"))
        })
        .expect("the worker process");
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the script did not end");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("worker-0 stopped"), "{err}");
    // Its gateway went with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(&format!("http://{listen}/healthz"))
        .await
        .is_some()
    {
        assert!(Instant::now() < deadline, "the gateway outlived the script");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_dir_all(logs("up"));
}
