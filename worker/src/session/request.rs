//! Which request becomes what: the route of a request head, and a subscribe request's
//! query, token and resume position checked into a [`Subscribe`] or a [`Rejection`].

use crate::http1::{self, Request};
use crate::metrics::Transport;
use std::borrow::Cow;

/// Default long-poll hold, seconds.
pub const DEFAULT_POLL_TIMEOUT: u64 = 30;

/// A refused request: the status, error code and message of its JSON answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub code: &'static str,
    pub message: Cow<'static, str>,
}

impl Rejection {
    pub fn new(status: u16, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Rejection {
            status,
            code,
            message: message.into(),
        }
    }
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Metrics,
    /// A CORS preflight of a subscribe endpoint.
    Preflight,
    /// A subscribe request on this transport (its query is checked by [`subscribe`]).
    Subscribe(Transport),
}

/// Whether a path's answers carry CORS headers (the browser-facing subscribe endpoints).
pub fn has_cors(path: &str) -> bool {
    matches!(path, "/v1/poll" | "/v1/sse")
}

/// The route of a request head. `origin_allowed`: the request's `Origin` (if any) may
/// open a WebSocket here.
pub fn route(req: &Request<'_>, origin_allowed: bool) -> Result<Route, Rejection> {
    if req.body {
        // Every route is a GET (or HEAD, OPTIONS): a body would be read as the next
        // request (request smuggling behind a proxy that reuses connections).
        return Err(Rejection::new(
            400,
            "bad_request",
            "a request body is not accepted here",
        ));
    }
    match req.path {
        "/healthz" | "/metrics" => {
            if req.method != "GET" && req.method != "HEAD" {
                return Err(Rejection::new(405, "method_not_allowed", "use GET"));
            }
            Ok(if req.path == "/healthz" {
                Route::Health
            } else {
                Route::Metrics
            })
        }
        "/v1/ws" => {
            if req.method != "GET" {
                return Err(Rejection::new(405, "method_not_allowed", "use GET"));
            }
            if !req.upgrade_websocket || req.ws_key.is_none() {
                return Err(Rejection::new(
                    400,
                    "bad_request",
                    "a WebSocket upgrade is required",
                ));
            }
            if req.ws_version != Some(b"13") {
                return Err(Rejection::new(
                    400,
                    "bad_request",
                    "Sec-WebSocket-Version must be 13",
                ));
            }
            if req.origin.is_some() && !origin_allowed {
                return Err(Rejection::new(
                    403,
                    "origin_not_allowed",
                    "this origin is not allowed",
                ));
            }
            Ok(Route::Subscribe(Transport::Ws))
        }
        "/v1/poll" | "/v1/sse" => match req.method {
            "OPTIONS" => Ok(Route::Preflight),
            "GET" if req.path == "/v1/poll" => Ok(Route::Subscribe(Transport::Poll)),
            "GET" => Ok(Route::Subscribe(Transport::Sse)),
            _ => Err(Rejection::new(
                405,
                "method_not_allowed",
                "use GET or OPTIONS",
            )),
        },
        _ => Err(Rejection::new(404, "not_found", "no such route")),
    }
}

/// A subscribe request that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub channel: String,
    /// Resume after this seq (SSE: `Last-Event-ID` wins over `since`); `None`: live only.
    pub since: Option<u64>,
    pub epoch: Option<u64>,
    /// Long-poll hold in seconds, clamped to `--max-poll-timeout-secs`.
    pub hold_secs: u32,
}

/// What a subscribe request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct SubscribeRules<'a> {
    /// `--subscriber-secret`: tokens are required when set.
    pub secret: Option<&'a [u8]>,
    pub max_poll_timeout_secs: u32,
}

/// Whether a subscribe request is a browser's `EventSource` coming back by itself after its
/// stream was replaced (its `Last-Event-ID` is the replaced stream's last event id). It is
/// answered 204, which stops the `EventSource`, instead of taking the channel back from the
/// newer connection. Only the browser's own reconnect sends the header: a page that opens a
/// new `EventSource` (or any other client) subscribes as usual.
pub fn replaced_reconnect(transport: Transport, req: &Request<'_>) -> bool {
    transport == Transport::Sse && req.last_event_id == Some(crate::sse::REPLACED_ID)
}

