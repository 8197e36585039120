//! HTTP/1.1 request heads (httparse over a caller's buffer), query strings and the
//! responses the worker writes. No I/O.

/// Most header lines a request may carry.
pub const MAX_HEADERS: usize = 48;

/// The parts of a request head the worker looks at, borrowed from the read buffer.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    /// HTTP/1.1 without `Connection: close` (or 1.0 with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// `Upgrade: websocket` and `Connection: upgrade` both present.
    pub upgrade_websocket: bool,
    pub ws_key: Option<&'a [u8]>,
    pub ws_version: Option<&'a [u8]>,
    pub origin: Option<&'a str>,
    pub last_event_id: Option<&'a str>,
    /// `Authorization` (asked of `/metrics` when the worker has an `--admin-key`).
    pub authorization: Option<&'a str>,
    /// A body follows the head (`Content-Length` above 0, or a `Transfer-Encoding`), or its
    /// length cannot be told (a malformed or repeated `Content-Length`).
    pub body: bool,
    /// Bytes the head took (request line through the blank line).
    pub head_len: usize,
}

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request head too large")]
    TooLarge,
    #[error("malformed request")]
    Malformed,
}

/// Parses a request head from `buf`. `Ok(None)`: not complete yet (and still within
/// `max_head` bytes).
pub fn parse_request(buf: &[u8], max_head: usize) -> Result<Option<Request<'_>>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => {
            return Err(HeadError::Malformed);
        }
    };
    let head_len = match status {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => {
            return if buf.len() >= max_head {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
    };
    if head_len > max_head {
        return Err(HeadError::TooLarge);
    }
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let version = req.version.unwrap_or(1);
    let mut keep_alive = version >= 1;
    let mut upgrade_hdr = false;
    let mut conn_upgrade = false;
    let mut out = Request {
        method,
        path,
        query,
        keep_alive: false,
        upgrade_websocket: false,
        ws_key: None,
        ws_version: None,
        origin: None,
        last_event_id: None,
        authorization: None,
        body: false,
        head_len,
    };
    let mut seen_length = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            for tok in h.value.split(|&b| b == b',') {
                let tok = tok.trim_ascii();
                if tok.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if tok.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if tok.eq_ignore_ascii_case(b"upgrade") {
                    conn_upgrade = true;
                }
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_hdr = h.value.trim_ascii().eq_ignore_ascii_case(b"websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            out.ws_key = Some(h.value.trim_ascii());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            out.ws_version = Some(h.value.trim_ascii());
        } else if name.eq_ignore_ascii_case("origin") {
            out.origin = std::str::from_utf8(h.value.trim_ascii()).ok();
        } else if name.eq_ignore_ascii_case("authorization") {
            out.authorization = std::str::from_utf8(h.value.trim_ascii()).ok();
        } else if name.eq_ignore_ascii_case("last-event-id") {
            out.last_event_id = std::str::from_utf8(h.value.trim_ascii()).ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            out.body = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            let v = h.value.trim_ascii();
            let zero = !v.is_empty() && v.iter().all(|&b| b == b'0');
            // A body, or a length that cannot be trusted (malformed, repeated).
            out.body |= !zero || seen_length;
            seen_length = true;
        }
    }
    out.keep_alive = keep_alive;
    out.upgrade_websocket = upgrade_hdr && conn_upgrade;
    Ok(Some(out))
}

/// The query parameters of the subscribe endpoints.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SubscribeQuery {
    pub channel: String,
    pub token: Option<String>,
    pub since: Option<u64>,
    pub epoch: Option<u64>,
    pub timeout: Option<u64>,
}

/// A refused query: `(error code, message)` for a 400.
pub type QueryError = (&'static str, String);

/// Reads `channel`, `token`, `since`, `epoch`, `timeout` and checks them (the channel name
/// against the contract, numbers as unsigned decimals).
pub fn parse_subscribe_query(query: &str) -> Result<SubscribeQuery, QueryError> {
    let mut q = SubscribeQuery::default();
    let mut channel = None;
    for pair in protocol::query::query_pairs(query) {
        let (k, v) = pair.map_err(|e| ("bad_query", format!("the query string: {e}")))?;
        match &*k {
            "channel" => channel = Some(v.into_owned()),
            "token" => q.token = Some(v.into_owned()),
            "since" => q.since = Some(number("since", &v)?),
            "epoch" => q.epoch = Some(number("epoch", &v)?),
            "timeout" => q.timeout = Some(number("timeout", &v)?),
            _ => {}
        }
    }
    let channel = channel.ok_or((
        "bad_channel",
        "the channel parameter is required".to_string(),
    ))?;
    protocol::validate_channel(&channel).map_err(|e| ("bad_channel", e.to_string()))?;
    q.channel = channel;
    Ok(q)
}

fn number(name: &'static str, v: &str) -> Result<u64, QueryError> {
    let code = match name {
        "since" => "bad_since",
        "epoch" => "bad_epoch",
        _ => "bad_timeout",
    };
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err((code, format!("{name} must be a non-negative integer")));
    }
    v.parse()
        .map_err(|_| (code, format!("{name} is out of range")))
}

