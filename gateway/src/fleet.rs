//! The fleet as the shared store's worker registry tells it (`--store redis://…`): every
//! worker some gateway has a live link to, with its incarnation, its lease and its load.
//! Each gateway renews the leases of the workers it sees and reads the rest back once a
//! second (`pg_workers` in the library), so
//! - `/v1/assign` picks least-loaded over the whole fleet, also a worker not linked here
//!   (a gateway that just started assigns at once);
//! - a delivery for a worker with no link here is parked only while that incarnation's
//!   lease lasts: after it ends (the worker died, or restarted as another incarnation)
//!   nothing is routed to it, and a subscribe no longer counts it as a live holder.
//!
//! Pure: the wall clock is passed in (ms).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// How long a worker's lease is listed after it ended (then the registry forgets it).
pub const KEEP_ENDED_MS: u64 = 60_000;

/// One worker as a lease line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub incarnation: u64,
    /// When a gateway saw this incarnation's link (wall ms): the later incarnation wins.
    pub since_ms: u64,
    /// The lease ends (wall ms); renewed each second while a gateway sees the link live.
    pub until_ms: u64,
    pub connections: u64,
    pub capacity: u64,
    /// Plain client addresses (`ws://`, `http://`).
    pub addrs: Vec<String>,
    /// TLS client addresses (`wss://`, `https://`).
    pub tls_addrs: Vec<String>,
}

impl Lease {
    /// The registry's value: `<incarnation> <since> <until> <connections> <capacity>
    /// <has tls 0|1> <addr,addr,...> <tls addr,tls addr,...>` (either list may be empty).
    pub fn line(&self) -> String {
        format!(
            "{} {} {} {} {} {} {} {}",
            self.incarnation,
            self.since_ms,
            self.until_ms,
            self.connections,
            self.capacity,
            u8::from(!self.tls_addrs.is_empty()),
            self.addrs.join(","),
            self.tls_addrs.join(",")
        )
    }

    /// Whether a client can be sent there at all.
    pub fn has_addrs(&self) -> bool {
        !self.addrs.is_empty() || !self.tls_addrs.is_empty()
    }

    /// Inverse of [`Lease::line`]; `None` for anything else.
    pub fn parse(s: &str) -> Option<Lease> {
        let mut f = s.split(' ');
        let mut num = || f.next()?.parse::<u64>().ok();
        let (incarnation, since_ms, until_ms, connections, capacity, _has_tls) =
            (num()?, num()?, num()?, num()?, num()?, num()?);
        let mut list = || -> Vec<String> {
            f.next()
                .unwrap_or("")
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let addrs = list();
        let tls_addrs = list();
        Some(Lease {
            incarnation,
            since_ms,
            until_ms,
            connections,
            capacity,
            addrs,
            tls_addrs,
        })
    }
}

/// The address a client is sent to, round-robin by `next`: a TLS one unless the client
/// asked for plain (`want_tls` false) and the worker has plain ones; a worker with only
/// one kind gets its clients there. Returns the address and whether it is TLS.
pub fn choose(
    plain: &[String],
    tls: &[String],
    next: usize,
    want_tls: bool,
) -> Option<(String, bool)> {
    let (list, is_tls) = match (want_tls && !tls.is_empty(), plain.is_empty()) {
        (true, _) | (false, true) => (tls, true),
        (false, false) => (plain, false),
    };
    if list.is_empty() {
        return None;
    }
    Some((list[next % list.len()].clone(), is_tls))
}

struct Entry {
    lease: Lease,
    /// Clients this gateway sent there since the last read (the lease's count is older).
    assigned: u64,
    next_addr: usize,
}

/// The last read of the registry; `None` until the first.
#[derive(Default)]
pub struct Fleet {
    inner: Mutex<Option<HashMap<Arc<str>, Entry>>>,
}

/// A worker from the registry that may take a client: its id, load and capacity.
pub struct Candidate {
    pub id: Arc<str>,
    pub load: u64,
    pub capacity: u64,
}

impl Fleet {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Option<HashMap<Arc<str>, Entry>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh read: `(id, value)` pairs as the registry holds them.
    pub fn replace(&self, entries: impl IntoIterator<Item = (String, String)>) {
        let map = entries
            .into_iter()
            .filter_map(|(id, v)| {
                Some((
                    Arc::from(id.as_str()),
                    Entry {
                        lease: Lease::parse(&v)?,
                        assigned: 0,
                        next_addr: 0,
                    },
                ))
            })
            .collect();
        *self.lock() = Some(map);
    }

    /// Whether incarnation `incarnation` of `id` holds a lease at `now_ms`: `Some(false)`
    /// when the registry names another incarnation or the lease ended, `None` when it
    /// does not know (not read yet, or a worker too new to be listed).
    pub fn holds(&self, id: &str, incarnation: u64, now_ms: u64) -> Option<bool> {
        let g = self.lock();
        let e = g.as_ref()?.get(id)?;
        Some(e.lease.incarnation == incarnation && e.lease.until_ms >= now_ms)
    }

