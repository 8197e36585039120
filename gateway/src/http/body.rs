//! Request bodies read whole, within a byte limit and a time limit (`--body-timeout-secs`,
//! counted from the moment the head is in: a body trickled in a byte at a time is bounded
//! by it as much as a stalled one).

use super::rejection::Rejection;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header;
use hyper::Request;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Reads a request body of at most `limit` bytes within `timeout` (`what` names it in the
/// refusal), holding its share of the gateway's body budget (`--max-inflight-body-bytes`:
/// its Content-Length, or `limit` when chunked) for as long as the caller keeps the
/// returned permit.
pub async fn read_body<'a>(
    req: Request<Incoming>,
    limit: usize,
    what: &'static str,
    timeout: Duration,
    budget: &'a Semaphore,
) -> Result<(Bytes, SemaphorePermit<'a>), Rejection> {
    let too_large = Rejection::TooLarge { what, limit };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large);
    }
    let reserve = declared.map_or(limit, |n| n as usize).div_ceil(1024).max(1);
    let permit = u32::try_from(reserve)
        .ok()
        .and_then(|n| budget.try_acquire_many(n).ok())
        .ok_or(Rejection::Busy)?;
    let body = Limited::new(req.into_body(), limit).collect();
    let Ok(read) = tokio::time::timeout(timeout, body).await else {
        return Err(Rejection::BodyTimeout {
            secs: timeout.as_secs(),
        });
    };
    match read {
        Ok(c) => Ok((c.to_bytes(), permit)),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large),
        Err(e) => Err(Rejection::BadBody(e.to_string())),
    }
}
