//! Worker registry: who is connected, over which link, with what load; least-loaded choice
//! for new clients and round-robin over a worker's addresses. Pure logic with `now`
//! injected; one short mutex around it.

use crate::fleet::{choose, Fleet, Lease};
use crate::link::LinkHandle;
use protocol::link::Hello;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// A worker's state as reported by `/v1/workers` and the `pushgate_workers` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Link open, but no `Load` on it yet: the worker may not accept clients yet.
    Starting,
    /// Heartbeat within the timeout: gets new clients.
    Healthy,
    /// Link open but silent for longer than the timeout: no new clients.
    Stale,
    /// No link.
    Disconnected,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Healthy => "healthy",
            WorkerState::Stale => "stale",
            WorkerState::Disconnected => "disconnected",
        }
    }
}

/// Where a new client goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub worker_id: Arc<str>,
    /// `host:port` as the worker announced it.
    pub addr: String,
    /// A TLS address: use `wss://` / `https://`.
    pub secure: bool,
}

/// One worker as `/v1/workers` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerView {
    pub id: Arc<str>,
    pub addrs: Vec<String>,
    pub tls_addrs: Vec<String>,
    pub connections: u64,
    pub capacity: u64,
    pub state: WorkerState,
}

struct WorkerEntry {
    id: Arc<str>,
    incarnation: u64,
    /// When the current link's Hello came (wall ms), for the fleet registry.
    since_ms: u64,
    addrs: Vec<String>,
    tls_addrs: Vec<String>,
    capacity: u64,
    connections: u64,
    last_heartbeat: Instant,
    /// A `Load` arrived on the current link (the worker sends it once its side is up).
    ready: bool,
    generation: u64,
    link: Option<Arc<LinkHandle>>,
    assigned_since_report: u64,
    next_addr: usize,
}

#[derive(Default)]
struct Inner {
    workers: Vec<WorkerEntry>,
    by_id: HashMap<Arc<str>, usize>,
    rotate: usize,
}

/// All workers this gateway knows, by id. Slots are never reused, so a link's slot stays valid.
pub struct Registry {
    inner: Mutex<Inner>,
    timeout: Duration,
}

