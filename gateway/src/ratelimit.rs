//! Publish rate limits: a token bucket per source IP (`--publish-rate-per-ip`) and per
//! publisher key (`--publish-rate-per-key`), in messages per second (an NDJSON batch costs
//! its lines, a broadcast its channels), with a burst of `--publish-burst-secs` worth.
//! A refusal names when to come back (`Retry-After`). The tables are bounded
//! (`--rate-limit-entries`): a full shard forgets its idle buckets first (a full bucket is
//! the same as none), then any one. Pure: the clock is passed in.

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

/// The gateway's publish limits (each `None` when off).
pub struct PublishLimits {
    pub per_ip: Option<RateLimiter<std::net::IpAddr>>,
    pub per_key: Option<RateLimiter<String>>,
}

impl PublishLimits {
    pub fn new(per_ip: f64, per_key: f64, burst_secs: f64, max_entries: usize) -> Self {
        fn make<K: Hash + Eq>(rate: f64, burst_secs: f64, n: usize) -> Option<RateLimiter<K>> {
            (rate > 0.0).then(|| RateLimiter::new(rate, rate * burst_secs, n))
        }
        PublishLimits {
            per_ip: make(per_ip, burst_secs, max_entries),
            per_key: make(per_key, burst_secs, max_entries),
        }
    }

    /// `n` messages from `ip` (if known) under `key` (if any), at `now`: `Err(retry_after)`
    /// when either limit refuses.
    pub fn check(
        &self,
        ip: Option<std::net::IpAddr>,
        key: Option<&str>,
        n: u64,
        now: Instant,
    ) -> Result<(), Duration> {
        if let (Some(l), Some(ip)) = (&self.per_ip, ip) {
            l.take(&ip, n, now)?;
        }
        if let (Some(l), Some(k)) = (&self.per_key, key) {
            l.take(k, n, now)?;
        }
        Ok(())
    }

    /// No limit is configured (the publish path then skips the clock and the lookups).
    pub fn is_off(&self) -> bool {
        self.per_ip.is_none() && self.per_key.is_none()
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
    fn either_limit_refuses() {
        let p = PublishLimits::new(2.0, 100.0, 1.0, 100);
        let ip = Some("127.0.0.9".parse().unwrap());
        let t0 = Instant::now();
        assert!(p.check(ip, Some("k"), 2, t0).is_ok());
        assert!(
            p.check(ip, Some("k"), 1, t0).is_err(),
            "the IP's 2/s is used up"
        );
        assert!(
            p.check(None, Some("k"), 1, t0).is_ok(),
            "no IP: the key alone"
        );
        let off = PublishLimits::new(0.0, 0.0, 1.0, 100);
        assert!(off.check(ip, Some("k"), 1_000_000, t0).is_ok());
    }
}
