//! Publish rate limits: a token bucket per source IP (`--publish-rate-per-ip`) and per
//! publisher key (`--publish-rate-per-key`), in messages per second (an NDJSON batch costs
//! its lines, a broadcast its channels), with a burst of `--publish-burst-secs` worth, in
//! tables of at most `--rate-limit-entries` (the buckets are `protocol::ratelimit`'s, which
//! the worker's connect limit shares).

pub use protocol::ratelimit::RateLimiter;
use std::hash::Hash;
use std::time::{Duration, Instant};

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