/// Reason phrase of the statuses the worker uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Appends a status line and the common headers; `content_length` `None` means the body
/// runs until the connection closes. Ends with the blank line.
pub fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    content_length: Option<usize>,
    allow_origin: Option<&str>,
    keep_alive: bool,
    extra: &[u8],
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    protocol::envelope::write_u64(out, status as u64);
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    if !content_type.is_empty() {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(content_type.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(n) = content_length {
        out.extend_from_slice(b"Content-Length: ");
        protocol::envelope::write_u64(out, n as u64);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(o) = allow_origin {
        out.extend_from_slice(b"Access-Control-Allow-Origin: ");
        out.extend_from_slice(o.as_bytes());
        out.extend_from_slice(b"\r\n");
        if o != "*" {
            out.extend_from_slice(b"Vary: Origin\r\n");
        }
    }
    out.extend_from_slice(if keep_alive {
        b"Connection: keep-alive\r\n".as_slice()
    } else {
        b"Connection: close\r\n".as_slice()
    });
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
}

/// Appends a complete JSON error response (`Connection: close`).
pub fn write_error(
    out: &mut Vec<u8>,
    status: u16,
    code: &str,
    message: &str,
    allow_origin: Option<&str>,
    extra: &[u8],
) {
    let body = protocol::envelope::error_body(code, message);
    write_head(
        out,
        status,
        "application/json",
        Some(body.len()),
        allow_origin,
        false,
        extra,
    );
    out.extend_from_slice(body.as_bytes());
}

/// Appends a complete JSON response.
pub fn write_json(
    out: &mut Vec<u8>,
    status: u16,
    body: &[u8],
    allow_origin: Option<&str>,
    keep_alive: bool,
) {
    write_head(
        out,
        status,
        "application/json",
        Some(body.len()),
        allow_origin,
        keep_alive,
        b"Cache-Control: no-store\r\n",
    );
    out.extend_from_slice(body);
}

/// Appends the 204 answer to a CORS preflight.
pub fn write_preflight(out: &mut Vec<u8>, allow_origin: Option<&str>) {
    write_head(
        out,
        204,
        "",
        None,
        allow_origin,
        false,
        b"Access-Control-Allow-Methods: GET, OPTIONS\r\n\
          Access-Control-Allow-Headers: Last-Event-ID, Cache-Control, Content-Type, Authorization\r\n\
          Access-Control-Max-Age: 600\r\n\
          Content-Length: 0\r\n",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_websocket_upgrade() {
        let raw = b"GET /v1/ws?channel=a&since=3 HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\n\
Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: abc==\r\nSec-WebSocket-Version: 13\r\n\
Origin: https://app.example\r\n\r\nleftover";
        let r = parse_request(raw, 8192).unwrap().unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/v1/ws");
        assert_eq!(r.query, "channel=a&since=3");
        assert!(r.upgrade_websocket);
        assert!(r.keep_alive);
        assert_eq!(r.ws_key, Some(&b"abc=="[..]));
        assert_eq!(r.ws_version, Some(&b"13"[..]));
        assert_eq!(r.origin, Some("https://app.example"));
        assert_eq!(r.head_len, raw.len() - "leftover".len());
    }

    #[test]
    fn partial_and_too_large() {
        let raw = b"GET /v1/poll HTTP/1.1\r\nHost: x\r\n";
        assert!(parse_request(raw, 8192).unwrap().is_none());
        assert_eq!(parse_request(raw, 10).unwrap_err(), HeadError::TooLarge);
        assert_eq!(
            parse_request(b"\x00\x01 nonsense\r\n\r\n", 8192).unwrap_err(),
            HeadError::Malformed
        );
        let close = b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
        assert!(!parse_request(close, 8192).unwrap().unwrap().keep_alive);
        let old = b"GET / HTTP/1.0\r\n\r\n";
        assert!(!parse_request(old, 8192).unwrap().unwrap().keep_alive);
    }

    #[test]
    fn query_decoding() {
        assert_eq!(
            parse_subscribe_query("channel=a&x=100%").unwrap_err().0,
            "bad_query"
        );
        let q =
            parse_subscribe_query("channel=user%3A42&token=t.k%2Bx&since=7&epoch=9&timeout=1&x=y")
                .unwrap();
        assert_eq!(
            q,
            SubscribeQuery {
                channel: "user:42".into(),
                token: Some("t.k+x".into()),
                since: Some(7),
                epoch: Some(9),
                timeout: Some(1),
            }
        );
    }

    #[test]
    fn query_refusals() {
        assert_eq!(
            parse_subscribe_query("since=1").unwrap_err().0,
            "bad_channel"
        );
        assert_eq!(
            parse_subscribe_query("channel=a%20b").unwrap_err().0,
            "bad_channel"
        );
        assert_eq!(
            parse_subscribe_query("channel=a&since=-1").unwrap_err().0,
            "bad_since"
        );
        assert_eq!(
            parse_subscribe_query("channel=a&since=").unwrap_err().0,
            "bad_since"
        );
        assert_eq!(
            parse_subscribe_query("channel=a&since=99999999999999999999999")
                .unwrap_err()
                .0,
            "bad_since"
        );
        assert_eq!(
            parse_subscribe_query("channel=a&timeout=x").unwrap_err().0,
            "bad_timeout"
        );
    }

    #[test]
    fn responses_render() {
        let mut out = Vec::new();
        write_error(&mut out, 404, "not_found", "no such route", None, b"");
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 404 Not Found\r\n"), "{s}");
        let body = r#"{"error":"not_found","message":"no such route"}"#;
        assert!(
            s.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{s}"
        );
        assert!(s.contains("Connection: close\r\n"), "{s}");
        assert!(
            s.ends_with(r#"{"error":"not_found","message":"no such route"}"#),
            "{s}"
        );
    }
}
