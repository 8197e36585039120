//! Worker link attempts the gateway refused, and why: counted per reason (in
//! `pushgate_link_refused_total{reason}` and `GET /v1/workers`' `refused_links`), and said
//! at `warn` the first time a reason occurs and then at most once a minute per reason,
//! with how many were refused since (a worker retrying every 2 s does not flood the log).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one reason is said again while it keeps happening.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// Why a link attempt was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No or the wrong `Authorization: Bearer <link key>`.
    LinkKey,
    /// `Upgrade:` names another link protocol version (or none).
    Version,
}

impl Refusal {
    pub const ALL: [Refusal; 2] = [Refusal::LinkKey, Refusal::Version];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::LinkKey => "link_key",
            Refusal::Version => "version",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Default)]
struct Said {
    at: Option<Instant>,
    /// Refused since `at`.
    since: u64,
}

#[derive(Default)]
pub struct LinkRefusals {
    counts: [AtomicU64; 2],
    said: Mutex<[Said; 2]>,
}

impl LinkRefusals {
    /// Counts one refusal; `Some(n)` when it is to be said now (`n`: refused since it was
    /// last said, this one included).
    pub fn count(&self, why: Refusal, now: Instant) -> Option<u64> {
        self.counts[why.index()].fetch_add(1, Ordering::Relaxed);
        crate::metrics::LINK_REFUSED
            .with_label_values(&[why.as_str()])
            .inc();
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut said[why.index()];
        s.since += 1;
        match s.at {
            Some(at) if now.duration_since(at) < WARN_EVERY => None,
            _ => {
                s.at = Some(now);
                Some(std::mem::take(&mut s.since))
            }
        }
    }

    /// Refused so far, per reason.
    pub fn totals(&self) -> [(Refusal, u64); 2] {
        Refusal::ALL.map(|r| (r, self.counts[r.index()].load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_refusal_is_said_then_once_a_minute_with_the_count() {
        let r = LinkRefusals::default();
        let t0 = Instant::now();
        assert_eq!(r.count(Refusal::LinkKey, t0), Some(1));
        for i in 1..30 {
            assert_eq!(
                r.count(Refusal::LinkKey, t0 + Duration::from_secs(2 * i)),
                None
            );
        }
        // Another reason is said at once.
        assert_eq!(
            r.count(Refusal::Version, t0 + Duration::from_secs(3)),
            Some(1)
        );
        assert_eq!(r.count(Refusal::LinkKey, t0 + WARN_EVERY), Some(30));
        assert_eq!(r.totals(), [(Refusal::LinkKey, 31), (Refusal::Version, 1)]);
    }
}
