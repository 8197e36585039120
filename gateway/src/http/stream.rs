//! `POST /v1/publish?stream=1`: a long-lived publish stream. The request body is NDJSON
//! lines as in a batch (`{"channel":…,"data":…,"id":…}`), sent whenever the publisher has
//! them; the answer is NDJSON too, one line per line published, in line order and as soon
//! as it is published: `{"line":N,"seq":S}` or `{"line":N,"error":E}`. The last answer line
//! sums it up: `{"accepted":A,"rejected":R}`, with `error` and `message` when the stream
//! was ended by the gateway (idle past `--publish-stream-idle-secs`, a broken body,
//! shutdown). A line that was not answered was not published.
//!
//! What arrives in one read is published together, as an NDJSON batch is: a publisher
//! that sends many single messages gets a batch's costs without batching itself, and
//! without a request (head, answer, wake-up) per message.
//!
//! Bounds: the partial line held between reads is at most `--max-message-bytes` plus
//! [`LINE_OVERHEAD`] (a longer line is skipped to its end and answered `payload_too_large`),
//! and each stream holds that much of `--max-inflight-body-bytes` for its whole life, so
//! the body budget also bounds how many streams are open.

use super::auth::check_publisher;
use super::publish::{is_ndjson, publish_lines, rate_limit_parts, tally, who};
use super::rejection::Rejection;
use crate::app::App;
use crate::link::handle::coalesced;
use crate::metrics::{self, RejectReason};
use crate::ndjson;
use crate::store::now_ms;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Either};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

/// Bytes a line may have besides its `data` (channel name, key, JSON around them).
pub const LINE_OVERHEAD: usize = 4096;
/// Lines of one read handed to the store at a time.
const LINES_AT_ONCE: usize = 4096;

/// The body of a publish stream's answer.
pub type StreamBody =
    http_body_util::StreamBody<BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

/// What the server sends: a whole answer, or a publish stream's answer as it comes.
pub type Body = Either<http_body_util::Full<Bytes>, StreamBody>;

/// Whether `POST /v1/publish` asks for a stream (`stream=1` or `stream=true`).
pub fn wants_stream(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|p| p == "stream=1" || p == "stream=true"))
}

/// Opens a publish stream, or refuses it as a batch would be refused (a JSON answer).
pub fn publish_stream(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    match open(app, req) {
        Ok(r) => r.map(Either::Right),
        Err(r) => r.counted().map(Either::Left),
    }
}

fn open(app: Arc<App>, req: Request<Incoming>) -> Result<Response<StreamBody>, Rejection> {
    check_publisher(&app, req.headers())?;
    let (peer, key) = who(&app, &req);
    rate_limit_parts(&app, peer, key.as_deref(), 0)?;
    if !is_ndjson(req.headers()) {
        return Err(Rejection::NotNdjson);
    }
    let line_limit = app.config.max_message_bytes + LINE_OVERHEAD;
    let units = line_limit.div_ceil(1024) as u32;
    app.body_budget
        .try_acquire_many(units)
        .map_err(|_| Rejection::Busy)?
        .forget();
    metrics::PUBLISH_STREAMS_OPEN.inc();
    let state = Stream {
        _budget: Budget {
            app: app.clone(),
            units,
        },
        app,
        body: req.into_body(),
        peer,
        key,
        line_limit,
        pending: Vec::new(),
        skipping: false,
        line: 0,
        accepted: 0,
        rejected: 0,
        finished: false,
    };
    let chunks = futures_util::stream::unfold(state, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok(Frame::data(chunk)), s))
    });
    let mut r = Response::new(http_body_util::StreamBody::new(chunks.boxed()));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies that buffer answers (nginx) pass this one on as it comes.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(r)
}

/// The stream's share of the body budget, given back when the stream ends.
struct Budget {
    app: Arc<App>,
    units: u32,
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.app.body_budget.add_permits(self.units as usize);
        metrics::PUBLISH_STREAMS_OPEN.dec();
    }
}

struct Stream {
    app: Arc<App>,
    /// Held for the stream's life.
    _budget: Budget,
    body: Incoming,
    peer: Option<std::net::IpAddr>,
    key: Option<String>,
    line_limit: usize,
    /// The start of a line whose end has not come yet.
    pending: Vec<u8>,
    /// A line over `line_limit` is being skipped to its end.
    skipping: bool,
    /// Lines ended so far (blank ones too: numbers are those of the body's lines).
    line: usize,
    accepted: u64,
    rejected: u64,
    finished: bool,
}

