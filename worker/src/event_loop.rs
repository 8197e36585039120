//! One mio event loop per thread: its own SO_REUSEPORT listener per address, a slab of
//! small `Conn`s, per-thread scratch buffers, a coarse timing wheel (handshake and
//! long-poll deadlines, close lingers) and a sweep that pings every connection once per
//! `--ping-interval-secs`. Nothing per connection while it is idle but its slab slot.

use crate::http1::{self, HeadError, Request};
use crate::metrics::{metrics, CloseReason, Transport};
use crate::poll::PollBody;
use crate::shared::{split_sub_id, sub_id, Cmd, Shared};
use crate::trim::Trim;
use crate::{sse, ws};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use protocol::link::{Down, KickReason, Up};
use slab::Slab;
use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::error::TrySendError;

/// Token of the thread's waker.
pub const WAKER: Token = Token(usize::MAX);
/// Listener `i` has token `LISTENER_BASE - i`.
const LISTENER_BASE: usize = usize::MAX - 1;
/// Scratch read buffer size (at least `--max-header-bytes` + 1).
const READ_BUF: usize = 16 * 1024;
/// How long a closing connection may take to flush and see the client's EOF.
const LINGER_SECS: u32 = 2;
/// Pause after EMFILE/ENFILE before accepting again.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Entries (8 bytes each) a wheel slot keeps room for once fired or compacted.
const WHEEL_SLOT_KEEP: usize = 256;
/// Inbox commands (64 bytes each) a loop thread keeps room for between wake-ups.
const SPARE_CMDS: usize = 256;
/// Default long-poll hold.
const DEFAULT_POLL_TIMEOUT: u64 = 30;

const REPLACED_MSG: &str = "replaced by a newer connection on this channel";
const RESYNC_MSG: &str = "reconnect with since";
const REFUSED_MSG: &str = "the gateway refused the subscription; try again later";

// Conn flags.
/// A `Subscribe` was sent for the current generation: an `Unsubscribe` is owed.
const SUBSCRIBED: u8 = 1;
/// Its `Backlog` arrived.
const LIVE: u8 = 2;
/// `pos` is meaningful: every message with `seq <= pos` was sent (or asked to be skipped).
const HAS_POS: u8 = 4;
/// `epoch` is meaningful.
const HAS_EPOCH: u8 = 8;
/// Long-poll connection stays open after the answer.
const KEEP_ALIVE: u8 = 16;
/// Final bytes queued; read and discard until EOF or the linger deadline.
const CLOSING: u8 = 32;
/// Must re-send `Subscribe` (the link came back).
const RESUB: u8 = 64;
/// Our write side is shut down.
const WRITE_SHUT: u8 = 128;

/// Buffers a connection owns only while it needs them.
#[derive(Debug, Default)]
struct Extra {
    /// Bytes of an incomplete request head or WebSocket frame header/control frame.
    read: Vec<u8>,
    /// Output the socket did not take yet, from `written` on.
    write: Vec<u8>,
    /// u32 (with `exempt_end`) keeps `Extra` at 64 bytes. The buffer is compacted before
    /// every append, so it never holds more than `--max-pending-bytes` (≤ 1 GiB) of live
    /// output plus one resume backlog (≤ the link's backlog cap): both fit.
    written: u32,
    /// `write[..exempt_end]` is (or ends with) a resume backlog: those bytes do not count
    /// against `--max-pending-bytes`, which bounds live output; the gateway's retention
    /// bounds a backlog already.
    exempt_end: u32,
    /// Unread payload bytes of an ignored client data frame.
    ws_skip: u64,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.read.is_empty() && self.write.is_empty() && self.ws_skip == 0
    }

    fn pending(&self) -> usize {
        self.write.len() - self.written as usize
    }

    /// Drops the bytes already written, so a client that keeps up but never drains fully
    /// does not make the buffer grow with everything ever sent to it.
    fn compact(&mut self) {
        if self.written > 0 {
            self.write.drain(..self.written as usize);
            self.exempt_end = self.exempt_end.saturating_sub(self.written);
            self.written = 0;
        }
    }

    /// Pending bytes that count against `--max-pending-bytes` (after [`Self::compact`]).
    fn counted(&self) -> usize {
        self.write.len() - (self.exempt_end as usize).min(self.write.len())
    }
}

/// One client connection: the only per-connection memory while it is idle.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    /// Changes on accept, on every (re)subscription and when closing starts; part of `sub_id`.
    gen: u32,
    /// Seconds since worker start of the last bytes received.
    last_active: u32,
    transport: Transport,
    flags: u8,
    /// 0: no CORS header; else 1 + index into `--allow-origin`.
    cors: u16,
    /// Last seq sent (or the client's `since`), see `HAS_POS`.
    pos: u64,
    /// Epoch of the last Backlog (or the client's `epoch`), see `HAS_EPOCH`.
    epoch: u64,
    channel: Option<Box<str>>,
    extra: Option<Box<Extra>>,
}

impl Conn {
    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    fn pending(&self) -> usize {
        self.extra.as_ref().map_or(0, |e| e.pending())
    }

    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    fn trim_extra(&mut self) {
        if self.extra.as_ref().is_some_and(|e| e.is_empty()) {
            self.extra = None;
        }
    }
}

/// Why a write could not be completed.
enum WriteErr {
    Slow,
    Io,
}

/// Writes `data` (after any pending bytes), keeping what the socket refuses. Live output
/// pending is bounded by `max_pending`; `exempt` output (a resume backlog) is not counted.
/// On `Slow` the pending bytes still end at a message boundary, so a close frame can follow.
fn write_conn(
    conn: &mut Conn,
    data: &[u8],
    max_pending: usize,
    exempt: bool,
) -> Result<(), WriteErr> {
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
        if !exempt && ex.counted() + data.len() > max_pending {
            return Err(WriteErr::Slow);
        }
        ex.write.extend_from_slice(data);
        if exempt {
            ex.exempt_end = ex.write.len() as u32;
        }
        return Ok(());
    }
    let mut off = 0;
    while off < data.len() {
        match conn.stream.write(&data[off..]) {
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
        let rest = &data[off..];
        metrics().write_buffered.inc();
        let ex = conn.extra();
        ex.write.clear();
        ex.written = 0;
        ex.write.extend_from_slice(rest);
        ex.exempt_end = if exempt { rest.len() as u32 } else { 0 };
        if !exempt && rest.len() > max_pending {
            return Err(WriteErr::Slow);
        }
    }
    Ok(())
}

