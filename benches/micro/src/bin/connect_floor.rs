//! The connect rate this machine reaches with no server logic at all: the floor under
//! loadgen's "WebSocket connects per second through /v1/assign".
//!
//! A child process (this binary with `--serve`) plays the server as cheaply as it can: one
//! mio loop, two listeners (backlog 4096), and fixed-size answers. The parent plays the
//! clients the same way: per client, one assign request/answer over one of K keep-alive
//! connections, then a new TCP connection that sends an upgrade-sized request and reads a
//! 101-sized answer, and stays open. Sizes follow pushgate's flow (assign 150 B -> 400 B,
//! upgrade 250 B -> 129 B). Nothing is parsed, hashed, logged or allocated per client
//! beyond the socket, so what is left is the kernel's TCP work (on loopback the peer's
//! processing is charged to the sender) plus a minimal event loop on each side.
//!
//!   connect-floor [--clients N=18000] [--assign-connections K=32] [--source-ips S=40] [--json]
//!
//! Clients connect from 127.0.1.1 .. 127.0.1.S (as `loadgen --source-ips`). K=0 skips the assign exchange (64 connects in flight instead). Needs an open-file limit
//! above N + K + 100 (each process holds one side of every connection).

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{BufRead, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

// mimalloc, as in the gateway and worker, is the global allocator of `pushgate_benches`.
use pushgate_benches::arg;

const ASSIGN_REQ: usize = 150;
const ASSIGN_RESP: usize = 400;
const WS_REQ: usize = 250;
const WS_RESP: usize = 129;
/// Connects in flight when there is no assign exchange to pace them.
const WINDOW: usize = 64;
const WS_LISTENER: Token = Token(usize::MAX - 1);
const ASSIGN_LISTENER: Token = Token(usize::MAX - 2);
/// Client side: assign connection `j` has token `ASSIGN_BASE + j`.
const ASSIGN_BASE: usize = 1 << 40;

fn listener() -> TcpListener {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.set_reuse_address(true).expect("reuseaddr");
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .expect("bind");
    s.listen(4096).expect("listen");
    s.set_nonblocking(true).expect("nonblocking");
    TcpListener::from_std(s.into())
}

/// Reads everything available; returns the byte count, or None at EOF or error.
fn drain(s: &mut TcpStream, buf: &mut [u8]) -> Option<usize> {
    let mut total = 0;
    loop {
        match s.read(buf) {
            Ok(0) => return None,
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Some(total),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

fn send(s: &mut TcpStream, msg: &[u8]) {
    let n = s.write(msg).expect("write");
    assert_eq!(
        n,
        msg.len(),
        "a small write on a fresh socket is taken whole"
    );
}

/// The server process: answers every assign request and every upgrade request, keeps
/// every connection open, until the parent kills it.
fn serve() {
    let mut ws = listener();
    let mut assign = listener();
    let mut poll = Poll::new().expect("poll");
    poll.registry()
        .register(&mut ws, WS_LISTENER, Interest::READABLE)
        .unwrap();
    poll.registry()
        .register(&mut assign, ASSIGN_LISTENER, Interest::READABLE)
        .unwrap();
    println!(
        "{} {}",
        ws.local_addr().unwrap().port(),
        assign.local_addr().unwrap().port()
    );
    std::io::stdout().flush().unwrap();
    // (stream, is assign, bytes read: assign requests not yet answered / upgrade so far)
    let mut conns: Vec<Option<(TcpStream, bool, usize)>> = Vec::new();
    let (resp_a, resp_w) = (vec![b'a'; ASSIGN_RESP], vec![b'w'; WS_RESP]);
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = Events::with_capacity(1024);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            assert_eq!(e.kind(), ErrorKind::Interrupted, "poll: {e}");
        }
        for ev in events.iter() {
            let t = ev.token();
            if t == WS_LISTENER || t == ASSIGN_LISTENER {
                let l = if t == WS_LISTENER { &ws } else { &assign };
                while let Ok((mut s, _)) = l.accept() {
                    let key = conns.len();
                    poll.registry()
                        .register(&mut s, Token(key), Interest::READABLE)
                        .unwrap();
                    conns.push(Some((s, t == ASSIGN_LISTENER, 0)));
                }
                continue;
            }
            let Some((s, is_assign, pending)) = conns[t.0].as_mut() else {
                continue;
            };
            let Some(n) = drain(s, &mut buf) else {
                conns[t.0] = None;
                continue;
            };
            let before = *pending;
            *pending += n;
            if *is_assign {
                while *pending >= ASSIGN_REQ {
                    *pending -= ASSIGN_REQ;
                    send(s, &resp_a);
                }
            } else if before < WS_REQ && *pending >= WS_REQ {
                send(s, &resp_w);
            }
        }
    }
}

/// Source address of client `i`: 127.0.1.1 .. 127.0.1.`sources`, round robin.
fn source(i: usize, sources: usize) -> std::net::IpAddr {
    std::net::Ipv4Addr::new(127, 0, 1, (i % sources + 1) as u8).into()
}

/// A non-blocking connect from `src` (as loadgen does: bound without a port,
/// `IP_BIND_ADDRESS_NO_PORT`, so the kernel picks the port per 4-tuple at connect).
fn connect_from(src: std::net::IpAddr, dst: SocketAddr) -> TcpStream {
    use std::os::fd::AsRawFd;
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .expect("socket (open-file limit?)");
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    s.bind(&SocketAddr::new(src, 0).into()).expect("bind");
    s.set_nonblocking(true).expect("nonblocking");
    s.set_tcp_nodelay(true).expect("nodelay");
    match s.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => panic!("connect: {e}"),
    }
    TcpStream::from_std(s.into())
}

fn proc_cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces): utime and stime are 14, 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks * 1e6 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn self_cpu_us() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Where an assign answer ends in `buf` (head + Content-Length body), if it is whole.
fn http_response_len(buf: &[u8]) -> Option<usize> {
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = std::str::from_utf8(&buf[..head]).expect("response head");
    let len = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .expect("Content-Length");
    (buf.len() >= head + len).then_some(head + len)
}

