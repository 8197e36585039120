//! Has Redis lost what it held? Each second every gateway looks at one marker key per
//! node (per master in a cluster): a marker that is missing or has another value than
//! last time means the node restarted empty or was flushed, and connected clients must be
//! subscribed again (the epochs themselves are decided by the library, per channel).

use super::{int, keys, RedisStore};
use crate::store::contract::{Outbox, StoreCheck, StoreError};
use redis::Value;
use std::sync::atomic::Ordering;

impl<O: Outbox> RedisStore<O> {
    /// The keys whose absence says Redis lost what it held (restarted empty, flushed):
    /// one, or one on each cluster master (a key on the first slot of each of its slot
    /// ranges, from `CLUSTER SLOTS` asked anew each time, so a reshard or a failover moves
    /// them along). They have no expiry, so no `volatile-*` eviction policy takes them.
    async fn markers(&self) -> Result<Vec<String>, StoreError> {
        if !self.client.fixed.cluster {
            return Ok(vec![format!("{}:alive", self.opts.prefix)]);
        }
        let Value::Array(ranges) = self
            .client
            .raw(&redis::cmd("CLUSTER").arg("SLOTS").to_owned())
            .await?
        else {
            return Err(StoreError::Unavailable(
                "CLUSTER SLOTS: unexpected answer".into(),
            ));
        };
        Ok(ranges
            .iter()
            .filter_map(|r| match r {
                Value::Array(f) => int(f.first()?),
                _ => None,
            })
            .map(|first| keys::marker_for_slot(&self.opts.prefix, first as u16))
            .collect())
    }

    /// One look at every marker (see the module doc).
    pub(super) async fn check_history(&self) -> StoreCheck {
        let unhealthy = StoreCheck {
            healthy: false,
            history_lost: false,
        };
        let Ok(markers) = self.markers().await else {
            return unhealthy;
        };
        // Each marker holds a random value from the gateway that created it. `SET NX GET`
        // answers the value that was there, or nil when this call created it. Comparing
        // values (not "did my SET create it") stays right when the client library re-sends
        // the SET after a dropped connection, and when another gateway recreated the
        // marker first.
        let sets = markers.iter().map(|m| {
            let fresh = format!("{:016x}", rand::random::<u64>());
            let mut cmd = redis::cmd("SET");
            cmd.arg(m).arg(&fresh).arg("NX").arg("GET");
            async move { (self.client.raw(&cmd).await, fresh) }
        });
        let mut now = Vec::with_capacity(markers.len());
        for (r, fresh) in futures_util::future::join_all(sets).await {
            match r {
                // Missing: this call created it. That is a lost history once subscriptions
                // were attached (a first start, or a new slot range after a reshard, then
                // costs one harmless resync).
                Ok(Value::Nil) => now.push((fresh, true)),
                Ok(Value::BulkString(v)) => {
                    now.push((String::from_utf8_lossy(&v).into_owned(), false))
                }
                Ok(other) => {
                    tracing::debug!(?other, "history marker: unexpected answer");
                    return unhealthy;
                }
                // Nothing is concluded from a partial look.
                Err(_) => return unhealthy,
            }
        }
        let attached = self.attached.load(Ordering::Relaxed);
        let mut lost = false;
        let mut seen = self.markers_seen.lock().unwrap_or_else(|e| e.into_inner());
        for (m, (value, created)) in markers.iter().zip(now) {
            lost |= created && attached;
            // Another value than last time: recreated by another gateway first, or by a
            // re-sent SET of this one.
            if let Some(before) = seen.insert(m.clone(), value.clone()) {
                lost |= before != value;
            }
        }
        if seen.len() > 4 * markers.len().max(16) {
            // Ranges that moved away: forget them rather than grow.
            seen.retain(|k, _| markers.contains(k));
        }
        drop(seen);
        if lost {
            // A node that lost its data lost the function library too.
            self.client.reload.store(true, Ordering::Relaxed);
        }
        StoreCheck {
            healthy: true,
            history_lost: lost,
        }
    }
}
