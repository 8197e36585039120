//! The I/O half of [`HeadGuard`]: a thin wrapper between the socket and hyper that hands
//! hyper only bytes the guard has cleared, one message at a time.
//!
//! - A head is buffered here (at most `--max-header-bytes` of it, so a connection holding
//!   an unfinished head holds no more than that) and passed on once it is whole and
//!   acceptable; a body of known length is read straight into hyper's buffer.
//! - A refused head is never seen by hyper: hyper reads a clean end of stream instead, has
//!   nothing in flight (it reads the next head only after answering the previous request,
//!   see `half_close` in [`super::server`]), and shuts the connection down; this wrapper
//!   then writes the JSON answer, sends FIN and reads and discards what the client still
//!   sends for up to [`LINGER`] (closing with unread input would send a reset, which can
//!   destroy the answer before the client reads it).
//! - Writes pass through; the first bytes of the answer to an upgrade request tell the
//!   guard whether the stream stops being HTTP (101).
//! - [`GuardIo::into_parts`] gives the socket back with the bytes read past an upgrade.

use super::head_guard::{HeadGuard, Step};
use bytes::Bytes;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a refused connection's further input is read and discarded before it closes
/// (the worker's close linger is the same).
pub const LINGER: Duration = Duration::from_secs(2);
/// Most bytes discarded in the linger.
const LINGER_BYTES: usize = 4 * 1024 * 1024;
/// Most bytes read at once past a head (chunked bodies, pipelined requests).
const READ_CHUNK: usize = 16 * 1024;
/// A buffer larger than this is released once empty (idle keep-alive connections).
const KEEP_BUFFER: usize = 64 * 1024;

/// A socket whose request heads are checked before hyper reads them.
pub struct GuardIo<S> {
    io: S,
    guard: HeadGuard,
    max_head: usize,
    /// Bytes read from the socket and not yet handed on: `buf[start..end]`, of which the
    /// first `ready` are cleared.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    ready: usize,
    /// Nothing more is handed on (a refused head or a broken body).
    stopped: bool,
    /// A refused head's answer, written at shutdown. Boxed: only the error path pays.
    refusal: Option<Box<Refusal>>,
}

struct Refusal {
    answer: Vec<u8>,
    written: usize,
    shut: bool,
    discarded: usize,
    linger: Pin<Box<tokio::time::Sleep>>,
}

impl<S> GuardIo<S> {
    /// Wraps `io`; heads may take up to `max_head` bytes.
    pub fn new(io: S, max_head: usize) -> Self {
        GuardIo {
            io,
            guard: HeadGuard::new(max_head),
            max_head,
            buf: Vec::new(),
            start: 0,
            end: 0,
            ready: 0,
            stopped: false,
            refusal: None,
        }
    }

    /// The socket, and the bytes read from it but not handed on (after an upgrade: the
    /// first bytes of the new protocol).
    pub fn into_parts(self) -> (S, Bytes) {
        let rest = Bytes::copy_from_slice(&self.buf[self.start..self.end]);
        (self.io, rest)
    }