/// The worker address and request path of the `ws_url` in an assign answer.
fn ws_target(resp: &[u8]) -> (SocketAddr, String) {
    let text = std::str::from_utf8(resp).expect("assign answer");
    assert!(text.starts_with("HTTP/1.1 200"), "assign: {text}");
    let url = text
        .split("\"ws_url\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("ws_url");
    let rest = url.strip_prefix("ws://").expect("ws:// url");
    let (host, path) = rest.split_at(rest.find('/').expect("path"));
    (host.parse().expect("worker address"), path.to_owned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "connect-floor [--clients N=18000] [--assign-connections K=32] [--source-ips S=40] [--json]\n\
             connect-floor --gateway 127.0.0.1:PORT [--server-pids P,P] [...]  (real HTTP + WebSocket)"
        );
        return;
    }
    if args.iter().any(|a| a == "--serve") {
        return serve();
    }
    let n = arg(&args, "--clients", 18000);
    let sources = arg(&args, "--source-ips", 40).clamp(1, 254);
    let json = args.iter().any(|a| a == "--json");
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let gateway: Option<SocketAddr> = opt("--gateway").map(|g| g.parse().expect("--gateway"));
    let k = arg(&args, "--assign-connections", 32);
    assert!(
        gateway.is_none() || k > 0,
        "--gateway needs assign connections"
    );

    // The floor's own server process, or the pushgate processes named.
    let mut child = None;
    let (ws_addr, assign_addr, server_pids) = match gateway {
        Some(g) => {
            let pids = opt("--server-pids")
                .map(|v| {
                    v.split(',')
                        .map(|p| p.parse::<u32>().expect("pid"))
                        .collect()
                })
                .unwrap_or_default();
            (g, g, pids)
        }
        None => {
            let mut c = std::process::Command::new(std::env::current_exe().expect("exe"))
                .arg("--serve")
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("start the server process");
            let mut line = String::new();
            std::io::BufReader::new(c.stdout.take().unwrap())
                .read_line(&mut line)
                .expect("server ports");
            let ports: Vec<u16> = line
                .split_whitespace()
                .map(|p| p.parse().unwrap())
                .collect();
            let pids = vec![c.id()];
            child = Some(c);
            (
                SocketAddr::from(([127, 0, 0, 1], ports[0])),
                SocketAddr::from(([127, 0, 0, 1], ports[1])),
                pids,
            )
        }
    };
    let server_cpu = || server_pids.iter().map(|&p| proc_cpu_us(p)).sum::<f64>();

    let mut poll = Poll::new().expect("poll");
    // (stream, client waiting for its answer, answer bytes so far)
    let mut assigns: Vec<(TcpStream, usize, Vec<u8>)> = (0..k)
        .map(|j| {
            let s = std::net::TcpStream::connect(assign_addr).expect("assign connect");
            s.set_nodelay(true).unwrap();
            s.set_nonblocking(true).unwrap();
            let mut s = TcpStream::from_std(s);
            poll.registry()
                .register(&mut s, Token(ASSIGN_BASE + j), Interest::READABLE)
                .unwrap();
            (s, usize::MAX, Vec::new())
        })
        .collect();
    let mut clients: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    // Gateway mode: each client's upgrade request, from its assign answer.
    let mut upgrades: Vec<Vec<u8>> = vec![Vec::new(); n];
    let assign_req = |i: usize| -> Vec<u8> {
        match gateway {
            Some(g) => {
                format!("GET /v1/assign?channel=cf-{i} HTTP/1.1\r\nHost: {g}\r\n\r\n").into_bytes()
            }
            None => vec![b'A'; ASSIGN_REQ],
        }
    };
    let req_w = vec![b'W'; WS_REQ];
    let mut got = vec![0u16; n];
    let mut buf = vec![0u8; 64 * 1024];
    let (mut next, mut done) = (0usize, 0usize);

    let connect = |i: usize, to: SocketAddr, poll: &Poll, clients: &mut Vec<Option<TcpStream>>| {
        let mut s = connect_from(source(i, sources), to);
        poll.registry()
            .register(&mut s, Token(i), Interest::WRITABLE)
            .unwrap();
        clients[i] = Some(s);
    };

    let (t0, cpu0, srv0) = (Instant::now(), self_cpu_us(), server_cpu());
    if k == 0 {
        while next < n.min(WINDOW) {
            connect(next, ws_addr, &poll, &mut clients);
            next += 1;
        }
    } else {
        for a in assigns.iter_mut() {
            if next < n {
                send(&mut a.0, &assign_req(next));
                a.1 = next;
                next += 1;
            }
        }
    }
    let mut events = Events::with_capacity(1024);
    while done < n {
        if let Err(e) = poll.poll(&mut events, Some(std::time::Duration::from_secs(10))) {
            assert_eq!(e.kind(), ErrorKind::Interrupted, "poll: {e}");
        }
        assert!(!events.is_empty(), "stalled at {done} of {n} clients");
        for ev in events.iter() {
            let t = ev.token().0;
            if t >= ASSIGN_BASE {
                let a = &mut assigns[t - ASSIGN_BASE];
                let r = drain(&mut a.0, &mut buf).expect("assign connection closed");
                a.2.extend_from_slice(&buf[..r]);
                let whole = match gateway {
                    Some(_) => http_response_len(&a.2),
                    None => (a.2.len() >= ASSIGN_RESP).then_some(ASSIGN_RESP),
                };
                if let Some(len) = whole {
                    let i = a.1;
                    let to = match gateway {
                        Some(_) => {
                            let (to, path) = ws_target(&a.2[..len]);
                            upgrades[i] = format!(
                                "GET {path} HTTP/1.1\r\nHost: {to}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                            )
                            .into_bytes();
                            to
                        }
                        None => ws_addr,
                    };
                    a.2.drain(..len);
                    if next < n {
                        send(&mut a.0, &assign_req(next));
                        a.1 = next;
                        next += 1;
                    }
                    connect(i, to, &poll, &mut clients);
                }
                continue;
            }
            let s = clients[t].as_mut().expect("client socket");
            if ev.is_writable() && got[t] == 0 {
                if let Some(e) = s.take_error().unwrap() {
                    panic!("connect: {e}");
                }
                send(
                    s,
                    if gateway.is_some() {
                        &upgrades[t]
                    } else {
                        &req_w
                    },
                );
                upgrades[t] = Vec::new();
                got[t] = 1;
                poll.registry()
                    .reregister(s, Token(t), Interest::READABLE)
                    .unwrap();
            }
            if ev.is_readable() {
                let r = drain(s, &mut buf).expect("server closed a connection");
                let whole = match gateway {
                    // The 101 head arrives in one segment; check its status line.
                    Some(_) => {
                        let head = &buf[..r];
                        if got[t] == 1 {
                            assert!(
                                head.starts_with(b"HTTP/1.1 101"),
                                "upgrade: {}",
                                String::from_utf8_lossy(head)
                            );
                        }
                        head.windows(4).any(|w| w == b"\r\n\r\n")
                    }
                    None => got[t] as usize + r > WS_RESP,
                };
                got[t] = got[t].saturating_add(r as u16);
                if whole {
                    poll.registry().deregister(s).unwrap();
                    done += 1;
                    if k == 0 && next < n {
                        connect(next, ws_addr, &poll, &mut clients);
                        next += 1;
                    }
                }
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let client_us = (self_cpu_us() - cpu0) / n as f64;
    let server_us = (server_cpu() - srv0) / n as f64;
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
    let rate = n as f64 / secs;
    let target = if gateway.is_some() {
        "pushgate"
    } else {
        "floor"
    };
    if json {
        println!(
            r#"{{"target":"{target}","clients":{n},"assign_connections":{k},"secs":{secs:.3},"rate_per_sec":{rate:.0},"client_cpu_us_per_connect":{client_us:.1},"server_cpu_us_per_connect":{server_us:.1}}}"#
        );
    } else {
        println!(
            "connect-floor {target} clients={n} assign-connections={k}: {rate:.0} connects/s ({secs:.2} s); CPU per connect: clients {client_us:.1} µs, server {server_us:.1} µs, total {:.1} µs",
            client_us + server_us
        );
    }
}
