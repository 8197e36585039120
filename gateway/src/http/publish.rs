//! Publishing: `POST /v1/publish/{channel}` (one message), `POST /v1/publish` (an NDJSON
//! batch) and `POST /v1/broadcast` (one message on many channels). Parsing lives in
//! [`crate::ndjson`] and [`crate::broadcast`]; this file checks, appends and answers. A
//! refusal is a [`Rejection`], counted in `pushgate_publish_rejected_total` here, once.

use super::auth::{bearer, check_publisher};
use super::body::read_body;
use super::rejection::{store_reason, Rejection};
use super::reply::{json_resp, Resp};
use crate::app::App;
use crate::broadcast;
use crate::metrics::{self, RejectReason};
use crate::ndjson;
use crate::net::Peer;
use crate::store::{now_ms, Published, Store, StoreError};
use hyper::body::Incoming;
use hyper::header;
use hyper::{Request, StatusCode};
use serde_json::json;
use std::fmt::Write as _;

/// Channels of one broadcast handed to the store at a time.
const BROADCAST_CHUNK: usize = 4096;
/// Channels of one NDJSON batch published at once (well under `--redis-max-inflight`).
const BATCH_CHANNELS_AT_ONCE: usize = 256;

/// `POST /v1/publish/{channel}`.
pub async fn publish(app: &App, channel: &str, req: Request<Incoming>) -> Resp {
    let _t = metrics::PUBLISH_SECONDS[0].start_timer();
    publish_one(app, channel, req)
        .await
        .unwrap_or_else(|r| r.counted())
}

async fn publish_one(app: &App, channel: &str, req: Request<Incoming>) -> Result<Resp, Rejection> {
    check_publisher(app, req.headers())?;
    rate_limit(app, &req, 1)?;
    protocol::validate_channel(channel).map_err(Rejection::BadChannel)?;
    let key = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str().ok().map(str::trim) {
            Some(k) if ndjson::check_key(k).is_ok() => Some(k.to_owned()),
            _ => return Err(Rejection::BadIdempotencyKey),
        },
    };
    let (body, _budget) = read_body(
        req,
        app.config.max_message_bytes,
        "the message",
        app.config.body_timeout(),
        &app.body_budget,
    )
    .await?;
    // The body is a slice of hyper's read buffer, and a retained slice pins the whole
    // buffer: 4,952 B of RSS per retained 150 B message, measured (20,000 single
    // publishes to as many channels). The store keeps an exact-sized copy instead.
    let data = bytes::Bytes::copy_from_slice(&protocol::envelope::payload_to_data(body));
    let p = app
        .store
        .publish(channel, data, key.as_deref(), now_ms())
        .await
        .map_err(Rejection::Store)?;
    if !p.duplicate {
        metrics::PUBLISH_TOTAL.inc();
    }
    let mut out = String::with_capacity(24);
    let _ = write!(out, "{{\"seq\":{}}}", p.seq);
    Ok(json_resp(StatusCode::ACCEPTED, out))
}

/// `POST /v1/publish` with an NDJSON body.
pub async fn publish_batch(app: &App, req: Request<Incoming>) -> Resp {
    let _t = metrics::PUBLISH_SECONDS[1].start_timer();
    batch(app, req).await.unwrap_or_else(|r| r.counted())
}

async fn batch(app: &App, req: Request<Incoming>) -> Result<Resp, Rejection> {
    check_publisher(app, req.headers())?;
    let (peer, key) = who(app, &req);
    // One message's worth first, so a publisher already over its limit is refused
    // before its body is read; the whole batch is charged once it is parsed.
    rate_limit_parts(app, peer, key.as_deref(), 0)?;
    if !is_ndjson(req.headers()) {
        return Err(Rejection::NotNdjson);
    }
    let (body, _budget) = read_body(
        req,
        app.config.max_batch_bytes,
        "the batch",
        app.config.body_timeout(),
        &app.body_budget,
    )
    .await?;
    let (lines, mut rejected) = ndjson::parse_batch(
        &body,
        app.config.max_batch_lines,
        app.config.max_message_bytes,
    )
    .map_err(Rejection::TooManyLines)?;
    drop(body);
    rate_limit_parts(
        app,
        peer,
        key.as_deref(),
        (lines.len() + rejected.len()) as u64,
    )?;
    RejectReason::BadRequest.count(rejected.len() as u64);
    let now = now_ms();
    let results = publish_lines(app, &lines, now).await;
    let accepted = tally(&results, |i, code| {
        rejected.push(ndjson::Rejected {
            line: lines[i].line,
            error: code.to_owned(),
        })
    });
    rejected.sort_by_key(|r| r.line);
    let rejected: Vec<_> = rejected
        .iter()
        .map(|r| json!({"line": r.line, "error": r.error}))
        .collect();
    Ok(json_resp(
        StatusCode::OK,
        json!({"accepted": accepted, "rejected": rejected}).to_string(),
    ))
}

/// Whether a request says `Content-Type: application/x-ndjson`.
pub(super) fn is_ndjson(headers: &hyper::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-ndjson"))
}