    /// Makes room for `want` more bytes after `end`, compacting first.
    fn make_room(&mut self, want: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > KEEP_BUFFER {
                self.buf = Vec::new();
            }
        } else if self.start > 0 && self.buf.len() - self.end < want {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < self.end + want {
            self.buf.resize(self.end + want, 0);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> GuardIo<S> {
    /// Reads more from the socket into the buffer: `Ok(0)` at its end.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let want = if self.guard.wants_head() {
            // A head never takes more than the limit here.
            self.max_head.saturating_sub(self.end - self.start).max(1)
        } else {
            READ_CHUNK
        };
        self.make_room(want);
        let mut rb = ReadBuf::new(&mut self.buf[self.end..self.end + want]);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        self.end += n;
        Poll::Ready(Ok(n))
    }

    /// Reads a refused connection's input and drops it until its end or the linger's.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut scratch = [0u8; 8192];
        loop {
            let Some(r) = self.refusal.as_mut() else {
                return Poll::Ready(());
            };
            if r.discarded >= LINGER_BYTES || r.linger.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            let mut rb = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    r.discarded += rb.filled().len();
                }
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for GuardIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready > 0 {
                let n = this.ready.min(dst.remaining());
                dst.put_slice(&this.buf[this.start..this.start + n]);
                this.start += n;
                this.ready -= n;
                return Poll::Ready(Ok(()));
            }
            if this.stopped {
                // hyper reads the end of the stream: nothing of a refused head reaches it.
                return Poll::Ready(Ok(()));
            }
            if this.start == this.end {
                // A body of known length (or an upgraded stream) goes straight to hyper.
                let straight = match this.guard.body_left() {
                    Some(left) => Some(left.min(dst.remaining() as u64) as usize),
                    None => this.guard.is_opaque().then_some(dst.remaining()),
                };
                if let Some(limit) = straight {
                    // As tokio's own `Take` reader does: read into the front of `dst`'s
                    // unfilled part, then count what was filled there.
                    let mut part = dst.take(limit);
                    let front = part.filled().as_ptr();
                    ready!(Pin::new(&mut this.io).poll_read(cx, &mut part))?;
                    assert_eq!(part.filled().as_ptr(), front, "the reader kept the buffer");
                    let n = part.filled().len();
                    // SAFETY: `part` is the front of `dst`'s unfilled part (same memory, as
                    // asserted) and the read initialized its first `n` bytes.
                    unsafe { dst.assume_init(n) };
                    dst.advance(n);
                    this.guard.consumed_body(n);
                    return Poll::Ready(Ok(()));
                }
            }
            match this.guard.step(&this.buf[this.start..this.end]) {
                Step::Pass(n) => this.ready = n,
                Step::Refuse(r) => {
                    tracing::debug!(code = r.code(), message = %r.message(), "request head refused");
                    this.stopped = true;
                    // Nothing buffered is needed any more while the answer waits.
                    this.buf = Vec::new();
                    this.start = 0;
                    this.end = 0;
                    this.refusal = Some(Box::new(Refusal {
                        answer: r.raw_response(),
                        written: 0,
                        shut: false,
                        discarded: 0,
                        linger: Box::pin(tokio::time::sleep(LINGER)),
                    }));
                }
                Step::Stop => this.stopped = true,
                Step::More => {
                    if ready!(this.fill(cx))? == 0 {
                        // The client's end of the stream: hyper sees it as it comes.
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GuardIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.guard.awaits_answer() {
            this.guard.answered(buf);
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.guard.awaits_answer() {
            if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
                this.guard.answered(first);
            }
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    /// hyper is done with the connection: a refused head's answer goes out first, then FIN,
    /// then the linger.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(r) = this.refusal.as_mut() {
            while r.written < r.answer.len() {
                let n = ready!(Pin::new(&mut this.io).poll_write(cx, &r.answer[r.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                r.written += n;
            }
            if !r.shut {
                ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
                r.shut = true;
            }
            ready!(this.poll_linger(cx));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The guard over one end of an in-memory pipe; the test plays the client on the other.
    fn pair(max_head: usize) -> (GuardIo<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (server, client) = tokio::io::duplex(1 << 20);
        (GuardIo::new(server, max_head), client)
    }

    #[tokio::test]
    async fn heads_pass_one_message_at_a_time() {
        let (mut g, mut c) = pair(1024);
        c.write_all(b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzGET /b HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut out = vec![0u8; 4096];
        let n = g.read(&mut out).await.unwrap();
        assert_eq!(&out[..n], b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\n");
        let n = g.read(&mut out).await.unwrap();
        assert_eq!(&out[..n], b"xyz", "the body, and not the next head with it");
        let n = g.read(&mut out).await.unwrap();
        assert_eq!(&out[..n], b"GET /b HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_refused_head_reads_as_the_end_and_its_answer_goes_out_at_shutdown() {
        let (mut g, mut c) = pair(1024);
        c.write_all(b"GET /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
            .await
            .unwrap();
        let mut out = vec![0u8; 4096];
        assert_eq!(
            g.read(&mut out).await.unwrap(),
            0,
            "hyper sees nothing of it"
        );
        drop(c.write_all(b"more the client sends").await);
        c.shutdown().await.unwrap();
        g.shutdown().await.unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(answer.ends_with(
            r#"{"error":"bad_request","message":"malformed HTTP request: conflicting Content-Length headers"}"#
        ));
    }

    #[tokio::test]
    async fn an_unfinished_head_holds_no_more_than_the_limit() {
        let (mut g, mut c) = pair(1000);
        c.write_all(&[b'G'; 999]).await.unwrap();
        let mut out = vec![0u8; 4096];
        let read = tokio::time::timeout(Duration::from_millis(50), g.read(&mut out)).await;
        assert!(read.is_err(), "waits for more");
        assert!(g.buf.len() <= 1000, "buffer {} B", g.buf.len());
        c.write_all(&[b'G'; 5000]).await.unwrap();
        assert_eq!(g.read(&mut out).await.unwrap(), 0, "refused");
        assert!(g.buf.len() <= 1000, "buffer {} B", g.buf.len());
    }

    #[tokio::test]
    async fn after_a_101_the_bytes_pass_as_they_come() {
        let (mut g, mut c) = pair(1024);
        c.write_all(b"GET /v1/link HTTP/1.1\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n\x00\x01")
            .await
            .unwrap();
        let mut out = vec![0u8; 4096];
        let n = g.read(&mut out).await.unwrap();
        assert!(out[..n].ends_with(b"\r\n\r\n"));
        g.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            .await
            .unwrap();
        let (_, rest) = g.into_parts();
        assert_eq!(&rest[..], b"\x00\x01");
    }
}