impl Registry {
    /// `timeout`: a worker whose last heartbeat is older than this is stale.
    pub fn new(timeout: Duration) -> Self {
        Registry {
            inner: Mutex::new(Inner::default()),
            timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state_of(&self, w: &WorkerEntry, now: Instant) -> WorkerState {
        match &w.link {
            None => WorkerState::Disconnected,
            Some(l) if !l.is_alive() => WorkerState::Disconnected,
            Some(_) if now.saturating_duration_since(w.last_heartbeat) > self.timeout => {
                WorkerState::Stale
            }
            Some(_) if !w.ready => WorkerState::Starting,
            Some(_) => WorkerState::Healthy,
        }
    }

    /// Registers a worker's new link (a known id gets the next link generation and its
    /// previous link is closed). `make_link(slot, generation)` builds the link handle.
    pub fn register(
        &self,
        hello: &Hello,
        now: Instant,
        make_link: impl FnOnce(usize, u64, Arc<str>) -> Arc<LinkHandle>,
    ) -> Arc<LinkHandle> {
        let mut inner = self.lock();
        let slot = match inner.by_id.get(hello.id.as_str()) {
            Some(&slot) => slot,
            None => {
                let id: Arc<str> = Arc::from(hello.id.as_str());
                let slot = inner.workers.len();
                inner.workers.push(WorkerEntry {
                    id: id.clone(),
                    incarnation: 0,
                    since_ms: 0,
                    addrs: Vec::new(),
                    capacity: 0,
                    connections: 0,
                    tls_addrs: Vec::new(),
                    last_heartbeat: now,
                    ready: false,
                    generation: 0,
                    link: None,
                    assigned_since_report: 0,
                    next_addr: 0,
                });
                inner.by_id.insert(id, slot);
                slot
            }
        };
        let w = &mut inner.workers[slot];
        if let Some(old) = w.link.take() {
            old.close();
        }
        w.generation += 1;
        w.incarnation = hello.incarnation;
        w.since_ms = crate::store::now_ms();
        w.addrs = hello.addrs.clone();
        w.capacity = hello.capacity;
        w.connections = hello.connections;
        w.tls_addrs = hello.tls_addrs.clone();
        w.last_heartbeat = now;
        w.ready = false;
        w.assigned_since_report = 0;
        let link = make_link(slot, w.generation, w.id.clone());
        w.link = Some(link.clone());
        link
    }

    /// A `Load` heartbeat over `link`; ignored when the link is no longer current.
    pub fn heartbeat(&self, link: &LinkHandle, connections: u64, now: Instant) -> bool {
        let mut inner = self.lock();
        match inner.workers.get_mut(link.slot) {
            Some(w) if w.generation == link.generation && w.link.is_some() => {
                w.connections = connections;
                w.last_heartbeat = now;
                w.ready = true;
                w.assigned_since_report = 0;
                true
            }
            _ => false,
        }
    }

    /// `link` ended: its worker is disconnected unless a newer link replaced it.
    pub fn disconnect(&self, link: &LinkHandle) {
        link.close();
        let mut inner = self.lock();
        if let Some(w) = inner.workers.get_mut(link.slot) {
            if w.generation == link.generation {
                w.link = None;
            }
        }
    }

    /// The least-loaded healthy worker ((connections + assigned since its last report) ÷
    /// capacity, ties spread by a rotating start) and the next of its addresses.
    pub fn pick(&self, now: Instant) -> Option<Assignment> {
        self.pick_in(now, None, 0, true)
    }

    /// [`Registry::pick`] over this gateway's workers and, with a shared store, the rest of
    /// the fleet (`fleet`: workers with a live lease and no link here), at `now_ms`.
    pub fn pick_in(
        &self,
        now: Instant,
        fleet: Option<&Fleet>,
        now_ms: u64,
        want_tls: bool,
    ) -> Option<Assignment> {
        let mut inner = self.lock();
        let local = self.best_local(&mut inner, now);
        let remote = fleet.and_then(|f| {
            f.best(now_ms, |id| inner.by_id.contains_key(id))
                .map(|c| (f, c))
        });
        // The fleet's best wins only when strictly less loaded than the best one here.
        let remote_wins = match (&local, &remote) {
            (Some((_, l, lc)), Some((_, c))) => {
                (c.load as u128) * (*lc as u128) < (*l as u128) * (c.capacity as u128)
            }
            (None, Some(_)) => true,
            _ => false,
        };
        match (local, remote) {
            (_, Some((f, c))) if remote_wins => {
                drop(inner);
                let (addr, secure) = f.take(&c.id, want_tls)?;
                Some(Assignment {
                    worker_id: c.id,
                    addr,
                    secure,
                })
            }
            (Some((i, _, _)), _) => {
                let w = &mut inner.workers[i];
                let (addr, secure) = choose(&w.addrs, &w.tls_addrs, w.next_addr, want_tls)?;
                w.assigned_since_report += 1;
                w.next_addr = w.next_addr.wrapping_add(1);
                Some(Assignment {
                    worker_id: w.id.clone(),
                    addr,
                    secure,
                })
            }
            (None, _) => None,
        }
    }

    /// The leases this gateway renews: every worker whose link here is live, until
    /// `now_ms + lease_ms`.
    pub fn leases(&self, now: Instant, now_ms: u64, lease_ms: u64) -> Vec<(String, String)> {
        let inner = self.lock();
        inner
            .workers
            .iter()
            .filter(|w| {
                matches!(
                    self.state_of(w, now),
                    WorkerState::Healthy | WorkerState::Starting
                )
            })
            .map(|w| {
                let lease = Lease {
                    incarnation: w.incarnation,
                    since_ms: w.since_ms,
                    until_ms: now_ms + lease_ms,
                    connections: w.connections + w.assigned_since_report,
                    capacity: if w.ready { w.capacity } else { 0 },
                    addrs: w.addrs.clone(),
                    tls_addrs: w.tls_addrs.clone(),
                };
                (w.id.to_string(), lease.line())
            })
            .collect()
    }

    /// The least-loaded healthy worker linked here: (slot, load, capacity).
    fn best_local(&self, inner: &mut Inner, now: Instant) -> Option<(usize, u64, u64)> {
        let n = inner.workers.len();
        if n == 0 {
            return None;
        }
        let start = inner.rotate % n;
        inner.rotate = inner.rotate.wrapping_add(1);
        let mut best: Option<(usize, u64, u64)> = None; // (slot, load, capacity)
        for k in 0..n {
            let i = (start + k) % n;
            let w = &inner.workers[i];
            if (w.addrs.is_empty() && w.tls_addrs.is_empty())
                || w.capacity == 0
                || self.state_of(w, now) != WorkerState::Healthy
            {
                continue;
            }
            let load = w.connections + w.assigned_since_report;
            if load >= w.capacity {
                continue;
            }
            // load / capacity < best_load / best_capacity, without floats.
            let better = match best {
                None => true,
                Some((_, bl, bc)) => {
                    (load as u128) * (bc as u128) < (bl as u128) * (w.capacity as u128)
                }
            };
            if better {
                best = Some((i, load, w.capacity));
            }
        }
        best
    }

    /// Every known worker, in registration order.
    pub fn list(&self, now: Instant) -> Vec<WorkerView> {
        let inner = self.lock();
        inner
            .workers
            .iter()
            .map(|w| WorkerView {
                id: w.id.clone(),
                addrs: w.addrs.clone(),
                tls_addrs: w.tls_addrs.clone(),
                connections: w.connections,
                capacity: w.capacity,
                state: self.state_of(w, now),
            })
            .collect()
    }

    /// Workers per state: `[healthy, stale, disconnected, starting]`.
    pub fn counts(&self, now: Instant) -> [u64; 4] {
        let inner = self.lock();
        let mut c = [0; 4];
        for w in &inner.workers {
            c[match self.state_of(w, now) {
                WorkerState::Healthy => 0,
                WorkerState::Stale => 1,
                WorkerState::Disconnected => 2,
                WorkerState::Starting => 3,
            }] += 1;
        }
        c
    }

    /// Closes every link (shutdown).
    pub fn close_all(&self) {
        let inner = self.lock();
        for w in &inner.workers {
            if let Some(l) = &w.link {
                l.close();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(id: &str, addrs: &[&str], capacity: u64, connections: u64) -> Hello {
        Hello {
            id: id.into(),
            incarnation: 1,
            addrs: addrs.iter().map(|a| a.to_string()).collect(),
            capacity,
            connections,
            tls_addrs: vec![],
            wants_ticket_keys: false,
        }
    }

    /// Registers and sends the first `Load`, as a worker does once its side is up.
    fn register(r: &Registry, h: &Hello, now: Instant) -> Arc<LinkHandle> {
        let link = r.register(h, now, |slot, generation, id| {
            LinkHandle::new(id, slot, generation, 16).0
        });
        assert!(r.heartbeat(&link, h.connections, now));
        link
    }

    #[test]
    fn a_worker_is_starting_until_its_first_load() {
        let r = Registry::new(Duration::from_secs(3));
        let now = Instant::now();
        let h = hello("w", &["127.0.0.2:1"], 10, 0);
        let link = r.register(&h, now, |slot, generation, id| {
            LinkHandle::new(id, slot, generation, 16).0
        });
        assert_eq!(r.counts(now), [0, 0, 0, 1]);
        assert!(r.pick(now).is_none(), "a starting worker gets no clients");
        assert!(r.heartbeat(&link, 0, now));
        assert_eq!(r.counts(now), [1, 0, 0, 0]);
        assert!(r.pick(now).is_some());
    }

    #[test]
    fn ties_spread_evenly() {
        let r = Registry::new(Duration::from_secs(3));
        let now = Instant::now();
        let mut links = Vec::new();
        for i in 0..3 {
            links.push(register(
                &r,
                &hello(&format!("w{i}"), &["127.0.0.2:1"], 1000, 0),
                now,
            ));
        }
        let mut counts = HashMap::new();
        for _ in 0..300 {
            let a = r.pick(now).unwrap();
            *counts.entry(a.worker_id.to_string()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        for (_, c) in counts {
            assert_eq!(c, 100);
        }
    }

    #[test]
    fn least_loaded_wins_and_assignments_count() {
        let r = Registry::new(Duration::from_secs(3));
        let now = Instant::now();
        let a = register(&r, &hello("a", &["127.0.0.2:1"], 100, 50), now);
        let _b = register(&r, &hello("b", &["127.0.0.3:1"], 1000, 400), now);
        // a: 50/100 = 0.5, b: 400/1000 = 0.4 -> b until b reaches 0.5 (100 assigns).
        for _ in 0..100 {
            assert_eq!(&*r.pick(now).unwrap().worker_id, "b");
        }
        // Now b is 500/1000 = a's 50/100: both tie and alternate-ish; both get some.
        let picks: Vec<_> = (0..20)
            .map(|_| r.pick(now).unwrap().worker_id.to_string())
            .collect();
        assert!(picks.contains(&"a".to_string()) && picks.contains(&"b".to_string()));
        // A report resets the assigned-since-report count for that worker.
        assert!(r.heartbeat(&a, 0, now));
        assert_eq!(&*r.pick(now).unwrap().worker_id, "a");
    }

    #[test]
    fn stale_and_disconnected_are_skipped() {
        let r = Registry::new(Duration::from_secs(3));
        let t0 = Instant::now();
        let a = register(&r, &hello("a", &["127.0.0.2:1"], 100, 0), t0);
        let b = register(&r, &hello("b", &["127.0.0.3:1"], 100, 90), t0);
        let t1 = t0 + Duration::from_secs(2);
        r.heartbeat(&b, 90, t1);
        let t2 = t0 + Duration::from_secs(4);
        // a is stale (silent 4 s > 3 s), b healthy despite being busier.
        assert_eq!(&*r.pick(t2).unwrap().worker_id, "b");
        assert_eq!(r.counts(t2), [1, 1, 0, 0]);
        r.disconnect(&b);
        assert_eq!(r.pick(t2), None);
        assert_eq!(r.counts(t2), [0, 1, 1, 0]);
        let views = r.list(t2);
        assert_eq!(views[0].state, WorkerState::Stale);
        assert_eq!(views[1].state, WorkerState::Disconnected);
        // a heartbeat brings a back.
        assert!(r.heartbeat(&a, 0, t2));
        assert_eq!(&*r.pick(t2).unwrap().worker_id, "a");
    }

    #[test]
    fn re_hello_bumps_generation_and_old_link_is_ignored() {
        let r = Registry::new(Duration::from_secs(3));
        let now = Instant::now();
        let old = register(&r, &hello("a", &["127.0.0.2:1"], 100, 0), now);
        let new = register(&r, &hello("a", &["127.0.0.2:1"], 100, 0), now);
        assert!(!old.is_alive());
        assert!(new.is_alive());
        assert_eq!(new.generation, old.generation + 1);
        assert!(!r.heartbeat(&old, 5, now));
        r.disconnect(&old);
        assert_eq!(r.counts(now), [1, 0, 0, 0]);
        assert_eq!(r.list(now).len(), 1);
    }

    #[test]
    fn addresses_round_robin_and_full_workers_are_skipped() {
        let r = Registry::new(Duration::from_secs(3));
        let now = Instant::now();
        register(
            &r,
            &hello("a", &["127.0.0.2:1", "127.0.1.2:1", "127.0.2.2:1"], 6, 0),
            now,
        );
        let addrs: Vec<_> = (0..6).map(|_| r.pick(now).unwrap().addr).collect();
        assert_eq!(
            addrs,
            [
                "127.0.0.2:1",
                "127.0.1.2:1",
                "127.0.2.2:1",
                "127.0.0.2:1",
                "127.0.1.2:1",
                "127.0.2.2:1"
            ]
        );
        assert_eq!(r.pick(now), None, "capacity reached until the next report");
    }
}
