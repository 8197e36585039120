//! TLS session tickets every worker of the fleet can open: the gateways hand each worker
//! the fleet's ticket keys over its link (`Down::TicketKeys`: the key that seals, the next
//! one staged, the previous one still opening), so a client that handshook with one worker
//! resumes with any other.
//!
//! A ticket is `key id (4) | nonce (12) | AES-256-GCM(session state) | tag (16)`, the key id
//! also being the additional data. Keys are forgotten when their time is up, whether or not
//! a newer set came (a link may be down). Until a gateway has sent keys, and for tickets
//! sealed before, the process's own rustls ticketer serves, as a lone worker's would.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use protocol::link::TicketKey;
use rustls::server::ProducesTickets;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

const ID_LEN: usize = 4;
const TAG_LEN: usize = 16;

/// One key as this process holds it: expanded, and the raw bytes gone.
struct Key {
    id: [u8; ID_LEN],
    sealer: LessSafeKey,
    encrypt: bool,
    until: Instant,
}

/// The latest set one gateway link sent.
struct KeySet {
    lifetime_secs: u32,
    keys: Vec<Key>,
}

/// The ticketer every TLS handshake of this worker uses (shared by certificate reloads).
pub struct FleetTickets {
    local: Arc<dyn ProducesTickets>,
    /// Per gateway link (by its index in `--gateway`), the keys it sent.
    sets: RwLock<Vec<Option<KeySet>>>,
}

impl std::fmt::Debug for FleetTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetTickets")
            .field("fleet_keys", &self.key_count())
            .finish_non_exhaustive()
    }
}