/// Writes pending bytes; frees the buffer once drained.
fn flush_conn(conn: &mut Conn) -> Result<(), WriteErr> {
    let Some(ex) = conn.extra.as_mut() else {
        return Ok(());
    };
    while (ex.written as usize) < ex.write.len() {
        match conn.stream.write(&ex.write[ex.written as usize..]) {
            Ok(0) => return Err(WriteErr::Io),
            Ok(n) => ex.written += n as u32,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(WriteErr::Io),
        }
    }
    ex.write = Vec::new();
    ex.written = 0;
    ex.exempt_end = 0;
    conn.trim_extra();
    Ok(())
}

/// Coarse timing wheel: 1 s slots of `(key, gen)`; an entry whose generation no longer
/// matches its slot is ignored when it fires.
struct Wheel {
    slots: Vec<Vec<(u32, u32)>>,
    /// Next second to fire.
    next: u32,
    /// Entries in all slots, stale ones included.
    len: usize,
    /// Entries left by the last [`Wheel::compact`].
    compacted_len: usize,
}

impl Wheel {
    fn new(span: u32, now: u32) -> Wheel {
        Wheel {
            slots: (0..span + 2).map(|_| Vec::new()).collect(),
            next: now,
            len: 0,
            compacted_len: 0,
        }
    }

    fn add(&mut self, at: u32, key: usize, gen: u32) {
        let len = self.slots.len() as u32;
        let at = at.clamp(self.next, self.next + len - 1);
        self.slots[(at % len) as usize].push((key as u32, gen));
        self.len += 1;
    }

    /// Takes the entries of second `sec` (only when it is the next one due).
    fn take(&mut self, sec: u32) -> Vec<(u32, u32)> {
        let len = self.slots.len() as u32;
        let v = std::mem::take(&mut self.slots[(sec % len) as usize]);
        self.len -= v.len();
        v
    }

    /// Drops the entries `live` rejects (a re-held long-poll leaves its previous deadlines
    /// behind, up to two minutes ahead) and gives back the room they took.
    fn compact(&mut self, live: impl Fn(u32, u32) -> bool) {
        self.len = 0;
        for slot in &mut self.slots {
            slot.retain(|&(key, gen)| live(key, gen));
            if slot.capacity() > WHEEL_SLOT_KEEP && slot.capacity() > 2 * slot.len() {
                slot.shrink_to_fit();
            }
            self.len += slot.len();
        }
        self.compacted_len = self.len;
    }

    /// Whether stale entries are worth a [`Wheel::compact`] with `conns` connections open:
    /// the entries grew past twice both what the last compaction left and the connections,
    /// so a compaction (one pass over every entry) comes after at least as many adds as it
    /// visits, and stale entries stay a bounded multiple of live ones.
    fn wants_compact(&self, conns: usize) -> bool {
        self.len > 2 * self.compacted_len.max(conns) + 1024
    }

    fn put_back(&mut self, sec: u32, mut v: Vec<(u32, u32)>) {
        let len = self.slots.len() as u32;
        let slot = &mut self.slots[(sec % len) as usize];
        v.clear();
        if v.capacity() > WHEEL_SLOT_KEEP {
            // Its next use is a wheel turn away: no room is kept for a burst that passed.
            v = Vec::new();
        }
        if slot.is_empty() {
            // Keep the allocation unless entries were added to this slot meanwhile.
            v.append(slot);
            *slot = v;
        }
    }
}

struct Listener {
    sock: TcpListener,
    paused_until: Option<Instant>,
}

/// A loop thread before it runs: its poll instance and listeners (bound at `Worker::bind`).
pub(crate) struct LoopSetup {
    pub poll: Poll,
    pub listeners: Vec<std::net::TcpListener>,
}

/// One loop thread.
pub(crate) struct EventLoop {
    index: usize,
    shared: Arc<Shared>,
    poll: Poll,
    listeners: Vec<Listener>,
    conns: Slab<Conn>,
    read_buf: Vec<u8>,
    out: Vec<u8>,
    body: PollBody,
    spare_cmds: Vec<Cmd>,
    wheel: Wheel,
    next_gen: u32,
    now: u32,
    sweep_cursor: usize,
    resub_cursor: Option<usize>,
    drain_deadline: Option<Instant>,
    // Per-batch state of the connection whose deliveries are being gathered.
    batch_count: u64,
    batch_gap: Option<(u64, u64)>,
    /// The batch being gathered holds a Backlog: its bytes are exempt (see `Extra`).
    batch_backlog: bool,
    trim: Trim,
}

impl EventLoop {
    pub fn new(index: usize, shared: Arc<Shared>, setup: LoopSetup) -> EventLoop {
        let c = &shared.config;
        let span = c
            .max_poll_timeout_secs
            .max(c.handshake_timeout_secs)
            .max(LINGER_SECS)
            + 2;
        let now = shared.start.elapsed().as_secs() as u32;
        let read_len = READ_BUF.max(c.max_header_bytes + 1);
        let mut listeners = Vec::new();
        for (i, l) in setup.listeners.into_iter().enumerate() {
            let mut sock = TcpListener::from_std(l);
            setup
                .poll
                .registry()
                .register(&mut sock, Token(LISTENER_BASE - i), Interest::READABLE)
                .expect("register listener");
            listeners.push(Listener {
                sock,
                paused_until: None,
            });
        }
        EventLoop {
            index,
            poll: setup.poll,
            listeners,
            conns: Slab::new(),
            read_buf: vec![0; read_len],
            out: Vec::with_capacity(4096),
            body: PollBody::default(),
            spare_cmds: Vec::new(),
            wheel: Wheel::new(span, now),
            next_gen: (index as u32).wrapping_mul(0x9e37_79b9),
            now,
            sweep_cursor: 0,
            resub_cursor: None,
            drain_deadline: None,
            batch_count: 0,
            batch_gap: None,
            batch_backlog: false,
            trim: Trim::default(),
            shared,
        }
    }

