//! The connection record (`Conn`, `Extra`) and its write/flush/close path.

use super::sock::shut_write;
use super::sock::{sock_write, sock_write_parts, tls_flush};
use super::{send_up, EventLoop};
use crate::metrics::{metrics, CloseReason, Transport};
use crate::session::order::Position;
use crate::session::{self, End, Goodbye};
use crate::shared::sub_id;
use crate::tls::session::Tls;
use crate::ws;
use mio::net::TcpStream;
use protocol::link::Up;
use std::io;
use std::sync::atomic::Ordering;

// Conn flags.
/// A `Subscribe` was sent for the current generation: an `Unsubscribe` is owed.
pub(super) const SUBSCRIBED: u8 = 1;
/// Its `Backlog` arrived.
pub(super) const LIVE: u8 = 2;
/// `pos` is meaningful: every message with `seq <= pos` was sent (or asked to be skipped).
pub(super) const HAS_POS: u8 = 4;
/// `epoch` is meaningful.
pub(super) const HAS_EPOCH: u8 = 8;
/// Long-poll connection stays open after the answer.
pub(super) const KEEP_ALIVE: u8 = 16;
/// Final bytes queued; read and discard until EOF or the linger deadline.
pub(super) const CLOSING: u8 = 32;
/// Must re-send `Subscribe` (the link came back).
pub(super) const RESUB: u8 = 64;
/// Our write side is shut down.
pub(super) const WRITE_SHUT: u8 = 128;

/// Buffers a connection owns only while it needs them.
#[derive(Debug, Default)]
pub(super) struct Extra {
    /// Bytes of an incomplete request head or WebSocket frame header/control frame
    /// (replaced whole, never appended to: a boxed slice is 8 bytes less than a Vec).
    pub(super) read: Box<[u8]>,
    /// Output the socket did not take yet, from `written` on.
    pub(super) write: Vec<u8>,
    /// u32 keeps `Extra` at 64 bytes. The buffer is compacted before every append, so it
    /// never holds more than `--max-pending-bytes` (≤ 1 GiB) of live output plus one page
    /// of a backlog (half of it, or one message of at most a link frame): that fits.
    pub(super) written: u32,
    /// `write[frames_from..]` is whole WebSocket frames back to back (before it: the rest
    /// of an HTTP head), so the end of the frame on the wire can be found.
    pub(super) frames_from: u32,
    /// Where the client's WebSocket frames stand: the rest of a data frame, a fragmented
    /// message, an incomplete UTF-8 character.
    pub(super) ws: ws::ReadState,
    /// A TLS connection's session (for its whole life: an idle TLS connection keeps its
    /// `Extra`, ~110 B of keys and 72 B here).
    pub(super) tls: Option<Box<Tls>>,
}

impl Extra {
    pub(super) fn is_empty(&self) -> bool {
        self.read.is_empty() && self.write.is_empty() && self.ws.is_idle() && self.tls.is_none()
    }

    /// Output not on the wire yet: plaintext waiting here, and sealed bytes the socket did
    /// not take (at most one record).
    pub(super) fn pending(&self) -> usize {
        self.write.len() - self.written as usize + self.tls.as_ref().map_or(0, |t| t.pending())
    }

    /// Drops the bytes already written, so a client that keeps up but never drains fully
    /// does not make the buffer grow with everything ever sent to it. A frame partly on
    /// the wire is kept from its start (at most one frame more).
    pub(super) fn compact(&mut self) {
        let w = self.written as usize;
        let from = self.frames_from as usize;
        let cut = if w <= from {
            w
        } else {
            from + ws::frame_around(&self.write[from..], w - from).0
        };
        if cut > 0 {
            self.write.drain(..cut);
            self.written -= cut as u32;
            self.frames_from = from.saturating_sub(cut) as u32;
        }
    }

    /// Keeps of the pending output only the rest of what is partly on the wire (a frame,
    /// or an HTTP head), so a close frame can follow at once.
    pub(super) fn cut_after_partial(&mut self) {
        let w = self.written as usize;
        let from = self.frames_from as usize;
        let end = if w < from {
            from
        } else {
            from + ws::frame_around(&self.write[from..], w - from).1
        };
        self.write.truncate(end);
    }

