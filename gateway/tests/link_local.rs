//! `--local-workers`: children are started with the right flags and environment, restarted
//! when they exit, and stopped when the gateway shuts down. A shell script stands in for
//! the worker executable.

mod link_support;

use link_support::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

fn runs(dir: &Path) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if let Some(pid) = name.strip_prefix("run.").filter(|p| !p.starts_with("tmp")) {
            let text = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
            out.push((pid.parse().unwrap(), text));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_start_restart_and_stop() {
    let dir = std::env::temp_dir().join(format!("pushgate-link-local-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("fake-worker.sh");
    // The first run of all exits at once (to be restarted); later runs stay up.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nd='{}'\nn=$(ls \"$d\" | grep -c '^run\\.')\n\
             echo \"secret=$PUSHGATE_SUBSCRIBER_SECRET origin=$PUSHGATE_ALLOW_ORIGIN other=$PUSHGATE_MAX_CHANNELS args=$*\" > \"$d/run.tmp.$$\"\n\
             mv \"$d/run.tmp.$$\" \"$d/run.$$\"\n\
             if [ \"$n\" -eq 0 ]; then exit 3; fi\nexec sleep 60\n",
            dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Inherited PUSHGATE_* variables must not reach the children (this test binary is its own
    // process, so setting one here is safe).
    std::env::set_var("PUSHGATE_MAX_CHANNELS", "77");

    let gw = Gw::start(&[
        "--local-workers",
        "2",
        "--worker-exe",
        script.to_str().unwrap(),
        "--subscriber-secret",
        "sh-secret",
        "--local-worker-arg=--capacity",
        "--local-worker-arg=9",
    ])
    .await;
    let mut seen = Vec::new();
    for _ in 0..1000 {
        seen = runs(&dir);
        if seen.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen.len() >= 3, "a restart happened: {seen:?}");
    let gateway = format!("--gateway http://{}", gw.addr);
    for id in ["local-0", "local-1"] {
        let line = seen
            .iter()
            .map(|(_, t)| t)
            .find(|t| t.contains(&format!("--id {id}")))
            .unwrap_or_else(|| panic!("{id} started: {seen:?}"));
        assert!(line.contains("secret=sh-secret "), "{line}");
        assert!(line.contains("origin=* "), "{line}");
        assert!(line.contains("other= "), "{line}");
        assert!(
            line.contains(&format!("args=worker {gateway} --listen 127.0.0.")),
            "{line}"
        );
        assert!(line.trim_end().ends_with("--capacity 9"), "{line}");
        assert!(
            !line.contains("args=") || !line.split("args=").nth(1).unwrap().contains("sh-secret")
        );
    }
    assert!(gw.metric("pushgate_local_worker_restarts_total").await >= 1.0);

    gw.stop().await;
    for (pid, _) in runs(&dir) {
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "child {pid} is gone after shutdown");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
