//! Test harness: a fake gateway that accepts the worker's link, and a worker bound to
//! port 0 pointing at it; plus small raw-HTTP helpers.
#![allow(dead_code)]

use bytes::BytesMut;
use futures_util::StreamExt;
use protocol::link::{split_frame, Down, Up};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(10);

/// Worker flags that make a client that does not read a slow client quickly.
pub const SLOW: &[&str] = &[
    "--max-pending-bytes",
    "65536",
    "--socket-send-buffer",
    "4096",
];

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;
type WsOf<S> = tokio_tungstenite::WebSocketStream<S>;

pub async fn ws_connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("ws connect")
        .0
}

/// Next frame that is not a ping or pong (pings are answered by tungstenite itself).
async fn ws_frame<S: AsyncReadExt + AsyncWriteExt + Unpin>(ws: &mut WsOf<S>) -> Message {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("stream open")
            .expect("frame ok");
        if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
            return m;
        }
    }
}

/// Next text frame, as JSON.
pub async fn ws_text<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    ws: &mut WsOf<S>,
) -> serde_json::Value {
    match ws_frame(ws).await {
        Message::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Next close frame: (code, reason).
pub async fn ws_close<S: AsyncReadExt + AsyncWriteExt + Unpin>(ws: &mut WsOf<S>) -> (u16, String) {
    match ws_frame(ws).await {
        Message::Close(Some(f)) => (u16::from(f.code), f.reason.to_string()),
        Message::Close(None) => (0, String::new()),
        other => panic!("expected close, got {other:?}"),
    }
}

/// Reads whole message frames, which must be seq 1, 2, ... in order, then a close frame:
/// returns the next seq expected and the close code. No frame may be cut by the close.
pub async fn seqs_then_close<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    ws: &mut WsOf<S>,
) -> (u64, u16) {
    let mut expect = 1;
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the close must arrive")
            .expect("stream ended without a close frame")
            .expect("a broken frame");
        match m {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["seq"], expect);
                expect += 1;
            }
            Message::Close(Some(f)) => return (expect, u16::from(f.code)),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

/// A metric's value from the worker's `/metrics`.
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let r = get(addr, "/metrics").await;
    let text = String::from_utf8(r.body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing"))
}

/// Listens like a gateway; each accepted link is handed to the test.
pub struct FakeGateway {
    pub addr: SocketAddr,
    links: mpsc::UnboundedReceiver<FakeLink>,
}

/// One accepted link: Up frames the worker sent, and a way to send Down frames.
pub struct FakeLink {
    ups: mpsc::UnboundedReceiver<Up>,
    stash: std::collections::VecDeque<Up>,
    wr: Option<OwnedWriteHalf>,
    reader: tokio::task::JoinHandle<()>,
}

impl FakeGateway {
    pub async fn start() -> FakeGateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, links) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = BytesMut::new();
                loop {
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = buf.split_to(p + 4);
                        let head = String::from_utf8_lossy(&head).to_string();
                        assert!(head.starts_with("GET /v1/link HTTP/1.1\r\n"), "{head}");
                        assert!(
                            head.contains(&format!("Upgrade: {}", protocol::link::LINK_UPGRADE)),
                            "{head}"
                        );
                        break;
                    }
                    if s.read_buf(&mut buf).await.unwrap() == 0 {
                        return;
                    }
                }
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {}\r\n\r\n",
                    protocol::link::LINK_UPGRADE
                );
                s.write_all(answer.as_bytes()).await.unwrap();
                let (mut rd, wr) = s.into_split();
                let (up_tx, ups) = mpsc::unbounded_channel();
                let reader = tokio::spawn(async move {
                    loop {
                        while let Ok(Some(f)) = split_frame(&mut buf) {
                            if up_tx.send(Up::decode(f).unwrap()).is_err() {
                                return;
                            }
                        }
                        match rd.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                });
                if tx
                    .send(FakeLink {
                        ups,
                        stash: Default::default(),
                        wr: Some(wr),
                        reader,
                    })
                    .is_err()
                {
                    return;
                }
            }
        });
        FakeGateway { addr, links }
    }

    /// Waits for the worker's next link and completes Hello/Welcome; returns once the
    /// worker has marked the link up (its first Load follows the Welcome).
    pub async fn accept(&mut self) -> (FakeLink, protocol::link::Hello) {
        let mut link = tokio::time::timeout(WAIT, self.links.recv())
            .await
            .expect("worker dialled the gateway")
            .unwrap();
        let hello = match link.next_any().await {
            Up::Hello(h) => h,
            other => panic!("expected Hello, got {other:?}"),
        };
        link.send(Down::Welcome {
            gateway_id: "fake".into(),
        })
        .await;
        // The first Load is written after the worker marked the link up; frames queued
        // before it (re-subscriptions) are kept for the test.
        let mut early = std::collections::VecDeque::new();
        loop {
            match link.next_any().await {
                Up::Load { .. } => break,
                other => early.push_back(other),
            }
        }
        link.stash = early;
        (link, hello)
    }
}

impl FakeLink {
    /// The next Up frame, Loads included.
    pub async fn next_any(&mut self) -> Up {
        if let Some(up) = self.stash.pop_front() {
            return up;
        }
        tokio::time::timeout(WAIT, self.ups.recv())
            .await
            .expect("an Up frame in time")
            .expect("link open")
    }

    /// The next Up frame that is not a Load.
    pub async fn next(&mut self) -> Up {
        loop {
            match self.next_any().await {
                Up::Load { .. } => continue,
                other => return other,
            }
        }
    }

