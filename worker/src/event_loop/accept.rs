//! Accepting connections, and pausing a listener after EMFILE.

use super::{Conn, EventLoop};
use crate::http1;
use crate::metrics::{metrics, CloseReason, Transport};
use mio::net::TcpListener;
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

    pub(super) fn accept(&mut self, i: usize) {
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
                        self.listeners[i].paused_until = Some(self.now.at + ACCEPT_PAUSE);
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
