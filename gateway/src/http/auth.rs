//! Bearer keys: publisher keys on the publish endpoints, the link key on worker links.

use super::reply::{error, Resp};
use crate::app::App;
use crate::metrics;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::StatusCode;

/// The key of an `Authorization: Bearer <key>` header (scheme case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// Checks `Authorization: Bearer <key>` against the configured publisher keys; `Some` is
/// the refusal to send.
pub fn refuse_publisher(app: &App, headers: &HeaderMap) -> Option<Resp> {
    if app.config.publisher_keys.is_empty() {
        return None;
    }
    let ok = bearer(headers).is_some_and(|p| {
        app.config.publisher_keys.iter().fold(false, |acc, k| {
            acc | constant_time_eq(k.as_bytes(), p.as_bytes())
        })
    });
    if ok {
        return None;
    }
    metrics::PUBLISH_REJECTED
        .with_label_values(&["unauthorized"])
        .inc();
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid publisher key is required (Authorization: Bearer <key>)",
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(r)
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
