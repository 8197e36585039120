//! A connection's socket reads and writes, plain or through its TLS session, and the TLS
//! handshake that comes before its first request.

use super::conn::{Conn, WRITE_SHUT};
use super::EventLoop;
use crate::http1;
use crate::metrics::{metrics, CloseReason};
use crate::tls::session::{Failure, Step, Tls};
use mio::net::TcpStream;
use std::io::{self, Read, Write};

fn tls_of(conn: &mut Conn) -> Option<&mut Tls> {
    conn.extra.as_mut().and_then(|e| e.tls.as_deref_mut())
}

/// Writes (a TLS connection: seals, at most one record per call) what the socket takes.
pub(super) fn sock_write(conn: &mut Conn, data: &[u8]) -> io::Result<usize> {
    let tls = conn.extra.as_mut().and_then(|e| e.tls.as_deref_mut());
    sock_write_parts(&mut conn.stream, tls, data)
}

/// [`sock_write`] for a caller that holds other parts of the connection's `Extra`.
pub(super) fn sock_write_parts(
    stream: &mut TcpStream,
    tls: Option<&mut Tls>,
    data: &[u8],
) -> io::Result<usize> {
    match tls {
        Some(t) => t.write(stream, data),
        None => stream.write(data),
    }
}

/// Reads (a TLS connection: plaintext; `Ok(0)` also after the client's close_notify).
pub(super) fn sock_read(conn: &mut Conn, buf: &mut [u8]) -> io::Result<usize> {
    let Conn { stream, extra, .. } = conn;
    match extra.as_mut().and_then(|e| e.tls.as_deref_mut()) {
        Some(t) => t.read(stream, buf),
        None => stream.read(buf),
    }
}

/// Writes the sealed bytes a TLS session holds back; `WouldBlock` if some stay.
pub(super) fn tls_flush(conn: &mut Conn) -> io::Result<()> {
    let Conn { stream, extra, .. } = conn;
    match extra.as_mut().and_then(|e| e.tls.as_deref_mut()) {
        Some(t) => t.flush(stream),
        None => Ok(()),
    }
}

/// Ends our side of the stream (once): a TLS session says close_notify first, and the
/// shutdown waits for the socket to take it.
pub(super) fn shut_write(conn: &mut Conn) {
    if conn.has(WRITE_SHUT) {
        return;
    }
    let before = conn.pending();
    if let Some(t) = tls_of(conn) {
        t.close_notify();
    }
    let res = tls_flush(conn);
    let after = conn.pending();
    if after != before {
        metrics().pending_bytes.add(after as i64 - before as i64);
    }
    if matches!(&res, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
        return; // the writable event comes back here
    }
    conn.flags |= WRITE_SHUT;
    let _ = conn.stream.shutdown(std::net::Shutdown::Write);
}

impl EventLoop {
    /// Whether connection `key` is a TLS connection still in its handshake.
    pub(super) fn in_tls_handshake(&self, key: usize) -> bool {
        self.conns
            .get(key)
            .and_then(|c| c.extra.as_ref())
            .and_then(|e| e.tls.as_ref())
            .is_some_and(|t| t.is_handshaking())
    }

    /// Drives a TLS handshake. Returns whether the connection may read its request now
    /// (a plain connection always may); a failed handshake is counted and closed.
    pub(super) fn tls_handshake(&mut self, key: usize) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let Conn { stream, extra, .. } = conn;
        let Some(t) = extra.as_mut().and_then(|e| e.tls.as_deref_mut()) else {
            return true;
        };
        if !t.is_handshaking() {
            return true;
        }
        match t.handshake(stream, &mut self.read_buf) {
            Step::Pending => false,
            Step::Established { resumed } => {
                self.busy();
                metrics().tls_handshake(resumed).inc();
                tracing::trace!(thread = self.index, key, resumed, "TLS established");
                true
            }
            Step::Failed(why) => {
                metrics().tls_failure(why).inc();
                tracing::debug!(
                    thread = self.index,
                    key,
                    reason = why.as_str(),
                    "TLS handshake failed"
                );
                if why == Failure::PlainHttp {
                    let mut out = Vec::new();
                    http1::write_error(
                        &mut out,
                        400,
                        "tls_required",
                        "this port speaks TLS: use https:// or wss://",
                        None,
                        b"",
                    );
                    let _ = stream.write(&out);
                }
                self.close_now(key, CloseReason::ProtocolError);
                false
            }
        }
    }
}
