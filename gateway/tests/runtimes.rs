//! The runtime layout the `gateway` binary uses (`gateway::runtimes`): one current-thread
//! runtime per thread, each accepting on its own SO_REUSEPORT listener of the one port.
//! Every listener answers, and shutdown drains the connections of every runtime.

use clap::Parser;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n";

/// Sends one keep-alive request and reads its answer (up to the end of the JSON body).
fn ask(s: &mut TcpStream) -> String {
    s.write_all(HEALTHZ).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"}") {
        let n = s.read(&mut buf).expect("an answer before the read timeout");
        assert!(
            n > 0,
            "closed before answering: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

#[test]
fn every_runtime_answers_on_the_one_port_and_shutdown_drains_them_all() {
    let runtimes = gateway::runtimes::Runtimes::start(3).unwrap();
    assert_eq!(runtimes.count(), 3);
    let (addr, first, more) = runtimes.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    assert_ne!(addr.port(), 0);
    assert_eq!(first.local_addr().unwrap(), addr);
    assert_eq!(more.len(), 2);
    for a in &more {
        assert_eq!(a.listener.local_addr().unwrap(), addr);
    }
    let config = gateway::Config::parse_from(["gateway", "--listen", &addr.to_string()]);
    let shutdown = CancellationToken::new();
    let server = {
        let shutdown = shutdown.clone();
        std::thread::spawn(move || {
            runtimes.block_on(gateway::run_with(first, more, config, shutdown))
        })
    };

    // The kernel spreads connections over the listeners by their addresses: 60 of them all
    // answered means every runtime accepts (one that did not would leave about a third of
    // them unanswered). They stay open, idle, on whichever runtime took them.
    let mut open: Vec<TcpStream> = (0..60)
        .map(|i| {
            let mut s = connect(addr);
            let answer = ask(&mut s);
            assert!(
                answer.starts_with("HTTP/1.1 200"),
                "connection {i}: {answer}"
            );
            s
        })
        .collect();

    let started = Instant::now();
    shutdown.cancel();
    // Idle keep-alive connections are closed by the drain, on every runtime.
    for s in &mut open {
        let mut buf = [0u8; 64];
        assert_eq!(s.read(&mut buf).expect("closed before the read timeout"), 0);
    }
    server.join().unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        started.elapsed()
    );
    // Every listener is gone with its runtime.
    assert!(TcpStream::connect(addr).is_err());
}
