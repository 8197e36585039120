//! Where Redis is, and the connection to it: one multiplexed connection that reconnects
//! by itself (redis-rs `ConnectionManager`) or the async cluster client, each with its
//! deadlines and retry budget pinned here.

use crate::store::memory::Retention;
use redis::{Cmd, Value};
use std::time::Duration;

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://HOST:PORT[/DB]`.
    Single(String),
    /// `redis+cluster://H1:P1,H2:P2,...`: the seed nodes, as `redis://` URLs.
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// Parses a `--store` value that names Redis; `None` for anything else.
    pub fn parse(s: &str) -> Option<Result<RedisTarget, String>> {
        if let Some(rest) = s.strip_prefix("redis+cluster://") {
            let nodes: Vec<String> = rest
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| format!("redis://{n}"))
                .collect();
            if nodes.is_empty() {
                return Some(Err("redis+cluster:// needs at least one HOST:PORT".into()));
            }
            return Some(Ok(RedisTarget::Cluster(nodes)));
        }
        if s.starts_with("redis://") {
            return Some(match redis::Client::open(s) {
                Ok(_) => Ok(RedisTarget::Single(s.to_owned())),
                Err(e) => Err(format!("{s}: {e}")),
            });
        }
        None
    }
}

/// How the Redis store behaves.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub target: RedisTarget,
    /// Prefix of every key (`pg`).
    pub prefix: String,
    pub retention: Retention,
    /// Most bytes a channel's retained messages take (data + key + overhead).
    pub channel_bytes: usize,
    /// How long a channel's seq and epoch outlive its last activity.
    pub channel_meta: Duration,
    /// Deadline of every Redis call.
    pub timeout: Duration,
    /// Most Redis calls in flight at once.
    pub max_inflight: usize,
    /// Restarts keep every acknowledged write (`--redis-durable`): only a promotion of a
    /// replica counts as another history.
    pub durable: bool,
}

/// The connection: one multiplexed connection (reconnecting by itself) or a cluster client.
#[derive(Clone)]
pub(super) enum Conn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    pub(super) async fn query(&self, cmd: &Cmd) -> redis::RedisResult<Value> {
        match self {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }
}

/// A new connection to `opts.target` (lazy: nothing is dialled until the first call).
pub(super) fn connect(opts: &RedisOptions) -> anyhow::Result<Conn> {
    Ok(match &opts.target {
        RedisTarget::Single(url) => {
            let client = redis::Client::open(url.as_str())?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(opts.timeout))
                .set_response_timeout(Some(opts.timeout))
                // Reconnects keep being tried (in the background, with backoff up to
                // 1 s) for as long as the gateway runs; a command never waits for one
                // longer than its deadline.
                .set_number_of_retries(usize::MAX)
                .set_max_delay(Duration::from_secs(1));
            Conn::Single(redis::aio::ConnectionManager::new_lazy_with_config(
                client, config,
            )?)
        }
        RedisTarget::Cluster(nodes) => {
            let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                // Resends after a dropped connection are safe for publishes (op id,
                // see the module doc); the same budget follows MOVED/ASK during a
                // reshard and a failover.
                .retries(8)
                .min_retry_wait(10)
                .max_retry_wait(200)
                .connection_timeout(opts.timeout)
                .response_timeout(opts.timeout)
                .build()?;
            Conn::Cluster(
                client.get_pending_async_connection_with_config(
                    redis::cluster::ClusterConfig::new()
                        .set_connection_timeout(opts.timeout)
                        .set_response_timeout(opts.timeout),
                ),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            RedisTarget::parse("redis://127.0.0.1:6379/2"),
            Some(Ok(RedisTarget::Single("redis://127.0.0.1:6379/2".into())))
        );
        assert_eq!(
            RedisTarget::parse("redis+cluster://a:1, b:2"),
            Some(Ok(RedisTarget::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ])))
        );
        assert!(matches!(
            RedisTarget::parse("redis+cluster://"),
            Some(Err(_))
        ));
        assert!(matches!(
            RedisTarget::parse("redis://:bad:port:x"),
            Some(Err(_))
        ));
        assert_eq!(RedisTarget::parse("memory"), None);
    }
}
