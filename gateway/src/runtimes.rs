//! The gateway's runtime layout: one current-thread tokio runtime per thread, each serving
//! its own SO_REUSEPORT listener on the one address, so a connection is read, answered and
//! closed on the thread the kernel gave it to and no idle thread is woken to look for work.
//!
//! Measured against one multi-thread runtime (`benches/RESULTS.md`, "Single-publish rate
//! sweep", runtime layout): that scheduler's last searching worker wakes another one each
//! time it finds a task (a `FUTEX_WAKE` per publish at low rates; the woken thread finds
//! nothing and parks again), and its `block_on` thread ran the accept loop, one more wake
//! per connection.
//!
//! Gateway-wide tasks (housekeeping, local workers, the Redis batcher, the admin listener)
//! run on the main runtime, on the calling thread; a connection's tasks (its link, once
//! upgraded) run on its thread's runtime. Wakers work across runtimes, so a publish on one
//! thread writes to a link served on another.

use anyhow::Context as _;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::runtime::{Handle, Runtime};
use tokio_util::sync::CancellationToken;

/// A listener registered with, and to be served on, a runtime other than the caller's
/// (`crate::run_with`).
pub struct Acceptor {
    pub listener: TcpListener,
    pub runtime: Handle,
}

/// The main runtime (driven by the thread that calls [`Runtimes::block_on`]) and the
/// threads of the others, which run until [`Runtimes::block_on`] returns.
pub struct Runtimes {
    main: Runtime,
    others: Vec<Handle>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Runtimes {
    /// Starts `n` current-thread runtimes (at least one): the main one here, `n - 1` on
    /// threads named `gateway-1`, `gateway-2`, ...
    pub fn start(n: usize) -> anyhow::Result<Self> {
        let build = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a tokio runtime")
        };
        let main = build()?;
        let stop = CancellationToken::new();
        let mut others = Vec::new();
        let mut threads = Vec::new();
        for i in 1..n.max(1) {
            let rt = build()?;
            others.push(rt.handle().clone());
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("gateway-{i}"))
                    .spawn(move || rt.block_on(stop.cancelled()))
                    .context("starting a runtime thread")?,
            );
        }
        Ok(Runtimes {
            main,
            others,
            threads,
            stop,
        })
    }

    /// How many runtimes there are, the main one included.
    pub fn count(&self) -> usize {
        1 + self.others.len()
    }

    /// Binds one listener per runtime on `addr` (`net::bind_group`): the main runtime's
    /// and one [`Acceptor`] per other runtime, with the address they share.
    pub fn bind(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, TcpListener, Vec<Acceptor>)> {
        let (actual, listeners) = crate::net::bind_group(addr, self.count())?;
        let mut listeners = listeners.into_iter();
        let first = {
            let _in_main = self.main.enter();
            TcpListener::from_std(listeners.next().expect("one listener per runtime"))?
        };
        let mut acceptors = Vec::with_capacity(self.others.len());
        for (l, runtime) in listeners.zip(&self.others) {
            // Registered with the reactor of the runtime that will accept on it.
            let _in_it = runtime.enter();
            acceptors.push(Acceptor {
                listener: TcpListener::from_std(l)?,
                runtime: runtime.clone(),
            });
        }
        Ok((actual, first, acceptors))
    }

    /// Runs `f` on the main runtime, on this thread; then stops the other runtimes (their
    /// unfinished tasks are dropped) and waits for their threads.
    pub fn block_on<F: std::future::Future>(mut self, f: F) -> F::Output {
        let out = self.main.block_on(f);
        self.stop.cancel();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        out
    }
}

impl Drop for Runtimes {
    /// Dropped without [`Runtimes::block_on`] (binding failed): the threads end too.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
