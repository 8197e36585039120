//! What a TLS handshake costs the worker, next to the floor of the same handshake with no
//! sockets, measured in one run.
//!
//! For each certificate (ECDSA P-256, RSA-2048), client offer (X25519 + AES-128-GCM only;
//! rustls' defaults, X25519MLKEM768 first) and kind (full; resumed with a ticket):
//! - **floor**: rustls server and client in this one thread, records passed in memory; only
//!   the server's calls are timed, by the thread's CPU clock (a preemption does not count).
//!   The server is configured as the worker configures it
//!   (`worker::tls::server_config::TlsFiles`: the same ticketer, ALPN, versions, one
//!   ticket); **floor/2t** the same sending rustls' default two tickets.
//! - **kernel**: the kernel's floor under the same handshake over TCP: the bytes of the
//!   floor's handshake, in the same writes, replayed with no TLS by a one-thread mio server
//!   in this process (server CPU from its thread's schedstat); **kern/-t** the same without
//!   the tickets' write of their own (the design that sends them with a later write).
//! - **tcp**: a real worker (a `gateway --local-workers 1` child, one loop thread, a TLS
//!   listener) over loopback; `--concurrency` clients each connect, handshake, send
//!   close_notify and read to the end (the tickets are taken on the way). Server CPU is
//!   the worker process's CPU time (every thread, from `/proc/<pid>/task/*/schedstat`, ns)
//!   over the run, divided by the handshakes. **÷fl** is tcp over the floor, **÷fl+k** tcp
//!   over floor + kernel: what the worker adds to the crypto and the kernel's work.
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

/// CPU time (user + system) of the calling thread, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What crossed the wire in one handshake, in order, as the tcp clients make it: the
/// client's hello; the server's flight; the client's Finished; the server's tickets (empty
/// when it sends none); the client's close_notify.
struct Exchange {
    flights: [Vec<u8>; 5],
}

/// Server CPU ns per handshake in memory (the server's calls only, timed by the thread's
/// CPU clock, so a preemption does not count), and the bytes of the last handshake.
fn floor(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<ClientConfig>,
    n: usize,
) -> (f64, Exchange) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut server_ns = 0u64;
    let mut flights: [Vec<u8>; 5] = Default::default();
    // One warm-up handshake (and the first ticket for the resumed runs).
    for i in 0..=n {
        let mut c = ClientConnection::new(client.clone(), name.clone()).unwrap();
        let mut s = ServerConnection::new(server.clone()).unwrap();
        let mut round = 0;
        loop {
            let mut to_server = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut to_server).unwrap();
            }
            let t0 = thread_cpu_ns();
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
                server_ns += thread_cpu_ns() - t0;
            }
            if round < 2 {
                flights[2 * round] = to_server;
                flights[2 * round + 1] = to_client.clone();
            }
            round += 1;
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
        c.send_close_notify();
        let mut close = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut close).unwrap();
        }
        flights[4] = close;
    }
    (server_ns as f64 / n as f64, Exchange { flights })
}

