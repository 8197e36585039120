//! Long-poll client: one keep-alive connection, `GET poll_url&since=S&timeout=T` in a loop,
//! `since` taken from each answer's `next`.

use std::time::Duration;

use bytes::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::Method;
use serde::Deserialize;

use super::{on_gap, on_parsed, ClientCtx, Frame, SessionEnd, Slot};
use crate::checker::SeqChecker;
use crate::net::{exchange, http_connect, request, with_param, HttpError, ReqBody, Target};

/// An open keep-alive connection to the worker.
pub struct PollConn {
    sender: SendRequest<ReqBody>,
    target: Target,
}

/// A poll answer's body (the lean plane reads it too).
#[derive(Debug, Deserialize)]
pub(crate) struct PollAnswer {
    #[serde(default)]
    pub messages: Vec<Frame>,
    pub next: Option<u64>,
    #[serde(default)]
    pub gap: bool,
    pub epoch: Option<u64>,
    pub first_seq: Option<u64>,
}

pub async fn connect(ctx: &ClientCtx, url: &str) -> Result<PollConn, String> {
    let target = Target::parse(url).map_err(|_| "poll_bad_url".to_string())?;
    let sender = http_connect(&ctx.src, &target)
        .await
        .map_err(|e| crate::net::connect_error_kind("poll", &e))?;
    Ok(PollConn { sender, target })
}

/// Polls until stopped, churned or failed.
pub async fn session(
    ctx: &ClientCtx,
    mut c: PollConn,
    mut since: u64,
    checker: &mut SeqChecker,
    slot: &Slot,
) -> SessionEnd {
    let timeout = ctx.plan.clients.poll_timeout;
    loop {
        let mut path = with_param(
            &with_param(&c.target.path, "since", since),
            "timeout",
            timeout,
        );
        if let Some(e) = checker.epoch {
            path = with_param(&path, "epoch", e);
        }
        let req = request(Method::GET, &c.target, &path, None, Bytes::new());
        let limit = Duration::from_secs(timeout + 15);
        let r = tokio::select! {
            _ = ctx.stop.cancelled() => return SessionEnd::Stopped,
            _ = slot.churn.notified() => return SessionEnd::Churned,
            r = exchange(&mut c.sender, req, limit) => r,
        };
        let (status, body) = match r {
            Ok(x) => x,
            Err(HttpError::Timeout) => return SessionEnd::Error("poll_timeout".into()),
            Err(_) => return SessionEnd::Error("poll_error".into()),
        };
        if status != 200 {
            return SessionEnd::Error(format!("poll_http_{}", status.as_u16()));
        }
        let answer: PollAnswer = match serde_json::from_slice(&body) {
            Ok(a) => a,
            Err(_) => return SessionEnd::Error("poll_bad_body".into()),
        };
        if answer.gap {
            on_gap(&ctx.stats, checker, answer.epoch, answer.first_seq);
        }
        for m in answer.messages {
            on_parsed(&ctx.stats, checker, slot, m);
        }
        since = answer.next.unwrap_or_else(|| checker.last_seq().max(since));
    }
}