    fn append(&mut self, data: &[u8], framed: bool) {
        self.write.extend_from_slice(data);
        if !framed {
            self.frames_from = self.write.len() as u32;
        }
    }
}

/// One client connection: the only per-connection memory while it is idle.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(super) stream: TcpStream,
    /// Changes on accept, on every (re)subscription and when closing starts; part of `sub_id`.
    pub(super) gen: u32,
    /// Seconds since worker start of the last bytes received.
    pub(super) last_active: u32,
    pub(super) transport: Transport,
    pub(super) flags: u8,
    /// 0: no CORS header; else 1 + index into `--allow-origin`.
    pub(super) cors: u16,
    /// Last seq sent (or the client's `since`), see `HAS_POS`.
    pub(super) pos: u64,
    /// Epoch of the last Backlog (or the client's `epoch`), see `HAS_EPOCH`.
    pub(super) epoch: u64,
    pub(super) channel: Option<Box<str>>,
    pub(super) extra: Option<Box<Extra>>,
}

impl Conn {
    pub(super) fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    pub(super) fn pending(&self) -> usize {
        self.extra.as_ref().map_or(0, |e| e.pending())
    }

    pub(super) fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    /// Where the connection stands in its channel's log.
    pub(super) fn position(&self) -> Position {
        Position {
            pos: self.has(HAS_POS).then_some(self.pos),
            epoch: self.has(HAS_EPOCH).then_some(self.epoch),
            live: self.has(LIVE),
        }
    }

    pub(super) fn set_position(&mut self, p: Position) {
        self.flags &= !(HAS_POS | HAS_EPOCH | LIVE);
        self.pos = p.pos.unwrap_or(0);
        self.epoch = p.epoch.unwrap_or(0);
        for (on, f) in [
            (p.pos.is_some(), HAS_POS),
            (p.epoch.is_some(), HAS_EPOCH),
            (p.live, LIVE),
        ] {
            if on {
                self.flags |= f;
            }
        }
    }

    /// Moves the connection to another transport, and its `connections_open` gauge with it.
    pub(super) fn set_transport(&mut self, t: Transport) {
        metrics().open(self.transport).dec();
        metrics().open(t).inc();
        self.transport = t;
    }

    pub(super) fn trim_extra(&mut self) {
        if self.extra.as_ref().is_some_and(|e| e.is_empty()) {
            self.extra = None;
        }
    }
}

/// What `self.out` holds, for the write path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Out {
    /// Live output: pending bytes are bounded by `--max-pending-bytes`.
    Live,
    /// A page of a backlog: taken whole (see [`write_conn`]).
    Page,
    /// An HTTP head (the answer to a subscribe request): bounded like live output, and not
    /// WebSocket frames even on a WebSocket.
    Head,
}

/// Why a write could not be completed.
pub(super) enum WriteErr {
    Slow,
    /// Too slow, and its goodbye is queued after what is pending.
    SlowClosing,
    Io,
}

