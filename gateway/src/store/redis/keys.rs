//! How the Redis store names things: a channel's keys (one hash tag per channel, so Redis
//! Cluster never sees a cross-slot call) and the directory entry as Redis holds it. Pure.

use crate::store::directory::{Holder, WorkerRef};
use std::sync::Arc;

/// The keys of one channel: meta hash, message list, and the idempotency key's prefix.
///
/// The hash tag is the channel name itself: names are `[A-Za-z0-9_.:@-]` (checked before
/// any store call), never empty and never a brace, so `{<name>}` is always a whole, valid
/// tag and every key of a channel hashes to the same slot.
pub struct ChannelKeys {
    pub meta: String,
    pub list: String,
    pub idem_prefix: String,
}

impl ChannelKeys {
    pub fn new(prefix: &str, channel: &str) -> Self {
        debug_assert!(protocol::validate_channel(channel).is_ok());
        ChannelKeys {
            meta: format!("{prefix}:{{{channel}}}:m"),
            list: format!("{prefix}:{{{channel}}}:l"),
            idem_prefix: format!("{prefix}:{{{channel}}}:i:"),
        }
    }

    /// The key that remembers an idempotency key's seq.
    pub fn idem(&self, key: Option<&str>) -> String {
        format!("{}{}", self.idem_prefix, key.unwrap_or(""))
    }
}

/// A holder as the owner field stores it: `<incarnation>:<sub_id>:<worker id>` (numbers
/// first, so a worker id may hold any character).
pub fn encode_holder(h: &Holder) -> String {
    format!("{}:{}:{}", h.worker.incarnation(), h.sub_id, h.worker.id())
}

/// Inverse of [`encode_holder`]; `None` for an empty or foreign value.
pub fn decode_holder(s: &str, intern: impl FnOnce(&str, u64) -> WorkerRef) -> Option<Holder> {
    let mut parts = s.splitn(3, ':');
    let incarnation = parts.next()?.parse().ok()?;
    let sub_id = parts.next()?.parse().ok()?;
    let id = parts.next().filter(|id| !id.is_empty())?;
    Some(Holder {
        worker: intern(id, incarnation),
        sub_id,
    })
}

/// The slot Redis Cluster hashes `key` to (CRC16/XMODEM of its hash tag, mod 16384): used
/// by tests to check that a channel's keys never straddle slots.
pub fn slot(key: &str) -> u16 {
    let b = key.as_bytes();
    let tagged = b
        .iter()
        .position(|&c| c == b'{')
        .and_then(|open| {
            b[open + 1..]
                .iter()
                .position(|&c| c == b'}')
                .filter(|&len| len > 0)
                .map(|len| &b[open + 1..open + 1 + len])
        })
        .unwrap_or(b);
    crc16(tagged) % 16384
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= (byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A key that hashes to `slot`: `<prefix>:alive:{<n>}` for the first `n` whose tag does.
/// One such marker per cluster master tells a master that restarted empty (see
/// `RedisStore::check`).
pub fn marker_for_slot(prefix: &str, slot: u16) -> String {
    static TAGS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; 16384];
        let mut left = tags.len();
        let mut n = 0u32;
        while left > 0 {
            let s = crc16(n.to_string().as_bytes()) as usize % 16384;
            if tags[s] == u32::MAX {
                tags[s] = n;
                left -= 1;
            }
            n += 1;
        }
        tags
    });
    format!("{prefix}:alive:{{{}}}", tags[slot as usize % 16384])
}

/// Makes a [`WorkerRef`] from its parts (the store caches them, see `RedisStore`).
pub fn worker_ref(id: &str, incarnation: u64) -> WorkerRef {
    WorkerRef::new(Arc::from(id), incarnation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_channel_shares_its_slot() {
        for ch in ["a", "user:42", "x.y-z_@1", "}", "{", "0"] {
            if protocol::validate_channel(ch).is_err() {
                continue;
            }
            let k = ChannelKeys::new("pg", ch);
            let s = slot(&k.meta);
            assert_eq!(slot(&k.list), s, "{ch}");
            assert_eq!(slot(&k.idem(Some("key-1"))), s, "{ch}");
        }
        // The reference values Redis documents: CRC16 of "123456789" is 0x31C3.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
    }

    #[test]
    fn markers_land_on_the_slot_they_are_for() {
        for s in [0u16, 1, 5461, 5462, 10922, 10923, 16383] {
            assert_eq!(slot(&marker_for_slot("pg", s)), s);
        }
    }

    #[test]
    fn holders_roundtrip_whatever_the_worker_id() {
        for id in ["w", "host:9000", "a:b:c", "worker-127.0.0.2:9000-4242"] {
            let h = Holder {
                worker: worker_ref(id, 7),
                sub_id: u64::MAX,
            };
            let s = encode_holder(&h);
            assert_eq!(decode_holder(&s, worker_ref), Some(h), "{s}");
        }
        assert_eq!(decode_holder("", worker_ref), None);
        assert_eq!(decode_holder("1:2:", worker_ref), None);
        assert_eq!(decode_holder("x:2:w", worker_ref), None);
    }
}
