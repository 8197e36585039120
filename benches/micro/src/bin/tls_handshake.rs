//! What a TLS handshake costs the worker, next to the floor of the same handshake with no
//! sockets, measured in one run.
//!
//! For each certificate (ECDSA P-256, RSA-2048), client offer (X25519 + AES-128-GCM only;
//! rustls' defaults, X25519MLKEM768 first) and kind (full; resumed with a ticket):
//! - **floor**: rustls server and client in this one thread, records passed in memory; only
//!   the server's calls are timed. The server is configured as the worker configures it
//!   (`worker::tls::server_config::TlsFiles`: the same ticketer, ALPN, versions).
//! - **tcp**: a real worker (a `gateway --local-workers 1` child, one loop thread, a TLS
//!   listener) over loopback; `--concurrency` clients each connect, handshake, send
//!   close_notify and read to the end (the tickets are taken on the way). Server CPU is
//!   the worker process's CPU time (every thread, from `/proc/<pid>/task/*/schedstat`, ns)
//!   over the run, divided by the handshakes. "-plain" is that minus the CPU of a plain
//!   connect/close to the same worker (the kernel's TCP work and the event loop), over the
//!   floor: what the worker adds to the handshake itself.
//!
//!   tls-handshake [--n 3000] [--concurrency 32] [--json]
//!
//! Needs `openssl` (for the certificates) and the release `gateway` binary beside this one.

use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pushgate_benches::arg;

struct Cert {
    name: &'static str,
    cert: PathBuf,
    key: PathBuf,
}

fn make_cert(dir: &Path, name: &'static str, newkey: &[&str]) -> Cert {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(newkey)
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed")
        .success();
    assert!(ok, "openssl req failed for {name}");
    Cert { name, cert, key }
}

/// The client side of one configuration.
fn client(cert: &Cert, offer: &str, resume: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&cert.cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut provider = aws_lc_rs::default_provider();
    if offer == "x25519-aes128" {
        provider.kx_groups = vec![aws_lc_rs::kx_group::X25519];
        provider.cipher_suites = vec![aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256];
    }
    let mut c = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c.resumption = if resume {
        Resumption::in_memory_sessions(4096)
    } else {
        Resumption::disabled()
    };
    Arc::new(c)
}

/// Server-side ns per handshake, in memory.
fn floor(server: &Arc<rustls::ServerConfig>, client: &Arc<ClientConfig>, n: usize) -> f64 {
    let name = ServerName::try_from("localhost").unwrap();
    let mut server_ns = 0u128;
    // One warm-up handshake (and the first ticket for the resumed runs).
    for i in 0..=n {
        let mut c = ClientConnection::new(client.clone(), name.clone()).unwrap();
        let mut s = ServerConnection::new(server.clone()).unwrap();
        loop {
            let mut to_server = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut to_server).unwrap();
            }
            let t0 = Instant::now();
            if !to_server.is_empty() {
                let mut rd = &to_server[..];
                while !rd.is_empty() {
                    s.read_tls(&mut rd).unwrap();
                    s.process_new_packets().unwrap();
                }
            }
            let mut to_client = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut to_client).unwrap();
            }
            if i > 0 {
                server_ns += t0.elapsed().as_nanos();
            }
            if !to_client.is_empty() {
                let mut rd = &to_client[..];
                while !rd.is_empty() {
                    c.read_tls(&mut rd).unwrap();
                    c.process_new_packets().unwrap();
                }
            }
            if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
                break;
            }
        }
    }
    server_ns as f64 / n as f64
}

/// CPU time (ns) of every thread of `pid`.
fn process_cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

struct Worker {
    gateway: Child,
    pid: u32,
    tls: SocketAddr,
    plain: SocketAddr,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.gateway.kill();
        let _ = self.gateway.wait();
    }
}

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

