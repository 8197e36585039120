//! Request bodies read whole, within a byte limit.

use super::rejection::Rejection;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header;
use hyper::Request;

/// Reads a request body of at most `limit` bytes (`what` names it in the refusal).
pub async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    what: &'static str,
) -> Result<Bytes, Rejection> {
    let too_large = Rejection::TooLarge { what, limit };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large);
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large),
        Err(e) => Err(Rejection::BadBody(e.to_string())),
    }
}
