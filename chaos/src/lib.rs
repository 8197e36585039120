//! A fault-injection TCP proxy: every connection to it is forwarded to one upstream, with
//! the faults of [`Faults`] applied to each direction. Every random choice comes from a
//! generator seeded with `seed` and the connection's number, so a failing run replays
//! with the same seed (for the same order of connections and reads).
//!
//! Faults, each off by default (`ways` says which directions the shaping ones act on):
//! - `segment`: writes of at most this many bytes, with `TCP_NODELAY` (1 = byte by byte),
//!   so a request or frame arrives split anywhere;
//! - `delay`: a pause of a random length in this range before each segment;
//! - `pause`: now and then (one read in `pause_every`) a longer pause, a stalled network;
//! - `reset_after`: after a random number of bytes in this range (both directions
//!   counted), both sides are reset (`SO_LINGER` 0: the peers see RST, not FIN);
//! - `half_close_after`: after a random number of bytes in this range from the client, the
//!   client->upstream direction is shut down (FIN) while the other keeps flowing;
//! - blackhole ([`Control::set_blackhole`], or `Faults::blackhole`): bytes are read and
//!   dropped, nothing is forwarded, connections stay open (a dead route).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Which directions `segment`, `delay` and `pause` shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ways {
    #[default]
    Both,
    /// Client to upstream only (what the server under test reads).
    ToUpstream,
    /// Upstream to client only.
    ToClient,
}

/// What goes wrong, per connection and direction.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub seed: u64,
    pub ways: Ways,
    pub segment: Option<usize>,
    pub delay: Option<RangeInclusive<Duration>>,
    pub pause: Option<Duration>,
    pub pause_every: u32,
    pub reset_after: Option<RangeInclusive<u64>>,
    pub half_close_after: Option<RangeInclusive<u64>>,
    pub blackhole: bool,
}

/// Switches that act on a running proxy, and what it counted.
#[derive(Debug, Default)]
pub struct Control {
    blackhole: AtomicBool,
    reset_now: Notify,
    pub connections: AtomicU64,
    pub resets: AtomicU64,
    pub bytes: AtomicU64,
}

impl Control {
    /// Start or stop dropping every byte (connections stay open).
    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::Relaxed);
    }

    /// Resets every open connection now.
    pub fn reset_all(&self) {
        self.reset_now.notify_waiters();
    }
}

/// A running proxy: where it listens and its controls.
pub struct Proxy {
    pub addr: SocketAddr,
    pub control: Arc<Control>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on `listen` (port 0 for any) and forwards to `upstream` with `faults`.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        faults: Faults,
    ) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let control = Arc::new(Control::default());
        control.set_blackhole(faults.blackhole);
        let task = tokio::spawn(serve(listener, upstream, faults, control.clone()));
        Ok(Proxy {
            addr,
            control,
            task,
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.control.reset_all();
    }
}

/// Accepts and forwards until the task is dropped.
pub async fn serve(listener: TcpListener, upstream: SocketAddr, faults: Faults, c: Arc<Control>) {
    let faults = Arc::new(faults);
    let mut n: u64 = 0;
    loop {
        let Ok((down, _)) = listener.accept().await else {
            continue;
        };
        n += 1;
        c.connections.fetch_add(1, Ordering::Relaxed);
        let (faults, c) = (faults.clone(), c.clone());
        tokio::spawn(async move {
            let Ok(up) = TcpStream::connect(upstream).await else {
                reset(&down);
                return;
            };
            forward(down, up, faults, c, n).await;
        });
    }
}

/// One connection, both directions, until either side ends or a fault ends it.
async fn forward(mut down: TcpStream, mut up: TcpStream, f: Arc<Faults>, c: Arc<Control>, n: u64) {
    let nodelay = f.segment.is_some() || f.delay.is_some();
    let _ = down.set_nodelay(nodelay);
    let _ = up.set_nodelay(nodelay);
    let mut rng = StdRng::seed_from_u64(f.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let reset_at = f.reset_after.clone().map(|r| rng.random_range(r));
    let half_at = f.half_close_after.clone().map(|r| rng.random_range(r));
    let seeds = (rng.random::<u64>(), rng.random::<u64>());
    let budget = AtomicU64::new(0);
    // Told by a pump when the bytes of both directions reach `reset_at`.
    let due = Notify::new();
    let ended = {
        // Borrowed halves: dropping them does not send FIN (owned write halves do), so a
        // reset below is a bare RST.
        let (mut dr, mut dw) = down.split();
        let (mut ur, mut uw) = up.split();
        let (shape_up, shape_down) = (f.ways != Ways::ToClient, f.ways != Ways::ToUpstream);
        let rng_a = StdRng::seed_from_u64(seeds.0);
        let rng_b = StdRng::seed_from_u64(seeds.1);
        let dir = |shape| Dir {
            f: &f,
            shape,
            c: &c,
            budget: &budget,
            reset_at,
            due: &due,
        };
        let a = pump(&mut dr, &mut uw, dir(shape_up), rng_a, half_at);
        let b = pump(&mut ur, &mut dw, dir(shape_down), rng_b, None);
        let reset_due = async {
            if reset_at.is_none() {
                return std::future::pending().await;
            }
            due.notified().await
        };
        tokio::select! {
            _ = async { tokio::join!(a, b) } => false,
            _ = reset_due => true,
            _ = c.reset_now.notified() => true,
        }
    };
    if ended {
        c.resets.fetch_add(1, Ordering::Relaxed);
        reset(&down);
        reset(&up);
    }
}

/// What one direction of a connection works with.
#[derive(Clone, Copy)]
struct Dir<'a> {
    f: &'a Faults,
    /// `segment`, `delay` and `pause` apply to this direction.
    shape: bool,
    c: &'a Control,
    /// Bytes both directions have read (the reset threshold counts them).
    budget: &'a AtomicU64,
    reset_at: Option<u64>,
    due: &'a Notify,
}

