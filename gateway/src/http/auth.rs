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

/// Who may see the admin surface (dashboard, `/metrics`, `/v1/workers`, `/v1/stats`,
/// `/v1/channels/…`):
/// with `--admin-key`, whoever presents it (`Bearer`, or `Basic` with it as the password);
/// without, loopback clients on `--listen` and anyone on `--admin-listen`. With
/// `--admin-listen` the surface is there only, and `--listen` does not know it.
pub fn check_admin(
    app: &App,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
    plane: crate::net::Plane,
) -> Result<(), Rejection> {
    admin_rule(
        app.config.admin_key.as_deref(),
        app.config.admin_listen.is_some(),
        headers,
        peer,
        plane,
    )
}

fn admin_rule(
    key: Option<&str>,
    admin_listen: bool,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
    plane: crate::net::Plane,
) -> Result<(), Rejection> {
    use crate::net::Plane;
    if plane == Plane::Api && admin_listen {
        return Err(Rejection::NotFound);
    }
    match key {
        Some(key) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if worker::config::authorization_carries(key, given) {
                Ok(())
            } else {
                Err(Rejection::AdminUnauthorized)
            }
        }
        None if plane == Plane::Admin => Ok(()),
        None if peer.is_some_and(|ip| ip.is_loopback()) => Ok(()),
        None => Err(Rejection::AdminForbidden),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Plane;
    use hyper::header::HeaderValue;

    fn auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn the_admin_surface_without_a_key_answers_loopback_only() {
        let none = HeaderMap::new();
        let lo = Some("127.0.0.1".parse().unwrap());
        let lo6 = Some("::1".parse().unwrap());
        let far = Some("10.1.2.3".parse().unwrap());
        assert_eq!(admin_rule(None, false, &none, lo, Plane::Api), Ok(()));
        assert_eq!(admin_rule(None, false, &none, lo6, Plane::Api), Ok(()));
        assert_eq!(
            admin_rule(None, false, &none, far, Plane::Api),
            Err(Rejection::AdminForbidden)
        );
        assert_eq!(
            admin_rule(None, false, &none, None, Plane::Api),
            Err(Rejection::AdminForbidden)
        );
        // --admin-listen: open there (its address is the operator's choice), gone here.
        assert_eq!(admin_rule(None, true, &none, far, Plane::Admin), Ok(()));
        assert_eq!(
            admin_rule(None, true, &none, lo, Plane::Api),
            Err(Rejection::NotFound)
        );
    }

    #[test]
    fn the_admin_key_is_asked_of_everyone_as_bearer_or_basic_password() {
        let far = Some("10.1.2.3".parse().unwrap());
        let lo = Some("127.0.0.1".parse().unwrap());
        let k = Some("s3cret");
        for (h, ok) in [
            (auth("Bearer s3cret"), true),
            (auth("bearer s3cret"), true),
            // "admin:s3cret" and ":s3cret"
            (auth("Basic YWRtaW46czNjcmV0"), true),
            (auth("Basic OnMzY3JldA=="), true),
            (auth("Bearer s3cre"), false),
            // "admin:wrong"
            (auth("Basic YWRtaW46d3Jvbmc="), false),
            (auth("Basic !!!"), false),
            (HeaderMap::new(), false),
        ] {
            for (peer, plane) in [(far, Plane::Api), (lo, Plane::Api), (far, Plane::Admin)] {
                let want = if ok {
                    Ok(())
                } else {
                    Err(Rejection::AdminUnauthorized)
                };
                assert_eq!(admin_rule(k, false, &h, peer, plane), want, "{h:?}");
            }
        }
    }
}
