//! The schedule: wheel ticks, deadlines, the ping sweep, the connect-rate table's sweep and
//! the shutdown drain.

use super::conn::{CLOSING, SUBSCRIBED};
use super::render;
use super::{EventLoop, DRAIN_SECS};
use crate::metrics::{metrics, CloseReason, Transport};
use crate::session::End;
use crate::tls::session::Failure;
use std::time::Duration;

impl EventLoop {
    // ---- schedule ----

    pub(super) fn tick(&mut self) {
        if self.wheel.next <= self.now.secs {
            self.trim.second();
            // One shard of the connect-rate table a second: idle IPs go within 16 s.
            if let (0, Some(limit)) = (self.index, &self.shared.connect_rate) {
                limit.sweep(self.now.secs as usize, self.now.at);
            }
        }
        while self.wheel.next <= self.now.secs {
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

    pub(super) fn on_deadline(&mut self, key: usize, gen: u32) {
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
            Transport::Http => {
                if self.in_tls_handshake(key) {
                    metrics().tls_failure(Failure::Timeout).inc();
                }
                self.close_now(key, CloseReason::Timeout)
            }
            Transport::Poll if conn.has(SUBSCRIBED) => {
                self.body.clear();
                self.answer_poll(key, None, false);
            }
            _ => {}
        }
    }

    /// Visits the next slice of the slab so every connection is seen once per ping interval.
    pub(super) fn sweep(&mut self) {
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
            if conn.transport == Transport::Ws
                && self.now.secs.saturating_sub(conn.last_active) > dead_after
            {
                self.close_now(key, CloseReason::Timeout);
                continue;
            }
            self.out.clear();
            if render::heartbeat(conn.transport, &mut self.out) {
                self.send_out(key);
            }
        }
    }

    pub(super) fn begin_drain(&mut self) {
        self.drain_deadline = Some(self.now.at + Duration::from_secs(DRAIN_SECS));
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
            match conn.transport {
                // Idle between requests: nothing is owed, close at once.
                Transport::Http if conn.pending() == 0 => {
                    self.close_now(key, CloseReason::Shutdown)
                }
                // Only a subscribed poll is owed an answer.
                Transport::Poll if !conn.has(SUBSCRIBED) => {
                    self.close_after_flush(key, CloseReason::Shutdown)
                }
                _ => self.end(key, End::Shutdown),
            }
        }
    }
}
