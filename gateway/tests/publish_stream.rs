//! `POST /v1/publish?stream=1` against a real gateway and worker on port 0: lines published
//! as they come over one long-lived chunked request, each answered with its seq on the
//! same connection while the request is still open, and delivered to real WebSocket
//! subscribers in order; bad and oversized lines answered without ending the stream; the
//! idle bound; refusals before the stream opens. `publish_stream_redis.rs` runs the same
//! code on the Redis store.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// One publish stream as a client holds it: a raw socket, the request body sent chunk by
/// chunk, the answer read (de-chunked) line by line.
struct PubStream {
    s: TcpStream,
    /// Raw answer bytes not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked answer bytes not yet split into lines.
    text: Vec<u8>,
    ended: bool,
}

impl PubStream {
    /// Opens the stream; the answer's status and head.
    async fn open(gateway: SocketAddr, headers: &str) -> (PubStream, u16, String) {
        let mut s = TcpStream::connect(gateway).await.unwrap();
        let head = format!(
            "POST /v1/publish?stream=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n{headers}\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut p = PubStream {
            s,
            raw: Vec::new(),
            text: Vec::new(),
            ended: false,
        };
        let end = loop {
            if let Some(i) = p.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            p.read_more().await;
        };
        let head = String::from_utf8_lossy(&p.raw[..end]).into_owned();
        p.raw.drain(..end + 4);
        let status = head[9..12].parse().unwrap();
        (p, status, head)
    }

    async fn read_more(&mut self) {
        let mut buf = [0u8; 16 * 1024];
        let n = tokio::time::timeout(WAIT, self.s.read(&mut buf))
            .await
            .expect("the gateway answered in time")
            .unwrap();
        assert!(n > 0, "the gateway closed the connection");
        self.raw.extend_from_slice(&buf[..n]);
    }

    /// Sends `bytes` as one chunk of the request body.
    async fn send(&mut self, bytes: &[u8]) {
        let mut chunk = format!("{:x}\r\n", bytes.len()).into_bytes();
        chunk.extend_from_slice(bytes);
        chunk.extend_from_slice(b"\r\n");
        self.s.write_all(&chunk).await.unwrap();
    }

    /// Ends the request body.
    async fn finish(&mut self) {
        self.s.write_all(b"0\r\n\r\n").await.unwrap();
    }

    /// The next answer line (None once the answer ended).
    async fn line(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.text.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.text.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).expect("an answer line is JSON"));
            }
            if self.ended {
                return None;
            }
            // De-chunk what is there.
            if let Some(i) = self.raw.windows(2).position(|w| w == b"\r\n") {
                let size = usize::from_str_radix(std::str::from_utf8(&self.raw[..i]).unwrap(), 16)
                    .expect("a chunk size");
                if self.raw.len() >= i + 2 + size + 2 {
                    self.text.extend_from_slice(&self.raw[i + 2..i + 2 + size]);
                    self.raw.drain(..i + 2 + size + 2);
                    self.ended = size == 0;
                    continue;
                }
            }
            self.read_more().await;
        }
    }
}

