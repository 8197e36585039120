//! CORS for one group of endpoints: which origins are allowed, the headers an answer gets,
//! and preflight answers.

use super::reply::{empty, Resp};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::StatusCode;

/// Allowed origins of one group of endpoints.
pub struct Cors {
    any: bool,
    origins: Vec<String>,
    methods: &'static str,
}

impl Cors {
    pub fn new(origins: &[String], methods: &'static str) -> Self {
        Cors {
            any: origins.iter().any(|o| o == "*"),
            origins: origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_owned())
                .collect(),
            methods,
        }
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if allowed.
    fn allow(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        if self.any {
            return Some(HeaderValue::from_static("*"));
        }
        let origin = origin?;
        let s = origin.to_str().ok()?;
        self.origins.iter().any(|o| o == s).then(|| origin.clone())
    }

    pub fn apply(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        if !self.any {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if let Some(v) = self.allow(origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
    }

    pub fn preflight(
        &self,
        origin: Option<&HeaderValue>,
        req_headers: Option<&HeaderValue>,
    ) -> Resp {
        let mut resp = empty(StatusCode::NO_CONTENT);
        let h = resp.headers_mut();
        self.apply(origin, h);
        if h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(self.methods),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                req_headers.cloned().unwrap_or_else(|| {
                    HeaderValue::from_static("Content-Type, Authorization, Idempotency-Key")
                }),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_matching() {
        let any = Cors::new(&["*".into()], "GET");
        assert_eq!(any.allow(None).unwrap(), "*");
        let some = Cors::new(&["https://a.example".into()], "GET");
        let a = HeaderValue::from_static("https://a.example");
        let b = HeaderValue::from_static("https://b.example");
        assert_eq!(some.allow(Some(&a)).unwrap(), "https://a.example");
        assert!(some.allow(Some(&b)).is_none());
        assert!(some.allow(None).is_none());
    }
}
