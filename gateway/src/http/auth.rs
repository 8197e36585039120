//! Bearer keys: publisher keys on the publish endpoints, the link key on worker links.

use super::rejection::Rejection;
use crate::app::App;
use hyper::header::{self, HeaderMap};

/// The key of an `Authorization: Bearer <key>` header (scheme case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// Checks `Authorization: Bearer <key>` against the configured publisher keys (every key
/// compared in constant time).
pub fn check_publisher(app: &App, headers: &HeaderMap) -> Result<(), Rejection> {
    if app.config.publisher_keys.is_empty() {
        return Ok(());
    }
    let ok = bearer(headers).is_some_and(|p| {
        app.config.publisher_keys.iter().fold(false, |acc, k| {
            acc | constant_time_eq(k.as_bytes(), p.as_bytes())
        })
    });
    if ok {
        Ok(())
    } else {
        Err(Rejection::Unauthorized)
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
