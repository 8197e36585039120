//! Token buckets per key (a source IP, a publisher key), in shards, with a bounded table:
//! the gateway's publish limits and the worker's connect limit. A refusal says how long
//! until a token is back (`Retry-After`). A full shard forgets its idle buckets first (a
//! full bucket is the same as none), then any one; `sweep` forgets the idle ones of one
//! shard, so a quiet table empties. Pure: the clock is passed in.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One bucket per key, in shards.
pub struct RateLimiter<K> {
    per_sec: f64,
    burst: f64,
    max_per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<HashMap<K, Bucket>>>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// `per_sec` tokens a second, up to `burst` saved; at most `max_entries` keys.
    pub fn new(per_sec: f64, burst: f64, max_entries: usize) -> Self {
        RateLimiter {
            per_sec,
            burst: burst.max(1.0),
            max_per_shard: (max_entries / SHARDS).max(1),
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Takes `n` tokens for `key` at `now`, or says how long until it could. A request
    /// larger than the burst goes through when the bucket is full and leaves it in debt;
    /// `n` 0 only checks that one token is there. A known key is looked up by reference
    /// (no allocation); only a new one is made owned.
    pub fn take<Q>(&self, key: &Q, n: u64, now: Instant) -> Result<(), Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let shard = (self.hasher.hash_one(key) as usize) % SHARDS;
        let mut m = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        let fill = |b: &Bucket| {
            let secs = now.saturating_duration_since(b.at).as_secs_f64();
            (b.tokens + secs * self.per_sec).min(self.burst)
        };
        if !m.contains_key(key) && m.len() >= self.max_per_shard {
            m.retain(|_, b| fill(b) < self.burst);
            if m.len() >= self.max_per_shard {
                // Still full of busy keys: one of them goes (the first met).
                let mut first = true;
                m.retain(|_, _| !std::mem::take(&mut first));
            }
        }
        if !m.contains_key(key) {
            m.insert(
                key.to_owned(),
                Bucket {
                    tokens: self.burst,
                    at: now,
                },
            );
        }
        let b = m.get_mut(key).expect("inserted above");
        let tokens = fill(b);
        // `n` 0 asks whether one message would pass, charging nothing.
        let need = (n.max(1) as f64).min(self.burst);
        if tokens >= need {
            *b = Bucket {
                tokens: tokens - n as f64,
                at: now,
            };
            Ok(())
        } else {
            *b = Bucket { tokens, at: now };
            Err(Duration::from_secs_f64((need - tokens) / self.per_sec))
        }
    }

    /// Forgets the idle keys (full buckets, the same as none) of shard `turn % 16` at
    /// `now`, and gives the shard's memory back when it held far more: called once a
    /// second with a counter, it walks the whole table every 16 calls. Returns how many
    /// went.
    pub fn sweep(&self, turn: usize, now: Instant) -> usize {
        let mut m = self.shards[turn % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let before = m.len();
        m.retain(|_, b| {
            let secs = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens + secs * self.per_sec < self.burst
        });
        if m.capacity() > 4 * m.len().max(8) {
            m.shrink_to_fit();
        }
        before - m.len()
    }

    /// Keys held now (for tests and the bound).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let l = RateLimiter::new(10.0, 5.0, 100);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(l.take(&1u8, 1, t0).is_ok());
        }
        let wait = l.take(&1u8, 1, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // 100 ms later one more token is back; another key has its own bucket.
        assert!(l.take(&1u8, 1, t0 + Duration::from_millis(100)).is_ok());
        assert!(l.take(&1u8, 1, t0 + Duration::from_millis(100)).is_err());
        assert!(l.take(&2u8, 5, t0).is_ok());
    }

    #[test]
    fn a_request_larger_than_the_burst_passes_on_a_full_bucket_and_leaves_debt() {
        let l = RateLimiter::new(100.0, 10.0, 100);
        let t0 = Instant::now();
        assert!(l.take(&0u8, 50, t0).is_ok());
        // 40 tokens of debt: a single message waits until 1 token is back (0.41 s).
        let wait = l.take(&0u8, 1, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.41).abs() < 1e-6, "{wait:?}");
        assert!(l.take(&0u8, 1, t0 + Duration::from_millis(410)).is_ok());
    }

    #[test]
    fn the_table_stays_bounded() {
        let l = RateLimiter::new(1.0, 1.0, 64);
        let t0 = Instant::now();
        for k in 0..10_000u32 {
            let _ = l.take(&k, 1, t0);
        }
        assert!(l.len() <= 64, "{}", l.len());
    }

    #[test]
    fn a_sweep_forgets_idle_keys_and_keeps_busy_ones() {
        let l = RateLimiter::new(10.0, 10.0, 1_000);
        let t0 = Instant::now();
        for k in 0..100u32 {
            l.take(&k, 5, t0).unwrap();
        }
        // 0.2 s later half a bucket is back: every key is still busy.
        let t1 = t0 + Duration::from_millis(200);
        assert_eq!((0..16).map(|s| l.sweep(s, t1)).sum::<usize>(), 0);
        assert_eq!(l.len(), 100);
        // One key spends again; a second later only it is not full.
        let t2 = t0 + Duration::from_millis(600);
        l.take(&7u32, 10, t2).unwrap();
        let t3 = t0 + Duration::from_secs(1);
        assert_eq!((0..16).map(|s| l.sweep(s, t3)).sum::<usize>(), 99);
        assert_eq!(l.len(), 1);
        assert!(l.take(&7u32, 10, t3).is_err(), "its debt is kept");
    }
}