/// Checks a subscribe request's query (channel, numbers), its resume position and its
/// token (against `unix_now`).
pub fn subscribe(
    transport: Transport,
    req: &Request<'_>,
    rules: SubscribeRules<'_>,
    unix_now: u64,
) -> Result<Subscribe, Rejection> {
    let q = http1::parse_subscribe_query(req.query)
        .map_err(|(code, msg)| Rejection::new(400, code, msg))?;
    let mut since = q.since;
    if transport == Transport::Sse {
        if let Some(id) = req.last_event_id.and_then(|v| v.parse::<u64>().ok()) {
            since = Some(id);
        }
    }
    if let Some(secret) = rules.secret {
        let token = q.token.as_deref().unwrap_or("");
        if let Err(e) = protocol::token::verify(secret, token, &q.channel, unix_now) {
            return Err(Rejection::new(e.status(), e.code(), e.to_string()));
        }
    }
    let hold_secs = q
        .timeout
        .unwrap_or(DEFAULT_POLL_TIMEOUT)
        .min(rules.max_poll_timeout_secs as u64) as u32;
    Ok(Subscribe {
        channel: q.channel,
        since,
        epoch: q.epoch,
        hold_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Request<'_> {
        http1::parse_request(raw.as_bytes(), 8192).unwrap().unwrap()
    }

    const WS: &str =
        "GET /v1/ws?channel=a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                      Origin: https://x.example\r\n\r\n";

    #[test]
    fn routes() {
        let r = |raw: &str| route(&head(raw), true).map_err(|e| (e.status, e.code));
        assert_eq!(r("GET /healthz HTTP/1.1\r\n\r\n"), Ok(Route::Health));
        assert_eq!(r("HEAD /metrics HTTP/1.1\r\n\r\n"), Ok(Route::Metrics));
        assert_eq!(
            r("POST /metrics HTTP/1.1\r\n\r\n"),
            Err((405, "method_not_allowed"))
        );
        assert_eq!(r(WS), Ok(Route::Subscribe(Transport::Ws)));
        assert_eq!(
            route(&head(WS), false).map_err(|e| (e.status, e.code)),
            Err((403, "origin_not_allowed"))
        );
        assert_eq!(
            r("GET /v1/ws?channel=a HTTP/1.1\r\n\r\n"),
            Err((400, "bad_request"))
        );
        let v8 = WS.replace("Version: 13", "Version: 8");
        assert_eq!(r(&v8), Err((400, "bad_request")));
        assert_eq!(r("OPTIONS /v1/sse HTTP/1.1\r\n\r\n"), Ok(Route::Preflight));
        assert_eq!(
            r("GET /v1/poll?channel=a HTTP/1.1\r\n\r\n"),
            Ok(Route::Subscribe(Transport::Poll))
        );
        assert_eq!(
            r("GET /v1/sse?channel=a HTTP/1.1\r\n\r\n"),
            Ok(Route::Subscribe(Transport::Sse))
        );
        assert_eq!(
            r("DELETE /v1/sse HTTP/1.1\r\n\r\n"),
            Err((405, "method_not_allowed"))
        );
        assert_eq!(r("GET /nope HTTP/1.1\r\n\r\n"), Err((404, "not_found")));
        for body in [
            "Content-Length: 5",
            "Transfer-Encoding: chunked",
            "Content-Length: +0",
            "Content-Length: 0\r\nContent-Length: 0",
        ] {
            let raw = format!("GET /healthz HTTP/1.1\r\n{body}\r\n\r\n");
            assert_eq!(r(&raw), Err((400, "bad_request")), "{body}");
        }
        assert_eq!(
            r("GET /healthz HTTP/1.1\r\nContent-Length: 00\r\n\r\n"),
            Ok(Route::Health)
        );
        assert!(has_cors("/v1/poll") && has_cors("/v1/sse") && !has_cors("/v1/ws"));
    }

    #[test]
    fn subscribe_requests() {
        let open = SubscribeRules {
            secret: None,
            max_poll_timeout_secs: 120,
        };
        let sse =
            head("GET /v1/sse?channel=c&since=2&epoch=5 HTTP/1.1\r\nLast-Event-ID: 9\r\n\r\n");
        assert_eq!(
            subscribe(Transport::Sse, &sse, open, 0),
            Ok(Subscribe {
                channel: "c".into(),
                since: Some(9),
                epoch: Some(5),
                hold_secs: 30,
            })
        );
        // Last-Event-ID is an SSE header only; an unparsable one is ignored.
        assert_eq!(
            subscribe(Transport::Ws, &sse, open, 0).unwrap().since,
            Some(2)
        );
        let junk = head("GET /v1/sse?channel=c HTTP/1.1\r\nLast-Event-ID: x\r\n\r\n");
        assert_eq!(
            subscribe(Transport::Sse, &junk, open, 0).unwrap().since,
            None
        );
        // The EventSource reconnect of a replaced stream is told to stop; a new one is not.
        let back = head("GET /v1/sse?channel=c HTTP/1.1\r\nLast-Event-ID: replaced\r\n\r\n");
        assert!(replaced_reconnect(Transport::Sse, &back));
        assert!(!replaced_reconnect(Transport::Ws, &back));
        assert!(!replaced_reconnect(Transport::Poll, &back));
        assert!(!replaced_reconnect(Transport::Sse, &sse));
        let fresh = head("GET /v1/sse?channel=c&since=3 HTTP/1.1\r\n\r\n");
        assert!(!replaced_reconnect(Transport::Sse, &fresh));
        let poll = head("GET /v1/poll?channel=c&timeout=600 HTTP/1.1\r\n\r\n");
        assert_eq!(
            subscribe(Transport::Poll, &poll, open, 0)
                .unwrap()
                .hold_secs,
            120
        );
        let bad = head("GET /v1/poll?channel=a%ZZ HTTP/1.1\r\n\r\n");
        let e = subscribe(Transport::Poll, &bad, open, 0).unwrap_err();
        assert_eq!((e.status, e.code), (400, "bad_query"));
    }

    #[test]
    fn tokens_are_checked_against_now() {
        let secret = b"s";
        let rules = SubscribeRules {
            secret: Some(secret),
            max_poll_timeout_secs: 120,
        };
        let token = protocol::token::sign(secret, "c", 1000);
        let raw = format!("GET /v1/poll?channel=c&token={token} HTTP/1.1\r\n\r\n");
        let req = head(&raw);
        assert!(subscribe(Transport::Poll, &req, rules, 999).is_ok());
        let e = subscribe(Transport::Poll, &req, rules, 1001).unwrap_err();
        assert_eq!((e.status, e.code), (401, "token_expired"));
        let none = head("GET /v1/poll?channel=c HTTP/1.1\r\n\r\n");
        let e = subscribe(Transport::Poll, &none, rules, 0).unwrap_err();
        assert_eq!((e.status, e.code), (401, "token_missing"));
    }
}