impl FleetTickets {
    pub fn new() -> anyhow::Result<Arc<FleetTickets>> {
        let local = rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|e| anyhow::anyhow!("TLS ticketer: {e}"))?;
        Ok(Arc::new(FleetTickets {
            local,
            sets: RwLock::new(Vec::new()),
        }))
    }

    /// Installs what gateway link `link` sent, replacing its previous set. Keys whose
    /// bytes are not a usable key are skipped.
    pub fn install(&self, link: usize, lifetime_secs: u32, keys: &[TicketKey], now: Instant) {
        let keys = keys
            .iter()
            .filter(|k| k.expires_in_secs > 0)
            .filter_map(|k| {
                let unbound = UnboundKey::new(&AES_256_GCM, &k.key).ok()?;
                Some(Key {
                    id: k.id,
                    sealer: LessSafeKey::new(unbound),
                    encrypt: k.encrypt,
                    until: now + Duration::from_secs(u64::from(k.expires_in_secs)),
                })
            })
            .collect();
        let mut sets = self.sets.write().unwrap_or_else(|e| e.into_inner());
        if sets.len() <= link {
            sets.resize_with(link + 1, || None);
        }
        sets[link] = Some(KeySet {
            lifetime_secs,
            keys,
        });
    }

    /// Forgets every key whose time is up (called every second, so a key is erased on time
    /// even when no ticket is sealed or opened).
    pub fn prune(&self, now: Instant) {
        let mut sets = self.sets.write().unwrap_or_else(|e| e.into_inner());
        for set in sets.iter_mut().flatten() {
            set.keys.retain(|k| k.until > now);
        }
    }

    /// Fleet keys held now (for the metric and tests).
    pub fn key_count(&self) -> usize {
        let sets = self.sets.read().unwrap_or_else(|e| e.into_inner());
        sets.iter().flatten().map(|s| s.keys.len()).sum()
    }

    /// The sealing key and the lifetime to announce: the first link's (by `--gateway`
    /// order) that has a live one.
    fn sealing<R>(&self, now: Instant, f: impl FnOnce(&Key, u32) -> R) -> Option<R> {
        let sets = self.sets.read().unwrap_or_else(|e| e.into_inner());
        let (key, lifetime) = sets.iter().flatten().find_map(|s| {
            s.keys
                .iter()
                .find(|k| k.encrypt && k.until > now)
                .map(|k| (k, s.lifetime_secs))
        })?;
        Some(f(key, lifetime))
    }

    fn seal(key: &Key, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(ID_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = key
            .sealer
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.id),
                &mut out[ID_LEN + NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn open(&self, cipher: &[u8], now: Instant) -> Option<Option<Vec<u8>>> {
        if cipher.len() < ID_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (id, rest) = cipher.split_at(ID_LEN);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let sets = self.sets.read().unwrap_or_else(|e| e.into_inner());
        let key = sets
            .iter()
            .flatten()
            .flat_map(|s| s.keys.iter())
            .find(|k| k.id == id && k.until > now)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = body.to_vec();
        // A forged ticket, or one under a key that shares the id: no session, a full
        // handshake (never an error the client sees).
        let plain = key
            .sealer
            .open_in_place(nonce, Aad::from(key.id), &mut buf)
            .ok()
            .map(|p| p.to_vec());
        Some(plain)
    }
}

impl ProducesTickets for FleetTickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.sealing(Instant::now(), |_, lifetime| lifetime)
            .unwrap_or_else(|| self.local.lifetime())
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        match self.sealing(Instant::now(), |key, _| Self::seal(key, plain)) {
            Some(sealed) => sealed,
            None => self.local.encrypt(plain),
        }
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        match self.open(cipher, Instant::now()) {
            Some(opened) => opened,
            // No fleet key has this id: maybe the process's own ticket.
            None => self.local.decrypt(cipher),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u8, encrypt: bool, secs: u32) -> TicketKey {
        TicketKey {
            id: [id, 0, 0, 0],
            key: [id; 32],
            encrypt,
            expires_in_secs: secs,
        }
    }

    #[test]
    fn sealed_by_one_worker_opened_by_another_with_the_same_keys() {
        let now = Instant::now();
        let (a, b) = (FleetTickets::new().unwrap(), FleetTickets::new().unwrap());
        let set = [key(1, false, 60), key(2, true, 120), key(3, false, 180)];
        a.install(0, 7200, &set, now);
        b.install(0, 7200, &set, now);
        let t = a.encrypt(b"session state").unwrap();
        assert_eq!(&t[..4], &[2, 0, 0, 0]);
        assert_eq!(t.len(), 4 + 12 + 13 + 16);
        assert_eq!(b.decrypt(&t).unwrap(), b"session state");
        assert_eq!(a.lifetime(), 7200);

        // Forged: any flipped byte gives no session.
        for i in 4..t.len() {
            let mut f = t.clone();
            f[i] ^= 1;
            assert_eq!(b.decrypt(&f), None, "byte {i}");
        }
        assert_eq!(b.decrypt(&t[..20]), None);
        assert_eq!(b.decrypt(b""), None);
    }

    #[test]
    fn rotation_staged_next_previous_and_erasure() {
        let now = Instant::now();
        let (a, b) = (FleetTickets::new().unwrap(), FleetTickets::new().unwrap());
        // Period n: previous 1, current 2, next 3.
        a.install(
            0,
            20,
            &[key(1, false, 10), key(2, true, 20), key(3, false, 30)],
            now,
        );
        let from_n = a.encrypt(b"n").unwrap();
        // b has already moved to n+1 (clock ahead): 3 seals, 2 still opens.
        b.install(
            0,
            20,
            &[key(2, false, 10), key(3, true, 20), key(4, false, 30)],
            now,
        );
        let from_b = b.encrypt(b"n+1").unwrap();
        assert_eq!(b.decrypt(&from_n).unwrap(), b"n");
        // ... and a opens b's ticket with its staged key.
        assert_eq!(a.decrypt(&from_b).unwrap(), b"n+1");
        // n+2 at b: key 2 is gone, so a ticket from two periods ago is not resumed.
        b.install(
            0,
            20,
            &[key(3, false, 10), key(4, true, 20), key(5, false, 30)],
            now,
        );
        assert_eq!(b.decrypt(&from_n), None);
        assert_eq!(b.decrypt(&from_b).unwrap(), b"n+1");

        // Keys go when their time is up, without a new set.
        let later = now + Duration::from_secs(11);
        b.prune(later);
        assert_eq!(b.key_count(), 2);
        assert_eq!(b.open(&from_b, later), None, "key 3 erased");
        b.prune(now + Duration::from_secs(31));
        assert_eq!(b.key_count(), 0);
    }

    #[test]
    fn without_fleet_keys_the_process_ticketer_serves() {
        let a = FleetTickets::new().unwrap();
        let own = a.encrypt(b"alone").unwrap();
        assert_eq!(a.decrypt(&own).unwrap(), b"alone");
        a.install(0, 60, &[key(9, true, 60)], Instant::now());
        // Tickets sealed before the fleet keys came still open.
        assert_eq!(a.decrypt(&own).unwrap(), b"alone");
        let fleet = a.encrypt(b"fleet").unwrap();
        assert_eq!(&fleet[..4], &[9, 0, 0, 0]);
        // A second link's set adds keys that open; the first link's key seals.
        a.install(1, 60, &[key(8, true, 60)], Instant::now());
        assert_eq!(&a.encrypt(b"x").unwrap()[..4], &[9, 0, 0, 0]);
        let b = FleetTickets::new().unwrap();
        b.install(0, 60, &[key(8, true, 60)], Instant::now());
        assert_eq!(a.decrypt(&b.encrypt(b"y").unwrap()).unwrap(), b"y");
    }
}
