//! Request bodies read whole, within a byte limit.

use super::reply::{error, Resp};
use crate::metrics;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header;
use hyper::{Request, StatusCode};

fn too_large(what: &str, limit: usize) -> Resp {
    metrics::PUBLISH_REJECTED
        .with_label_values(&["too_large"])
        .inc();
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        &format!("{what} exceeds {limit} bytes"),
    )
}

/// Reads a request body of at most `limit` bytes.
pub async fn read_body(req: Request<Incoming>, limit: usize, what: &str) -> Result<Bytes, Resp> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(what, limit));
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(what, limit)),
        Err(e) => {
            metrics::PUBLISH_REJECTED
                .with_label_values(&["bad_request"])
                .inc();
            Err(error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("could not read the body: {e}"),
            ))
        }
    }
}