/// One direction: read, then write in segments with delays; stops on EOF, an error, or
/// `half_at` bytes (then shuts the write side down: a FIN while the other way flows).
async fn pump(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    d: Dir<'_>,
    mut rng: StdRng,
    half_at: Option<u64>,
) {
    let Dir {
        f,
        shape,
        c,
        budget,
        reset_at,
        due,
    } = d;
    let mut buf = vec![0u8; 16 * 1024];
    let mut sent: u64 = 0;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let total = budget.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if reset_at.is_some_and(|at| total >= at) {
            // A stored permit: the reset comes even if nobody waits yet.
            due.notify_one();
        }
        if c.blackhole.load(Ordering::Relaxed) {
            continue;
        }
        if let Some(p) = f.pause.filter(|_| shape) {
            if f.pause_every > 0 && rng.random_range(0..f.pause_every) == 0 {
                tokio::time::sleep(p).await;
            }
        }
        let seg = f.segment.filter(|_| shape).unwrap_or(n).max(1);
        for chunk in buf[..n].chunks(seg) {
            if let Some(d) = f.delay.as_ref().filter(|_| shape) {
                let us = rng.random_range(d.start().as_micros()..=d.end().as_micros());
                if us > 0 {
                    tokio::time::sleep(Duration::from_micros(us as u64)).await;
                }
            }
            let chunk = match half_at {
                Some(at) if sent + chunk.len() as u64 >= at => &chunk[..(at - sent) as usize],
                _ => chunk,
            };
            if to.write_all(chunk).await.is_err() {
                return;
            }
            sent += chunk.len() as u64;
            c.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if half_at.is_some_and(|at| sent >= at) {
                let _ = to.shutdown().await;
                // Keep reading (and dropping) so the peer's writes do not block.
                while matches!(from.read(&mut buf).await, Ok(n) if n > 0) {}
                return;
            }
        }
    }
    let _ = to.shutdown().await;
}

/// A zero linger: the close that follows sends RST.
fn reset(s: &TcpStream) {
    let r = socket2::SockRef::from(s);
    let _ = r.set_linger(Some(Duration::ZERO));
}

/// `A-B` or `A` as an inclusive range (for the command line).
pub fn parse_range(s: &str) -> Result<RangeInclusive<u64>, String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u64 = a
        .trim()
        .parse()
        .map_err(|_| format!("bad number in {s:?}"))?;
    let b: u64 = b
        .trim()
        .parse()
        .map_err(|_| format!("bad number in {s:?}"))?;
    if a > b {
        return Err(format!("{s:?}: the first number is larger"));
    }
    Ok(a..=b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        assert_eq!(parse_range("5"), Ok(5..=5));
        assert_eq!(parse_range("1-300"), Ok(1..=300));
        assert!(parse_range("3-1").is_err());
        assert!(parse_range("x").is_err());
    }

    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        a
    }

    #[tokio::test]
    async fn single_byte_segments_arrive_whole_and_in_order() {
        let up = echo().await;
        let f = Faults {
            segment: Some(1),
            delay: Some(Duration::ZERO..=Duration::from_micros(200)),
            ..Faults::default()
        };
        let p = Proxy::start("127.0.0.1:0".parse().unwrap(), up, f)
            .await
            .unwrap();
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        let msg: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
        s.write_all(&msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, msg);
    }

    #[tokio::test]
    async fn a_reset_comes_after_the_drawn_byte_count_and_is_an_rst() {
        let up = echo().await;
        let f = Faults {
            reset_after: Some(100..=100),
            ..Faults::default()
        };
        let p = Proxy::start("127.0.0.1:0".parse().unwrap(), up, f)
            .await
            .unwrap();
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(&[7u8; 60]).await.unwrap();
        let mut got = [0u8; 60];
        s.read_exact(&mut got).await.unwrap();
        // 120 bytes have crossed: the next read fails with a reset, not a clean EOF.
        let mut more = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut more))
            .await
            .unwrap();
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{r:?}"
        );
        assert_eq!(p.control.resets.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_blackhole_keeps_the_connection_and_forwards_nothing() {
        let up = echo().await;
        let p = Proxy::start("127.0.0.1:0".parse().unwrap(), up, Faults::default())
            .await
            .unwrap();
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        p.control.set_blackhole(true);
        s.write_all(b"lost").await.unwrap();
        let mut b = [0u8; 4];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), s.read(&mut b))
                .await
                .is_err()
        );
        p.control.set_blackhole(false);
        s.write_all(b"seen").await.unwrap();
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"seen");
    }

    #[tokio::test]
    async fn a_half_close_sends_fin_one_way() {
        let up = echo().await;
        let f = Faults {
            half_close_after: Some(10..=10),
            ..Faults::default()
        };
        let p = Proxy::start("127.0.0.1:0".parse().unwrap(), up, f)
            .await
            .unwrap();
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(&[1u8; 30]).await.unwrap();
        // Ten bytes reach the echo and come back; then the echo sees EOF and ends too.
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, [1u8; 10]);
    }
}