fn start_worker(cert: &Cert) -> Worker {
    let exe = std::env::current_exe().unwrap().with_file_name("gateway");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let worker_args = format!(
        "--local-worker-arg=--threads=1,--listen-tls=127.0.0.2:0,--tls-cert={},--tls-key={}",
        cert.cert.display(),
        cert.key.display()
    );
    let gateway = Command::new(&exe)
        .args([
            "--listen",
            &gw.to_string(),
            "--local-workers",
            "1",
            &worker_args,
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo build --release -p gateway)", exe.display()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let tls = loop {
        assert!(Instant::now() < deadline, "no healthy worker");
        std::thread::sleep(Duration::from_millis(100));
        let Ok(_) = std::net::TcpStream::connect(gw) else {
            continue;
        };
        let body = get(gw, "/v1/workers");
        if !body.contains("healthy") {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let a = v["workers"][0]["tls_addresses"][0]
            .as_str()
            .unwrap()
            .to_owned();
        let p = v["workers"][0]["addresses"][0].as_str().unwrap().to_owned();
        break (a.parse().unwrap(), p.parse().unwrap());
    };
    let (tls, plain) = tls;
    // The worker is a child of whichever gateway thread spawned it.
    let mut children = String::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", gateway.id()))
        .unwrap()
        .flatten()
    {
        children += &std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.push(' ');
    }
    let pid = children
        .split_whitespace()
        .next()
        .expect("the worker process")
        .parse()
        .unwrap();
    Worker {
        gateway,
        pid,
        tls,
        plain,
    }
}

/// Server CPU ns per plain connection (connect, close; no request) over loopback: the
/// kernel's and the event loop's share of every TLS row below.
fn tcp_plain(worker: &Worker, n: usize, concurrency: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = worker.plain;
        let one = move || async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.shutdown().await.unwrap();
            let mut sink = Vec::new();
            let _ = tcp.read_to_end(&mut sink).await;
        };
        for _ in 0..concurrency {
            one().await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu0 = process_cpu_ns(worker.pid);
        let mut set = tokio::task::JoinSet::new();
        let (mut started, mut done) = (0, 0);
        while done < n {
            while started < n && set.len() < concurrency {
                set.spawn(one());
                started += 1;
            }
            if set.join_next().await.is_some() {
                done += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        (process_cpu_ns(worker.pid) - cpu0) as f64 / n as f64
    })
}

/// Server CPU ns per handshake over loopback, handshakes per second, how many resumed.
/// `clients[i % len]` dials the i-th connection (one session cache per concurrent slot: a
/// shared one keeps only 8 tickets per name).
fn tcp(
    worker: &Worker,
    clients: &[Arc<ClientConfig>],
    n: usize,
    concurrency: usize,
) -> (f64, f64, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let connectors: Vec<_> = clients
            .iter()
            .map(|c| tokio_rustls::TlsConnector::from(c.clone()))
            .collect();
        let connector = |i: usize| connectors[i % connectors.len()].clone();
        let addr = worker.tls;
        let one = move |connector: tokio_rustls::TlsConnector| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut tls = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            tls.shutdown().await.unwrap();
            let mut sink = Vec::new();
            let _ = tls.read_to_end(&mut sink).await;
            resumed
        };
        // Warm-up (and first tickets).
        for i in 0..concurrency {
            one(connector(i)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu0 = process_cpu_ns(worker.pid);
        let t0 = Instant::now();
        let mut resumed = 0u64;
        let mut done = 0;
        let mut set = tokio::task::JoinSet::new();
        let mut started = 0;
        while done < n {
            while started < n && set.len() < concurrency {
                set.spawn(one(connector(started)));
                started += 1;
            }
            if let Some(r) = set.join_next().await {
                resumed += u64::from(r.unwrap());
                done += 1;
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        // Let the worker finish its closes before reading its CPU.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu = process_cpu_ns(worker.pid) - cpu0;
        (cpu as f64 / n as f64, n as f64 / secs, resumed)
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = arg(&args, "--n", 3000);
    let concurrency = arg(&args, "--concurrency", 32);
    let json = args.iter().any(|a| a == "--json");
    let _ = CryptoProvider::install_default(aws_lc_rs::default_provider());
    let dir = std::env::temp_dir().join(format!("pg-tls-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let certs = [
        make_cert(
            &dir,
            "ecdsa-p256",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
        make_cert(&dir, "rsa-2048", &["-newkey", "rsa:2048"]),
    ];
    let mut rows = Vec::new();
    if !json {
        println!(
            "{:11} {:14} {:8} {:>10} {:>10} {:>10} {:>6} {:>7} {:>10} {:>9}",
            "cert",
            "offer",
            "kind",
            "floor µs",
            "busy µs",
            "tcp µs",
            "ratio",
            "-plain",
            "per s",
            "resumed"
        );
    }
    for cert in &certs {
        let files = worker::tls::server_config::TlsFiles::load(&cert.cert, &cert.key).unwrap();
        let server = files.config();
        let worker = start_worker(cert);
        let plain_ns = tcp_plain(&worker, n, concurrency);
        if json {
            rows.push(serde_json::json!({"cert": cert.name, "kind": "plain-tcp", "tcp_us": plain_ns / 1e3, "n": n}));
        } else {
            println!(
                "{:11} {:14} {:8} {:>10} {:>10.1}",
                cert.name,
                "(no TLS)",
                "connect",
                "",
                plain_ns / 1e3
            );
        }
        for offer in ["x25519-aes128", "default"] {
            for (kind, resume) in [("full", false), ("resumed", true)] {
                // ONLY=cert/offer/kind runs one row (for a profiler).
                if let Ok(only) = std::env::var("ONLY") {
                    if only != format!("{}/{offer}/{kind}", cert.name) {
                        continue;
                    }
                }
                let c = client(cert, offer, resume);
                let floor_ns = floor(&server, &c, n.min(2000));
                // The same floor while another thread does the same handshakes on the other
                // core, as the clients do during the tcp run (caches and memory shared).
                let busy = {
                    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let (s2, c2, stop2) = (server.clone(), c.clone(), stop.clone());
                    let t = std::thread::spawn(move || {
                        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                            floor(&s2, &c2, 20);
                        }
                    });
                    let ns = floor(&server, &c, n.min(2000));
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    t.join().unwrap();
                    ns
                };
                let slots: Vec<_> = (0..concurrency)
                    .map(|_| client(cert, offer, resume))
                    .collect();
                let (tcp_ns, rate, resumed) = tcp(&worker, &slots, n, concurrency);
                let ratio = tcp_ns / floor_ns;
                let above = (tcp_ns - plain_ns) / floor_ns;
                if json {
                    rows.push(serde_json::json!({
                        "cert": cert.name, "offer": offer, "kind": kind,
                        "floor_us": floor_ns / 1e3, "floor_busy_us": busy / 1e3,
                        "tcp_us": tcp_ns / 1e3, "ratio": ratio,
                        "ratio_above_plain_tcp": above,
                        "handshakes_per_sec": rate, "resumed": resumed, "n": n,
                    }));
                } else {
                    println!(
                        "{:11} {:14} {:8} {:>10.1} {:>10.1} {:>10.1} {:>6.2} {:>7.2} {:>10.0} {:>9}",
                        cert.name,
                        offer,
                        kind,
                        floor_ns / 1e3,
                        busy / 1e3,
                        tcp_ns / 1e3,
                        ratio,
                        above,
                        rate,
                        resumed
                    );
                }
            }
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
