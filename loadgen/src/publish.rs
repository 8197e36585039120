//! Publisher: paced, open-loop publishing over a few keep-alive connections, singly
//! (`POST /v1/publish/{channel}`) or as NDJSON batches; records what was accepted per channel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use rand::Rng;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::checker::Published;
use crate::cli::{Pattern, Plan, PublishOpts};
use crate::net::{Gateways, HttpError, SourceIps};
use crate::stats::{unix_nanos, Stats};
use crate::target::SingleAnswer;

/// Schedule of an open-loop sender: message k is due `k / rate` seconds after the start.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    /// Messages per second.
    pub rate: f64,
}

impl Pacer {
    /// When message `k` is due, relative to the start.
    pub fn due(&self, k: u64) -> Duration {
        Duration::from_secs_f64(k as f64 / self.rate)
    }

    /// How many messages fall inside `window` (those with due time < window).
    #[cfg(test)]
    pub fn count_within(&self, window: Duration) -> u64 {
        (window.as_secs_f64() * self.rate).ceil() as u64
    }
}

/// What the publisher needs.
pub struct PublishCtx {
    pub plan: Arc<Plan>,
    pub opts: PublishOpts,
    pub stats: Arc<Stats>,
    /// Per channel of this process, indexed from 0.
    pub table: Arc<Vec<Published>>,
    /// Global index of channel 0 of `table`.
    pub channel_base: u64,
    pub stop: CancellationToken,
    /// Idempotency keys are `<key_prefix>-<message number>` (random per run).
    pub key_prefix: String,
}

