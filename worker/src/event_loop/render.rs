//! Per-transport rendering: a message, a gap, a heartbeat and a goodbye, each written once
//! for WebSocket, SSE and long-poll.

use super::EventLoop;
use crate::http1;
use crate::metrics::Transport;
use crate::poll::PollBody;
use crate::session::{self, End, Goodbye};
use crate::{sse, ws};

/// Appends one message: a WebSocket text frame, an SSE event, or an entry of the poll body.
pub(super) fn message(t: Transport, out: &mut Vec<u8>, body: &mut PollBody, seq: u64, data: &[u8]) {
    match t {
        Transport::Ws => ws::write_message(out, seq, data),
        Transport::Sse => sse::write_message(out, seq, data),
        Transport::Poll => body.push(seq, data),
        Transport::Http => {}
    }
}

/// Appends the gap frame/event; a poll carries the gap in its answer's fields instead.
pub(super) fn gap(t: Transport, out: &mut Vec<u8>, epoch: u64, first_seq: u64) {
    match t {
        Transport::Ws => ws::write_gap(out, epoch, first_seq),
        Transport::Sse => sse::write_gap(out, epoch, first_seq),
        Transport::Poll | Transport::Http => {}
    }
}

/// Appends the keep-alive of a streaming transport: a WebSocket ping, an SSE comment.
/// Returns whether there is one.
pub(super) fn heartbeat(t: Transport, out: &mut Vec<u8>) -> bool {
    match t {
        Transport::Ws => ws::write_ping(out),
        Transport::Sse => out.extend_from_slice(sse::HEARTBEAT),
        Transport::Poll | Transport::Http => return false,
    }
    true
}

impl EventLoop {
    /// Ends a connection the way the goodbye table says for its transport and `end`.
    pub(super) fn end(&mut self, key: usize, end: End) {
        let reason = end.reason();
        let conn = &mut self.conns[key];
        self.out.clear();
        match session::goodbye(conn.transport, end) {
            Goodbye::Close { code, reason: text } => {
                ws::write_close(&mut self.out, code, text);
                self.send_final(key, reason);
            }
            Goodbye::Event { id, code, message } => {
                sse::write_closed(&mut self.out, id, code, message);
                self.send_final(key, reason);
            }
            Goodbye::Error {
                status,
                code,
                message,
            } => {
                conn.set_transport(Transport::Http);
                let origin = self.shared.origin(conn.cors);
                http1::write_error(&mut self.out, status, code, message, origin, b"");
                self.send_final(key, reason);
            }
            Goodbye::Answer => {
                self.body.clear();
                self.answer_poll(key, None, false);
            }
            Goodbye::Flush => self.close_after_flush(key, reason),
            Goodbye::Drop => self.close_now(key, reason),
        }
    }
}
