//! Nchan (the nginx module) as a target: no assign step (subscribers go straight to
//! `<nchan-url>/sub/<channel>`), publishes to `<nchan-url>/pub/<channel>`, and messages
//! arrive as the raw payload, so the check uses a per-channel counter the publisher puts in
//! the payload's `i` field (1, 2, 3... per channel) instead of a server seq.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use serde::Deserialize;

use super::{Opening, Server, SingleAnswer};
use crate::checker::{Published, Seen, SeqChecker};
use crate::cli::{Plan, Transport};
use crate::clients::{sse, ws, ClientCtx, Conn, SessionEnd, Slot};
use crate::net::{http_connect, request, ReqBody, Target};
use crate::stats::Stats;

/// The worker id connections to Nchan are counted under.
pub const NCHAN_WORKER: &str = "nchan";

/// Nchan.
pub struct Nchan;

impl Server for Nchan {
    fn validate(&self, plan: &Plan) -> anyhow::Result<()> {
        let url = plan
            .common
            .target
            .nchan_url
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--target nchan needs --nchan-url"))?;
        if !url.starts_with("http://") {
            anyhow::bail!("--nchan-url must be an http:// URL");
        }
        if plan
            .publish
            .as_ref()
            .is_some_and(|p| p.batch != 1 || p.broadcast || p.broadcast_every.is_some())
        {
            anyhow::bail!(
                "--target nchan publishes one message per request: --batch 1, no --broadcast or --broadcast-every"
            );
        }
        if plan.common.subscriber_secret.is_some() {
            anyhow::bail!("--subscriber-secret is pushgate-only");
        }
        if plan
            .publish
            .as_ref()
            .is_some_and(|p| !p.retry_for.is_zero())
        {
            anyhow::bail!("--retry-for needs idempotency keys, which Nchan does not have");
        }
        Ok(())
    }

    fn publish_bases(&self, plan: &Plan) -> Vec<String> {
        vec![base(plan).to_string()]
    }

    fn publish_path(&self, channel: &str) -> String {
        format!("/pub/{channel}")
    }

    fn stamp(&self, entry: &Published, _k: u64) -> u64 {
        // Nchan sends the payload as is: `i` is a per-channel counter from 1, the seq the
        // check uses.
        entry.sent.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn single_answer(&self, status: StatusCode, _body: &[u8], stamp: u64) -> SingleAnswer {
        if (200..=202).contains(&status.as_u16()) {
            SingleAnswer::Seq(stamp)
        } else {
            SingleAnswer::Refused
        }
    }

    fn on_text(
        &self,
        stats: &Stats,
        checker: &mut SeqChecker,
        slot: &Slot,
        text: &[u8],
    ) -> Option<String> {
        on_raw(stats, checker, slot, text);
        None
    }

    fn open<'a>(
        &'a self,
        ctx: &'a ClientCtx,
        channel: &'a str,
        transport: Transport,
        _since: Option<u64>,
        _epoch: Option<u64>,
        started: Instant,
    ) -> Opening<'a> {
        Box::pin(async move {
            // Nchan sends what it retains from the oldest message on, so no `since`.
            let base = base(&ctx.plan);
            let http_url = format!("{base}/sub/{channel}");
            let ws_url = format!("ws://{}", http_url.trim_start_matches("http://"));
            let conn = match transport {
                Transport::Ws => Conn::Ws(Box::new(ws::connect(ctx, &ws_url, None, None).await?)),
                Transport::Sse => Conn::Sse(sse::connect(ctx, &http_url, None, None).await?),
                Transport::Poll | Transport::Mixed => {
                    Conn::NchanPoll(nchan_poll_connect(ctx, &http_url).await?)
                }
            };
            ctx.stats
                .record_connect(started.elapsed().as_micros() as u64, 0, transport);
            Ok((NCHAN_WORKER.to_string(), conn))
        })
    }

    fn has_metrics(&self) -> bool {
        false
    }
}

/// Nchan's base URL: `--nchan-url`, else the (first) `--gateway`.
fn base(plan: &Plan) -> &str {
    plan.common
        .target
        .nchan_url
        .as_deref()
        .unwrap_or(plan.gateway())
        .trim_end_matches('/')
}

/// The payload fields loadgen itself publishes.
#[derive(Debug, Deserialize)]
struct Stamp {
    t: u64,
    i: u64,
}

