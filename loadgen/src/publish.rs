//! Publisher: paced, open-loop publishing over a few keep-alive connections, singly
//! (`POST /v1/publish/{channel}`) or as NDJSON batches, and beside that stream the periodic
//! broadcasts of `--broadcast-every`; records what was accepted per channel.

mod stream;

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
        self.payload_at(unix_nanos(), i, None)
    }

    /// The payload of message `i` sent at `t` (Unix ns), with `"b":n` when it is periodic
    /// broadcast `n`, padded to `--payload-bytes`.
    fn payload_at(&self, t: u64, i: u64, broadcast: Option<u64>) -> String {
        let mut s = match broadcast {
            Some(n) => format!(r#"{{"t":{t},"i":{i},"b":{n},"pad":""#),
            None => format!(r#"{{"t":{t},"i":{i},"pad":""#),
        };
        let want = self.opts.payload_bytes.saturating_sub(s.len() + 2);
        s.extend(std::iter::repeat_n('x', want));
        s.push_str("\"}");
        s
    }

    /// With `--retry-for`: the idempotency key of message `k`.
    fn key(&self, k: u64) -> Option<String> {
        self.key_named(&k.to_string())
    }

    /// With `--retry-for`: the idempotency key `<key_prefix>-<name>`.
    fn key_named(&self, name: &str) -> Option<String> {
        (!self.opts.retry_for.is_zero()).then(|| format!("{}-{name}", self.key_prefix))
    }

    /// The key of message `k` as a JSON member to append to an object (`,"id":"..."`), or
    /// nothing without `--retry-for`.
    fn id_member(&self, k: u64) -> String {
        id_member(self.key(k))
    }

    fn channel_of(&self, k: u64, n: u64) -> u64 {
        match self.opts.pattern {
            Pattern::Random => rand::rng().random_range(0..n),
            Pattern::RoundRobin | Pattern::All => k % n,
        }
    }
}

/// An idempotency key as a JSON member to append to an object (`,"id":"..."`), or nothing.
fn id_member(key: Option<String>) -> String {
    key.map(|key| format!(r#","id":"{key}""#))
        .unwrap_or_default()
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
        src.clone(),
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
    if let Some(every) = ctx.opts.broadcast_every {
        // Their own connection: a long broadcast does not hold up the stream's requests.
        let pool = Gateways::new(
            &ctx.plan.server().publish_bases(&ctx.plan),
            src.clone(),
            1,
            ctx.plan.common.request_timeout,
        )?;
        // Message numbers after every one the stream can use, so that `--check-ids`
        // tells a broadcast from a single publish.
        let first_id = (duration.as_secs_f64() * rate).ceil() as u64 + ctx.opts.batch as u64;
        let schedule = Periodic {
            every,
            start,
            end,
            first_id,
        };
        tasks.push(tokio::spawn(broadcast_loop(ctx.clone(), pool, schedule)));
    }
    if ctx.opts.publish_stream {
        let bases = ctx.plan.server().publish_bases(&ctx.plan);
        for i in 0..ctx.opts.publish_connections {
            let base = bases[i % bases.len()].clone();
            tasks.push(tokio::spawn(stream::stream_loop(
                ctx.clone(),
                src.clone(),
                base,
                start,
                end,
                next.clone(),
                pacer,
                channels,
            )));
        }
    }
    for _ in 0..ctx.opts.publish_connections * usize::from(!ctx.opts.publish_stream) {
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
    // Repeated picks (a random pattern) were never sent: not attempted.
    stats
        .publish_attempted
        .fetch_sub(batch - picked.len() as u64, Ordering::Relaxed);
    let data = ctx.payload(k);
    post_broadcast(ctx, pool, &picked, &data, &ctx.id_member(k)).await;
    stats.record_publish(started.elapsed().as_micros() as u64);
}

/// The body of a `POST /v1/broadcast` of `data` (a JSON value) to `names`; `id_member` is
/// its idempotency key as [`id_member`] renders it.
fn broadcast_body(names: &[String], data: &str, id_member: &str) -> String {
    format!(
        r#"{{"channels":{},"data":{data}{id_member}}}"#,
        serde_json::to_string(names).unwrap_or_default(),
    )
}

/// One `POST /v1/broadcast` of `data` to the table's channels `picked` (distinct): the
/// channels the answer accepts it on are recorded and the outcome counted. Returns how
/// many accepted it.
async fn post_broadcast(
    ctx: &PublishCtx,
    pool: &Gateways,
    picked: &[u64],
    data: &str,
    id_member: &str,
) -> u64 {
    let stats = &ctx.stats;
    let names: Vec<String> = picked
        .iter()
        .map(|&ch| ctx.plan.channel(ctx.channel_base + ch))
        .collect();
    let (r, retried) = request(
        ctx,
        pool,
        "/v1/broadcast",
        &[("content-type", "application/json")],
        Bytes::from(broadcast_body(&names, data, id_member)),
        store_refused,
    )
    .await;
    let n = picked.len() as u64;
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
                    accepted
                }
                Err(_) => {
                    stats.error("publish_bad_body");
                    0
                }
            }
        }
        Ok((status, _)) => {
            count_failed(
                stats,
                status.as_str(),
                &format!("http_{}", status.as_u16()),
                n,
            );
            0
        }
        Err(e) => {
            count_failed(stats, e.kind(), e.kind(), n);
            0
        }
    }
}