/// Publishes a batch's lines in line order. With a shared store: one channel's lines one
/// after the other (so their seqs follow the lines), different channels at once, up to [`BATCH_CHANNELS_AT_ONCE`]
/// (a store on the network then pipelines them instead of paying a round trip per line).
pub(super) async fn publish_lines(
    app: &App,
    lines: &[ndjson::BatchLine],
    now: u64,
) -> Vec<Result<Published, StoreError>> {
    use futures_util::StreamExt as _;
    if !app.store.is_shared() {
        // In memory a publish never waits: one after the other, no grouping to pay for.
        let mut results = Vec::with_capacity(lines.len());
        for l in lines {
            let r = app
                .store
                .publish(&l.channel, l.data.clone(), l.key.as_deref(), now);
            results.push(r.await);
        }
        return results;
    }
    let mut by_channel: std::collections::HashMap<&str, Vec<usize>> =
        std::collections::HashMap::new();
    for (i, line) in lines.iter().enumerate() {
        by_channel.entry(line.channel.as_str()).or_default().push(i);
    }
    let mut results: Vec<Option<Result<Published, StoreError>>> =
        (0..lines.len()).map(|_| None).collect();
    let mut done = futures_util::stream::iter(by_channel.into_values())
        .map(|idx| async move {
            let mut out = Vec::with_capacity(idx.len());
            for i in idx {
                let l = &lines[i];
                let r = app
                    .store
                    .publish(&l.channel, l.data.clone(), l.key.as_deref(), now)
                    .await;
                out.push((i, r));
            }
            out
        })
        .buffer_unordered(BATCH_CHANNELS_AT_ONCE);
    while let Some(group) = done.next().await {
        for (i, r) in group {
            results[i] = Some(r);
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every line published"))
        .collect()
}

/// The source IP and the publisher key of a request, for the rate limits (nothing when
/// no limit is on: the publish path pays for neither).
pub(super) fn who(
    app: &App,
    req: &Request<Incoming>,
) -> (Option<std::net::IpAddr>, Option<String>) {
    let l = &app.limits;
    let peer = l
        .per_ip
        .as_ref()
        .and_then(|_| req.extensions().get::<Peer>().map(|p| p.0));
    let key = l
        .per_key
        .as_ref()
        .and_then(|_| bearer(req.headers()).map(str::to_owned));
    (peer, key)
}

/// Charges `n` messages to the request's source IP and publisher key.
fn rate_limit(app: &App, req: &Request<Incoming>, n: u64) -> Result<(), Rejection> {
    let (peer, key) = who(app, req);
    rate_limit_parts(app, peer, key.as_deref(), n)
}

/// Charges `n` messages (0: only checks that one would pass, without charging).
pub(super) fn rate_limit_parts(
    app: &App,
    peer: Option<std::net::IpAddr>,
    key: Option<&str>,
    n: u64,
) -> Result<(), Rejection> {
    if app.limits.is_off() {
        return Ok(());
    }
    let now = std::time::Instant::now();
    app.limits
        .check(peer, key, n, now)
        .map_err(|retry_after| Rejection::RateLimited { retry_after })
}

/// Counts the accepted appends of a batch (NDJSON or broadcast), meters new publishes and
/// refusals, and hands each refusal (its index, its code) to `reject`.
pub(super) fn tally(
    results: &[Result<Published, StoreError>],
    mut reject: impl FnMut(usize, &'static str),
) -> u64 {
    let mut accepted = 0;
    let mut published = 0;
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(p) => {
                accepted += 1;
                published += u64::from(!p.duplicate);
            }
            Err(e) => {
                store_reason(e).count(1);
                reject(i, e.code());
            }
        }
    }
    metrics::PUBLISH_TOTAL.inc_by(published);
    accepted
}

/// `POST /v1/broadcast`: the same message on every listed channel, each a normal append
/// with its own seq. The data is rendered once and the same `Bytes` goes to every channel;
/// the store takes each shard lock once for all the channels it holds.
pub async fn broadcast(app: &App, req: Request<Incoming>) -> Resp {
    let _t = metrics::PUBLISH_SECONDS[2].start_timer();
    broadcast_all(app, req)
        .await
        .unwrap_or_else(|r| r.counted())
}

async fn broadcast_all(app: &App, req: Request<Incoming>) -> Result<Resp, Rejection> {
    check_publisher(app, req.headers())?;
    let (peer, key) = who(app, &req);
    rate_limit_parts(app, peer, key.as_deref(), 0)?;
    let (body, _budget) = read_body(
        req,
        app.config.max_batch_bytes,
        "the broadcast",
        app.config.body_timeout(),
        &app.body_budget,
    )
    .await?;
    let parsed = broadcast::parse(
        &body,
        app.config.max_broadcast_channels,
        app.config.max_message_bytes,
    )
    .map_err(Rejection::Broadcast)?;
    let (channels, mut rejected) = broadcast::split_channels(&parsed.channels);
    rate_limit_parts(app, peer, key.as_deref(), parsed.channels.len() as u64)?;
    RejectReason::BadChannel.count(rejected.len() as u64);
    // In chunks, yielding in between: a 100,000-channel broadcast does not hold a runtime
    // thread for its whole length, and link writers start on the first chunk's deliveries.
    let now = now_ms();
    let mut results = Vec::with_capacity(channels.len());
    for (i, chunk) in channels.chunks(BROADCAST_CHUNK).enumerate() {
        if i > 0 {
            tokio::task::yield_now().await;
        }
        results.extend(
            app.store
                .publish_many(chunk, parsed.data.clone(), parsed.key.as_deref(), now)
                .await,
        );
    }
    let accepted = tally(&results, |i, code| {
        rejected.push(broadcast::Rejected {
            channel: channels[i].to_owned(),
            error: code.to_owned(),
        })
    });
    metrics::BROADCAST_TOTAL.inc();
    let rejected: Vec<_> = rejected
        .iter()
        .map(|r| json!({"channel": r.channel, "error": r.error}))
        .collect();
    Ok(json_resp(
        StatusCode::OK,
        json!({"accepted": accepted, "rejected": rejected}).to_string(),
    ))
}
