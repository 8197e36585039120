//! Helpers for the gateway's link tests: start `gateway::run` on 127.0.0.1:0, a raw HTTP/1.1
//! client, and a fake worker speaking the link protocol over a plain TcpStream.
#![allow(dead_code)]

use bytes::BytesMut;
use clap::Parser;
use protocol::link::{split_frame, Down, Hello, Up};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(10);

/// A running gateway.
pub struct Gw {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Gw {
    pub async fn start(args: &[&str]) -> Gw {
        let mut all = vec!["gateway"];
        all.extend_from_slice(args);
        let config = gateway::Config::try_parse_from(all).expect("test flags parse");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(gateway::run(listener, config, shutdown.clone()));
        Gw {
            addr,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("gateway stops in time")
            .unwrap()
            .unwrap();
    }

    pub async fn get(&self, path: &str) -> Resp {
        http(self.addr, "GET", path, &[], b"").await
    }

    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        http(self.addr, "POST", path, headers, body).await
    }

    /// Publishes `1..=n` to `channel` in one NDJSON batch and checks all were accepted.
    pub async fn publish_numbered(&self, channel: &str, n: u64) {
        let mut body = String::new();
        for i in 1..=n {
            body.push_str(&format!("{{\"channel\":\"{channel}\",\"data\":{i}}}\n"));
        }
        let r = self
            .post(
                "/v1/publish",
                &[("Content-Type", "application/x-ndjson")],
                body.as_bytes(),
            )
            .await;
        assert_eq!(r.json()["accepted"], n);
    }

    pub async fn worker(&self, id: &str, addrs: &[&str], capacity: u64) -> FakeWorker {
        let mut w = FakeWorker::connect(self.addr).await;
        w.hello(id, addrs, capacity).await;
        w
    }

    /// Value of an unlabelled (or summed) metric from /metrics.
    pub async fn metric(&self, name: &str) -> f64 {
        let r = self.get("/metrics").await;
        let text = r.text();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A response from [`http`].
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" || !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    // The server may answer (e.g. 413) before reading the body; ignore write errors then.
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("response in time");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// A worker as the gateway sees it: link upgrade, then frames.
pub struct FakeWorker {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl FakeWorker {
    pub async fn connect(addr: SocketAddr) -> FakeWorker {
        Self::connect_with_key(addr, None).await
    }

    /// [`Self::connect`] presenting `link_key`.
    pub async fn connect_with_key(addr: SocketAddr, link_key: Option<&str>) -> FakeWorker {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = protocol::link::upgrade_request(&addr.to_string(), link_key);
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
                let _ = buf.split_to(end + 4);
                break;
            }
            let n = tokio::time::timeout(WAIT, stream.read_buf(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "gateway closed during upgrade");
        }
        FakeWorker { stream, buf }
    }

    pub async fn send(&mut self, up: Up) {
        let mut out = Vec::new();
        up.encode(&mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    pub async fn hello(&mut self, id: &str, addrs: &[&str], capacity: u64) {
        self.send(Up::Hello(Hello {
            id: id.into(),
            incarnation: 1,
            addrs: addrs.iter().map(|a| a.to_string()).collect(),
            capacity,
            connections: 0,
            tls_addrs: vec![],
            wants_ticket_keys: false,
        }))
        .await;
        match self.recv().await {
            Down::Welcome { .. } => {}
            other => panic!("expected Welcome, got {other:?}"),
        }
        // A real worker sends its first Load once its side of the link is up; until then
        // the gateway lists it as `starting` and assigns it no clients.
        self.send(Up::Load { connections: 0 }).await;
    }

    /// Says Hello asking for the fleet's ticket keys; the `TicketKeys` frame that follows
    /// the Welcome.
    pub async fn hello_wanting_ticket_keys(&mut self, id: &str) -> Down {
        self.send(Up::Hello(Hello {
            id: id.into(),
            incarnation: 1,
            addrs: vec!["127.0.0.9:1".into()],
            capacity: 10,
            connections: 0,
            tls_addrs: vec!["localhost:1".into()],
            wants_ticket_keys: true,
        }))
        .await;
        match self.recv().await {
            Down::Welcome { .. } => {}
            other => panic!("expected Welcome, got {other:?}"),
        }
        loop {
            match self.recv().await {
                d @ Down::TicketKeys { .. } => return d,
                // A store resync told to every link may come first.
                Down::ResubscribeAll => continue,
                other => panic!("expected TicketKeys, got {other:?}"),
            }
        }
    }

    pub async fn subscribe(
        &mut self,
        sub_id: u64,
        channel: &str,
        since: Option<u64>,
        epoch: Option<u64>,
    ) {
        self.subscribe_asked_at(sub_id, channel, since, epoch, 0)
            .await;
    }

    /// [`Self::subscribe`] stamped with when its client asked (µs since the Unix epoch).
    pub async fn subscribe_asked_at(
        &mut self,
        sub_id: u64,
        channel: &str,
        since: Option<u64>,
        epoch: Option<u64>,
        opened_us: u64,
    ) {
        self.send(Up::Subscribe {
            sub_id,
            since,
            epoch,
            resume: false,
            max_bytes: u32::MAX,
            channel: channel.into(),
            opened_us,
        })
        .await;
    }

    /// Next frame, or None when the gateway closed the link.
    pub async fn try_recv(&mut self) -> Option<Down> {
        loop {
            if let Some(frame) = split_frame(&mut self.buf).unwrap() {
                return Some(Down::decode(frame).unwrap());
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("a frame in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    pub async fn recv(&mut self) -> Down {
        self.try_recv().await.expect("link open")
    }

    /// Bytes read from the socket so far but not yet split into frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}
