//! Accepting connections (refused at once when the worker is full or a source IP is over
//! `--max-connections-per-ip` or `--connect-rate-per-ip`), and pausing a listener after
//! EMFILE.

use super::conn::Extra;
use super::{Conn, EventLoop};
use crate::http1;
use crate::metrics::{metrics, CloseReason, RefuseReason, Transport};
use crate::tls::session::Tls;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Token};
use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Pause after EMFILE/ENFILE before accepting again.
pub(super) const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

pub(super) struct Listener {
    pub(super) sock: TcpListener,
    /// Connections accepted here start with a TLS handshake.
    pub(super) tls: bool,
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
                Ok((stream, peer)) => {
                    let tls = self.listeners[i].tls;
                    self.admit(stream, peer.ip(), tls)
                }
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

    /// A new connection: refused when the worker is full or its source IP is over a limit,
    /// else a slab slot that reads its request under the handshake timeout.
    fn admit(&mut self, mut stream: TcpStream, ip: IpAddr, tls: bool) {
        metrics().accepted.inc();
        self.busy();
        if self.shared.open.load(Ordering::Relaxed) >= self.shared.capacity {
            refuse(
                &mut stream,
                tls,
                RefuseReason::OverCapacity,
                "this worker is full",
                b"",
            );
            return;
        }
        // Before any TLS state is made: a refused connection costs no handshake. One clock
        // read per loop turn serves every accept of the turn.
        if let Some(limit) = &self.shared.connect_rate {
            if let Err(wait) = limit.take(&ip, 1, self.now.at) {
                let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                let why = format!(
                    "more than {} new connections per second from one address; retry after {secs} s",
                    self.shared.config.connect_rate_per_ip
                );
                let header = format!("Retry-After: {secs}\r\n");
                let reason = RefuseReason::ConnectRateLimited;
                refuse(&mut stream, tls, reason, &why, header.as_bytes());
                return;
            }
        }
        let extra = if tls {
            let Some(files) = &self.shared.tls else {
                return;
            };
            match Tls::accept(files.config()) {
                Ok(t) => Some(Box::new(Extra {
                    tls: Some(Box::new(t)),
                    ..Default::default()
                })),
                Err(e) => {
                    tracing::warn!(error = %e, "TLS session could not start");
                    return;
                }
            }
        } else {
            None
        };
        let per_ip = self.shared.config.max_connections_per_ip;
        if per_ip > 0 && !self.count_peer(ip, per_ip) {
            let why = format!("more than {per_ip} connections from one address");
            refuse(
                &mut stream,
                tls,
                RefuseReason::TooManyConnections,
                &why,
                b"",
            );
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
            // Counted above, never held: give the count back.
            if per_ip > 0 {
                self.uncount_peer(ip);
            }
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
            extra,
        });
        self.shared.open.fetch_add(1, Ordering::Relaxed);
        if per_ip > 0 {
            self.peer_ips.insert(key, ip);
        }
        metrics().open(Transport::Http).inc();
        let at = self.now.secs + self.shared.config.handshake_timeout_secs;
        self.add_deadline(at, key, gen);
        tracing::trace!(thread = self.index, key, "accepted");
    }

    /// One more connection from `ip`, if it holds fewer than `max`.
    fn count_peer(&self, ip: IpAddr, max: u32) -> bool {
        let mut m = self.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// Connection `key` is gone: its IP holds one fewer.
    pub(super) fn forget_peer(&mut self, key: usize) {
        let Some(ip) = self.peer_ips.remove(&key) else {
            return;
        };
        self.uncount_peer(ip);
    }

    /// `ip` holds one connection fewer.
    fn uncount_peer(&self, ip: IpAddr) {
        let mut m = self.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
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

/// Refused at accept: the JSON error written at once (before any request is read), with
/// `extra` header lines; then the connection is dropped. A TLS client could not read a
/// plain answer: it is refused by the close alone.
fn refuse(stream: &mut TcpStream, tls: bool, reason: RefuseReason, message: &str, extra: &[u8]) {
    if !tls {
        let mut out = Vec::new();
        let (status, code) = (reason.status(), reason.as_str());
        http1::write_error(&mut out, status, code, message, None, extra);
        let _ = stream.write(&out);
    }
    metrics().refused(reason).inc();
    metrics().closed(CloseReason::Refused).inc();
}