/// The kernel's floor under one handshake over TCP: the same bytes in the same writes,
/// with no TLS. A server thread (one mio loop, as the worker's) accepts, reads, and writes
/// the server's recorded flight once the client's hello is in, the tickets once its
/// Finished is in (or never, `tickets = false`: the design that sends them with a later
/// write), and closes at EOF; clients (tokio, 32 at a time) write the client's recorded
/// flights and read the server's. Returns the server thread's CPU ns per connection
/// (schedstat, as the worker's is read: user, system and the softirq work charged to it).
fn kernel_floor(x: &Exchange, n: usize, concurrency: usize, tickets: bool) -> f64 {
    use mio::net::TcpListener;
    use mio::{Events, Interest, Poll, Token};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let std_listener = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let (hello, finished) = (x.flights[0].len(), x.flights[2].len());
    let (flight, ticket_bytes) = (x.flights[1].clone(), x.flights[3].clone());
    let flight_len = flight.len();
    let stop = Arc::new(AtomicBool::new(false));
    let tid = Arc::new(AtomicU64::new(0));
    let server = {
        let (stop, tid) = (stop.clone(), tid.clone());
        std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid.store(unsafe { libc::gettid() } as u64, Ordering::SeqCst);
            let mut listener = TcpListener::from_std(std_listener);
            let mut poll = Poll::new().unwrap();
            const LISTENER: Token = Token(usize::MAX);
            poll.registry()
                .register(&mut listener, LISTENER, Interest::READABLE)
                .unwrap();
            let mut conns: std::collections::HashMap<usize, (mio::net::TcpStream, usize)> =
                Default::default();
            let mut next = 0usize;
            let mut events = Events::with_capacity(1024);
            let mut buf = vec![0u8; 16 * 1024];
            while !stop.load(Ordering::Relaxed) {
                poll.poll(&mut events, Some(Duration::from_millis(50)))
                    .unwrap();
                for ev in &events {
                    if ev.token() == LISTENER {
                        while let Ok((mut s, _)) = listener.accept() {
                            let _ = s.set_nodelay(true);
                            poll.registry()
                                .register(&mut s, Token(next), Interest::READABLE)
                                .unwrap();
                            conns.insert(next, (s, 0));
                            next += 1;
                        }
                        continue;
                    }
                    let key = ev.token().0;
                    let Some((s, got)) = conns.get_mut(&key) else {
                        continue;
                    };
                    let before = *got;
                    let mut eof = false;
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => {
                                eof = true;
                                break;
                            }
                            Ok(k) => *got += k,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(_) => {
                                eof = true;
                                break;
                            }
                        }
                    }
                    if before < hello && *got >= hello {
                        s.write_all(&flight).unwrap();
                    }
                    if tickets && before < hello + finished && *got >= hello + finished {
                        s.write_all(&ticket_bytes).unwrap();
                    }
                    if eof {
                        let (mut s, _) = conns.remove(&key).unwrap();
                        let _ = poll.registry().deregister(&mut s);
                    }
                }
            }
        })
    };
    while tid.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    let schedstat = format!("/proc/self/task/{}/schedstat", tid.load(Ordering::SeqCst));
    let read_cpu = move || -> u64 {
        std::fs::read_to_string(&schedstat)
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let x_hello = Arc::new(x.flights[0].clone());
    let x_finished = Arc::new(x.flights[2].clone());
    let x_close = Arc::new(x.flights[4].clone());
    let per_conn = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let one = {
            let (h, f, c) = (x_hello.clone(), x_finished.clone(), x_close.clone());
            move || {
                let (h, f, c) = (h.clone(), f.clone(), c.clone());
                async move {
                    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                    tcp.set_nodelay(true).unwrap();
                    tcp.write_all(&h).await.unwrap();
                    let mut got = vec![0u8; flight_len];
                    tcp.read_exact(&mut got).await.unwrap();
                    tcp.write_all(&f).await.unwrap();
                    tcp.write_all(&c).await.unwrap();
                    tcp.shutdown().await.unwrap();
                    let mut sink = Vec::new();
                    let _ = tcp.read_to_end(&mut sink).await;
                }
            }
        };
        measure(n, concurrency, read_cpu, |_| one(), |()| {})
            .await
            .0
    });
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    per_conn
}