/// Handles one raw Nchan message: the payload itself, `i` = per-channel counter (from 1).
pub fn on_raw(stats: &Stats, checker: &mut SeqChecker, slot: &Slot, payload: &[u8]) {
    match serde_json::from_slice::<Stamp>(payload) {
        Ok(s) => {
            stats.received(slot.transport);
            if checker.observe(s.i) != Seen::Duplicate {
                slot.unique.fetch_add(1, Ordering::Relaxed);
                slot.max_seq.fetch_max(s.i, Ordering::Relaxed);
            }
            stats.record_delivery(s.t, slot.transport);
        }
        Err(_) => stats.error("bad_frame"),
    }
}

/// An Nchan long-poll connection: keep-alive, `If-Modified-Since` / `If-None-Match` from
/// the previous answer's `Last-Modified` / `Etag`.
pub struct NchanPoll {
    sender: SendRequest<ReqBody>,
    target: Target,
    last_modified: Option<HeaderValue>,
    etag: Option<HeaderValue>,
}

async fn nchan_poll_connect(ctx: &ClientCtx, url: &str) -> Result<NchanPoll, String> {
    let target = Target::parse(url).map_err(|_| "poll_bad_url".to_string())?;
    let sender = http_connect(&ctx.src, &target)
        .await
        .map_err(|_| "poll_connect".to_string())?;
    Ok(NchanPoll {
        sender,
        target,
        last_modified: None,
        etag: None,
    })
}

/// Polls until stopped, churned or failed. 304/408 (Nchan's subscriber timeout) poll again.
pub async fn nchan_poll_session(
    ctx: &ClientCtx,
    mut c: NchanPoll,
    checker: &mut SeqChecker,
    slot: &Slot,
) -> SessionEnd {
    let limit = Duration::from_secs(ctx.plan.clients.poll_timeout + 15);
    loop {
        let mut req = request(Method::GET, &c.target, &c.target.path, None, Bytes::new());
        if let Some(v) = &c.last_modified {
            req.headers_mut().insert("if-modified-since", v.clone());
        }
        if let Some(v) = &c.etag {
            req.headers_mut().insert("if-none-match", v.clone());
        }
        let exchange = async {
            let resp = c.sender.send_request(req).await.map_err(|_| "poll_error")?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|_| "poll_error")?.to_bytes();
            Ok::<_, &'static str>((parts, body))
        };
        let r = tokio::select! {
            _ = ctx.stop.cancelled() => return SessionEnd::Stopped,
            _ = slot.churn.notified() => return SessionEnd::Churned,
            r = tokio::time::timeout(limit, exchange) => r,
        };
        let (parts, body) = match r {
            Err(_) => return SessionEnd::Error("poll_timeout".into()),
            Ok(Err(kind)) => return SessionEnd::Error(kind.into()),
            Ok(Ok(x)) => x,
        };
        match parts.status.as_u16() {
            200 => {
                c.last_modified = parts.headers.get("last-modified").cloned();
                c.etag = parts.headers.get("etag").cloned();
                on_raw(&ctx.stats, checker, slot, &body);
            }
            304 | 408 => {}
            s => return SessionEnd::Error(format!("poll_http_{s}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::CheckTotals;
    use crate::stats::unix_nanos;

    #[test]
    fn raw_payloads_are_checked_by_counter() {
        let stats = Stats::new();
        let slot = Slot::default();
        let mut c = SeqChecker::default();
        let t = unix_nanos() - 1_000_000;
        for i in [1u64, 2, 2, 4] {
            on_raw(
                &stats,
                &mut c,
                &slot,
                format!(r#"{{"t":{t},"i":{i},"pad":"xx"}}"#).as_bytes(),
            );
        }
        on_raw(&stats, &mut c, &slot, b"not json");
        let p = Published::default();
        for i in 1..=4 {
            p.accepted_seq(i);
        }
        let mut totals = CheckTotals::default();
        totals.add_channel(&c, &p);
        assert_eq!((totals.lost, totals.duplicated, totals.unique), (1, 1, 3));
        assert_eq!(slot.max_seq.load(std::sync::atomic::Ordering::Relaxed), 4);
        assert_eq!(stats.errors.lock().unwrap().get("bad_frame"), Some(&1));
        assert!(stats.hists.lock().unwrap().latency.max() >= 1000);
    }
}