/// Writes `data` (after any pending bytes), keeping what the socket refuses. With a
/// `limit`, pending output past it is `Slow`; a page of a backlog (`None`) is taken whole:
/// it is asked for only once the connection drained, and is bounded by the page budget.
/// On `Slow` the pending bytes still end at a message boundary, so a close frame can follow.
/// `framed`: `data` is whole WebSocket frames.
pub(super) fn write_conn(
    conn: &mut Conn,
    data: &[u8],
    limit: Option<usize>,
    framed: bool,
) -> Result<(), WriteErr> {
    let over = |pending: usize| limit.is_some_and(|max| pending > max);
    if data.is_empty() {
        return Ok(());
    }
    if conn.pending() > 0 {
        // The client may have caught up since the last writable event.
        flush_conn(conn)?;
    }
    if conn.pending() > 0 {
        let ex = conn.extra();
        ex.compact();
        if over(ex.pending() + data.len()) {
            return Err(WriteErr::Slow);
        }
        ex.append(data, framed);
        return Ok(());
    }
    let mut off = 0;
    while off < data.len() {
        match sock_write(conn, &data[off..]) {
            Ok(0) => return Err(WriteErr::Io),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(WriteErr::Io),
        }
    }
    if off < data.len() {
        // Keep the rest even when over the bound: the socket has part of a message, and
        // the stream must stay whole for the close frame that follows a `Slow`.
        // Kept from the start of the frame on the wire, so its end can be found.
        let start = if framed {
            ws::frame_around(data, off).0
        } else {
            off
        };
        metrics().write_buffered.inc();
        let ex = conn.extra();
        ex.write.clear();
        ex.write.extend_from_slice(&data[start..]);
        ex.written = (off - start) as u32;
        ex.frames_from = if framed { 0 } else { ex.write.len() as u32 };
        if over(ex.pending()) {
            return Err(WriteErr::Slow);
        }
    }
    Ok(())
}

/// Writes pending bytes; frees the buffer once drained.
pub(super) fn flush_conn(conn: &mut Conn) -> Result<(), WriteErr> {
    match tls_flush(conn) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
        Err(_) => return Err(WriteErr::Io),
    }
    let Some(ex) = conn.extra.as_mut() else {
        return Ok(());
    };
    while (ex.written as usize) < ex.write.len() {
        let Extra {
            write,
            written,
            tls,
            ..
        } = &mut **ex;
        match sock_write_parts(
            &mut conn.stream,
            tls.as_deref_mut(),
            &write[*written as usize..],
        ) {
            Ok(0) => return Err(WriteErr::Io),
            Ok(n) => *written += n as u32,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(WriteErr::Io),
        }
    }
    ex.write = Vec::new();
    ex.written = 0;
    ex.frames_from = 0;
    conn.trim_extra();
    Ok(())
}

impl EventLoop {
    // ---- closing ----

    /// Counts the close, settles the link and the gauges; idempotent.
    pub(super) fn account_close(&mut self, key: usize, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.has(CLOSING) {
            return;
        }
        conn.flags |= CLOSING;
        self.side.forget(key);
        metrics().closed(reason).inc();
        metrics().open(conn.transport).dec();
        if reason == CloseReason::SlowClient {
            metrics().slow_client_closes.inc();
        }
        tracing::debug!(
            thread = self.index,
            key,
            transport = conn.transport.as_str(),
            reason = reason.as_str(),
            "connection closing"
        );
        self.unsubscribe(key);
    }

    /// Tells the gateway a subscription is over (once: the flag and the channel go).
    pub(super) fn unsubscribe(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.has(SUBSCRIBED) {
            conn.flags &= !(SUBSCRIBED | RESUB);
            if let Some(ch) = conn.channel.take() {
                let up = Up::Unsubscribe {
                    sub_id: sub_id(self.index, key, conn.gen),
                    channel: ch.into(),
                };
                send_up(&self.shared, up);
            }
        }
    }

    /// Drops the connection now.
    pub(super) fn close_now(&mut self, key: usize, reason: CloseReason) {
        self.busy();
        self.account_close(key, reason);
        if let Some(conn) = self.conns.try_remove(key) {
            self.shared.open.fetch_sub(1, Ordering::Relaxed);
            self.forget_peer(key);
            metrics().pending_bytes.sub(conn.pending() as i64);
        }
    }

    /// Lets queued bytes go out, shuts our side and waits (bounded) for the client's EOF.
    pub(super) fn close_after_flush(&mut self, key: usize, reason: CloseReason) {
        self.account_close(key, reason);
        let gen = self.gen();
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.gen = gen;
        if let Some(ex) = conn.extra.as_mut() {
            ex.read = Box::default();
            ex.ws = ws::ReadState::default();
        }
        conn.trim_extra();
        if conn.pending() == 0 {
            shut_write(conn);
        }
        self.add_deadline(
            self.now.secs + self.shared.config.close_linger_secs,
            key,
            gen,
        );
    }

