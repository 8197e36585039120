//! State shared by the loop threads and the link thread: config, counters, link state,
//! each loop thread's inbox and waker, and the `sub_id` layout.

use crate::config::Config;
use protocol::link::{Down, Up};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::mpsc;

/// A command for a loop thread, delivered through its inbox.
#[derive(Debug)]
pub enum Cmd {
    /// A frame from the gateway for one of the thread's connections.
    Down(Down),
    /// The link is (back) up: re-send `Subscribe` for every subscribed connection.
    LinkUp,
}

/// One loop thread's mailbox.
pub struct ThreadPort {
    pub inbox: Mutex<Vec<Cmd>>,
    pub waker: mio::Waker,
}

impl ThreadPort {
    /// Appends `cmds` (draining it) and wakes the thread if its inbox was empty (a
    /// non-empty inbox already has a wake-up pending).
    pub fn push(&self, cmds: &mut Vec<Cmd>) {
        if cmds.is_empty() {
            return;
        }
        let was_empty = {
            let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
            let was_empty = inbox.is_empty();
            inbox.append(cmds);
            was_empty
        };
        if was_empty {
            let _ = self.waker.wake();
        }
    }
}

/// Everything the threads of one worker share.
pub struct Shared {
    pub config: Config,
    pub capacity: usize,
    pub secret: Option<Vec<u8>>,
    pub any_origin: bool,
    /// Worker start; activity timestamps are seconds since then.
    pub start: Instant,
    /// Client connections open on all threads.
    pub open: AtomicUsize,
    /// At least one gateway link is up (clients are taken).
    pub link_up: AtomicBool,
    /// Gateway links up now.
    pub links_up: AtomicUsize,
    pub shutdown: AtomicBool,
    pub ports: Vec<ThreadPort>,
    pub up_tx: mpsc::Sender<Up>,
    /// Set by loop threads that did allocator work (much of it reaches the link thread):
    /// the link thread collects soon, see `trim`.
    pub link_trim: AtomicBool,
    /// Open connections per source IP, over all loop threads (`--max-connections-per-ip`;
    /// empty when off).
    pub per_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>,
    /// New connections per source IP (`--connect-rate-per-ip`; `None` when off).
    pub connect_rate: Option<protocol::ratelimit::RateLimiter<std::net::IpAddr>>,
    /// The certificate of the TLS listeners (`--listen-tls`), reloaded on SIGHUP.
    pub tls: Option<crate::tls::server_config::TlsFiles>,
}

impl Shared {
    pub fn is_shutdown(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    pub fn link_is_up(&self) -> bool {
        self.link_up.load(Ordering::Acquire)
    }

    pub fn connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A connection's CORS index for a request's `Origin`: 0 for no CORS header, else
    /// 1 + its place in `--allow-origin` (`*` when any origin is allowed).
    pub fn cors_index(&self, origin: Option<&str>) -> u16 {
        let list = &self.config.allow_origin;
        let found = if self.any_origin {
            list.iter().position(|o| o == "*")
        } else {
            origin.and_then(|o| list.iter().position(|a| a == o))
        };
        found.map_or(0, |i| i as u16 + 1)
    }

    /// The `Access-Control-Allow-Origin` value of a CORS index.
    pub fn origin(&self, cors: u16) -> Option<&str> {
        (cors > 0).then(|| self.config.allow_origin[cors as usize - 1].as_str())
    }

    /// Asks every loop thread to start its graceful drain.
    pub fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        for p in &self.ports {
            let _ = p.waker.wake();
        }
    }
}

/// Packs thread index (8 bits), slab key (24 bits) and generation (32 bits) into a `sub_id`.
pub fn sub_id(thread: usize, key: usize, gen: u32) -> u64 {
    debug_assert!(thread < 256 && key < (1 << 24));
    (thread as u64) << 56 | (key as u64 & 0xff_ffff) << 32 | gen as u64
}

/// Inverse of [`sub_id`].
pub fn split_sub_id(id: u64) -> (usize, usize, u32) {
    (
        (id >> 56) as usize,
        ((id >> 32) & 0xff_ffff) as usize,
        id as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_id_roundtrip() {
        for (t, k, g) in [(0, 0, 0), (255, (1 << 24) - 1, u32::MAX), (3, 12345, 77)] {
            assert_eq!(split_sub_id(sub_id(t, k, g)), (t, k, g));
        }
    }
}