    /// Runs until shutdown has drained every connection (or its deadline passed).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(thread = self.index, error = %e, "poll failed");
                    break;
                }
            }
            self.now = self.shared.start.elapsed().as_secs() as u32;
            let mut woke = false;
            for ev in events.iter() {
                let t = ev.token();
                if t == WAKER {
                    woke = true;
                } else if t.0 > LISTENER_BASE - self.listeners.len() && t.0 <= LISTENER_BASE {
                    self.accept(LISTENER_BASE - t.0);
                } else {
                    let key = t.0;
                    if ev.is_writable() {
                        self.on_writable(key);
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        self.on_readable(key);
                    }
                }
            }
            if woke {
                self.process_inbox();
            }
            if self.shared.is_shutdown() && self.drain_deadline.is_none() {
                self.begin_drain();
            }
            self.resume_paused_listeners();
            self.tick();
            if self.resub_cursor.is_some() {
                self.resubscribe_some();
            }
            if let Some(deadline) = self.drain_deadline {
                if self.conns.is_empty() || Instant::now() >= deadline {
                    break;
                }
            }
        }
        // Whatever is left after the drain deadline is dropped.
        let left = self.conns.len();
        for _ in self.conns.drain() {}
        self.shared.open.fetch_sub(left, Ordering::Relaxed);
        tracing::debug!(thread = self.index, "loop thread stopped");
    }

    fn poll_timeout(&self) -> Duration {
        let elapsed = self.shared.start.elapsed();
        let next_sec = Duration::from_secs(elapsed.as_secs() + 1);
        let mut t = next_sec.saturating_sub(elapsed);
        if self.resub_cursor.is_some() {
            t = t.min(Duration::from_millis(10));
        }
        let now = Instant::now();
        for l in &self.listeners {
            if let Some(u) = l.paused_until {
                t = t.min(u.saturating_duration_since(now));
            }
        }
        if let Some(d) = self.drain_deadline {
            t = t.min(
                d.saturating_duration_since(now)
                    .max(Duration::from_millis(1)),
            );
            t = t.min(Duration::from_millis(50));
        }
        t
    }

    /// Allocator work was done: this thread and the link thread collect soon (see `trim`).
    fn busy(&mut self) {
        self.trim.busy();
        // Read first: a store on every event would bounce the line between loop threads.
        if !self.shared.link_trim.load(Ordering::Relaxed) {
            self.shared.link_trim.store(true, Ordering::Relaxed);
        }
    }

    /// Schedules `on_deadline(key, gen)` at second `at`. Entries of older generations stay
    /// in the wheel until their second; once they outnumber the connections, they go.
    fn add_deadline(&mut self, at: u32, key: usize, gen: u32) {
        self.wheel.add(at, key, gen);
        if self.wheel.wants_compact(self.conns.len()) {
            let conns = &self.conns;
            self.wheel
                .compact(|key, gen| conns.get(key as usize).is_some_and(|c| c.gen == gen));
        }
    }

    fn gen(&mut self) -> u32 {
        self.next_gen = self.next_gen.wrapping_add(1);
        self.next_gen
    }

    // ---- accepting ----

    fn accept(&mut self, i: usize) {
        if self.drain_deadline.is_some() {
            return;
        }
        loop {
            if self.listeners[i].paused_until.is_some() {
                return;
            }
            let (mut stream, _peer) = match self.listeners[i].sock.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let code = e.raw_os_error().unwrap_or(0);
                    if matches!(
                        code,
                        libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
                    ) {
                        tracing::warn!(error = %e, "accept failed; pausing this listener for 100 ms");
                        self.listeners[i].paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                        return;
                    }
                    // Per-connection failures (ECONNABORTED, ...): go on at once.
                    continue;
                }
            };
            metrics().accepted.inc();
            self.busy();
            if self.shared.open.load(Ordering::Relaxed) >= self.shared.capacity {
                let mut out = Vec::new();
                http1::write_error(
                    &mut out,
                    503,
                    "over_capacity",
                    "this worker is full",
                    None,
                    b"",
                );
                let _ = stream.write(&out);
                metrics().closed(CloseReason::Refused).inc();
                continue;
            }
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if self
                .poll
                .registry()
                .register(
                    &mut stream,
                    Token(key),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                continue;
            }
            self.next_gen = self.next_gen.wrapping_add(1);
            let gen = self.next_gen;
            entry.insert(Conn {
                stream,
                gen,
                last_active: self.now,
                transport: Transport::Http,
                flags: 0,
                cors: 0,
                pos: 0,
                epoch: 0,
                channel: None,
                extra: None,
            });
            self.shared.open.fetch_add(1, Ordering::Relaxed);
            metrics().open(Transport::Http).inc();
            let at = self.now + self.shared.config.handshake_timeout_secs;
            self.add_deadline(at, key, gen);
            tracing::trace!(thread = self.index, key, "accepted");
        }
    }

    fn resume_paused_listeners(&mut self) {
        let now = Instant::now();
        for i in 0..self.listeners.len() {
            if self.listeners[i].paused_until.is_some_and(|u| u <= now) {
                self.listeners[i].paused_until = None;
                self.accept(i);
            }
        }
    }

    // ---- closing ----

    /// Counts the close, settles the link and the gauges; idempotent.
    fn account_close(&mut self, key: usize, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.has(CLOSING) {
            return;
        }
        conn.flags |= CLOSING;
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
        if conn.has(SUBSCRIBED) {
            conn.flags &= !(SUBSCRIBED | RESUB);
            let sub = sub_id(self.index, key, conn.gen);
            if let Some(ch) = conn.channel.take() {
                send_up(
                    &self.shared,
                    Up::Unsubscribe {
                        sub_id: sub,
                        channel: ch.into(),
                    },
                );
            }
        }
    }

    /// Drops the connection now.
    fn close_now(&mut self, key: usize, reason: CloseReason) {
        self.busy();
        self.account_close(key, reason);
        if self.conns.try_remove(key).is_some() {
            self.shared.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Lets queued bytes go out, shuts our side and waits (bounded) for the client's EOF.
    fn close_after_flush(&mut self, key: usize, reason: CloseReason) {
        self.account_close(key, reason);
        let gen = self.gen();
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.gen = gen;
        if let Some(ex) = conn.extra.as_mut() {
            ex.read = Vec::new();
            ex.ws_skip = 0;
        }
        conn.trim_extra();
        if conn.pending() == 0 && !conn.has(WRITE_SHUT) {
            conn.flags |= WRITE_SHUT;
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        }
        self.add_deadline(self.now + LINGER_SECS, key, gen);
    }

    /// Writes `self.out` to the connection; closes it when the client is too slow or gone.
    /// Returns whether the connection is still usable.
    fn send_out(&mut self, key: usize) -> bool {
        self.send_out_as(key, false)
    }

    /// [`Self::send_out`]; `exempt` output (a resume backlog) does not count against
    /// `--max-pending-bytes`.
    fn send_out_as(&mut self, key: usize, exempt: bool) -> bool {
        let max = self.shared.config.max_pending_bytes;
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let res = write_conn(conn, &self.out, max, exempt);
        if self.out.capacity() > 1 << 20 {
            self.out = Vec::with_capacity(4096);
        } else {
            self.out.clear();
        }
        match res {
            Ok(()) => true,
            Err(WriteErr::Slow) => {
                if conn.transport == Transport::Ws {
                    // After what is pending (which ends at a frame boundary), within the
                    // close linger.
                    ws::write_close(
                        &mut conn.extra().write,
                        ws::close::TOO_SLOW,
                        "client too slow",
                    );
                    self.close_after_flush(key, CloseReason::SlowClient);
                } else {
                    self.close_now(key, CloseReason::SlowClient);
                }
                false
            }
            Err(WriteErr::Io) => {
                self.close_now(key, CloseReason::IoError);
                false
            }
        }
    }

    // ---- socket events ----

    fn on_writable(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.pending() == 0 {
            return;
        }
        match flush_conn(conn) {
            Ok(()) => {
                if conn.pending() == 0 && conn.has(CLOSING) && !conn.has(WRITE_SHUT) {
                    conn.flags |= WRITE_SHUT;
                    let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                }
            }
            Err(_) => self.close_now(key, CloseReason::IoError),
        }
    }

    fn on_readable(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if conn.has(CLOSING) {
            self.discard_input(key, CloseReason::Done);
            return;
        }
        match conn.transport {
            Transport::Http => self.read_request(key),
            Transport::Ws => self.read_ws(key),
            Transport::Sse | Transport::Poll => self.discard_input(key, CloseReason::ClientClosed),
        }
    }

    /// Reads and drops whatever arrives; EOF or an error closes.
    fn discard_input(&mut self, key: usize, reason: CloseReason) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        loop {
            match conn.stream.read(&mut self.read_buf) {
                Ok(0) => break,
                Ok(_) => conn.last_active = self.now,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.close_now(key, reason);
    }

    /// Reads into the scratch buffer after any kept partial bytes. Returns the filled
    /// length and whether the peer is gone (EOF/error); `None` if the connection is gone.
    fn fill_read_buf(&mut self, key: usize) -> (usize, bool) {
        let conn = &mut self.conns[key];
        let mut len = 0;
        if let Some(ex) = conn.extra.as_mut() {
            if !ex.read.is_empty() {
                len = ex.read.len().min(self.read_buf.len());
                self.read_buf[..len].copy_from_slice(&ex.read[..len]);
                ex.read = Vec::new();
            }
        }
        conn.trim_extra();
        let mut eof = false;
        while len < self.read_buf.len() {
            match conn.stream.read(&mut self.read_buf[len..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    len += n;
                    conn.last_active = self.now;
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

    fn read_request(&mut self, key: usize) {
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
        match res {
            Ok(Some(req)) => {
                self.busy();
                self.handle_request(key, &req);
            }
            Ok(None) => {
                if eof {
                    self.close_now(key, CloseReason::ClientClosed);
                } else {
                    let conn = &mut self.conns[key];
                    conn.extra().read = buf[..len].to_vec();
                }
            }
            Err(HeadError::TooLarge) => {
                self.reply_error(
                    key,
                    431,
                    "headers_too_large",
                    "request head too large",
                    None,
                );
            }
            Err(HeadError::Malformed) => {
                self.reply_error(key, 400, "bad_request", "malformed HTTP request", None);
            }
        }
        self.read_buf = buf;
        // With an edge-triggered poll, a full buffer means more may be waiting.
        if full && self.conns.get(key).is_some_and(|c| !c.has(CLOSING)) {
            self.on_readable(key);
        } else if eof && self.conns.get(key).is_some_and(|c| !c.has(CLOSING)) {
            self.close_now(key, CloseReason::ClientClosed);
        }
    }

    fn read_ws(&mut self, key: usize) {
        let max_frame = self.shared.config.max_client_frame_bytes;
        loop {
            let (len, eof) = self.fill_read_buf(key);
            let mut skip = self.conns[key].extra.as_ref().map_or(0, |e| e.ws_skip);
            let mut off = 0;
            self.out.clear();
            let mut close: Option<(u16, CloseReason)> = None;
            while off < len {
                match ws::decode(&self.read_buf[off..len], &mut skip, max_frame) {
                    Ok((0, _)) => break,
                    Ok((n, f)) => {
                        off += n;
                        match f {
                            Some(ws::Frame::Ping(p)) => ws::write_pong(&mut self.out, p.as_slice()),
                            Some(ws::Frame::Close(code)) => {
                                // Codes RFC 6455 forbids on the wire (1004-1006, 1015,
                                // unassigned ranges) are a protocol error, not echoed.
                                close = Some(match code {
                                    None => (ws::close::NORMAL, CloseReason::ClientClosed),
                                    Some(c @ (1000..=1003 | 1007..=1014 | 3000..=4999)) => {
                                        (c, CloseReason::ClientClosed)
                                    }
                                    Some(_) => (ws::close::PROTOCOL, CloseReason::ProtocolError),
                                });
                                break;
                            }
                            _ => {}
                        }
                    }
                    Err(e) => {
                        close = Some((e.close_code(), CloseReason::ProtocolError));
                        break;
                    }
                }
            }
            if let Some((code, reason)) = close {
                ws::write_close(&mut self.out, code, "");
                if self.send_out(key) {
                    self.close_after_flush(key, reason);
                }
                return;
            }
            {
                let conn = &mut self.conns[key];
                if off < len || skip > 0 {
                    let ex = conn.extra();
                    ex.ws_skip = skip;
                    ex.read.clear();
                    ex.read.extend_from_slice(&self.read_buf[off..len]);
                } else if let Some(ex) = conn.extra.as_mut() {
                    ex.ws_skip = 0;
                    ex.read = Vec::new();
                    conn.trim_extra();
                }
            }
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

    // ---- requests ----

    fn cors_for(&self, origin: Option<&str>) -> u16 {
        let list = &self.shared.config.allow_origin;
        if self.shared.any_origin {
            return list
                .iter()
                .position(|o| o == "*")
                .map_or(0, |i| i as u16 + 1);
        }
        match origin {
            Some(o) => list.iter().position(|a| a == o).map_or(0, |i| i as u16 + 1),
            None => 0,
        }
    }

    fn origin_value(&self, cors: u16) -> Option<&str> {
        (cors > 0).then(|| self.shared.config.allow_origin[cors as usize - 1].as_str())
    }

    fn reply_error(
        &mut self,
        key: usize,
        status: u16,
        code: &str,
        message: &str,
        cors: Option<u16>,
    ) {
        self.out.clear();
        let origin = cors.and_then(|c| self.origin_value(c)).map(str::to_owned);
        http1::write_error(&mut self.out, status, code, message, origin.as_deref(), b"");
        if self.send_out(key) {
            self.close_after_flush(key, CloseReason::Done);
        }
    }

    fn handle_request(&mut self, key: usize, req: &Request<'_>) {
        tracing::trace!(
            thread = self.index,
            key,
            method = req.method,
            path = req.path,
            "request"
        );
        match req.path {
            "/healthz" | "/metrics" => {
                if req.method != "GET" && req.method != "HEAD" {
                    return self.reply_error(key, 405, "method_not_allowed", "use GET", None);
                }
                self.out.clear();
                if req.path == "/healthz" {
                    let body = br#"{"status":"ok"}"#;
                    http1::write_json(&mut self.out, 200, body, None, false);
                } else {
                    let mut body = Vec::new();
                    crate::metrics::render(&mut body);
                    http1::write_head(
                        &mut self.out,
                        200,
                        "text/plain; version=0.0.4",
                        Some(body.len()),
                        None,
                        false,
                        b"",
                    );
                    self.out.extend_from_slice(&body);
                }
                if self.send_out(key) {
                    self.close_after_flush(key, CloseReason::Done);
                }
            }
            "/v1/ws" => {
                if req.method != "GET" {
                    return self.reply_error(key, 405, "method_not_allowed", "use GET", None);
                }
                if !req.upgrade_websocket || req.ws_key.is_none() {
                    return self.reply_error(
                        key,
                        400,
                        "bad_request",
                        "a WebSocket upgrade is required",
                        None,
                    );
                }
                if req.ws_version != Some(b"13") {
                    return self.reply_error(
                        key,
                        400,
                        "bad_request",
                        "Sec-WebSocket-Version must be 13",
                        None,
                    );
                }
                if let Some(o) = req.origin {
                    if !self.shared.any_origin && self.cors_for(Some(o)) == 0 {
                        return self.reply_error(
                            key,
                            403,
                            "origin_not_allowed",
                            "this origin is not allowed",
                            None,
                        );
                    }
                }
                self.subscribe(key, Transport::Ws, req);
            }
            "/v1/poll" | "/v1/sse" => {
                let cors = self.cors_for(req.origin);
                match req.method {
                    "OPTIONS" => {
                        self.out.clear();
                        let origin = self.origin_value(cors).map(str::to_owned);
                        http1::write_preflight(&mut self.out, origin.as_deref());
                        if self.send_out(key) {
                            self.close_after_flush(key, CloseReason::Done);
                        }
                    }
                    "GET" => {
                        let t = if req.path == "/v1/poll" {
                            Transport::Poll
                        } else {
                            Transport::Sse
                        };
                        self.subscribe(key, t, req);
                    }
                    _ => self.reply_error(
                        key,
                        405,
                        "method_not_allowed",
                        "use GET or OPTIONS",
                        Some(cors),
                    ),
                }
            }
            _ => self.reply_error(key, 404, "not_found", "no such route", None),
        }
    }

    fn subscribe(&mut self, key: usize, transport: Transport, req: &Request<'_>) {
        let cors = if transport == Transport::Ws {
            0
        } else {
            self.cors_for(req.origin)
        };
        let q = match http1::parse_subscribe_query(req.query) {
            Ok(q) => q,
            Err((code, msg)) => return self.reply_error(key, 400, code, &msg, Some(cors)),
        };
        let mut since = q.since;
        if transport == Transport::Sse {
            if let Some(id) = req.last_event_id.and_then(|v| v.parse::<u64>().ok()) {
                since = Some(id);
            }
        }
        if let Some(secret) = &self.shared.secret {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if let Err(e) =
                protocol::token::verify(secret, q.token.as_deref().unwrap_or(""), &q.channel, now)
            {
                let msg = e.to_string();
                return self.reply_error(key, e.status(), e.code(), &msg, Some(cors));
            }
        }
        if !self.shared.link_is_up() {
            return self.reply_error(
                key,
                503,
                "unavailable",
                "the gateway link is down; retry shortly",
                Some(cors),
            );
        }
        let gen = self.gen();
        let sub = sub_id(self.index, key, gen);
        let up = Up::Subscribe {
            sub_id: sub,
            since,
            epoch: q.epoch,
            resume: false,
            max_bytes: u32::MAX,
            channel: q.channel.clone(),
        };
        match self.shared.up_tx.try_send(up) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics().link_queue_full.inc();
                return self.reply_error(
                    key,
                    503,
                    "unavailable",
                    "the worker is busy; retry shortly",
                    Some(cors),
                );
            }
            Err(TrySendError::Closed(_)) => {
                return self.reply_error(
                    key,
                    503,
                    "unavailable",
                    "the worker is stopping",
                    Some(cors),
                );
            }
        }
        let conn = &mut self.conns[key];
        conn.gen = gen;
        conn.flags = SUBSCRIBED;
        if let Some(s) = since {
            conn.pos = s;
            conn.flags |= HAS_POS;
        } else {
            conn.pos = 0;
        }
        if let Some(e) = q.epoch {
            conn.epoch = e;
            conn.flags |= HAS_EPOCH;
        } else {
            conn.epoch = 0;
        }
        if req.keep_alive {
            conn.flags |= KEEP_ALIVE;
        }
        conn.cors = cors;
        conn.channel = Some(q.channel.into_boxed_str());
        metrics().open(Transport::Http).dec();
        metrics().open(transport).inc();
        conn.transport = transport;
        tracing::debug!(
            thread = self.index,
            key,
            transport = transport.as_str(),
            "subscribed"
        );
        self.out.clear();
        match transport {
            Transport::Ws => ws::write_handshake(&mut self.out, req.ws_key.unwrap_or_default()),
            Transport::Sse => {
                let origin = self.origin_value(cors).map(str::to_owned);
                sse::write_head(&mut self.out, origin.as_deref());
            }
            _ => {
                let timeout = q
                    .timeout
                    .unwrap_or(DEFAULT_POLL_TIMEOUT)
                    .min(self.shared.config.max_poll_timeout_secs as u64)
                    as u32;
                self.add_deadline(self.now + timeout + 1, key, gen);
            }
        }
        self.send_out(key);
    }

    // ---- gateway commands ----

    fn process_inbox(&mut self) {
        let mut cmds = std::mem::take(&mut self.spare_cmds);
        {
            let mut inbox = self.shared.ports[self.index]
                .inbox
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut *inbox, &mut cmds);
        }
        if !cmds.is_empty() {
            self.busy();
        }
        let mut cur: Option<usize> = None;
        for cmd in cmds.drain(..) {
            let down = match cmd {
                Cmd::LinkUp => {
                    self.flush_batch(&mut cur);
                    self.start_resubscribe();
                    continue;
                }
                Cmd::Down(d) => d,
            };
            let id = match &down {
                Down::Backlog { sub_id, .. }
                | Down::Deliver { sub_id, .. }
                | Down::Kick { sub_id, .. } => *sub_id,
                Down::Welcome { .. } => continue,
            };
            let Some(key) = self.resolve(id) else {
                continue;
            };
            if cur != Some(key) {
                self.flush_batch(&mut cur);
                cur = Some(key);
                self.out.clear();
                self.body.clear();
                self.batch_count = 0;
                self.batch_gap = None;
                self.batch_backlog = false;
            }
            match down {
                Down::Backlog {
                    epoch,
                    last_seq,
                    gap_first_seq,
                    messages,
                    ..
                } => {
                    self.batch_backlog = true;
                    let conn = &mut self.conns[key];
                    // A Backlog again for the same subscription and epoch (a resubscribe, or
                    // a duplicate from a reconnect race) must not move the position back.
                    let again = conn.has(LIVE) && conn.has(HAS_EPOCH) && conn.epoch == epoch;
                    conn.flags |= LIVE | HAS_EPOCH;
                    conn.epoch = epoch;
                    if let Some(first) = gap_first_seq
                        .filter(|f| !again || !conn.has(HAS_POS) || f.saturating_sub(1) > conn.pos)
                    {
                        // The resume could not be served whole: positions restart here.
                        conn.pos = first.saturating_sub(1);
                        conn.flags |= HAS_POS;
                        self.batch_gap = Some((epoch, first));
                        match conn.transport {
                            Transport::Ws => ws::write_gap(&mut self.out, epoch, first),
                            Transport::Sse => sse::write_gap(&mut self.out, epoch, first),
                            _ => {}
                        }
                    }
                    for (seq, data) in &messages {
                        self.render_message(key, *seq, data);
                    }
                    let conn = &mut self.conns[key];
                    if !conn.has(HAS_POS) {
                        conn.pos = last_seq;
                        conn.flags |= HAS_POS;
                    }
                }
                Down::Deliver { seq, data, .. } => self.render_message(key, seq, &data),
                Down::Kick { reason, .. } => {
                    self.flush_batch(&mut cur);
                    if self
                        .conns
                        .get(key)
                        .is_some_and(|c| c.has(SUBSCRIBED) && !c.has(CLOSING))
                    {
                        self.on_kick(key, reason);
                    }
                }
                Down::Welcome { .. } => {}
            }
        }
        self.flush_batch(&mut cur);
        // A burst's long inbox is given back once handled (the other vector, now the
        // inbox, is the previous spare: bounded too).
        if cmds.capacity() > SPARE_CMDS {
            cmds.shrink_to(SPARE_CMDS);
        }
        self.spare_cmds = cmds;
    }

    /// The live connection a `sub_id` names, if it still exists in that generation.
    fn resolve(&self, id: u64) -> Option<usize> {
        let (thread, key, gen) = split_sub_id(id);
        if thread != self.index {
            return None;
        }
        let c = self.conns.get(key)?;
        (c.gen == gen && c.has(SUBSCRIBED) && !c.has(CLOSING)).then_some(key)
    }

    /// Renders one message for the batch unless it was sent already.
    fn render_message(&mut self, key: usize, seq: u64, data: &[u8]) {
        let conn = &mut self.conns[key];
        if conn.has(HAS_POS) && seq <= conn.pos {
            return;
        }
        conn.pos = seq;
        conn.flags |= HAS_POS;
        self.batch_count += 1;
        match conn.transport {
            Transport::Ws => ws::write_message(&mut self.out, seq, data),
            Transport::Sse => sse::write_message(&mut self.out, seq, data),
            Transport::Poll => self.body.push(seq, data),
            Transport::Http => {}
        }
    }

    /// Sends what was gathered for the current connection in one write.
    fn flush_batch(&mut self, cur: &mut Option<usize>) {
        let Some(key) = cur.take() else {
            return;
        };
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let count = std::mem::take(&mut self.batch_count);
        let gap = self.batch_gap.take();
        let backlog = std::mem::take(&mut self.batch_backlog);
        match conn.transport {
            Transport::Ws | Transport::Sse => {
                if !self.out.is_empty() && self.send_out_as(key, backlog) {
                    metrics().delivered.inc_by(count);
                }
            }
            Transport::Poll => {
                if count > 0 || gap.is_some() {
                    metrics().delivered.inc_by(count);
                    self.answer_poll(key, gap, backlog);
                }
            }
            Transport::Http => {}
        }
        self.out.clear();
    }

    /// Answers a held poll with what `self.body` holds, unsubscribes, and returns the
    /// connection to reading requests (keep-alive) or closes it.
    fn answer_poll(&mut self, key: usize, gap: Option<(u64, u64)>, exempt: bool) {
        let conn = &mut self.conns[key];
        let next = conn.pos;
        let keep_alive = conn.has(KEEP_ALIVE) && self.drain_deadline.is_none();
        let origin = (conn.cors > 0)
            .then(|| self.shared.config.allow_origin[conn.cors as usize - 1].as_str());
        self.out.clear();
        http1::write_json(
            &mut self.out,
            200,
            self.body.finish(next, gap),
            origin,
            keep_alive,
        );
        self.body.clear();
        self.end_poll(key);
        if self.send_out_as(key, exempt) {
            if keep_alive {
                let gen = self.gen();
                let conn = &mut self.conns[key];
                conn.gen = gen;
                self.add_deadline(
                    self.now + self.shared.config.handshake_timeout_secs,
                    key,
                    gen,
                );
            } else {
                self.close_after_flush(key, CloseReason::Done);
            }
        }
    }

    /// A poll is over: unsubscribe and go back to the request state.
    fn end_poll(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.has(SUBSCRIBED) {
            let sub = sub_id(self.index, key, conn.gen);
            if let Some(ch) = conn.channel.take() {
                send_up(
                    &self.shared,
                    Up::Unsubscribe {
                        sub_id: sub,
                        channel: ch.into(),
                    },
                );
            }
        }
        conn.channel = None;
        conn.flags &= CLOSING | WRITE_SHUT;
        metrics().open(conn.transport).dec();
        metrics().open(Transport::Http).inc();
        conn.transport = Transport::Http;
        conn.last_active = self.now;
    }

    fn on_kick(&mut self, key: usize, reason: KickReason) {
        let conn = &mut self.conns[key];
        // The gateway dropped the subscription itself: no Unsubscribe owed.
        conn.flags &= !(SUBSCRIBED | RESUB);
        let (code, ws_code, msg) = match reason {
            KickReason::Replaced => ("replaced", ws::close::REPLACED, REPLACED_MSG),
            KickReason::Resync => ("resync", ws::close::RESYNC, RESYNC_MSG),
            KickReason::Refused => ("refused", ws::close::TRY_AGAIN, REFUSED_MSG),
        };
        tracing::debug!(thread = self.index, key, reason = code, "kicked");
        self.out.clear();
        match conn.transport {
            Transport::Ws => {
                ws::write_close(&mut self.out, ws_code, msg);
                if self.send_out(key) {
                    self.close_after_flush(key, CloseReason::Kicked);
                }
            }
            Transport::Sse => {
                sse::write_closed(&mut self.out, code, msg);
                if self.send_out(key) {
                    self.close_after_flush(key, CloseReason::Kicked);
                }
            }
            Transport::Poll => match reason {
                KickReason::Replaced => {
                    let origin = (conn.cors > 0)
                        .then(|| self.shared.config.allow_origin[conn.cors as usize - 1].clone());
                    metrics().open(Transport::Poll).dec();
                    metrics().open(Transport::Http).inc();
                    conn.transport = Transport::Http;
                    http1::write_error(
                        &mut self.out,
                        409,
                        "replaced",
                        REPLACED_MSG,
                        origin.as_deref(),
                        b"",
                    );
                    if self.send_out(key) {
                        self.close_after_flush(key, CloseReason::Kicked);
                    }
                }
                KickReason::Resync => {
                    self.body.clear();
                    self.answer_poll(key, None, false);
                }
                KickReason::Refused => {
                    let origin = (conn.cors > 0)
                        .then(|| self.shared.config.allow_origin[conn.cors as usize - 1].clone());
                    metrics().open(Transport::Poll).dec();
                    metrics().open(Transport::Http).inc();
                    conn.transport = Transport::Http;
                    http1::write_error(
                        &mut self.out,
                        503,
                        "refused",
                        REFUSED_MSG,
                        origin.as_deref(),
                        b"",
                    );
                    if self.send_out(key) {
                        self.close_after_flush(key, CloseReason::Kicked);
                    }
                }
            },
            Transport::Http => {}
        }
    }

    fn start_resubscribe(&mut self) {
        for (_, c) in self.conns.iter_mut() {
            if c.has(SUBSCRIBED) && !c.has(CLOSING) {
                c.flags |= RESUB;
            }
        }
        self.resub_cursor = Some(0);
        self.resubscribe_some();
    }

    /// Re-sends `Subscribe` for connections marked `RESUB` until the link queue is full.
    fn resubscribe_some(&mut self) {
        let Some(mut i) = self.resub_cursor else {
            return;
        };
        let end = self.conns.capacity();
        while i < end {
            if let Some(c) = self.conns.get_mut(i) {
                if c.has(RESUB) {
                    let up = Up::Subscribe {
                        sub_id: sub_id(self.index, i, c.gen),
                        since: c.has(HAS_POS).then_some(c.pos),
                        epoch: c.has(HAS_EPOCH).then_some(c.epoch),
                        resume: true,
                        max_bytes: u32::MAX,
                        channel: c.channel.as_deref().unwrap_or_default().to_owned(),
                    };
                    match self.shared.up_tx.try_send(up) {
                        Ok(()) => c.flags &= !RESUB,
                        Err(TrySendError::Full(_)) => {
                            self.resub_cursor = Some(i);
                            return;
                        }
                        Err(TrySendError::Closed(_)) => break,
                    }
                }
            }
            i += 1;
        }
        self.resub_cursor = None;
    }

    // ---- schedule ----

    fn tick(&mut self) {
        if self.wheel.next <= self.now {
            self.trim.second();
        }
        while self.wheel.next <= self.now {
            let sec = self.wheel.next;
            let due = self.wheel.take(sec);
            self.wheel.next += 1;
            for &(key, gen) in &due {
                self.on_deadline(key as usize, gen);
            }
            self.wheel.put_back(sec, due);
            self.sweep();
        }
    }

    fn on_deadline(&mut self, key: usize, gen: u32) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if conn.gen != gen {
            return;
        }
        if conn.has(CLOSING) {
            self.close_now(key, CloseReason::Done);
            return;
        }
        match conn.transport {
            Transport::Http => self.close_now(key, CloseReason::Timeout),
            Transport::Poll if conn.has(SUBSCRIBED) => {
                self.body.clear();
                self.answer_poll(key, None, false);
            }
            _ => {}
        }
    }

    /// Visits the next slice of the slab so every connection is seen once per ping interval.
    fn sweep(&mut self) {
        let interval = self.shared.config.ping_interval_secs;
        let cap = self.conns.capacity();
        if cap == 0 {
            return;
        }
        let per_tick = cap.div_ceil(interval as usize);
        let dead_after = interval.saturating_mul(5) / 2;
        for _ in 0..per_tick {
            if self.sweep_cursor >= cap {
                self.sweep_cursor = 0;
            }
            let key = self.sweep_cursor;
            self.sweep_cursor += 1;
            let Some(conn) = self.conns.get(key) else {
                continue;
            };
            if conn.has(CLOSING) {
                continue;
            }
            match conn.transport {
                Transport::Ws => {
                    if self.now.saturating_sub(conn.last_active) > dead_after {
                        self.close_now(key, CloseReason::Timeout);
                    } else {
                        self.out.clear();
                        ws::write_ping(&mut self.out);
                        self.send_out(key);
                    }
                }
                Transport::Sse => {
                    self.out.clear();
                    self.out.extend_from_slice(sse::HEARTBEAT);
                    self.send_out(key);
                }
                _ => {}
            }
        }
    }

    fn begin_drain(&mut self) {
        self.drain_deadline = Some(Instant::now() + Duration::from_secs(LINGER_SECS as u64));
        for l in self.listeners.drain(..) {
            let mut sock = l.sock;
            let _ = self.poll.registry().deregister(&mut sock);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(conn) = self.conns.get(key) else {
                continue;
            };
            if conn.has(CLOSING) {
                continue;
            }
            self.out.clear();
            match conn.transport {
                Transport::Ws => {
                    ws::write_close(&mut self.out, ws::close::GOING_AWAY, "server shutting down");
                    if self.send_out(key) {
                        self.close_after_flush(key, CloseReason::Shutdown);
                    }
                }
                Transport::Poll if conn.has(SUBSCRIBED) => {
                    self.body.clear();
                    self.answer_poll(key, None, false);
                }
                // Idle between requests: nothing is owed, close at once.
                Transport::Http if conn.pending() == 0 => {
                    self.close_now(key, CloseReason::Shutdown)
                }
                _ => self.close_after_flush(key, CloseReason::Shutdown),
            }
        }
    }
}

/// Queues a frame for the link; a full queue drops it (counted).
fn send_up(shared: &Shared, up: Up) {
    if let Err(TrySendError::Full(_)) = shared.up_tx.try_send(up) {
        metrics().link_queue_full.inc();
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
        assert!(std::mem::size_of::<Extra>() <= 64);
    }

    #[test]
    fn wheel_fires_in_order_and_clamps() {
        let mut w = Wheel::new(5, 10);
        w.add(12, 1, 1);
        w.add(100, 2, 2); // clamped to the wheel's span
        w.add(3, 3, 3); // in the past: next due second
        assert_eq!(w.take(10), vec![(3, 3)]);
        w.put_back(10, Vec::new());
        w.next = 11;
        assert!(w.take(11).is_empty());
        w.next = 12;
        assert_eq!(w.take(12), vec![(1, 1)]);
    }

    #[test]
    fn wheel_compaction_drops_stale_entries_and_is_amortized() {
        let mut w = Wheel::new(120, 0);
        // 2,000 connections, each re-armed 5 times: only the newest generation is live.
        for gen in 1..=5u32 {
            for key in 0..2000usize {
                w.add(gen * 10, key, gen);
            }
        }
        assert_eq!(w.len, 10_000);
        assert!(w.wants_compact(2000));
        w.compact(|_, gen| gen == 5);
        assert_eq!(w.len, 2000);
        assert!(!w.wants_compact(2000));
        // The live entries survive, in their slot.
        assert_eq!(w.slots[50].len(), 2000);
        assert!(w.slots[10].is_empty() && w.slots[10].capacity() == 0);
        // With many live entries left, the next compaction waits for as many adds again,
        // even if the connections went away meanwhile.
        for i in 0..=(2000 + 1024) {
            assert!(!w.wants_compact(0), "after {i} adds");
            w.add(60, i, 6);
        }
        assert!(w.wants_compact(0));
    }
}