    /// Writes `self.out` as the connection's last words, then closes after the flush.
    pub(super) fn send_final(&mut self, key: usize, reason: CloseReason) {
        if self.send_out(key) {
            self.close_after_flush(key, reason);
        }
    }

    /// Writes `self.out` to the connection; closes it when the client is too slow or gone.
    /// Returns whether the connection is still usable.
    pub(super) fn send_out(&mut self, key: usize) -> bool {
        self.send(key, Out::Live)
    }

    /// [`Self::send_out`] for what `self.out` holds: a page of a backlog is taken whole, an
    /// HTTP head is not frames.
    pub(super) fn send(&mut self, key: usize, what: Out) -> bool {
        let limit = (what != Out::Page).then_some(self.shared.config.max_pending_bytes);
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let before = conn.pending();
        let framed = conn.transport == Transport::Ws && what != Out::Head;
        let mut res = write_conn(conn, &self.out, limit, framed);
        if self.out.capacity() > 1 << 20 {
            self.out = Vec::with_capacity(4096);
        } else {
            self.out.clear();
        }
        if let Err(WriteErr::Slow) = res {
            if let Goodbye::Close { code, reason } = session::goodbye(conn.transport, End::Slow) {
                // At once after the frame on the wire (the rest is dropped: a lingering
                // slow connection holds at most one frame), within the close linger.
                let ex = conn.extra();
                ex.cut_after_partial();
                ws::write_close(&mut ex.write, code, reason);
                res = Err(WriteErr::SlowClosing);
            }
        }
        let after = conn.pending();
        if after != before {
            // Only when a buffer changed: no shared counter touched per delivery.
            metrics().pending_bytes.add(after as i64 - before as i64);
        }
        match res {
            Ok(()) => true,
            Err(WriteErr::SlowClosing) => {
                self.close_after_flush(key, CloseReason::SlowClient);
                false
            }
            Err(WriteErr::Slow) => {
                self.close_now(key, CloseReason::SlowClient);
                false
            }
            Err(WriteErr::Io) => {
                self.close_now(key, CloseReason::IoError);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_stays_small() {
        // mio's TcpStream carries a selector id in debug builds (16 bytes instead of 4), so
        // Conn is 72 bytes there; the release layout (what the budget counts) is 56.
        let bound = if cfg!(debug_assertions) { 72 } else { 56 };
        let size = std::mem::size_of::<Conn>();
        assert!(size <= bound, "Conn is {size} bytes");
        // Only a connection with something in flight (or a TLS session) has one.
        assert!(std::mem::size_of::<Extra>() <= 72);
    }

    #[test]
    fn pending_output_keeps_frame_ends_findable() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        let mut frames = Vec::new();
        for seq in 1..=3 {
            ws::write_message(&mut frames, seq, &[b'7'; 200]);
        }
        let f = ws::frame_len(&frames).unwrap();
        let mut ex = Extra::default();
        ex.append(head, false);
        ex.append(&frames, true);
        assert_eq!(ex.frames_from as usize, head.len());
        // Still in the head: the cut keeps the rest of the head, no frame.
        ex.written = 5;
        let mut cut = Extra {
            write: ex.write.clone(),
            written: ex.written,
            frames_from: ex.frames_from,
            ..Default::default()
        };
        cut.cut_after_partial();
        assert_eq!(cut.write.len(), head.len());
        // Half way through the second frame: compaction keeps that frame from its start.
        ex.written = (head.len() + f + f / 2) as u32;
        ex.compact();
        assert_eq!((ex.write.len(), ex.written as usize), (2 * f, f / 2));
        assert_eq!(ex.frames_from, 0);
        assert_eq!(ex.pending(), 2 * f - f / 2);
        // The cut keeps the rest of that frame only.
        ex.cut_after_partial();
        assert_eq!(ex.write.len(), f);
        // At a frame boundary nothing partial is kept.
        ex.written = f as u32;
        ex.cut_after_partial();
        assert_eq!(ex.pending(), 0);
    }
}
