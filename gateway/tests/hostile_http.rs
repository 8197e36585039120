//! Hostile HTTP clients against a real gateway on port 0, over raw TCP (issue 12): what a
//! request that never finishes or breaks the protocol gets back, and that the connection is
//! closed after it, on a fresh connection and on a keep-alive one.

mod link_support;

use link_support::*;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response read off a raw connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} / {:?}",
                self.head,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A raw client connection: whatever it was sent, the responses read back one by one.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(gw: &Gw) -> Raw {
        Raw {
            s: TcpStream::connect(gw.addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        // The gateway may answer and close before it has read everything; that is fine.
        let _ = self.s.write_all(bytes).await;
    }

    /// The next response (head + Content-Length body), within `wait`.
    async fn answer(&mut self, wait: Duration) -> Answer {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let len: usize = head
                    .split("\r\n")
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let body = self.buf[end + 4..end + 4 + len].to_vec();
                    self.buf.drain(..end + 4 + len);
                    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                    return Answer { status, head, body };
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Err(_) => panic!(
                    "no complete response within {wait:?}; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(Err(e)) => panic!("read failed before a response: {e}"),
                Ok(Ok(n)) => n,
            };
            assert!(
                n > 0,
                "closed before a complete response; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the gateway closes the connection (EOF or reset) within `wait`, with nothing
    /// more sent.
    async fn closes(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// Asserts the contract's error shape: `{"error": code, "message": text}`.
fn assert_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(
        a.status,
        status,
        "{} / {:?}",
        a.head,
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(
        a.header("content-type"),
        Some("application/json"),
        "{}",
        a.head
    );
    let v = a.json();
    assert_eq!(v["error"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

const GOOD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";

#[tokio::test]
async fn a_stalled_body_gets_408_json_and_the_connection_closes() {
    let gw = Gw::start(&["--body-timeout-secs", "1"]).await;
    let mut c = Raw::connect(&gw).await;
    c.send(b"POST /v1/publish/x HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nab")
        .await;
    let t0 = Instant::now();
    let a = c.answer(WAIT).await;
    assert_error(&a, 408, "request_timeout");
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert!(
        c.closes(WAIT).await,
        "the connection is closed after the 408"
    );
    // The same on a keep-alive connection, after a good request.
    let mut c = Raw::connect(&gw).await;
    c.send(GOOD).await;
    assert_eq!(c.answer(WAIT).await.status, 200);
    c.send(b"POST /v1/publish/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n1")
        .await;
    assert_error(&c.answer(WAIT).await, 408, "request_timeout");
    assert!(c.closes(WAIT).await);
    // A slow body that does arrive in time is accepted.
    let mut c = Raw::connect(&gw).await;
    c.send(b"POST /v1/publish/x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n1")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send(b"2").await;
    assert_eq!(c.answer(WAIT).await.status, 202);
    gw.stop().await;
}

#[tokio::test]
async fn a_head_over_max_header_bytes_gets_431_and_the_connection_closes() {
    let gw = Gw::start(&["--max-header-bytes", "1024"]).await;
    let filler = format!("X-Filler: {}\r\n", "a".repeat(2000));
    // An unfinished head already past the limit: refused without waiting for the rest.
    let mut c = Raw::connect(&gw).await;
    c.send(format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{filler}").as_bytes())
        .await;
    assert_error(&c.answer(WAIT).await, 431, "headers_too_large");
    assert!(c.closes(WAIT).await);
    // A whole head past the limit, after a good request on the same connection.
    let mut c = Raw::connect(&gw).await;
    c.send(GOOD).await;
    assert_eq!(c.answer(WAIT).await.status, 200);
    c.send(format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{filler}\r\n").as_bytes())
        .await;
    assert_error(&c.answer(WAIT).await, 431, "headers_too_large");
    assert!(c.closes(WAIT).await);
    // Within the limit: served.
    let mut c = Raw::connect(&gw).await;
    let small = format!("X-Filler: {}\r\n", "a".repeat(800));
    c.send(format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{small}\r\n").as_bytes())
        .await;
    assert_eq!(c.answer(WAIT).await.status, 200);
    gw.stop().await;
}

/// The protocol-level errors of issue 12 defect 7: each input, the status and code it gets.
fn protocol_errors() -> Vec<(&'static str, Vec<u8>, u16, &'static str)> {
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let huge = format!("X-Filler: {}\r\n", "a".repeat(1024 * 1024));
    vec![
        (
            "a control byte in a header",
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "a bad Content-Length",
            b"POST /v1/publish/x HTTP/1.1\r\nHost: t\r\nContent-Length: 12abc\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "a duplicate Content-Length",
            b"POST /v1/publish/x HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
                .to_vec(),
            400,
            "bad_request",
        ),
        (
            "a garbage request line",
            b"\x16\x03\x01 garbage garbage\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "120 headers",
            format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{many}\r\n").into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "a 1 MiB head",
            format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{huge}\r\n").into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "a 100 KB target",
            format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(100_000)).into_bytes(),
            414,
            "uri_too_long",
        ),
    ]
}

#[tokio::test]
async fn protocol_errors_get_json_on_a_fresh_connection_and_it_closes() {
    let gw = Gw::start(&[]).await;
    for (what, input, status, code) in protocol_errors() {
        let mut c = Raw::connect(&gw).await;
        c.send(&input).await;
        let a = c.answer(WAIT).await;
        assert_eq!(a.status, status, "{what}: {}", a.head);
        assert_error(&a, status, code);
        assert_eq!(a.header("connection"), Some("close"), "{what}");
        assert!(c.closes(WAIT).await, "{what}: closed after the answer");
    }
    gw.stop().await;
}

#[tokio::test]
async fn protocol_errors_get_json_on_a_keep_alive_connection_and_it_closes() {
    let gw = Gw::start(&[]).await;
    for (what, input, status, code) in protocol_errors() {
        // After a good request and its answer.
        let mut c = Raw::connect(&gw).await;
        c.send(GOOD).await;
        assert_eq!(c.answer(WAIT).await.status, 200, "{what}");
        c.send(&input).await;
        let a = c.answer(WAIT).await;
        assert_eq!(a.status, status, "{what}: {}", a.head);
        assert_error(&a, status, code);
        assert!(c.closes(WAIT).await, "{what}: closed after the answer");
        // Pipelined behind a good request (and a publish with a body) in one write: both
        // good ones are answered in order first.
        let mut c = Raw::connect(&gw).await;
        let mut all = GOOD.to_vec();
        all.extend_from_slice(
            b"POST /v1/publish/p HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\n7",
        );
        all.extend_from_slice(&input);
        c.send(&all).await;
        assert_eq!(c.answer(WAIT).await.status, 200, "{what}");
        assert_eq!(c.answer(WAIT).await.status, 202, "{what}");
        assert_error(&c.answer(WAIT).await, status, code);
        assert!(c.closes(WAIT).await, "{what}: closed after the answer");
    }
    gw.stop().await;
}
