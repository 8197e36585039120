//! `--publish-stream`: each publish connection holds one `POST /v1/publish?stream=1` open
//! for the whole phase. A message is one NDJSON line, written when it is due (lines due
//! together leave in one write); the gateway answers each line with its seq on the same
//! connection, read here by a reader task that matches answers to lines in order.

use super::{count_failed, Pacer, PublishCtx};
use crate::net::{SourceIps, Target};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// A write leaves once it holds this much, due or not.
const WRITE_AT: usize = 64 * 1024;

/// A line sent and not answered yet: its number, channel and when it was written.
type Sent = (u64, u64, Instant);

/// One stream, for the phase's duration: messages are taken from `next` (shared with the
/// other streams) on the pacer's schedule.
#[allow(clippy::too_many_arguments)]
pub async fn stream_loop(
    ctx: Arc<PublishCtx>,
    src: Arc<SourceIps>,
    base: String,
    start: tokio::time::Instant,
    end: tokio::time::Instant,
    next: Arc<AtomicU64>,
    pacer: Pacer,
    channels: u64,
) {
    let stats = &ctx.stats;
    let target = match Target::parse(&base) {
        Ok(t) => t,
        Err(_) => return stats.error("publish_stream_bad_url"),
    };
    let stream = match target.resolve().await {
        Ok(addr) => src.dial(addr, &target).await,
        Err(e) => Err(std::io::Error::other(e.to_string())),
    };
    let Ok(stream) = stream else {
        return stats.error("publish_stream_connect");
    };
    let (rd, mut wr) = tokio::io::split(stream);
    let mut head = format!(
        "POST /v1/publish?stream=1 HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n",
        target.authority()
    );
    if let Some(key) = &ctx.plan.common.publisher_key {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    head.push_str("\r\n");
    if wr.write_all(head.as_bytes()).await.is_err() {
        return stats.error("publish_stream_io");
    }
    stats.publish_requests.fetch_add(1, Ordering::Relaxed);
    let sent: Arc<Mutex<VecDeque<Sent>>> = Arc::default();
    let reader = tokio::spawn(read_answers(ctx.clone(), rd, sent.clone()));

    let mut buf = String::new();
    let mut line = 0u64;
    let mut broken = false;
    loop {
        let k = next.fetch_add(1, Ordering::Relaxed);
        let due = start + pacer.due(k);
        if due >= end {
            break;
        }
        if due > tokio::time::Instant::now() {
            if !buf.is_empty() && write_chunk(&mut wr, &mut buf).await.is_err() {
                broken = true;
                break;
            }
            tokio::select! {
                _ = ctx.stop.cancelled() => break,
                _ = tokio::time::sleep_until(due) => {}
            }
        }
        let ch = ctx.channel_of(k, channels);
        buf.push_str(&format!(
            r#"{{"channel":"{}","data":{}}}"#,
            ctx.plan.channel(ctx.channel_base + ch),
            ctx.payload(k),
        ));
        buf.push('\n');
        line += 1;
        stats.publish_attempted.fetch_add(1, Ordering::Relaxed);
        sent.lock().unwrap().push_back((line, ch, Instant::now()));
        if buf.len() >= WRITE_AT && write_chunk(&mut wr, &mut buf).await.is_err() {
            broken = true;
            break;
        }
    }
    if !broken && (buf.is_empty() || write_chunk(&mut wr, &mut buf).await.is_ok()) {
        let _ = wr.write_all(b"0\r\n\r\n").await;
    } else {
        stats.error("publish_stream_io");
    }
    let timeout = ctx.plan.common.request_timeout;
    if tokio::time::timeout(timeout, reader).await.is_err() {
        stats.error("publish_stream_timeout");
    }
    let left = sent.lock().unwrap().len() as u64;
    if left > 0 {
        count_failed(stats, "stream", "stream_unanswered", left);
    }
}

async fn write_chunk<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    buf: &mut String,
) -> std::io::Result<()> {
    let mut chunk = format!("{:x}\r\n", buf.len()).into_bytes();
    chunk.extend_from_slice(buf.as_bytes());
    chunk.extend_from_slice(b"\r\n");
    buf.clear();
    wr.write_all(&chunk).await
}

