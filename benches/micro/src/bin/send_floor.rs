//! The kernel's cost of one small TCP send over loopback, with no server in the way: opens
//! `N` loopback connections in this process and times one `send` of `BYTES` bytes on each,
//! reading the sending thread's own CPU (`getrusage(RUSAGE_THREAD)`, user + system).
//!
//! This is the floor under any server's "CPU per delivery" on this machine: a push server
//! writes each delivery to its own socket, and on loopback the kernel also runs the
//! receiving side's TCP processing in the sender's context. Two modes:
//! - `idle`: nobody is waiting on the receiving sockets (no wake-up);
//! - `awake`: a reader thread sits in `epoll_wait` on every receiving socket and reads what
//!   arrives, as a live client would (each send also wakes it).
//!
//!   send-floor [--sockets N=5000] [--bytes B=80] [--rounds R=5] [--json]
//!
//! Prints the median over the rounds of CPU µs per send for each mode.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

// mimalloc, as in the gateway and worker, is the global allocator of `pushgate_benches`.
use pushgate_benches::arg;

fn thread_cpu_us() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Reads every receiving socket that becomes readable until `stop`; returns bytes read.
fn reader(fds: Vec<i32>, stop: Arc<AtomicBool>) -> u64 {
    // SAFETY: plain epoll calls on descriptors this process owns for the reader's lifetime.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0, "epoll_create1");
    for (i, &fd) in fds.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        assert_eq!(
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) },
            0
        );
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = [0u8; 4096];
    let mut total = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 50) };
        for ev in events.iter().take(n.max(0) as usize) {
            let fd = fds[ev.u64 as usize];
            let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if r > 0 {
                total += r as u64;
            }
        }
    }
    unsafe { libc::close(ep) };
    total
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("send-floor [--sockets N=5000] [--bytes B=80] [--rounds R=5] [--json]");
        return;
    }
    let n = arg(&args, "--sockets", 5000);
    let bytes = arg(&args, "--bytes", 80);
    let rounds = arg(&args, "--rounds", 5).max(1);
    let json = args.iter().any(|a| a == "--json");

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut senders = Vec::with_capacity(n);
    let mut receivers = Vec::with_capacity(n);
    for _ in 0..n {
        let c = TcpStream::connect(addr).expect("connect (is the open-file limit ≥ 2N?)");
        let (s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).expect("nodelay");
        c.set_nonblocking(true).expect("nonblocking");
        senders.push(s);
        receivers.push(c);
    }
    let msg = vec![b'x'; bytes];
    let mut out = Vec::new();
    for mode in ["idle", "awake"] {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = (mode == "awake").then(|| {
            let fds: Vec<i32> = receivers.iter().map(|c| c.as_raw_fd()).collect();
            let stop = stop.clone();
            std::thread::spawn(move || reader(fds, stop))
        });
        let mut per_send = Vec::new();
        for _ in 0..rounds {
            let (c0, t0) = (thread_cpu_us(), Instant::now());
            for s in &mut senders {
                s.write_all(&msg).expect("send");
            }
            let cpu = thread_cpu_us() - c0;
            let _ = t0.elapsed();
            per_send.push(cpu / n as f64);
            if mode == "idle" {
                // Empty the receiving sockets so the next round starts from the same state.
                let mut buf = vec![0u8; 4096];
                for c in &mut receivers {
                    while c.read(&mut buf).map(|r| r > 0).unwrap_or(false) {}
                }
            } else {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
        stop.store(true, Ordering::Relaxed);
        if let Some(h) = handle {
            let read = h.join().expect("reader");
            assert_eq!(read, (n * bytes * rounds) as u64, "reader missed bytes");
        }
        out.push((mode, median(per_send)));
    }
    if json {
        let modes: Vec<String> = out
            .iter()
            .map(|(m, v)| format!(r#""{m}_us_per_send":{v:.3}"#))
            .collect();
        println!(
            r#"{{"sockets":{n},"bytes":{bytes},"rounds":{rounds},{}}}"#,
            modes.join(",")
        );
    } else {
        for (mode, v) in out {
            println!("send-floor sockets={n} bytes={bytes} mode={mode}: {v:.2} µs CPU per send (median of {rounds} rounds)");
        }
    }
}