/// Server CPU ns per connection and the run's wall time: `concurrency` warm-up
/// connections (the first tickets), a settle, then `n` connections `concurrency` at a time
/// (`one(i)` makes the i-th, its result goes to `done`), a settle for the server's closes;
/// `cpu()` is read on either side of the measured part.
async fn measure<T, F>(
    n: usize,
    concurrency: usize,
    cpu: impl Fn() -> u64,
    mut one: impl FnMut(usize) -> F,
    mut done: impl FnMut(T),
) -> (f64, f64)
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    for i in 0..concurrency {
        one(i).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu0 = cpu();
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let (mut started, mut finished) = (0, 0);
    while finished < n {
        while started < n && set.len() < concurrency {
            set.spawn(one(started));
            started += 1;
        }
        if let Some(r) = set.join_next().await {
            done(r.unwrap());
            finished += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    ((cpu() - cpu0) as f64 / n as f64, secs)
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
        let cpu = || process_cpu_ns(worker.pid);
        measure(n, concurrency, cpu, |_| one(), |()| {}).await.0
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
        let mut resumed = 0u64;
        let cpu = || process_cpu_ns(worker.pid);
        let (ns, secs) = measure(
            n,
            concurrency,
            cpu,
            |i| one(connector(i)),
            |r| resumed += u64::from(r),
        )
        .await;
        (ns, n as f64 / secs, resumed)
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
            "{:11} {:14} {:8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>6} {:>7}",
            "cert",
            "offer",
            "kind",
            "floor",
            "floor/2t",
            "kernel",
            "kern/-t",
            "tcp",
            "÷fl",
            "÷fl+k",
            "per s",
            "resumed"
        );
    }
    for cert in &certs {
        let files = worker::tls::server_config::TlsFiles::load(&cert.cert, &cert.key).unwrap();
        let server = files.config();
        // The same server sending rustls' default two tickets per handshake, not one.
        let two_tickets = {
            let mut c = (*server).clone();
            c.send_tls13_tickets = 2;
            Arc::new(c)
        };
        let worker = start_worker(cert);
        let plain_ns = tcp_plain(&worker, n, concurrency);
        if json {
            rows.push(serde_json::json!({"cert": cert.name, "kind": "plain-tcp", "tcp_us": plain_ns / 1e3, "n": n}));
        } else {
            println!(
                "{:11} {:14} {:8} {:>44.1}",
                cert.name,
                "(no TLS)",
                "connect",
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
                let (floor_ns, exchange) = floor(&server, &c, n.min(2000));
                let (two_tickets_ns, _) = floor(&two_tickets, &c, n.min(2000));
                let kernel_ns = kernel_floor(&exchange, n, concurrency, true);
                let kernel_later_ns = kernel_floor(&exchange, n, concurrency, false);
                let slots: Vec<_> = (0..concurrency)
                    .map(|_| client(cert, offer, resume))
                    .collect();
                let (tcp_ns, rate, resumed) = tcp(&worker, &slots, n, concurrency);
                let ratio = tcp_ns / floor_ns;
                let over_kernel = tcp_ns / (floor_ns + kernel_ns);
                let bytes: Vec<usize> = exchange.flights.iter().map(Vec::len).collect();
                if json {
                    rows.push(serde_json::json!({
                        "cert": cert.name, "offer": offer, "kind": kind,
                        "floor_us": floor_ns / 1e3, "floor_two_tickets_us": two_tickets_ns / 1e3,
                        "kernel_floor_us": kernel_ns / 1e3,
                        "kernel_floor_tickets_later_us": kernel_later_ns / 1e3,
                        "tcp_us": tcp_ns / 1e3, "ratio": ratio,
                        "ratio_over_floor_and_kernel": over_kernel,
                        "handshakes_per_sec": rate, "resumed": resumed, "n": n,
                        "flight_bytes": bytes,
                    }));
                } else {
                    println!(
                        "{:11} {:14} {:8} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>6.2} {:>6.2} {:>6.0} {:>7}  bytes {:?}",
                        cert.name,
                        offer,
                        kind,
                        floor_ns / 1e3,
                        two_tickets_ns / 1e3,
                        kernel_ns / 1e3,
                        kernel_later_ns / 1e3,
                        tcp_ns / 1e3,
                        ratio,
                        over_kernel,
                        rate,
                        resumed,
                        bytes
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
