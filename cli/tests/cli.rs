//! The `pushgate` binary against a real TLS gateway and TLS worker: `sub` prints what `pub`
//! published, and `--session-file` makes the next run resume (with the gateway, and with a
//! worker, whose tickets come from the same fleet keys).

use clap::Parser;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct Fleet {
    dir: std::path::PathBuf,
    gateway: String,
    shutdown: CancellationToken,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fleet {
    async fn start(tag: &str) -> Fleet {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = std::env::temp_dir().join(format!("pg-cli-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        let (c, k) = (
            dir.join("cert.pem").display().to_string(),
            dir.join("key.pem").display().to_string(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = gateway::Config::parse_from([
            "gateway",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--tls-cert",
            &c,
            "--tls-key",
            &k,
        ]);
        let shutdown = CancellationToken::new();
        tokio::spawn(gateway::run(listener, config, shutdown.clone()));
        let w = worker::Worker::bind(worker::Config::parse_from([
            "worker",
            "--gateway",
            &format!("https://localhost:{port}"),
            "--gateway-ca",
            &c,
            "--threads",
            "1",
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            &c,
            "--tls-key",
            &k,
            "--advertise",
            "localhost",
        ]))
        .unwrap();
        let _ = w.start(shutdown.child_token());
        Fleet {
            dir,
            gateway: format!("https://localhost:{port}"),
            shutdown,
        }
    }

    fn ca(&self) -> String {
        self.dir.join("cert.pem").display().to_string()
    }

    /// Runs `pushgate <args> --gateway G --ca C`: exit code, stdout, stderr.
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let (sub, rest) = args.split_first().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_pushgate"))
            .arg(sub)
            .args(["--gateway", &self.gateway, "--ca", &self.ca()])
            .args(rest)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_prints_what_pub_published_and_sessions_resume_across_runs() {
    let f = Fleet::start("pubsub").await;
    // Until the worker has linked, assign answers 503: the first run may have to wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out, err) =
            tokio::task::block_in_place(|| f.run(&["sub", "warmup", "--timeout", "0.2"]));
        if code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never subscribed: {out} {err}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Two messages published while nobody listens; a subscriber resuming from 0 gets them.
    for (data, seq) in [(r#"{"cmd":"open"}"#, 1), ("plain text", 2)] {
        let (code, out, err) = tokio::task::block_in_place(|| f.run(&["pub", "door-7", data]));
        assert_eq!(
            (code, out.trim()),
            (0, format!("{{\"seq\":{seq}}}").as_str()),
            "{err}"
        );
    }
    let (code, out, err) = tokio::task::block_in_place(|| {
        f.run(&[
            "sub",
            "door-7",
            "--since",
            "0",
            "--count",
            "2",
            "--timeout",
            "10",
        ])
    });
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "{\"seq\":1,\"data\":{\"cmd\":\"open\"}}\n{\"seq\":2,\"data\":\"plain text\"}\n"
    );
    // Fewer than --count within --timeout: a failure, said so.
    let (code, _, err) = tokio::task::block_in_place(|| {
        f.run(&["sub", "door-7", "--count", "1", "--timeout", "0.5"])
    });
    assert_eq!(code, 1);
    assert!(err.contains("0 of 1"), "{err}");

    // --session-file: the first run makes full handshakes, the next resumes, with the
    // gateway and with the worker (its tickets open with the fleet's keys).
    let sess = f.dir.join("sessions");
    let s = sess.display().to_string();
    let (code, _, err) =
        tokio::task::block_in_place(|| f.run(&["pub", "-v", "--session-file", &s, "door-7", "3"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("tls: full"), "{err}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sess).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (code, _, err) =
        tokio::task::block_in_place(|| f.run(&["pub", "-v", "--session-file", &s, "door-7", "4"]));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("tls: resumed"), "{err}");
    let (code, out, err) = tokio::task::block_in_place(|| {
        f.run(&[
            "sub",
            "-v",
            "--session-file",
            &s,
            "door-7",
            "--since",
            "3",
            "--count",
            "1",
            "--timeout",
            "10",
        ])
    });
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "{\"seq\":4,\"data\":4}\n");
    assert_eq!(err.matches("tls: resumed").count(), 2, "{err}");

    // A session file others may read is refused, not used.
    std::fs::set_permissions(&sess, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) =
        tokio::task::block_in_place(|| f.run(&["pub", "--session-file", &s, "door-7", "5"]));
    assert_eq!(code, 2);
    assert!(err.contains("chmod 600"), "{err}");
}