impl PublishCtx {
    /// The payload of message `i`: its send time and padding.
    fn payload(&self, i: u64) -> String {
        let mut s = format!(r#"{{"t":{},"i":{i},"pad":""#, unix_nanos());
        let want = self.opts.payload_bytes.saturating_sub(s.len() + 2);
        s.extend(std::iter::repeat_n('x', want));
        s.push_str("\"}");
        s
    }

    /// With `--retry-for`: the idempotency key of message `k`.
    fn key(&self, k: u64) -> Option<String> {
        (!self.opts.retry_for.is_zero()).then(|| format!("{}-{k}", self.key_prefix))
    }

    /// The key of message `k` as a JSON member to append to an object (`,"id":"..."`), or
    /// nothing without `--retry-for`.
    fn id_member(&self, k: u64) -> String {
        self.key(k)
            .map(|key| format!(r#","id":"{key}""#))
            .unwrap_or_default()
    }

    fn channel_of(&self, k: u64, n: u64) -> u64 {
        match self.opts.pattern {
            Pattern::Random => rand::rng().random_range(0..n),
            Pattern::RoundRobin | Pattern::All => k % n,
        }
    }
}

#[derive(Deserialize)]
struct BatchAnswer {
    accepted: u64,
    #[serde(default)]
    rejected: Vec<Rejected>,
}

#[derive(Deserialize)]
struct Rejected {
    line: u64,
}

/// Publishes for `duration` (or until stopped); returns when every sender is done.
pub async fn publish_phase(
    ctx: Arc<PublishCtx>,
    src: Arc<SourceIps>,
    duration: Duration,
) -> anyhow::Result<()> {
    let pool = Arc::new(Gateways::new(
        &ctx.plan.server().publish_bases(&ctx.plan),
        src,
        ctx.opts.publish_connections,
        ctx.plan.common.request_timeout,
    )?);
    let channels = ctx.table.len() as u64;
    if channels == 0 {
        return Ok(());
    }
    let rate = match ctx.opts.pattern {
        Pattern::All => ctx.opts.rate * channels as f64,
        _ => ctx.opts.rate,
    };
    let pacer = Pacer { rate };
    let start = tokio::time::Instant::now();
    let end = start + duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..ctx.opts.publish_connections {
        let (ctx, pool, next) = (ctx.clone(), pool.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let batch = ctx.opts.batch as u64;
            loop {
                let k = next.fetch_add(batch, Ordering::Relaxed);
                let due = start + pacer.due(k);
                if due >= end {
                    break;
                }
                tokio::select! {
                    _ = ctx.stop.cancelled() => break,
                    _ = tokio::time::sleep_until(due) => {}
                }
                send(&ctx, &pool, k, batch, channels).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// An answer worth retrying: none, or a 5xx.
fn failed(r: &Result<(hyper::StatusCode, Bytes), HttpError>) -> bool {
    match r {
        Err(_) => true,
        Ok((status, _)) => status.is_server_error(),
    }
}

/// One publish request over the gateways (failing over between them) and, with
/// `--retry-for` (the body then carries idempotency keys), sent again with backoff while
/// `retry(answer)` says so and time is left. Returns the last answer and whether the
/// request was sent more than once.
async fn request(
    ctx: &PublishCtx,
    pool: &Gateways,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    retry: impl Fn(&Result<(hyper::StatusCode, Bytes), HttpError>) -> bool,
) -> (Result<(hyper::StatusCode, Bytes), HttpError>, bool) {
    let keyed = !ctx.opts.retry_for.is_zero();
    let bearer = ctx.plan.common.publisher_key.as_deref();
    let deadline = Instant::now() + ctx.opts.retry_for;
    let mut wait = Duration::from_millis(50);
    let mut retried = false;
    loop {
        let (r, _) = pool
            .send(keyed, Method::POST, path, headers, bearer, body.clone())
            .await;
        if !keyed || !retry(&r) || Instant::now() + wait > deadline {
            return (r, retried);
        }
        tokio::select! {
            _ = ctx.stop.cancelled() => return (r, retried),
            _ = tokio::time::sleep(wait) => {}
        }
        ctx.stats.publish_retries.fetch_add(1, Ordering::Relaxed);
        retried = true;
        wait = (wait * 2).min(Duration::from_millis(500));
    }
}

/// An NDJSON or broadcast answer that refused something because the store was not there:
/// worth sending again (with keys, what was accepted is answered as a duplicate).
fn store_refused(r: &Result<(hyper::StatusCode, Bytes), HttpError>) -> bool {
    failed(r)
        || r.as_ref().is_ok_and(|(_, body)| {
            std::str::from_utf8(body).is_ok_and(|b| b.contains("\"store_unavailable\""))
        })
}

async fn send(ctx: &PublishCtx, pool: &Gateways, k: u64, batch: u64, channels: u64) {
    let stats = &ctx.stats;
    stats.publish_requests.fetch_add(1, Ordering::Relaxed);
    stats.publish_attempted.fetch_add(batch, Ordering::Relaxed);
    let started = Instant::now();
    if batch == 1 {
        let ch = ctx.channel_of(k, channels);
        let server = ctx.plan.server();
        let path = server.publish_path(&ctx.plan.channel(ctx.channel_base + ch));
        let entry = &ctx.table[ch as usize];
        let i = server.stamp(entry, k);
        let body = Bytes::from(ctx.payload(i));
        let key = ctx.key(k);
        let mut headers = vec![("content-type", "application/json")];
        if let Some(key) = &key {
            headers.push(("idempotency-key", key.as_str()));
        }
        let (r, retried) = request(ctx, pool, &path, &headers, body, failed).await;
        stats.record_publish(started.elapsed().as_micros() as u64);
        match r {
            Ok((status, body)) => match server.single_answer(status, &body, i) {
                SingleAnswer::Seq(seq) => {
                    stats.publish_status(status.as_str(), 1);
                    entry.accepted_seq(seq);
                    stats.published.fetch_add(1, Ordering::Relaxed);
                    count_retried(stats, retried, 1);
                }
                SingleAnswer::Unnumbered => {
                    stats.publish_status(status.as_str(), 1);
                    entry.accepted_count(1);
                    stats.error("publish_bad_body");
                    stats.published.fetch_add(1, Ordering::Relaxed);
                }
                SingleAnswer::Refused => count_failed(
                    stats,
                    status.as_str(),
                    &format!("http_{}", status.as_u16()),
                    1,
                ),
            },
            Err(e) => count_failed(stats, e.kind(), e.kind(), 1),
        }
        return;
    }
    if ctx.opts.broadcast {
        return send_broadcast(ctx, pool, k, batch, channels, started).await;
    }
    let mut body = String::new();
    let mut lines = Vec::with_capacity(batch as usize);
    for j in 0..batch {
        let ch = ctx.channel_of(k + j, channels);
        lines.push(ch);
        body.push_str(&format!(
            r#"{{"channel":"{}","data":{}{}}}"#,
            ctx.plan.channel(ctx.channel_base + ch),
            ctx.payload(k + j),
            ctx.id_member(k + j)
        ));
        body.push('\n');
    }
    let (r, retried) = request(
        ctx,
        pool,
        "/v1/publish",
        &[("content-type", "application/x-ndjson")],
        Bytes::from(body),
        store_refused,
    )
    .await;
    stats.record_publish(started.elapsed().as_micros() as u64);
    match r {
        Ok((status, body)) if status == 200 || status == 202 => {
            match serde_json::from_slice::<BatchAnswer>(&body) {
                Ok(a) => {
                    // Lines are numbered from 0 in the answer; tolerate 1-based numbering too by
                    // only dropping lines that exist.
                    let mut ok = vec![true; lines.len()];
                    for r in &a.rejected {
                        if let Some(slot) = ok.get_mut(r.line as usize) {
                            *slot = false;
                        }
                    }
                    let mut accepted = 0u64;
                    for (ch, ok) in lines.iter().zip(&ok) {
                        if *ok {
                            ctx.table[*ch as usize].accepted_count(1);
                            accepted += 1;
                        }
                    }
                    let rejected = a.rejected.len() as u64;
                    count_answered(stats, status.as_str(), accepted, a.accepted, rejected);
                    count_retried(stats, retried, accepted);
                }
                Err(_) => stats.error("publish_bad_body"),
            }
        }
        Ok((status, _)) => count_failed(
            stats,
            status.as_str(),
            &format!("http_{}", status.as_u16()),
            batch,
        ),
        Err(e) => count_failed(stats, e.kind(), e.kind(), batch),
    }
}

/// Counts an answered batch or broadcast: `accepted` messages (the answer claimed
/// `claimed`), `rejected` refused one by one.
fn count_answered(stats: &Stats, status: &str, accepted: u64, claimed: u64, rejected: u64) {
    if accepted != claimed {
        stats.error("publish_batch_count_mismatch");
    }
    stats.publish_status(status, accepted);
    stats.published.fetch_add(accepted, Ordering::Relaxed);
    if rejected > 0 {
        stats
            .publish_rejected
            .fetch_add(rejected, Ordering::Relaxed);
        stats.publish_status("rejected", rejected);
        for _ in 0..rejected {
            stats.error("publish_line_rejected");
        }
    }
}

/// `accepted` messages came with a request that had been retried (or not).
fn count_retried(stats: &Stats, retried: bool, accepted: u64) {
    if retried {
        stats
            .published_after_retry
            .fetch_add(accepted, Ordering::Relaxed);
    }
}

/// Counts `n` messages of a request that failed as a whole (`publish_<what>` error).
fn count_failed(stats: &Stats, status: &str, what: &str, n: u64) {
    stats.publish_status(status, n);
    stats.error(format!("publish_{what}"));
}

#[derive(Deserialize)]
struct BroadcastAnswer {
    accepted: u64,
    #[serde(default)]
    rejected: Vec<RejectedChannel>,
}

#[derive(Deserialize)]
struct RejectedChannel {
    channel: String,
}

/// One `POST /v1/broadcast` naming the channels of messages `k..k + batch` (distinct as
/// long as `batch` ≤ the channel count), all with the data of message `k`.
async fn send_broadcast(
    ctx: &PublishCtx,
    pool: &Gateways,
    k: u64,
    batch: u64,
    channels: u64,
    started: Instant,
) {
    let stats = &ctx.stats;
    let mut picked: Vec<u64> = (0..batch)
        .map(|j| ctx.channel_of(k + j, channels))
        .collect();
    picked.sort_unstable();
    picked.dedup();
    let names: Vec<String> = picked
        .iter()
        .map(|&ch| ctx.plan.channel(ctx.channel_base + ch))
        .collect();
    let body = format!(
        r#"{{"channels":{},"data":{}{}}}"#,
        serde_json::to_string(&names).unwrap_or_default(),
        ctx.payload(k),
        ctx.id_member(k)
    );
    let (r, retried) = request(
        ctx,
        pool,
        "/v1/broadcast",
        &[("content-type", "application/json")],
        Bytes::from(body),
        store_refused,
    )
    .await;
    stats.record_publish(started.elapsed().as_micros() as u64);
    let n = picked.len() as u64;
    // Repeated picks (a random pattern) were never sent: not attempted.
    stats
        .publish_attempted
        .fetch_sub(batch - n, Ordering::Relaxed);
    match r {
        Ok((status, body)) if status == 200 => {
            match serde_json::from_slice::<BroadcastAnswer>(&body) {
                Ok(a) => {
                    let refused: std::collections::HashSet<&str> =
                        a.rejected.iter().map(|r| r.channel.as_str()).collect();
                    let mut accepted = 0u64;
                    for (ch, name) in picked.iter().zip(&names) {
                        if !refused.contains(name.as_str()) {
                            ctx.table[*ch as usize].accepted_count(1);
                            accepted += 1;
                        }
                    }
                    count_answered(stats, status.as_str(), accepted, a.accepted, n - accepted);
                    count_retried(stats, retried, accepted);
                }
                Err(_) => stats.error("publish_bad_body"),
            }
        }
        Ok((status, _)) => count_failed(
            stats,
            status.as_str(),
            &format!("http_{}", status.as_u16()),
            n,
        ),
        Err(e) => count_failed(stats, e.kind(), e.kind(), n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_math() {
        let p = Pacer { rate: 200.0 };
        assert_eq!(p.due(0), Duration::ZERO);
        assert_eq!(p.due(1), Duration::from_millis(5));
        assert_eq!(p.due(200), Duration::from_secs(1));
        // A 30 s run at 200/s sends 6000 messages, numbered 0..6000.
        assert_eq!(p.count_within(Duration::from_secs(30)), 6000);
        assert!(p.due(5999) < Duration::from_secs(30));
        assert!(p.due(6000) >= Duration::from_secs(30));
        // Fractional rates.
        let p = Pacer { rate: 0.5 };
        assert_eq!(p.due(3), Duration::from_secs(6));
        assert_eq!(p.count_within(Duration::from_secs(5)), 3);
    }
}