    /// The next frame, expected to be a Subscribe: `(sub_id, since, epoch, channel)`.
    pub async fn subscribed(&mut self) -> (u64, Option<u64>, Option<u64>, String) {
        match self.next().await {
            Up::Subscribe {
                sub_id,
                since,
                epoch,
                channel,
                ..
            } => (sub_id, since, epoch, channel),
            other => panic!("expected Subscribe, got {other:?}"),
        }
    }

    pub async fn send(&mut self, d: Down) {
        let mut out = Vec::new();
        d.encode(&mut out);
        self.wr.as_mut().unwrap().write_all(&out).await.unwrap();
    }

    pub async fn send_all(&mut self, ds: Vec<Down>) {
        let mut out = Vec::new();
        for d in ds {
            d.encode(&mut out);
        }
        self.wr.as_mut().unwrap().write_all(&out).await.unwrap();
    }

    /// Closes the link from the gateway side.
    pub fn close(&mut self) {
        self.reader.abort();
        self.wr.take();
    }
}

/// A running worker pointed at a fake gateway.
pub struct Harness {
    pub gw: FakeGateway,
    pub link: FakeLink,
    pub addr: SocketAddr,
    /// The first `--listen-tls` address, if the worker has one.
    pub tls_addr: Option<SocketAddr>,
    pub hello: protocol::link::Hello,
    pub shutdown: CancellationToken,
    handle: Option<worker::WorkerHandle>,
}

impl Harness {
    pub async fn start(extra: &[&str]) -> Harness {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let mut gw = FakeGateway::start().await;
        let gateway = format!("http://{}", gw.addr);
        let mut args = vec![
            "worker",
            "--gateway",
            &gateway,
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--id",
            "test-worker",
        ];
        args.extend_from_slice(extra);
        let config = worker::Config::parse_from_args(args).unwrap();
        let w = worker::Worker::bind(config).unwrap();
        let addr = w.local_addrs()[0];
        let tls_addr = w.local_tls_addrs().first().copied();
        let shutdown = CancellationToken::new();
        let handle = w.start(shutdown.clone());
        let (link, hello) = gw.accept().await;
        assert_eq!(hello.id, "test-worker");
        assert_eq!(hello.addrs, vec![addr.to_string()]);
        Harness {
            gw,
            link,
            addr,
            tls_addr,
            hello,
            shutdown,
            handle: Some(handle),
        }
    }

    /// Cancels and waits for every worker thread.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let h = self.handle.take().unwrap();
        tokio::task::spawn_blocking(move || h.wait()).await.unwrap();
    }

    /// Drops the current link and completes the worker's reconnect.
    pub async fn relink(&mut self) {
        self.link.close();
        let (link, _) = self.gw.accept().await;
        self.link = link;
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/v1/ws?{query}", self.addr)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Reads one response: the head, then Content-Length bytes (or up to EOF without one).
/// Bytes after it stay in `buf`.
pub async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Response {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(buf[..p + 4].to_vec()).unwrap();
                let status: u16 = head[9..12].parse().unwrap();
                let mut r = Response {
                    status,
                    head,
                    body: Vec::new(),
                };
                buf.drain(..p + 4);
                match r.header("content-length") {
                    Some(n) => {
                        let n: usize = n.parse().unwrap();
                        while buf.len() < n {
                            let mut chunk = [0u8; 4096];
                            let k = s.read(&mut chunk).await.unwrap();
                            assert!(k > 0, "EOF inside a body");
                            buf.extend_from_slice(&chunk[..k]);
                        }
                        r.body = buf.drain(..n).collect();
                    }
                    None => {
                        s.read_to_end(buf).await.unwrap();
                        r.body = std::mem::take(buf);
                    }
                }
                return r;
            }
            let mut chunk = [0u8; 4096];
            let k = s.read(&mut chunk).await.unwrap();
            assert!(
                k > 0,
                "EOF before a response head: {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..k]);
        }
    })
    .await
    .expect("a response in time")
}

/// Sends one request on a new connection and reads the response.
pub async fn request(addr: SocketAddr, raw: &str) -> Response {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    read_response(&mut s, &mut buf).await
}

/// A connection to `addr` from source IP `src` (any of 127/8 on loopback).
pub async fn connect_from(src: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    let sock = match src {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .unwrap();
    sock.bind(SocketAddr::new(src, 0)).unwrap();
    sock.connect(addr).await.unwrap()
}

/// `GET path` with `Connection: close`, from source IP `src`.
pub async fn get_from(src: std::net::IpAddr, addr: SocketAddr, path: &str) -> Response {
    let mut s = connect_from(src, addr).await;
    let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    read_response(&mut s, &mut buf).await
}

/// `GET path` with `Connection: close`.
pub async fn get(addr: SocketAddr, path: &str) -> Response {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// Reads from `s` until `buf` holds `needle`; returns everything up to and including it.
pub async fn read_until<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    needle: &[u8],
) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(p) = buf.windows(needle.len()).position(|w| w == needle) {
                let out: Vec<u8> = buf.drain(..p + needle.len()).collect();
                return String::from_utf8(out).unwrap();
            }
            let mut chunk = [0u8; 4096];
            let k = s.read(&mut chunk).await.unwrap();
            assert!(
                k > 0,
                "EOF while waiting for {:?}; have {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..k]);
        }
    })
    .await
    .expect("expected bytes in time")
}
