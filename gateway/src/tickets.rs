//! The fleet's TLS session-ticket keys, which the gateways hand to every worker over its
//! link (`Down::TicketKeys`), so a client resumes with whichever worker it is sent to.
//!
//! Generated keys (the default) belong to rotation periods of `--ticket-rotate-secs`
//! (period `n` = unix time / period): during period `n` key `n` seals, key `n + 1` is
//! staged (it opens tickets, so workers that already moved on are understood) and key
//! `n - 1` still opens; older keys are erased. A worker forgets each key when its time is
//! up even if no newer set reaches it. The announced ticket lifetime is two periods (the
//! longest a ticket can stay openable). Keys live in memory only and are never logged;
//! with a Redis store the gateways agree on them through Redis, wrapped (AES-256-GCM) under
//! a key derived from `--link-key`, so Redis never holds them in the clear.
//!
//! `--ticket-key-file` replaces generation with the operator's keys (see [`parse_key_file`]).

use anyhow::{bail, Context};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use protocol::link::{Down, TicketKey};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use zeroize::Zeroizing;

/// One key: its id (in front of every ticket it seals) and its bytes.
#[derive(Clone)]
pub struct Key {
    pub id: [u8; 4],
    pub bytes: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:02x?})", self.id)
    }
}

impl Key {
    pub fn random() -> Key {
        let mut bytes = Zeroizing::new([0u8; 32]);
        let mut id = [0u8; 4];
        aws_lc_rs::rand::fill(&mut bytes[..]).expect("system randomness");
        aws_lc_rs::rand::fill(&mut id).expect("system randomness");
        Key { id, bytes }
    }

    /// A key from its bytes, its id the first 4 bytes of their SHA-256 (so every gateway
    /// that reads one key file names its keys alike).
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
        let mut id = [0u8; 4];
        id.copy_from_slice(&digest.as_ref()[..4]);
        Key {
            id,
            bytes: Zeroizing::new(bytes),
        }
    }
}

enum Source {
    /// Keys per rotation period, generated here or agreed through Redis.
    Periods(BTreeMap<u64, Key>),
    /// `--ticket-key-file`: the first seals, all open.
    File { path: PathBuf, keys: Vec<Key> },
}

/// The gateway's ticket keys and what it last told its workers.
pub struct Tickets {
    period: u64,
    state: Mutex<State>,
}

struct State {
    source: Source,
    /// Bumped whenever the set changes; links re-sent on a change.
    version: u64,
    /// The version last sent to every link, and when (unix seconds).
    sent: Option<(u64, u64)>,
}

impl State {
    /// The set's version, a new one if it `changed`.
    fn bump(&mut self, changed: bool) -> u64 {
        if changed {
            self.version += 1;
        }
        self.version
    }
}

