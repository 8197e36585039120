//! Server-Sent Events rendering: the response head, message events, the gap event, the
//! closing event and the heartbeat comment. No I/O.

/// Heartbeat: an SSE comment line, ignored by `EventSource`.
pub const HEARTBEAT: &[u8] = b":\n\n";

/// Appends the `200 text/event-stream` head; the body runs until the connection closes.
pub fn write_head(out: &mut Vec<u8>, allow_origin: Option<&str>) {
    crate::http1::write_head(
        out,
        200,
        "text/event-stream",
        None,
        allow_origin,
        false,
        b"Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n",
    );
}

/// Appends `id: N\ndata: {"seq":N,"data":...}\n\n`.
pub fn write_message(out: &mut Vec<u8>, seq: u64, data: &[u8]) {
    out.extend_from_slice(b"id: ");
    protocol::envelope::write_u64(out, seq);
    out.extend_from_slice(b"\ndata: ");
    protocol::envelope::write_message(out, seq, data);
    out.extend_from_slice(b"\n\n");
}

/// Appends the answer to the `EventSource` reconnect of a replaced stream: 204 No Content,
/// which the browser does not retry (with the CORS header, or the browser would take it for
/// a network error and retry).
pub fn write_stop(out: &mut Vec<u8>, allow_origin: Option<&str>) {
    crate::http1::write_head(
        out,
        204,
        "",
        None,
        allow_origin,
        false,
        b"Cache-Control: no-store\r\n",
    );
}

/// Appends `data: {"gap":true,...}\n\n` (no id: the gap is not a message).
pub fn write_gap(out: &mut Vec<u8>, epoch: u64, first_seq: u64) {
    out.extend_from_slice(b"data: ");
    protocol::envelope::write_gap(out, epoch, first_seq);
    out.extend_from_slice(b"\n\n");
}

/// The `id:` of the last event of a replaced stream. A browser's `EventSource` reconnects
/// by itself and sends it back as `Last-Event-ID`; that reconnect is answered 204, which
/// makes the `EventSource` stop, so two pages on one channel do not take it from each other
/// forever.
pub const REPLACED_ID: &str = "replaced";

/// Appends the last event of a stream the worker ends:
/// `[id: <id>\n]data: {"closed":"<code>","message":"<text>"}\n\n`.
pub fn write_closed(out: &mut Vec<u8>, id: Option<&str>, code: &str, message: &str) {
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    let v = serde_json::json!({ "closed": code, "message": message });
    out.extend_from_slice(v.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_render() {
        let mut out = Vec::new();
        write_gap(&mut out, 2, 5);
        write_message(&mut out, 5, br#"{"a":1}"#);
        assert_eq!(
            out,
            b"data: {\"gap\":true,\"epoch\":2,\"first_seq\":5}\n\nid: 5\ndata: {\"seq\":5,\"data\":{\"a\":1}}\n\n"
        );
        out.clear();
        write_closed(
            &mut out,
            Some(REPLACED_ID),
            "replaced",
            "replaced by a newer connection on this channel",
        );
        assert_eq!(
            out,
            b"id: replaced\ndata: {\"closed\":\"replaced\",\"message\":\"replaced by a newer connection on this channel\"}\n\n"
        );
        out.clear();
        write_closed(&mut out, None, "refused", "try again later");
        assert_eq!(
            out,
            b"data: {\"closed\":\"refused\",\"message\":\"try again later\"}\n\n"
        );
        out.clear();
        write_stop(&mut out, Some("https://a.example"));
        assert_eq!(
            out,
            b"HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Origin: https://a.example\r\nVary: Origin\r\n\
              Connection: close\r\nCache-Control: no-store\r\n\r\n"
        );
        out.clear();
        write_head(&mut out, Some("*"));
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"));
        assert!(s.contains("Cache-Control: no-cache\r\n"));
        assert!(s.contains("X-Accel-Buffering: no\r\n"));
        assert!(s.contains("Access-Control-Allow-Origin: *\r\n"));
        assert!(!s.contains("Content-Length"));
        assert!(s.ends_with("\r\n\r\n"));
    }
}