/// Reads the answer: its head, then one line per published line (matched in order),
/// until the closing line.
async fn read_answers<R: AsyncRead + Unpin>(
    ctx: Arc<PublishCtx>,
    mut rd: R,
    sent: Arc<Mutex<VecDeque<Sent>>>,
) {
    let stats = &ctx.stats;
    let mut dec = Dechunk::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Err(status) = dec.feed(&buf[..n]) {
            let n = std::mem::take(&mut *sent.lock().unwrap()).len() as u64;
            count_failed(stats, &status, &format!("http_{status}"), n.max(1));
            return;
        }
        while let Some(l) = dec.line() {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&l) else {
                stats.error("publish_bad_body");
                continue;
            };
            let Some(n) = v["line"].as_u64() else {
                // The closing line.
                if let Some(e) = v["error"].as_str() {
                    stats.error(format!("publish_stream_{e}"));
                }
                return;
            };
            let mut q = sent.lock().unwrap();
            // Lines are answered in order; one without an answer is never skipped over.
            while q.front().is_some_and(|s| s.0 < n) {
                q.pop_front();
                count_failed(stats, "stream", "stream_unanswered", 1);
            }
            let Some((_, ch, at)) = q.pop_front() else {
                stats.error("publish_stream_unknown_line");
                continue;
            };
            drop(q);
            stats.record_publish(at.elapsed().as_micros() as u64);
            match v["seq"].as_u64() {
                Some(seq) => {
                    stats.publish_status("200", 1);
                    ctx.table[ch as usize].accepted_seq(seq);
                    stats.published.fetch_add(1, Ordering::Relaxed);
                }
                None => count_failed(stats, "200", "stream_line_refused", 1),
            }
        }
    }
}

/// An HTTP/1.1 answer with a chunked body, decoded as it comes, split into lines.
#[derive(Default)]
struct Dechunk {
    raw: Vec<u8>,
    text: Vec<u8>,
    head_done: bool,
}

impl Dechunk {
    /// Takes bytes read; `Err(status)` when the answer is not a 200.
    fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.raw.extend_from_slice(bytes);
        if !self.head_done {
            let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Ok(());
            };
            let head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
            let status = head.get(9..12).unwrap_or("???").to_owned();
            if status != "200" {
                return Err(status);
            }
            self.raw.drain(..end + 4);
            self.head_done = true;
        }
        while let Some(i) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&self.raw[..i])
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .ok_or_else(|| "bad_chunk".to_owned())?;
            if self.raw.len() < i + 2 + size + 2 {
                break;
            }
            self.text.extend_from_slice(&self.raw[i + 2..i + 2 + size]);
            self.raw.drain(..i + 2 + size + 2);
        }
        Ok(())
    }

    fn line(&mut self) -> Option<Vec<u8>> {
        let i = self.text.iter().position(|&b| b == b'\n')?;
        Some(self.text.drain(..=i).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_dechunked_into_lines_across_reads() {
        let mut d = Dechunk::default();
        let all = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n13\r\n{\"line\":1,\"seq\":1}\n\r\n13\r\n{\"line\":2,\"seq\":2}\n\r\n0\r\n\r\n";
        let mut lines = Vec::new();
        for piece in all.chunks(7) {
            d.feed(piece).unwrap();
            while let Some(l) = d.line() {
                lines.push(String::from_utf8(l).unwrap());
            }
        }
        assert_eq!(
            lines,
            ["{\"line\":1,\"seq\":1}\n", "{\"line\":2,\"seq\":2}\n"]
        );
        let mut refused = Dechunk::default();
        assert_eq!(
            refused.feed(b"HTTP/1.1 401 Unauthorized\r\n\r\n"),
            Err("401".to_owned())
        );
    }
}