    /// The least-loaded worker (load ÷ capacity) with a live lease at `now_ms` that may
    /// take a client, except those `skip` says (the ones linked here, which the local
    /// registry knows better).
    pub fn best(&self, now_ms: u64, skip: impl Fn(&str) -> bool) -> Option<Candidate> {
        let g = self.lock();
        g.as_ref()?
            .iter()
            .filter(|(id, e)| {
                e.lease.until_ms >= now_ms
                    && e.lease.has_addrs()
                    && e.lease.connections + e.assigned < e.lease.capacity
                    && !skip(id)
            })
            .map(|(id, e)| (id, e.lease.connections + e.assigned, e.lease.capacity))
            .min_by(|a, b| ((a.1 as u128) * (b.2 as u128)).cmp(&((b.1 as u128) * (a.2 as u128))))
            .map(|(id, load, capacity)| Candidate {
                id: id.clone(),
                load,
                capacity,
            })
    }

    /// Counts a client sent to `id` and returns the address to send it to (round-robin)
    /// and whether it is TLS (see [`choose`]).
    pub fn take(&self, id: &str, want_tls: bool) -> Option<(String, bool)> {
        let mut g = self.lock();
        let e = g.as_mut()?.get_mut(id)?;
        let picked = choose(&e.lease.addrs, &e.lease.tls_addrs, e.next_addr, want_tls)?;
        e.assigned += 1;
        e.next_addr = e.next_addr.wrapping_add(1);
        Some(picked)
    }

    /// Every worker of the last read, for `/v1/workers`: id and lease.
    pub fn list(&self) -> Vec<(Arc<str>, Lease)> {
        let g = self.lock();
        let mut v: Vec<_> = g
            .iter()
            .flat_map(|m| m.iter().map(|(id, e)| (id.clone(), e.lease.clone())))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(inc: u64, until: u64, conns: u64) -> Lease {
        Lease {
            incarnation: inc,
            since_ms: 5,
            until_ms: until,
            connections: conns,
            capacity: 10,
            addrs: vec!["127.0.0.2:1".into(), "127.0.0.3:1".into()],
            tls_addrs: vec![],
        }
    }

    #[test]
    fn lines_round_trip() {
        let l = lease(7, 1_000, 3);
        assert_eq!(l.line(), "7 5 1000 3 10 0 127.0.0.2:1,127.0.0.3:1 ");
        assert_eq!(Lease::parse(&l.line()), Some(l));
        assert_eq!(Lease::parse("7 5 x"), None);
        let bare = Lease::parse("1 2 3 4 5 1 ").unwrap();
        assert!(!bare.has_addrs());
        // TLS only: the plain list is empty.
        let tls = Lease {
            addrs: vec![],
            tls_addrs: vec!["push.example:443".into()],
            ..lease(1, 2, 0)
        };
        assert_eq!(tls.line(), "1 5 2 0 10 1  push.example:443");
        assert_eq!(Lease::parse(&tls.line()), Some(tls));
        // A line without the TLS list (an older gateway's) parses with none.
        let old = Lease::parse("7 5 1000 3 10 0 127.0.0.2:1").unwrap();
        assert!(old.tls_addrs.is_empty() && old.addrs.len() == 1);
    }

    #[test]
    fn tls_addresses_are_chosen_unless_the_client_asks_for_plain() {
        let plain = vec!["10.0.0.1:80".to_owned()];
        let tls = vec!["a.example:443".to_owned(), "b.example:443".to_owned()];
        let c = |p: &[String], t: &[String], next, want| choose(p, t, next, want);
        assert_eq!(c(&plain, &tls, 1, true), Some((tls[1].clone(), true)));
        assert_eq!(c(&plain, &tls, 1, false), Some((plain[0].clone(), false)));
        // One kind only: that kind, whatever was asked.
        assert_eq!(c(&[], &tls, 0, false), Some((tls[0].clone(), true)));
        assert_eq!(c(&plain, &[], 0, true), Some((plain[0].clone(), false)));
        assert_eq!(c(&[], &[], 0, true), None);
    }

    #[test]
    fn a_lease_holds_for_its_incarnation_until_it_ends() {
        let f = Fleet::new();
        assert_eq!(f.holds("w", 7, 0), None, "nothing read yet");
        f.replace([("w".to_owned(), lease(7, 1_000, 0).line())]);
        assert_eq!(f.holds("w", 7, 1_000), Some(true));
        assert_eq!(f.holds("w", 7, 1_001), Some(false), "ended");
        assert_eq!(f.holds("w", 8, 10), Some(false), "another incarnation");
        assert_eq!(f.holds("new", 1, 10), None, "not listed yet");
    }

    #[test]
    fn the_best_is_live_least_loaded_with_room_and_counts_what_was_sent() {
        let f = Fleet::new();
        f.replace(
            [
                ("a".to_owned(), lease(1, 1_000, 9)),
                ("b".to_owned(), lease(1, 10, 0)),
                ("c".to_owned(), lease(1, 1_000, 2)),
            ]
            .map(|(id, l)| (id, l.line())),
        );
        let best = |now, skip: &str| f.best(now, |id| id == skip).map(|c| c.id.to_string());
        // a: 9 of 10, c: 2 of 10; b's lease has ended.
        assert_eq!(best(100, "").as_deref(), Some("c"));
        assert_eq!(best(100, "c").as_deref(), Some("a"));
        assert_eq!(best(20_000, ""), None, "every lease ended");
        assert_eq!(f.take("a", true), Some(("127.0.0.2:1".to_owned(), false)));
        assert_eq!(f.take("a", true), Some(("127.0.0.3:1".to_owned(), false)));
        assert_eq!(
            best(100, "c"),
            None,
            "a is full with what this gateway sent"
        );
    }
}