/// Erases the keys of periods before `prev`; whether any went.
fn erase_before(keys: &mut BTreeMap<u64, Key>, prev: u64) -> bool {
    let before = keys.len();
    keys.retain(|n, _| *n >= prev);
    keys.len() != before
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tickets")
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

impl Tickets {
    /// Keys per `period_secs`; with `file`, the operator's keys instead (read now: a file
    /// that does not load, or that others may read, is an error).
    pub fn new(period_secs: u64, file: Option<&Path>) -> anyhow::Result<Tickets> {
        let source = match file {
            Some(path) => Source::File {
                path: path.to_path_buf(),
                keys: read_key_file(path)?,
            },
            None => Source::Periods(BTreeMap::new()),
        };
        Ok(Tickets {
            period: period_secs.max(1),
            state: Mutex::new(State {
                source,
                version: 0,
                sent: None,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn period_secs(&self) -> u64 {
        self.period
    }

    /// Whether keys come from `--ticket-key-file`.
    pub fn from_file(&self) -> bool {
        matches!(self.state().source, Source::File { .. })
    }

    /// The periods whose keys the set holds at `now` (unix seconds): previous, current,
    /// next.
    pub fn periods(&self, now: u64) -> [u64; 3] {
        let n = now / self.period;
        [n.saturating_sub(1), n, n + 1]
    }

    /// The key this gateway holds for `period`, if any.
    pub fn key_for(&self, period: u64) -> Option<Key> {
        match &self.state().source {
            Source::Periods(keys) => keys.get(&period).cloned(),
            Source::File { .. } => None,
        }
    }

    /// Makes sure the current and the next period have keys (random ones, for those that
    /// have none) and erases those before the previous. Returns the set's version.
    pub fn generate(&self, now: u64) -> u64 {
        let [prev, cur, next] = self.periods(now);
        let mut st = self.state();
        let mut changed = false;
        if let Source::Periods(keys) = &mut st.source {
            for n in [cur, next] {
                keys.entry(n).or_insert_with(|| {
                    changed = true;
                    Key::random()
                });
            }
            changed |= erase_before(keys, prev);
        }
        st.bump(changed)
    }

    /// Takes the keys agreed through the store for `periods` (any period not given keeps
    /// what it had), then erases those before the previous. Returns the set's version.
    pub fn adopt(&self, now: u64, agreed: Vec<(u64, Key)>) -> u64 {
        let [prev, ..] = self.periods(now);
        let mut st = self.state();
        let mut changed = false;
        if let Source::Periods(keys) = &mut st.source {
            for (n, key) in agreed {
                if keys.get(&n).map(|k| k.id) != Some(key.id) {
                    keys.insert(n, key);
                    changed = true;
                }
            }
            changed |= erase_before(keys, prev);
        }
        st.bump(changed)
    }

    /// Reads `--ticket-key-file` again (SIGHUP); on an error the keys stay as they were.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let mut st = self.state();
        let Source::File { path, keys } = &mut st.source else {
            return Ok(false);
        };
        let fresh = read_key_file(path)?;
        let same =
            fresh.len() == keys.len() && fresh.iter().zip(keys.iter()).all(|(a, b)| a.id == b.id);
        *keys = fresh;
        if !same {
            st.version += 1;
        }
        Ok(!same)
    }

    /// Whether every link should be told the set again at `now`: it changed since it was
    /// last sent, or a period passed (file keys' expiry is renewed that way). Marks it sent.
    pub fn due(&self, now: u64) -> bool {
        let mut st = self.state();
        let due = match st.sent {
            Some((v, at)) => v != st.version || now >= at + self.period,
            None => true,
        };
        if due {
            st.sent = Some((st.version, now));
        }
        due
    }

    /// The frame that tells a worker the set at `now_ms` (unix milliseconds). A key's time
    /// left is rounded down: a worker forgets it at most a second early, never late.
    pub fn frame(&self, now_ms: u64) -> Down {
        let st = self.state();
        let p = self.period;
        let now = now_ms / 1000;
        let lifetime_secs = (2 * p).min(u64::from(u32::MAX)) as u32;
        let secs = |s: u64| s.min(u64::from(u32::MAX)) as u32;
        let keys = match &st.source {
            Source::Periods(keys) => {
                let n = now / p;
                let end_of_ms = |m: u64| (m + 1) * p * 1000;
                keys.iter()
                    .filter(|(m, _)| **m + 1 >= n && **m <= n + 1)
                    .map(|(m, k)| TicketKey {
                        id: k.id,
                        key: *k.bytes,
                        encrypt: *m == n,
                        // Key m opens until period m + 1 ends.
                        expires_in_secs: secs(end_of_ms(m + 1).saturating_sub(now_ms) / 1000),
                    })
                    .collect()
            }
            // The operator's keys stay until the file changes; a worker cut off from every
            // gateway forgets them after two lifetimes.
            Source::File { keys, .. } => keys
                .iter()
                .enumerate()
                .map(|(i, k)| TicketKey {
                    id: k.id,
                    key: *k.bytes,
                    encrypt: i == 0,
                    expires_in_secs: secs(4 * p),
                })
                .collect(),
        };
        Down::TicketKeys {
            lifetime_secs,
            keys,
        }
    }
}

/// `--ticket-key-file`: one key per line as 64 hex digits (32 random bytes, e.g. from
/// `openssl rand -hex 32`); blank lines and lines starting with `#` are skipped. The first
/// key seals new tickets; every key opens them. Rotate by adding the new key as the second
/// line, reloading every gateway (SIGHUP), and moving it first one ticket lifetime later;
/// drop the old key after another. The file must not be readable by group or others.
pub fn parse_key_file(text: &str) -> anyhow::Result<Vec<Key>> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.len() != 64 || !line.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("line {}: a key is 64 hex digits (32 bytes)", i + 1);
        }
        let mut bytes = [0u8; 32];
        for (j, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&line[2 * j..2 * j + 2], 16).expect("checked hex");
        }
        keys.push(Key::from_bytes(bytes));
        if keys.len() > protocol::link::MAX_TICKET_KEYS {
            bail!("more than {} keys", protocol::link::MAX_TICKET_KEYS);
        }
    }
    if keys.is_empty() {
        bail!("no key in it");
    }
    Ok(keys)
}

/// Checked like every secret file (regular, mode & 077 = 0, not empty), then parsed.
fn read_key_file(path: &Path) -> anyhow::Result<Vec<Key>> {
    let text = worker::config::read_secret_file("--ticket-key-file", path)?;
    parse_key_file(&text).with_context(|| format!("--ticket-key-file {}", path.display()))
}

/// Seals and opens keys as the gateways keep them in a shared store: AES-256-GCM under a
/// key derived (HKDF-SHA256) from `--link-key`, the period as additional data.
pub struct Wrap {
    kek: LessSafeKey,
    /// Names the link key without revealing it: gateways with another link key (a
    /// misconfigured one) keep their keys under other names instead of taking over these.
    id: String,
}

impl Wrap {
    pub fn new(link_key: &str) -> Wrap {
        use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};
        let salt = Salt::new(HKDF_SHA256, b"pushgate ticket keys v1");
        let prk = salt.extract(link_key.as_bytes());
        let mut kek = Zeroizing::new([0u8; 32]);
        prk.expand(&[b"wrap"], HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut kek[..]))
            .expect("32 bytes from HKDF-SHA256");
        let unbound = UnboundKey::new(&AES_256_GCM, &kek[..]).expect("AES-256 key");
        let mut id = [0u8; 32];
        prk.expand(&[b"name"], HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut id))
            .expect("32 bytes from HKDF-SHA256");
        Wrap {
            kek: LessSafeKey::new(unbound),
            id: id[..8].iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// The name under which this link key's ticket keys are kept.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `nonce | AES-256-GCM(id | key)`, bound to `period`.
    pub fn seal(&self, period: u64, key: &Key) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("system randomness");
        let mut body = Vec::with_capacity(36 + 16);
        body.extend_from_slice(&key.id);
        body.extend_from_slice(&key.bytes[..]);
        self.kek
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(period.to_be_bytes()),
                &mut body,
            )
            .expect("seal");
        let mut out = nonce.to_vec();
        out.append(&mut body);
        out
    }

    /// The key sealed for `period`, or `None` if it was not sealed by this link key.
    pub fn open(&self, period: u64, sealed: &[u8]) -> Option<Key> {
        if sealed.len() != NONCE_LEN + 36 + 16 {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let mut body = Zeroizing::new(body.to_vec());
        let plain = self
            .kek
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(period.to_be_bytes()),
                &mut body,
            )
            .ok()?;
        let mut id = [0u8; 4];
        id.copy_from_slice(&plain[..4]);
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&plain[4..36]);
        Some(Key { id, bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(d: &Down) -> Vec<(bool, u32)> {
        match d {
            Down::TicketKeys { keys, .. } => keys
                .iter()
                .map(|k| (k.encrypt, k.expires_in_secs))
                .collect(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_rotation_stages_the_next_key_and_keeps_the_previous_one_period() {
        let t = Tickets::new(100, None).unwrap();
        // Period 10, 30 s in: current and next.
        let v1 = t.generate(1030);
        assert_eq!(
            keys_of(&t.frame(1_030_000)),
            vec![(true, 170), (false, 270)]
        );
        // Rounded down: forgotten early rather than late.
        assert_eq!(
            keys_of(&t.frame(1_030_400)),
            vec![(true, 169), (false, 269)]
        );
        let Down::TicketKeys {
            lifetime_secs,
            keys,
        } = t.frame(1_030_000)
        else {
            unreachable!()
        };
        assert_eq!(lifetime_secs, 200);
        let (k10, k11) = (keys[0].id, keys[1].id);
        assert_eq!(t.generate(1099), v1, "nothing changes within a period");
        // Period 11: 10 opens, 11 seals, 12 staged.
        assert!(t.generate(1100) > v1);
        let Down::TicketKeys { keys, .. } = t.frame(1_100_000) else {
            unreachable!()
        };
        assert_eq!(
            keys.iter().map(|k| (k.id, k.encrypt)).collect::<Vec<_>>()[..2],
            [(k10, false), (k11, true)]
        );
        assert_eq!(keys.len(), 3);
        // Period 13: 10 and 11 are erased, 12 opens.
        t.generate(1300);
        let Down::TicketKeys { keys, .. } = t.frame(1_300_000) else {
            unreachable!()
        };
        assert_eq!(keys.len(), 3);
        assert!(keys.iter().all(|k| k.id != k10 && k.id != k11));
    }

    #[test]
    fn keys_agreed_through_a_store_replace_the_generated_ones() {
        let t = Tickets::new(60, None).unwrap();
        let v = t.generate(600);
        let agreed = Key::random();
        let id = agreed.id;
        let v2 = t.adopt(600, vec![(10, agreed.clone())]);
        assert!(v2 > v);
        assert_eq!(t.adopt(600, vec![(10, agreed)]), v2);
        let Down::TicketKeys { keys, .. } = t.frame(600_000) else {
            unreachable!()
        };
        assert!(keys.iter().any(|k| k.id == id && k.encrypt));
    }

    #[test]
    fn key_files_parse_strictly() {
        let a = "00".repeat(32);
        let b = "ab".repeat(32);
        let keys = parse_key_file(&format!("# ticket keys\n{a}\n\n{b}\n")).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(*keys[1].bytes, [0xab; 32]);
        assert_ne!(keys[0].id, keys[1].id);
        assert!(parse_key_file("").is_err());
        assert!(parse_key_file(&a[..62]).is_err());
        assert!(parse_key_file(&format!("{}zz", &a[..62])).is_err());
        let err = format!("{:#}", parse_key_file(&format!("{a}\nnope")).unwrap_err());
        assert!(err.contains("line 2") && !err.contains(&a), "{err}");
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pg-tk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(&path, format!("{}\n", "11".repeat(32))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", Tickets::new(60, Some(&path)).unwrap_err());
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = Tickets::new(60, Some(&path)).unwrap();
        assert_eq!(keys_of(&t.frame(5_000)), vec![(true, 240)]);
        // A reload that fails keeps the keys.
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(t.reload().is_err());
        assert_eq!(keys_of(&t.frame(5_000)).len(), 1);
        std::fs::write(&path, format!("{}\n{}\n", "22".repeat(32), "11".repeat(32))).unwrap();
        assert!(t.reload().unwrap());
        assert_eq!(keys_of(&t.frame(5_000)), vec![(true, 240), (false, 240)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wrapped_keys_open_only_under_the_same_link_key_and_period() {
        let key = Key::random();
        let w = Wrap::new("link secret");
        let sealed = w.seal(7, &key);
        let back = w.open(7, &sealed).unwrap();
        assert_eq!((back.id, *back.bytes), (key.id, *key.bytes));
        assert!(w.open(8, &sealed).is_none());
        assert!(Wrap::new("other").open(7, &sealed).is_none());
        assert!(w.open(7, &sealed[1..]).is_none());
        assert_eq!(w.id(), Wrap::new("link secret").id());
        assert_ne!(w.id(), Wrap::new("other").id());
        assert_eq!(w.id().len(), 16);
    }
}
