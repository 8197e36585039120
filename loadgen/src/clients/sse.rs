//! Server-Sent Events client: one GET held open, an incremental `text/event-stream` parser,
//! resume with `Last-Event-ID` (as a browser's EventSource does) or `since` on first open.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::Method;

use super::{ClientCtx, SessionEnd, Slot};
use crate::checker::SeqChecker;
use crate::net::{http_connect, request, with_param, ReqBody, Target};

/// An open event stream.
pub struct SseConn {
    body: Incoming,
    _sender: SendRequest<ReqBody>,
    parser: EventParser,
}

/// Opens the stream. A first open uses `since` in the URL; a resume sends `Last-Event-ID`
/// (and `epoch` once a gap told it).
pub async fn connect(
    ctx: &ClientCtx,
    url: &str,
    since: Option<u64>,
    epoch: Option<u64>,
) -> Result<SseConn, String> {
    let first = since == ctx.initial_since;
    let mut url = match since {
        Some(s) if first => with_param(url, "since", s),
        _ => url.to_string(),
    };
    if let Some(e) = epoch {
        url = with_param(&url, "epoch", e);
    }
    let target = Target::parse(&url).map_err(|_| "sse_bad_url".to_string())?;
    let mut sender = http_connect(&ctx.src, &target)
        .await
        .map_err(|e| crate::net::connect_error_kind("sse", &e))?;
    let mut req = request(Method::GET, &target, &target.path, None, Bytes::new());
    req.headers_mut().insert(
        hyper::header::ACCEPT,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    if let (Some(s), false) = (since, first) {
        req.headers_mut().insert("last-event-id", s.into());
    }
    let resp = sender
        .send_request(req)
        .await
        .map_err(|_| "sse_error".to_string())?;
    if resp.status() != 200 {
        return Err(format!("sse_http_{}", resp.status().as_u16()));
    }
    Ok(SseConn {
        body: resp.into_body(),
        _sender: sender,
        parser: EventParser::default(),
    })
}

/// Reads events until stopped, churned or the stream ends.
pub async fn session(
    ctx: &ClientCtx,
    mut c: SseConn,
    checker: &mut SeqChecker,
    slot: &Slot,
) -> SessionEnd {
    loop {
        tokio::select! {
            _ = ctx.stop.cancelled() => return SessionEnd::Stopped,
            _ = slot.churn.notified() => return SessionEnd::Churned,
            f = c.body.frame() => match f {
                None => return SessionEnd::Error("sse_eof".into()),
                Some(Err(_)) => return SessionEnd::Error("sse_error".into()),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        for ev in c.parser.push(data) {
                            if let Some(end) = ctx.on_text(checker, slot, ev.data.as_bytes()) {
                                return SessionEnd::Error(end);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// Incremental `text/event-stream` parser (LF, CRLF or CR line ends; comments ignored).
#[derive(Debug, Default)]
pub struct EventParser {
    line: Vec<u8>,
    /// The previous chunk ended in CR: a following LF belongs to it.
    after_cr: bool,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl EventParser {
    /// Feeds bytes; returns the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line, &mut out);
                    self.line = line;
                    self.line.clear();
                }
                _ => self.line.push(b),
            }
        }
        out
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Event>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                out.push(Event {
                    id: self.id.clone(),
                    event: self.event.take(),
                    data,
                });
            }
            self.event = None;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(&value);
                }
                None => self.data = Some(value.into_owned()),
            },
            b"id" => self.id = Some(value.into_owned()),
            b"event" => self.event = Some(value.into_owned()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_anywhere() {
        let stream = b": hello\r\n\r\nid: 1\r\ndata: {\"seq\":1}\r\n\r\nid: 2\ndata: a\ndata: b\n\nevent: x\ndata:c\r\r";
        // Every split point gives the same events.
        for cut in 0..stream.len() {
            let mut p = EventParser::default();
            let mut evs = p.push(&stream[..cut]);
            evs.extend(p.push(&stream[cut..]));
            assert_eq!(evs.len(), 3, "cut {cut}: {evs:?}");
            assert_eq!(evs[0].data, "{\"seq\":1}");
            assert_eq!(evs[0].id.as_deref(), Some("1"));
            assert_eq!(evs[1].data, "a\nb");
            assert_eq!(evs[2].data, "c");
            assert_eq!(evs[2].event.as_deref(), Some("x"));
            assert_eq!(evs[2].id.as_deref(), Some("2"));
        }
    }
}