async fn streams_open(c: &Cluster) -> f64 {
    let r = c.admin_get("/metrics").await;
    String::from_utf8_lossy(&r.body)
        .lines()
        .find_map(|l| l.strip_prefix("pushgate_publish_streams_open "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the gauge is exposed")
}

fn line(channel: &str, data: Value) -> String {
    format!("{}\n", json!({"channel": channel, "data": data}))
}

// One test, its parts one after the other: the open-streams gauge is the process's.
#[tokio::test]
async fn publish_streams() {
    lines_are_published_and_answered_as_they_come().await;
    an_idle_stream_is_closed_with_a_reason_and_refusals_come_before_it_opens().await;
}

async fn lines_are_published_and_answered_as_they_come() {
    let c = start(&["--max-message-bytes", "1024"], 1, &[]).await;
    let mut ws = c.ws("st", None).await;
    let (mut p, status, head) =
        PubStream::open(c.gateway, "Content-Type: application/x-ndjson\r\n").await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/x-ndjson"),
        "{head}"
    );

    // One line, answered and delivered while the request is still open.
    p.send(line("st", json!(1)).as_bytes()).await;
    assert_eq!(p.line().await.unwrap(), json!({"line": 1, "seq": 1}));
    assert_eq!(next_json(&mut ws).await, json!({"seq": 1, "data": 1}));
    assert_eq!(streams_open(&c).await, 1.0);

    // Two lines and the start of a third in one chunk; its end, a blank line, a bad line
    // and a good one in the next.
    let third = line("st", json!({"n": 4}));
    let (a, b) = third.split_at(10);
    let chunk = format!("{}{}{a}", line("st", json!(2)), line("st", json!("three")));
    p.send(chunk.as_bytes()).await;
    assert_eq!(p.line().await.unwrap(), json!({"line": 2, "seq": 2}));
    assert_eq!(p.line().await.unwrap(), json!({"line": 3, "seq": 3}));
    p.send(format!("{b}\n{{not json\n{}", line("st", json!(5))).as_bytes())
        .await;
    assert_eq!(p.line().await.unwrap(), json!({"line": 4, "seq": 4}));
    let bad = p.line().await.unwrap();
    assert_eq!(bad["line"], 6, "{bad}");
    assert!(
        bad["error"].as_str().unwrap().contains("invalid JSON"),
        "{bad}"
    );
    assert_eq!(p.line().await.unwrap(), json!({"line": 7, "seq": 5}));

    // A line over the limit (--max-message-bytes + 4096), in pieces: skipped to its end and
    // answered, and the stream goes on.
    let big = "x".repeat(3000);
    for _ in 0..3 {
        p.send(format!("{{\"channel\":\"st\",\"data\":\"{big}").as_bytes())
            .await;
    }
    p.send(format!("\"}}\n{}", line("st", json!(6))).as_bytes())
        .await;
    let over = p.line().await.unwrap();
    assert_eq!(over["line"], 8, "{over}");
    assert!(
        over["error"].as_str().unwrap().contains("exceeds"),
        "{over}"
    );
    assert_eq!(p.line().await.unwrap(), json!({"line": 9, "seq": 6}));

    // Another channel in the same stream, and a last line without its newline.
    p.send(line("other", json!(1)).as_bytes()).await;
    assert_eq!(p.line().await.unwrap(), json!({"line": 10, "seq": 1}));
    p.send(line("st", json!(7)).trim_end().as_bytes()).await;
    p.finish().await;
    assert_eq!(p.line().await.unwrap(), json!({"line": 11, "seq": 7}));
    assert_eq!(
        p.line().await.unwrap(),
        json!({"accepted": 8, "rejected": 2})
    );
    assert_eq!(p.line().await, None, "the answer ends with the body");

    for (seq, data) in [
        (2, json!(2)),
        (3, json!("three")),
        (4, json!({"n": 4})),
        (5, json!(5)),
        (6, json!(6)),
        (7, json!(7)),
    ] {
        assert_eq!(next_json(&mut ws).await, json!({"seq": seq, "data": data}));
    }
    assert_quiet(&mut ws, 200).await;
    let deadline = Instant::now() + WAIT;
    while streams_open(&c).await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the stream's gauge never went back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.stop().await;
}

async fn an_idle_stream_is_closed_with_a_reason_and_refusals_come_before_it_opens() {
    let c = start(
        &["--publish-stream-idle-secs", "1", "--publisher-key", "k"],
        1,
        &[],
    )
    .await;
    let ndjson = "Content-Type: application/x-ndjson\r\n";
    let (_, status, _) = PubStream::open(c.gateway, ndjson).await;
    assert_eq!(status, 401, "no publisher key");
    let auth = "Authorization: Bearer k\r\n";
    let (_, status, _) = PubStream::open(c.gateway, auth).await;
    assert_eq!(status, 415, "not NDJSON");

    let (mut p, status, _) = PubStream::open(c.gateway, &format!("{auth}{ndjson}")).await;
    assert_eq!(status, 200);
    p.send(line("idle", json!("a")).as_bytes()).await;
    assert_eq!(p.line().await.unwrap(), json!({"line": 1, "seq": 1}));
    // A blank line is a keep-alive: no answer, and it holds the stream open.
    let t = Instant::now();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        p.send(b"\n").await;
    }
    p.send(line("idle", json!("b")).as_bytes()).await;
    assert_eq!(p.line().await.unwrap(), json!({"line": 5, "seq": 2}));
    assert!(t.elapsed() > Duration::from_secs(1));
    // Then silence: the gateway ends it after the idle bound, saying why.
    let t = Instant::now();
    let end = p.line().await.unwrap();
    assert_eq!(end["error"], "request_timeout", "{end}");
    assert_eq!(
        (end["accepted"].clone(), end["rejected"].clone()),
        (json!(2), json!(0))
    );
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(p.line().await, None);
    c.stop().await;
}
