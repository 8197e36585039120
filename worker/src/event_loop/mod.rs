//! One mio event loop per thread: its own SO_REUSEPORT listener per address, a slab of
//! small `Conn`s, per-thread scratch buffers, a coarse timing wheel (handshake and
//! long-poll deadlines, close lingers) and a sweep that pings every connection once per
//! `--ping-interval-secs`. Nothing per connection while it is idle but its slab slot.

use crate::metrics::metrics;
use crate::poll::PollBody;
use crate::shared::{Cmd, Shared};
use crate::trim::Trim;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use protocol::link::Up;
use slab::Slab;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
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
/// How long the shutdown drain lets connections flush before it drops them.
const DRAIN_SECS: u64 = 2;

mod accept;
mod behind;
mod conn;
mod delivery;
mod read;
mod render;
mod requests;
mod schedule;
mod sock;
mod wheel;

use accept::Listener;
use behind::SideTable;
use conn::Conn;
use wheel::Wheel;

/// The loop's time, read once per turn (when `poll` returns): every rule in a turn sees
/// the same time, and nothing else reads the clock.
#[derive(Debug, Clone, Copy)]
pub(super) struct Now {
    pub(super) at: Instant,
    /// Seconds since worker start: activity stamps and the wheel.
    pub(super) secs: u32,
    /// Unix seconds: token expiry.
    pub(super) unix: u64,
    /// Unix µs: when a `Subscribe` was asked (the gateway orders subscribes by it).
    pub(super) unix_us: u64,
}

impl Now {
    fn read(shared: &Shared) -> Now {
        let at = Instant::now();
        let unix_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Now {
            at,
            secs: at.saturating_duration_since(shared.start).as_secs() as u32,
            unix: unix_us / 1_000_000,
            unix_us,
        }
    }
}

/// A loop thread before it runs: its poll instance and listeners (bound at `Worker::bind`).
pub(crate) struct LoopSetup {
    pub poll: Poll,
    /// Each listener with whether it speaks TLS.
    pub listeners: Vec<(std::net::TcpListener, bool)>,
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
    /// Connections behind their channel's log (holes, held deliveries, fetches).
    side: SideTable,
    next_gen: u32,
    now: Now,
    sweep_cursor: usize,
    resub_cursor: Option<usize>,
    drain_deadline: Option<Instant>,
    // Per-batch state of the connection whose deliveries are being gathered.
    batch_count: u64,
    batch_gap: Option<(u64, u64)>,
    /// The batch being gathered holds a Backlog page: it is written whole (`write_conn`).
    batch_page: bool,
    trim: Trim,
    /// With `--max-connections-per-ip`: each open connection's source IP, by slab key.
    peer_ips: HashMap<usize, IpAddr>,
    /// This thread's share of `pushgate_delivery_latency_seconds`, flushed per inbox.
    latency: prometheus::local::LocalHistogram,
    /// The clock read for the inbox being handled (once, at its first stamped delivery).
    inbox_us: Option<u64>,
}

impl EventLoop {
    pub fn new(index: usize, shared: Arc<Shared>, setup: LoopSetup) -> EventLoop {
        let c = &shared.config;
        let span = c
            .max_poll_timeout_secs
            .max(c.handshake_timeout_secs)
            .max(c.close_linger_secs)
            + 2;
        let now = Now::read(&shared);
        let read_len = READ_BUF.max(c.max_header_bytes + 1);
        let mut listeners = Vec::new();
        for (i, (l, tls)) in setup.listeners.into_iter().enumerate() {
            let mut sock = TcpListener::from_std(l);
            setup
                .poll
                .registry()
                .register(&mut sock, Token(LISTENER_BASE - i), Interest::READABLE)
                .expect("register listener");
            listeners.push(Listener {
                sock,
                tls,
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
            wheel: Wheel::new(span, now.secs),
            side: SideTable::new(c.max_held_bytes),
            next_gen: (index as u32).wrapping_mul(0x9e37_79b9),
            now,
            sweep_cursor: 0,
            resub_cursor: None,
            drain_deadline: None,
            peer_ips: HashMap::new(),
            batch_count: 0,
            batch_gap: None,
            batch_page: false,
            trim: Trim::default(),
            latency: crate::metrics::metrics().delivery_latency.local(),
            inbox_us: None,
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
            self.now = Now::read(&self.shared);
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
            self.fire_hole_timers();
            if self.shared.is_shutdown() && self.drain_deadline.is_none() {
                self.begin_drain();
            }
            self.resume_paused_listeners();
            self.tick();
            if self.resub_cursor.is_some() {
                self.resubscribe_some();
            }
            if let Some(deadline) = self.drain_deadline {
                if self.conns.is_empty() || self.now.at >= deadline {
                    break;
                }
            }
        }
        // Whatever is left after the drain deadline is dropped.
        let left = self.conns.len();
        for key in self.peer_ips.keys().copied().collect::<Vec<_>>() {
            self.forget_peer(key);
        }
        for conn in self.conns.drain() {
            metrics().pending_bytes.sub(conn.pending() as i64);
        }
        self.shared.open.fetch_sub(left, Ordering::Relaxed);
        tracing::debug!(thread = self.index, "loop thread stopped");
    }

    fn poll_timeout(&self) -> Duration {
        let elapsed = self.now.at.saturating_duration_since(self.shared.start);
        let next_sec = Duration::from_secs(elapsed.as_secs() + 1);
        let mut t = next_sec.saturating_sub(elapsed);
        if self.resub_cursor.is_some() {
            t = t.min(Duration::from_millis(10));
        }
        let now = self.now.at;
        // The wheel counts seconds; an open hole is looked at after `--hole-wait-ms`.
        if let Some(h) = self.side.next_timer() {
            t = t.min(h.saturating_duration_since(now));
        }
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
}

/// Queues a frame for the link; a full queue drops it (counted).
fn send_up(shared: &Shared, up: Up) {
    if let Err(TrySendError::Full(_)) = shared.up_tx.try_send(up) {
        metrics().link_queue_full.inc();
    }
}