/// When the periodic broadcasts of `--broadcast-every` go out.
struct Periodic {
    every: Duration,
    /// The publish phase: broadcast `n` is due `n × every` after `start`, if before `end`.
    start: tokio::time::Instant,
    end: tokio::time::Instant,
    /// Broadcast `n` carries message number `first_id + n`.
    first_id: u64,
}

/// Sends the periodic broadcasts, one after the other; one that falls behind (a
/// broadcast slower than `every`) goes out as soon as the previous one is answered.
async fn broadcast_loop(ctx: Arc<PublishCtx>, pool: Gateways, when: Periodic) {
    let channels = ctx.table.len() as u64;
    let want = ctx.opts.broadcast_channels.min(channels);
    if want == 0 {
        return;
    }
    for n in 1u64.. {
        let due = when.start + when.every.mul_f64(n as f64);
        if due >= when.end {
            break;
        }
        tokio::select! {
            _ = ctx.stop.cancelled() => break,
            _ = tokio::time::sleep_until(due) => {}
        }
        let picked = pick_channels(channels, want);
        send_periodic(&ctx, &pool, n, when.first_id + n, &picked).await;
    }
}

/// `want` distinct channels of `0..channels` at random, in order.
fn pick_channels(channels: u64, want: u64) -> Vec<u64> {
    let mut picked: Vec<u64> =
        rand::seq::index::sample(&mut rand::rng(), channels as usize, want as usize)
            .into_iter()
            .map(|i| i as u64)
            .collect();
    picked.sort_unstable();
    picked
}

/// The requests a broadcast to `picked` takes: at most `max` channels each, in order.
fn parts(picked: &[u64], max: u64) -> std::slice::Chunks<'_, u64> {
    picked.chunks(usize::try_from(max).unwrap_or(usize::MAX).max(1))
}

/// Periodic broadcast `n` (message number `id`) to the table's channels `picked`: one
/// payload, stamped with the time the first request goes out, in requests of at most
/// `--max-broadcast-channels` channels sent back to back (deliveries of later ones
/// count the earlier ones' time).
async fn send_periodic(ctx: &PublishCtx, pool: &Gateways, n: u64, id: u64, picked: &[u64]) {
    let stats = &ctx.stats;
    let t = unix_nanos();
    let data = ctx.payload_at(t, id, Some(n));
    let key = id_member(ctx.key_named(&format!("b{n}")));
    stats.broadcast_sent(n, t, picked.len() as u64);
    let started = Instant::now();
    let (mut requests, mut accepted) = (0, 0);
    for part in parts(picked, ctx.opts.max_broadcast_channels) {
        stats.publish_requests.fetch_add(1, Ordering::Relaxed);
        stats
            .publish_attempted
            .fetch_add(part.len() as u64, Ordering::Relaxed);
        accepted += post_broadcast(ctx, pool, part, &data, &key).await;
        requests += 1;
    }
    stats.broadcast_answered(n, requests, accepted, started.elapsed().as_micros() as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_picks_are_distinct_and_fresh() {
        let a = pick_channels(1000, 250);
        assert_eq!(a.len(), 250);
        assert!(a.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
        assert!(a.iter().all(|&c| c < 1000));
        let b = pick_channels(1000, 250);
        assert_ne!(a, b, "a fresh pick each time");
        assert_eq!(pick_channels(5, 5), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_broadcast_above_the_gateways_max_goes_out_in_parts() {
        // 250 channels, the gateway takes at most 100 per request: 100, 100, 50, each
        // with the same data and key, together every channel once.
        let picked = pick_channels(1000, 250);
        let data = r#"{"t":1,"i":7,"b":1,"pad":""}"#;
        let key = id_member(Some("lg1-b1".into()));
        let mut named = Vec::new();
        let mut sizes = Vec::new();
        for part in parts(&picked, 100) {
            let names: Vec<String> = part.iter().map(|c| format!("lg-{c}")).collect();
            let body: serde_json::Value =
                serde_json::from_str(&broadcast_body(&names, data, &key)).unwrap();
            assert_eq!(
                body["data"],
                serde_json::from_str::<serde_json::Value>(data).unwrap()
            );
            assert_eq!(body["id"], "lg1-b1");
            let channels = body["channels"].as_array().unwrap();
            sizes.push(channels.len());
            named.extend(channels.iter().map(|c| c.as_str().unwrap().to_string()));
        }
        assert_eq!(sizes, [100, 100, 50]);
        let expect: Vec<String> = picked.iter().map(|c| format!("lg-{c}")).collect();
        assert_eq!(named, expect);
        // Without --retry-for there is no key.
        let body: serde_json::Value =
            serde_json::from_str(&broadcast_body(&expect[..1], data, &id_member(None))).unwrap();
        assert!(body.get("id").is_none());
        // At or under the max: one request.
        assert_eq!(parts(&picked, 250).count(), 1);
        assert_eq!(parts(&picked, 100_000).count(), 1);
        assert_eq!(
            parts(&picked, 249).map(<[u64]>::len).collect::<Vec<_>>(),
            [249, 1]
        );
    }

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
