//! Socket events: writable (flush), readable (requests, WebSocket frames, discard).

use super::conn::{flush_conn, CLOSING, KEEP_ALIVE};
use super::sock::{shut_write, sock_read};
use super::EventLoop;
use crate::http1::{self, HeadError};
use crate::metrics::{metrics, CloseReason, Transport};
use crate::session::{self, request::Rejection};
use crate::ws;
use std::io::{self, Read};

impl EventLoop {
    // ---- socket events ----

    pub(super) fn on_writable(&mut self, key: usize) {
        if self.in_tls_handshake(key) {
            // The server's flight waited for room.
            if self.tls_handshake(key) {
                self.read_request(key);
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let before = conn.pending();
        if before == 0 {
            return;
        }
        let res = flush_conn(conn);
        metrics()
            .pending_bytes
            .add(conn.pending() as i64 - before as i64);
        match res {
            Ok(()) if conn.pending() > 0 => {}
            Ok(()) if conn.has(CLOSING) => shut_write(conn),
            // Drained: a connection that is behind may fetch now.
            Ok(()) => {
                if self.side.has(key) {
                    self.fetch_if_due(key);
                }
            }
            Err(_) => self.close_now(key, CloseReason::IoError),
        }
    }

    pub(super) fn on_readable(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if conn.has(CLOSING) {
            self.discard_input(key, CloseReason::Done);
            return;
        }
        match conn.transport {
            Transport::Http => {
                if self.tls_handshake(key) {
                    self.read_request(key);
                }
            }
            Transport::Ws => self.read_ws(key),
            Transport::Sse | Transport::Poll => self.discard_input(key, CloseReason::ClientClosed),
        }
    }

    /// Reads and drops whatever arrives; EOF or an error closes. Bytes sent while a poll
    /// is held are a pipelined request it will not answer: the poll's answer says
    /// `Connection: close`.
    pub(super) fn discard_input(&mut self, key: usize, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        loop {
            match conn.stream.read(&mut self.read_buf) {
                Ok(0) => break,
                Ok(_) => {
                    conn.last_active = self.now.secs;
                    conn.flags &= !KEEP_ALIVE;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.close_now(key, reason);
    }

    /// Reads into the scratch buffer after any kept partial bytes. Returns the filled
    /// length and whether the peer is gone (EOF/error); `None` if the connection is gone.
    pub(super) fn fill_read_buf(&mut self, key: usize) -> (usize, bool) {
        let conn = &mut self.conns[key];
        let mut len = 0;
        if let Some(ex) = conn.extra.as_mut() {
            if !ex.read.is_empty() {
                len = ex.read.len().min(self.read_buf.len());
                self.read_buf[..len].copy_from_slice(&ex.read[..len]);
                ex.read = Box::default();
            }
        }
        conn.trim_extra();
        let mut eof = false;
        while len < self.read_buf.len() {
            match sock_read(conn, &mut self.read_buf[len..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    len += n;
                    conn.last_active = self.now.secs;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        (len, eof)
    }

    pub(super) fn read_request(&mut self, key: usize) {
        let (len, eof) = self.fill_read_buf(key);
        if len == 0 {
            if eof {
                self.close_now(key, CloseReason::ClientClosed);
            }
            return;
        }
        let full = len == self.read_buf.len();
        let buf = std::mem::take(&mut self.read_buf);
        let max_head = self.shared.config.max_header_bytes;
        let res = http1::parse_request(&buf[..len], max_head);
        let mut rest = 0..0;
        match res {
            Ok(Some(req)) => {
                self.busy();
                rest = req.head_len..len;
                self.handle_request(key, &req);
            }
            Ok(None) => {
                if eof {
                    self.close_now(key, CloseReason::ClientClosed);
                } else {
                    let conn = &mut self.conns[key];
                    conn.extra().read = buf[..len].into();
                }
            }
            Err(HeadError::TooLarge) => {
                let e = Rejection::new(431, "headers_too_large", "request head too large");
                self.reply_error(key, &e, 0);
            }
            Err(HeadError::Malformed) => {
                let e = Rejection::new(400, "bad_request", "malformed HTTP request");
                self.reply_error(key, &e, 0);
            }
        }
        self.read_buf = buf;
        if !rest.is_empty() && self.after_head(key, rest) {
            return;
        }
        // With an edge-triggered poll, a full buffer means more may be waiting.
        if full && self.conns.get(key).is_some_and(|c| !c.has(CLOSING)) {
            self.on_readable(key);
        } else if eof && self.conns.get(key).is_some_and(|c| !c.has(CLOSING)) {
            self.close_now(key, CloseReason::ClientClosed);
        }
    }

    /// Reads the client's frames: pings are answered, a close or a broken rule ends the
    /// connection, data is checked and dropped.
    pub(super) fn read_ws(&mut self, key: usize) {
        loop {
            let (len, eof) = self.fill_read_buf(key);
            let mut st = self.conns[key]
                .extra
                .as_ref()
                .map_or_else(Default::default, |e| e.ws);
            self.out.clear();
            let (off, close) = self.decode_frames(len, &mut st);
            if let Some((code, reason)) = close {
                ws::write_close(&mut self.out, code, "");
                self.send_final(key, reason);
                return;
            }
            self.keep_ws_rest(key, off..len, st);
            if !self.out.is_empty() && !self.send_out(key) {
                return;
            }
            if eof {
                self.close_now(key, CloseReason::ClientClosed);
                return;
            }
            if len < self.read_buf.len() {
                return;
            }
        }
    }

    /// Decodes `read_buf[..len]`, pongs into `self.out`. Returns what was consumed, and the
    /// close to answer with if the client closed or broke a rule.
    fn decode_frames(
        &mut self,
        len: usize,
        st: &mut ws::ReadState,
    ) -> (usize, Option<(u16, CloseReason)>) {
        let max_frame = self.shared.config.max_client_frame_bytes;
        let mut off = 0;
        while off < len {
            match ws::decode(&mut self.read_buf[off..len], st, max_frame) {
                Ok((0, _)) => break,
                Ok((n, f)) => {
                    off += n;
                    match f {
                        Some(ws::Frame::Ping(p)) => ws::write_pong(&mut self.out, p.as_slice()),
                        Some(ws::Frame::Close(code)) => {
                            return (off, Some(session::answer_client_close(code)));
                        }
                        _ => {}
                    }
                }
                Err(e) => return (off, Some((e.close_code(), CloseReason::ProtocolError))),
            }
        }
        (off, None)
    }

    /// Keeps what a read left (a partial frame header, the state of a frame or message)
    /// for the next one; frees it when nothing is left.
    fn keep_ws_rest(&mut self, key: usize, rest: std::ops::Range<usize>, st: ws::ReadState) {
        let conn = &mut self.conns[key];
        if !rest.is_empty() || !st.is_idle() {
            let ex = conn.extra();
            ex.ws = st;
            ex.read = self.read_buf[rest].into();
        } else if let Some(ex) = conn.extra.as_mut() {
            ex.ws = st;
            ex.read = Box::default();
            conn.trim_extra();
        }
    }

    /// Bytes behind a request head. Returns whether they were read (as WebSocket frames);
    /// else they are a pipelined request: this one's answer says `Connection: close` and
    /// the client sends the next again (RFC 9112 9.3.2).
    fn after_head(&mut self, key: usize, rest: std::ops::Range<usize>) -> bool {
        let Some(conn) = self.conns.get_mut(key).filter(|c| !c.has(CLOSING)) else {
            return false;
        };
        if conn.transport == Transport::Ws {
            // Frames the client sent right behind its upgrade request.
            conn.extra().read = self.read_buf[rest].into();
            self.read_ws(key);
            return true;
        }
        conn.flags &= !KEEP_ALIVE;
        false
    }
}
