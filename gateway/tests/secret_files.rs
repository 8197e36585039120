//! Secrets from files (`--publisher-key-file`, `--subscriber-secret-file`, `--link-key-file`,
//! `--admin-key-file`)
//! with the real binaries: the keys in the file are the keys, a file others may read stops
//! the start with its name, a worker links with the key in its file and not with another,
//! and local workers get the secrets through their environment, not their arguments.

mod common;

use common::process::*;
use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A fresh directory for one test's files, removed on drop.
struct Files(PathBuf);

impl Files {
    fn new(test: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("pg-secret-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Files(dir)
    }

    fn write(&self, name: &str, text: &str, mode: u32) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p.to_str().unwrap().to_owned()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the child on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines the child writes to stderr, as they come.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let err = child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

async fn wait_up(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(&format!("{base}/healthz")).await.is_none() {
        assert!(Instant::now() < deadline, "{base} never came up");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn publish(base: &str, key: Option<&str>) -> u16 {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut req = hyper::Request::post(format!("{base}/v1/publish/secret-files"));
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"1")))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

/// Runs `gateway <args>` to its end (it must stop by itself) and returns its stderr.
fn run_to_exit(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status.success(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("gateway {args:?} did not stop by itself");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn the_keys_in_a_publisher_key_file_are_the_publisher_keys() {
    let f = Files::new("pub");
    let keys = f.write("keys", "\n  first-key \n\n\tsecond-key\n\n", 0o600);
    let gw = spawn_gateway(&["--publisher-key-file", &keys]);
    wait_up(&gw.base).await;
    assert_eq!(publish(&gw.base, Some("first-key")).await, 202);
    assert_eq!(publish(&gw.base, Some("second-key")).await, 202);
    assert_eq!(publish(&gw.base, None).await, 401);
    assert_eq!(publish(&gw.base, Some("first-key second-key")).await, 401);
    assert_eq!(publish(&gw.base, Some("")).await, 401);
    // The file's path is on the command line; its keys are not.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", gw.child.id())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        cmdline.contains(&keys) && !cmdline.contains("first-key"),
        "{cmdline}"
    );
}

#[test]
fn a_secret_file_others_may_read_or_given_twice_stops_the_start() {
    let f = Files::new("refused");
    let open = f.write("open-keys", "k\n", 0o644);
    let listen = format!("127.0.0.1:{}", free_port());
    for flag in [
        "--publisher-key-file",
        "--subscriber-secret-file",
        "--link-key-file",
    ] {
        let (ok, err) = run_to_exit(&["--listen", &listen, flag, &open]);
        assert!(!ok, "{flag} with mode 644 was taken");
        assert!(
            err.contains(flag) && err.contains(&open) && err.contains("chmod 600"),
            "{flag}: {err}"
        );
    }
    let empty = f.write("empty", "\n \n", 0o600);
    let (ok, err) = run_to_exit(&["--listen", &listen, "--link-key-file", &empty]);
    assert!(
        !ok && err.contains(&empty) && err.contains("empty"),
        "{err}"
    );
    let missing = f.0.join("missing");
    let missing = missing.to_str().unwrap();
    let (ok, err) = run_to_exit(&["--listen", &listen, "--publisher-key-file", missing]);
    assert!(!ok && err.contains(missing), "{err}");
    let dir = f.0.to_str().unwrap();
    let (ok, err) = run_to_exit(&["--listen", &listen, "--subscriber-secret-file", dir]);
    assert!(!ok && err.contains("not a regular file"), "{err}");
    let good = f.write("good", "k\n", 0o600);
    let (ok, err) = run_to_exit(&[
        "--listen",
        &listen,
        "--link-key",
        "k",
        "--link-key-file",
        &good,
    ]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
}

/// Starts `gateway worker` linking to `base` with `--link-key-file key_file`; debug logs
/// of its link go to the returned lines.
fn spawn_worker(base: &str, id: &str, key_file: &str) -> (Proc, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["worker", "--gateway", base, "--listen", "127.0.0.1:0"])
        .args(["--threads", "1", "--id", id, "--link-key-file", key_file])
        .env("RUST_LOG", "worker=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut child);
    (Proc(child), lines)
}

/// Ids of the workers the gateway lists.
async fn worker_ids(base: &str) -> Vec<String> {
    let (_, v) = http_get(&format!("{base}/v1/workers")).await.unwrap();
    v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_worker_links_with_the_key_in_its_file_and_not_with_another() {
    let f = Files::new("link");
    let good = f.write("good", "the-link-key\n", 0o600);
    let wrong = f.write("wrong", "not-the-link-key\n", 0o600);
    let gw = spawn_gateway(&["--link-key", "the-link-key"]);
    wait_up(&gw.base).await;
    let (_bad, bad_log) = spawn_worker(&gw.base, "wrong-key", &wrong);
    let (_good, _good_log) = spawn_worker(&gw.base, "good-key", &good);
    wait_healthy(&gw.base, 1, Duration::from_secs(20)).await;
    // The wrong key is refused at the upgrade (401), attempt after attempt.
    let deadline = Instant::now() + Duration::from_secs(20);
    let refusal = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = bad_log
            .recv_timeout(left)
            .expect("the worker with the wrong key logs its refused link");
        if line.contains("refused this worker's link key") {
            break line;
        }
    };
    assert!(refusal.contains("401"), "{refusal}");
    assert!(!refusal.contains("not-the-link-key"), "{refusal}");
    assert_eq!(worker_ids(&gw.base).await, vec!["good-key".to_string()]);
}

/// The value of `name` in a process's environment.
fn environ_var(pid: u32, name: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0).find_map(|kv| {
        let kv = std::str::from_utf8(kv).ok()?;
        kv.strip_prefix(name)?.strip_prefix('=').map(str::to_owned)
    })
}

#[tokio::test]
async fn local_workers_get_the_secrets_from_files_through_their_environment() {
    let f = Files::new("local");
    let link = f.write("link", "local-link-key\n", 0o600);
    let secret = f.write("sub", "local-subscriber-secret\n", 0o400);
    let gw = spawn_gateway(&[
        "--local-workers",
        "1",
        "--link-key-file",
        &link,
        "--subscriber-secret-file",
        &secret,
    ]);
    // Healthy: the child linked with the key from the file.
    wait_healthy(&gw.base, 1, Duration::from_secs(30)).await;
    let kids = children(gw.child.id());
    assert_eq!(kids.len(), 1, "{kids:?}");
    let pid = kids[0];
    assert_eq!(
        environ_var(pid, "PUSHGATE_LINK_KEY").as_deref(),
        Some("local-link-key")
    );
    assert_eq!(
        environ_var(pid, "PUSHGATE_SUBSCRIBER_SECRET").as_deref(),
        Some("local-subscriber-secret")
    );
    assert_eq!(environ_var(pid, "PUSHGATE_LINK_KEY_FILE"), None);
    let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
        .to_string();
    assert!(
        !cmdline.contains("local-link-key") && !cmdline.contains("local-subscriber-secret"),
        "{cmdline}"
    );
    // Subscribing needs a token signed with the secret from the file, on the gateway and
    // on the worker.
    let (status, _) = http_get(&format!("{}/v1/assign?channel=c", gw.base))
        .await
        .unwrap();
    assert_eq!(status, 401);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = protocol::token::sign(b"local-subscriber-secret", "c", exp);
    let (status, a) = http_get(&format!("{}/v1/assign?token={token}", gw.base))
        .await
        .unwrap();
    assert_eq!(status, 200, "{a}");
    let ws_url = a["ws_url"].as_str().unwrap();
    let mut ws = common::ws_connect(ws_url).await;
    let wrong = ws_url.replace(&token, &protocol::token::sign(b"other", "c", exp));
    assert!(
        tokio_tungstenite::connect_async(wrong.as_str())
            .await
            .is_err(),
        "the worker took a token signed with another secret"
    );
    wait_online(&gw.base, "c").await;
    let (status, _) = http_post(&format!("{}/v1/publish/c", gw.base), "7").await;
    assert_eq!(status, 202);
    assert_eq!(common::next_json(&mut ws).await["data"], 7);
}

/// Waits until channel `name` has a subscriber online.
async fn wait_online(base: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(&format!("{base}/v1/channels/{name}"))
        .await
        .unwrap()
        .1["online"]
        != true
    {
        assert!(Instant::now() < deadline, "{name} never online");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_key_in_an_admin_key_file_is_the_admin_key() {
    let f = Files::new("admin");
    let key = f.write("admin-key", "  admin-from-file \n", 0o600);
    let gw = spawn_gateway(&["--admin-key-file", &key]);
    wait_up(&gw.base).await;
    let get = |auth: Option<&'static str>| {
        let url = format!("{}/v1/workers", gw.base);
        async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>();
            let mut req = hyper::Request::get(url);
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            let req = req.body(http_body_util::Full::default()).unwrap();
            client.request(req).await.unwrap().status().as_u16()
        }
    };
    assert_eq!(get(None).await, 401);
    assert_eq!(get(Some("Bearer admin-from-file")).await, 200);
    assert_eq!(get(Some("Bearer admin-from")).await, 401);
    let (ok, err) = run_to_exit(&[
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--admin-key",
        "k",
        "--admin-key-file",
        &key,
    ]);
    assert!(!ok && err.contains("--admin-key"), "{err}");
}
