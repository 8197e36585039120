//! Every way the gateway refuses a request, as one enum: each variant yields its status,
//! its JSON body (`{"error":code,"message":text}`), the extra header it needs (`Allow`,
//! `WWW-Authenticate`, `Upgrade`) and, for publish-side refusals, its
//! `pushgate_publish_rejected_total` label. Handlers return `Err(Rejection)`; the publish
//! endpoints count it in one place ([`Rejection::counted`]).

use super::reply::{json_resp, Resp};
use crate::broadcast::BroadcastError;
use crate::metrics::RejectReason;
use crate::ndjson::{BatchError, MAX_KEY_LEN};
use crate::store::StoreError;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use protocol::token::TokenError;
use protocol::ChannelError;

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// A publish without a valid publisher key.
    Unauthorized,
    /// A body over its limit (`what` names it: "the message", "the batch").
    TooLarge {
        what: &'static str,
        limit: usize,
    },
    /// The body could not be read (a broken chunked encoding, a reset).
    BadBody(String),
    /// The body did not arrive within `--body-timeout-secs`; the connection is closed.
    BodyTimeout {
        secs: u64,
    },
    BadChannel(ChannelError),
    /// `/v1/assign` without `channel` (and without a subscriber secret).
    MissingChannel,
    BadIdempotencyKey,
    /// `POST /v1/publish` without `Content-Type: application/x-ndjson`.
    NotNdjson,
    TooManyLines(BatchError),
    Broadcast(BroadcastError),
    Store(StoreError),
    /// A malformed percent-escape in the query string.
    BadQuery,
    Token(TokenError),
    NoWorker,
    NotFound,
    MethodNotAllowed {
        method: Method,
        allowed: &'static str,
    },
    /// `GET /v1/link` without the link protocol's `Upgrade`.
    UpgradeRequired,
    /// A worker link without the gateway's link key.
    LinkKey,
    /// An admin endpoint (dashboard, `/metrics`, `/v1/workers`, `/v1/channels/…`) without
    /// the `--admin-key`.
    AdminUnauthorized,
    /// An admin endpoint asked from another host while no `--admin-key` is set.
    AdminForbidden,
    /// Plain HTTP on the gateway's TLS listener (answered in plain text, then closed).
    TlsRequired,
    /// A request head over `--max-header-bytes` (protocol level: answered below hyper).
    HeadTooLarge {
        limit: usize,
    },
    /// More header lines than hyper takes.
    TooManyHeaders {
        max: usize,
    },
    /// A request target (or an unfinished request line) over the limit.
    UriTooLong {
        limit: usize,
    },
    /// A head hyper could not take: why, in a few words.
    Malformed(String),
    /// `--max-inflight-body-bytes` is taken by other requests' bodies.
    Busy,
    /// Over `--publish-rate-per-ip` or `--publish-rate-per-key`; come back after this.
    RateLimited {
        retry_after: std::time::Duration,
    },
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::Unauthorized | Rejection::LinkKey | Rejection::AdminUnauthorized => {
                StatusCode::UNAUTHORIZED
            }
            Rejection::AdminForbidden => StatusCode::FORBIDDEN,
            Rejection::TooLarge { .. } | Rejection::TooManyLines(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Rejection::Broadcast(BroadcastError::Invalid(_)) => StatusCode::BAD_REQUEST,
            Rejection::Broadcast(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::BadBody(_)
            | Rejection::BadChannel(_)
            | Rejection::MissingChannel
            | Rejection::BadIdempotencyKey
            | Rejection::BadQuery => StatusCode::BAD_REQUEST,
            Rejection::NotNdjson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Rejection::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Rejection::Store(_) | Rejection::NoWorker => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::Token(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED)
            }
            Rejection::NotFound => StatusCode::NOT_FOUND,
            Rejection::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Rejection::TlsRequired => StatusCode::BAD_REQUEST,
            Rejection::HeadTooLarge { .. } | Rejection::TooManyHeaders { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Rejection::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            Rejection::Malformed(_) => StatusCode::BAD_REQUEST,
            Rejection::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Rejection::Busy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The machine-readable `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Unauthorized => "unauthorized",
            Rejection::TooLarge { .. } => "payload_too_large",
            Rejection::BadBody(_) => "bad_request",
            Rejection::BodyTimeout { .. } => "request_timeout",
            Rejection::BadChannel(_) | Rejection::MissingChannel => "bad_channel",
            Rejection::BadIdempotencyKey => "bad_idempotency_key",
            Rejection::NotNdjson => "unsupported_media_type",
            Rejection::TooManyLines(_) => "too_many_lines",
            Rejection::Broadcast(BroadcastError::Invalid(_)) => "bad_request",
            Rejection::Broadcast(BroadcastError::TooManyChannels(_)) => "too_many_channels",
            Rejection::Broadcast(BroadcastError::DataTooLarge(_)) => "payload_too_large",
            Rejection::Store(e) => e.code(),
            Rejection::BadQuery => "bad_query",
            Rejection::Token(e) => e.code(),
            Rejection::NoWorker => "no_worker",
            Rejection::NotFound => "not_found",
            Rejection::AdminUnauthorized => "admin_unauthorized",
            Rejection::AdminForbidden => "admin_forbidden",
            Rejection::MethodNotAllowed { .. } => "method_not_allowed",
            Rejection::UpgradeRequired => "upgrade_required",
            Rejection::LinkKey => "link_key",
            Rejection::TlsRequired => "tls_required",
            // The worker's codes for the same refusals.
            Rejection::HeadTooLarge { .. } | Rejection::TooManyHeaders { .. } => {
                "headers_too_large"
            }
            Rejection::UriTooLong { .. } => "uri_too_long",
            Rejection::Malformed(_) => "bad_request",
            Rejection::RateLimited { .. } => "rate_limited",
            Rejection::Busy => "busy",
        }
    }

    /// The human-readable `message`.
    pub fn message(&self) -> String {
        match self {
            Rejection::Unauthorized => {
                "a valid publisher key is required (Authorization: Bearer <key>)".into()
            }
            Rejection::TooLarge { what, limit } => format!("{what} exceeds {limit} bytes"),
            Rejection::BadBody(e) => format!("could not read the body: {e}"),
            Rejection::BodyTimeout { secs } => {
                format!("the request body did not arrive within {secs} s")
            }
            Rejection::BadChannel(e) => e.to_string(),
            Rejection::MissingChannel => "the channel query parameter is required".into(),
            Rejection::BadIdempotencyKey => {
                format!("Idempotency-Key must be 1-{MAX_KEY_LEN} visible ASCII bytes")
            }
            Rejection::NotNdjson => {
                "POST /v1/publish takes Content-Type: application/x-ndjson".into()
            }
            Rejection::TooManyLines(e) => e.to_string(),
            Rejection::Broadcast(e) => e.to_string(),
            Rejection::Store(e) => e.to_string(),
            Rejection::BadQuery => "the query string has a malformed percent-escape".into(),
            Rejection::Token(e) => e.to_string(),
            Rejection::NoWorker => "no healthy worker with free capacity is registered (GET /v1/workers lists the workers and counts the worker link attempts this gateway refused, in refused_links)".into(),
            Rejection::NotFound => "no such endpoint".into(),
            Rejection::AdminUnauthorized => "the admin surface needs the gateway's admin key (Authorization: Bearer <key>, or Basic with the key as the password)".into(),
            Rejection::AdminForbidden => "the admin surface (dashboard, /metrics, /v1/workers, /v1/channels) answers loopback clients only while no --admin-key is set".into(),
            Rejection::MethodNotAllowed { method, allowed } => {
                format!("{method} is not allowed here (allowed: {allowed})")
            }
            Rejection::UpgradeRequired => {
                format!("worker links upgrade to {}", protocol::link::LINK_UPGRADE)
            }
            Rejection::TlsRequired => "this port speaks TLS: use https://".into(),
            Rejection::LinkKey => {
                "a worker link needs the gateway's link key (Authorization: Bearer <key>)".into()
            }
            Rejection::HeadTooLarge { limit } => {
                format!("the request head exceeds {limit} bytes")
            }
            Rejection::TooManyHeaders { max } => format!("more than {max} header lines"),
            Rejection::UriTooLong { limit } => {
                format!("the request target exceeds {limit} bytes")
            }
            Rejection::Malformed(why) => format!("malformed HTTP request: {why}"),
            Rejection::Busy => {
                "the gateway holds as many request bodies as it may (--max-inflight-body-bytes); retry".into()
            }
            Rejection::RateLimited { retry_after } => format!(
                "over the publish rate limit; retry after {:.3} s",
                retry_after.as_secs_f64()
            ),
        }
    }

    /// The `pushgate_publish_rejected_total` label, for refusals on the publish side.
    pub fn reason(&self) -> Option<RejectReason> {
        Some(match self {
            Rejection::Unauthorized => RejectReason::Unauthorized,
            Rejection::TooLarge { .. } | Rejection::TooManyLines(_) => RejectReason::TooLarge,
            Rejection::Broadcast(BroadcastError::Invalid(_)) => RejectReason::BadRequest,
            Rejection::Broadcast(_) => RejectReason::TooLarge,
            Rejection::BadBody(_) | Rejection::BadIdempotencyKey | Rejection::NotNdjson => {
                RejectReason::BadRequest
            }
            Rejection::BadChannel(_) => RejectReason::BadChannel,
            Rejection::BodyTimeout { .. } => RejectReason::Timeout,
            Rejection::RateLimited { .. } => RejectReason::RateLimited,
            Rejection::Busy => RejectReason::Busy,
            Rejection::Store(e) => store_reason(e),
            Rejection::MissingChannel
            | Rejection::BadQuery
            | Rejection::Token(_)
            | Rejection::NoWorker
            | Rejection::NotFound
            | Rejection::MethodNotAllowed { .. }
            | Rejection::UpgradeRequired
            | Rejection::LinkKey
            | Rejection::AdminUnauthorized
            | Rejection::AdminForbidden
            | Rejection::TlsRequired
            | Rejection::HeadTooLarge { .. }
            | Rejection::TooManyHeaders { .. }
            | Rejection::UriTooLong { .. }
            | Rejection::Malformed(_) => return None,
        })
    }

    /// The header this refusal needs besides the JSON body.
    fn extra_header(&self) -> Option<(HeaderName, HeaderValue)> {
        match self {
            Rejection::Unauthorized => {
                Some((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")))
            }
            // Browsers ask for it (any user name, the key as the password).
            Rejection::AdminUnauthorized => Some((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"pushgate admin\", charset=\"UTF-8\""),
            )),
            Rejection::MethodNotAllowed { allowed, .. } => {
                Some((header::ALLOW, HeaderValue::from_static(allowed)))
            }
            Rejection::UpgradeRequired => Some((
                header::UPGRADE,
                HeaderValue::from_static(protocol::link::LINK_UPGRADE),
            )),
            // Whole seconds, rounded up (RFC 9110).
            Rejection::RateLimited { retry_after } => Some((
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs_f64().ceil().max(1.0) as u64),
            )),
            // The rest of the body may still trickle in: hyper closes after this answer.
            Rejection::BodyTimeout { .. } => {
                Some((header::CONNECTION, HeaderValue::from_static("close")))
            }
            _ => None,
        }
    }

    /// The answer: status, JSON body, extra header.
    pub fn response(&self) -> Resp {
        let mut r = json_resp(
            self.status(),
            protocol::envelope::error_body(self.code(), &self.message()),
        );
        if let Some((name, value)) = self.extra_header() {
            r.headers_mut().insert(name, value);
        }
        r
    }

    /// The whole answer as bytes on the wire, `Connection: close`: for refusals made below
    /// hyper, where no [`Resp`] can be sent ([`super::guard_io`]).
    pub fn raw_response(&self) -> Vec<u8> {
        let body = protocol::envelope::error_body(self.code(), &self.message());
        let status = self.status();
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    }

    /// The answer of a publish endpoint: counted under its label, then answered.
    pub fn counted(&self) -> Resp {
        if let Some(reason) = self.reason() {
            reason.count(1);
        }
        self.response()
    }
}

/// The label of a store refusal.
pub fn store_reason(e: &StoreError) -> RejectReason {
    match e {
        StoreError::TooManyChannels => RejectReason::TooManyChannels,
        StoreError::Unavailable(_) => RejectReason::StoreUnavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_status_code_and_label() {
        let cases = [
            (
                Rejection::Unauthorized,
                401,
                "unauthorized",
                Some("unauthorized"),
            ),
            (
                Rejection::TooLarge {
                    what: "the message",
                    limit: 10,
                },
                413,
                "payload_too_large",
                Some("too_large"),
            ),
            (
                Rejection::BadBody("reset".into()),
                400,
                "bad_request",
                Some("bad_request"),
            ),
            (
                Rejection::BadChannel(ChannelError::BadChar),
                400,
                "bad_channel",
                Some("bad_channel"),
            ),
            (
                Rejection::BadIdempotencyKey,
                400,
                "bad_idempotency_key",
                Some("bad_request"),
            ),
            (
                Rejection::NotNdjson,
                415,
                "unsupported_media_type",
                Some("bad_request"),
            ),
            (
                Rejection::TooManyLines(BatchError::TooManyLines(2)),
                413,
                "too_many_lines",
                Some("too_large"),
            ),
            (
                Rejection::Broadcast(BroadcastError::Invalid("x".into())),
                400,
                "bad_request",
                Some("bad_request"),
            ),
            (
                Rejection::Broadcast(BroadcastError::TooManyChannels(2)),
                413,
                "too_many_channels",
                Some("too_large"),
            ),
            (
                Rejection::Broadcast(BroadcastError::DataTooLarge(2)),
                413,
                "payload_too_large",
                Some("too_large"),
            ),
            (
                Rejection::Store(StoreError::TooManyChannels),
                503,
                "too_many_channels",
                Some("too_many_channels"),
            ),
            (
                Rejection::Store(StoreError::Unavailable("down".into())),
                503,
                "store_unavailable",
                Some("store_unavailable"),
            ),
            (
                Rejection::BodyTimeout { secs: 30 },
                408,
                "request_timeout",
                Some("timeout"),
            ),
            (Rejection::BadQuery, 400, "bad_query", None),
            (
                Rejection::Token(TokenError::WrongChannel),
                403,
                "token_wrong_channel",
                None,
            ),
            (Rejection::NoWorker, 503, "no_worker", None),
            (Rejection::NotFound, 404, "not_found", None),
            (Rejection::UpgradeRequired, 426, "upgrade_required", None),
            (Rejection::LinkKey, 401, "link_key", None),
            (
                Rejection::HeadTooLarge { limit: 8192 },
                431,
                "headers_too_large",
                None,
            ),
            (
                Rejection::TooManyHeaders { max: 100 },
                431,
                "headers_too_large",
                None,
            ),
            (
                Rejection::UriTooLong { limit: 8192 },
                414,
                "uri_too_long",
                None,
            ),
            (Rejection::Malformed("x".into()), 400, "bad_request", None),
        ];
        for (r, status, code, label) in cases {
            assert_eq!(r.status().as_u16(), status, "{r:?}");
            assert_eq!(r.code(), code, "{r:?}");
            assert_eq!(r.reason().map(RejectReason::as_str), label, "{r:?}");
            let resp = r.response();
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        }
    }

    #[test]
    fn the_body_is_the_contract_json_and_extra_headers_come_along() {
        use http_body_util::BodyExt;
        let r = Rejection::MethodNotAllowed {
            method: Method::PUT,
            allowed: "POST, OPTIONS",
        };
        let resp = r.response();
        assert_eq!(resp.headers()[header::ALLOW], "POST, OPTIONS");
        let body = futures_body(resp.into_body().collect());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "method_not_allowed");
        assert_eq!(
            v["message"],
            "PUT is not allowed here (allowed: POST, OPTIONS)"
        );
        let auth = Rejection::Unauthorized.response();
        assert_eq!(auth.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let up = Rejection::UpgradeRequired.response();
        assert_eq!(up.headers()[header::UPGRADE], protocol::link::LINK_UPGRADE);
    }

    #[test]
    fn a_raw_answer_is_a_whole_http_response_that_closes() {
        let raw = Rejection::UriTooLong { limit: 10 }.raw_response();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(head.contains("\r\nConnection: close"), "{head}");
        assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "uri_too_long");
        assert_eq!(v["message"], "the request target exceeds 10 bytes");
    }

    /// A `Full` body is ready at once: no runtime needed to collect it.
    fn futures_body(
        fut: impl std::future::Future<
            Output = Result<http_body_util::Collected<bytes::Bytes>, std::convert::Infallible>,
        >,
    ) -> bytes::Bytes {
        let mut fut = std::pin::pin!(fut);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Ok(c)) => c.to_bytes(),
            _ => panic!("a Full body is ready at once"),
        }
    }
}