impl Stream {
    /// The next bytes of the answer: the answers to what the next read(s) held, or the
    /// closing line; `None` once that was sent.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        let idle = self.app.config.publish_stream_idle();
        let mut out = Vec::new();
        while out.is_empty() {
            let frame = tokio::select! {
                biased;
                _ = self.app.shutdown.cancelled() => {
                    self.close(&mut out, Some(("shutting_down", "the gateway is stopping; lines not answered were not published".into())));
                    break;
                }
                f = tokio::time::timeout(idle, self.body.frame()) => f,
            };
            match frame {
                Err(_) => {
                    RejectReason::Timeout.count(1);
                    let why = format!("no byte for {} s", idle.as_secs());
                    self.close(&mut out, Some(("request_timeout", why)));
                }
                Ok(None) => {
                    // A last line without its newline counts.
                    let rest = std::mem::take(&mut self.pending);
                    if self.skipping {
                        self.line += 1;
                        self.too_large(self.line, &mut out);
                    } else if !rest.trim_ascii().is_empty() {
                        self.publish(&rest, 1, &mut out).await;
                    }
                    self.close(&mut out, None);
                }
                Ok(Some(Err(e))) => {
                    RejectReason::BadRequest.count(1);
                    let why = format!("could not read the body: {e}");
                    self.close(&mut out, Some(("bad_request", why)));
                }
                Ok(Some(Ok(f))) => {
                    if let Ok(data) = f.into_data() {
                        self.take(&data, &mut out).await;
                    }
                }
            }
        }
        Some(Bytes::from(out))
    }

    /// Takes the bytes of one read: publishes the lines they end.
    async fn take(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        if self.skipping {
            let Some(end) = data.iter().position(|&b| b == b'\n') else {
                return;
            };
            self.skipping = false;
            self.line += 1;
            self.too_large(self.line, out);
            data = &data[end + 1..];
        }
        let Some(last) = data.iter().rposition(|&b| b == b'\n') else {
            self.hold(data);
            return;
        };
        let lines = data[..=last].iter().filter(|&&b| b == b'\n').count();
        if self.pending.is_empty() {
            self.publish(&data[..=last], lines, out).await;
        } else {
            let mut whole = std::mem::take(&mut self.pending);
            whole.extend_from_slice(&data[..=last]);
            self.publish(&whole, lines, out).await;
        }
        self.hold(&data[last + 1..]);
    }

    /// Keeps the start of a line, or starts skipping it once it is over the limit.
    fn hold(&mut self, part: &[u8]) {
        if self.pending.len() + part.len() > self.line_limit {
            self.pending = Vec::new();
            self.skipping = true;
        } else {
            self.pending.extend_from_slice(part);
        }
    }

    /// Publishes `text`, which holds `lines` whole lines, and answers each non-blank one.
    async fn publish(&mut self, text: &[u8], lines: usize, out: &mut Vec<u8>) {
        let base = self.line;
        self.line += lines;
        let max_data = self.app.config.max_message_bytes;
        let (good, bad) =
            ndjson::parse_batch(text, usize::MAX, max_data).expect("no line limit to pass");
        RejectReason::BadRequest.count(bad.len() as u64);
        let mut answers: Vec<(usize, Result<u64, String>)> =
            bad.into_iter().map(|r| (r.line, Err(r.error))).collect();
        for chunk in good.chunks(LINES_AT_ONCE) {
            let n = chunk.len() as u64;
            if rate_limit_parts(&self.app, self.peer, self.key.as_deref(), n).is_err() {
                RejectReason::RateLimited.count(n);
                answers.extend(chunk.iter().map(|l| (l.line, Err("rate_limited".into()))));
                continue;
            }
            let results = coalesced(publish_lines(&self.app, chunk, now_ms())).await;
            tally(&results, |_, _| {});
            for (l, r) in chunk.iter().zip(results) {
                answers.push((l.line, r.map(|p| p.seq).map_err(|e| e.code().to_owned())));
            }
        }
        answers.sort_by_key(|a| a.0);
        for (line, answer) in answers {
            let line = base + line;
            match answer {
                Ok(seq) => {
                    self.accepted += 1;
                    let _ = writeln!(out_str(out), "{{\"line\":{line},\"seq\":{seq}}}");
                }
                Err(e) => {
                    self.rejected += 1;
                    let e = serde_json::Value::from(e);
                    let _ = writeln!(out_str(out), "{{\"line\":{line},\"error\":{e}}}");
                }
            }
        }
    }

    fn too_large(&mut self, line: usize, out: &mut Vec<u8>) {
        RejectReason::TooLarge.count(1);
        self.rejected += 1;
        let e = serde_json::Value::from(format!("the line exceeds {} bytes", self.line_limit));
        let _ = writeln!(out_str(out), "{{\"line\":{line},\"error\":{e}}}");
    }

    /// The closing line; with `why` (code, message) when the gateway ends the stream.
    fn close(&mut self, out: &mut Vec<u8>, why: Option<(&str, String)>) {
        self.finished = true;
        let mut end = serde_json::json!({"accepted": self.accepted, "rejected": self.rejected});
        if let Some((code, message)) = why {
            end["error"] = code.into();
            end["message"] = message.into();
        }
        out.extend_from_slice(end.to_string().as_bytes());
        out.push(b'\n');
    }
}

/// `out` as a `fmt::Write` target (it only ever holds UTF-8).
fn out_str(out: &mut Vec<u8>) -> impl std::fmt::Write + '_ {
    struct W<'a>(&'a mut Vec<u8>);
    impl std::fmt::Write for W<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.extend_from_slice(s.as_bytes());
            Ok(())
        }
    }
    W(out)
}
