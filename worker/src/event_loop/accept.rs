//! Accepting connections, and pausing a listener after EMFILE.

use super::{Conn, EventLoop};
use crate::http1;
use crate::metrics::{metrics, CloseReason, Transport};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Token};
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Pause after EMFILE/ENFILE before accepting again.
pub(super) const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

pub(super) struct Listener {
    pub(super) sock: TcpListener,
    pub(super) paused_until: Option<Instant>,
}

impl EventLoop {
    // ---- accepting ----

    /// Accepts what listener `i` has waiting (not while draining or paused).
    pub(super) fn accept(&mut self, i: usize) {
        if self.drain_deadline.is_some() {
            return;
        }
        while self.listeners[i].paused_until.is_none() {
            match self.listeners[i].sock.accept() {
                Ok((stream, _peer)) => self.admit(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.accept_failed(i, &e),
            }
        }
    }

    /// Out of files or memory: pause this listener; a per-connection failure (ECONNABORTED,
    /// ...): go on at once.
    fn accept_failed(&mut self, i: usize, e: &io::Error) {
        let code = e.raw_os_error().unwrap_or(0);
        if matches!(
            code,
            libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
        ) {
            tracing::warn!(error = %e, "accept failed; pausing this listener for 100 ms");
            self.listeners[i].paused_until = Some(self.now.at + ACCEPT_PAUSE);
        }
    }

    /// A new connection: refused when the worker is full, else a slab slot that reads its
    /// request under the handshake timeout.
    fn admit(&mut self, mut stream: TcpStream) {
        metrics().accepted.inc();
        self.busy();
        if self.shared.open.load(Ordering::Relaxed) >= self.shared.capacity {
            let mut out = Vec::new();
            let full = "this worker is full";
            http1::write_error(&mut out, 503, "over_capacity", full, None, b"");
            let _ = stream.write(&out);
            metrics().closed(CloseReason::Refused).inc();
            return;
        }
        let gen = self.gen();
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if self
            .poll
            .registry()
            .register(&mut stream, Token(key), interest)
            .is_err()
        {
            return;
        }
        entry.insert(Conn {
            stream,
            gen,
            last_active: self.now.secs,
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
        let at = self.now.secs + self.shared.config.handshake_timeout_secs;
        self.add_deadline(at, key, gen);
        tracing::trace!(thread = self.index, key, "accepted");
    }

    pub(super) fn resume_paused_listeners(&mut self) {
        for i in 0..self.listeners.len() {
            if self.listeners[i]
                .paused_until
                .is_some_and(|u| u <= self.now.at)
            {
                self.listeners[i].paused_until = None;
                self.accept(i);
            }
        }
    }
}
