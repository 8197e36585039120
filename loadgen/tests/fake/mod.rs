//! A small in-test fake of pushgate's public contract (gateway and one worker in one hyper
//! server): assign, ws/poll/sse with `since` resume, publish (single and NDJSON), workers,
//! metrics, broadcast. `Mode::Lossy` / `Mode::Duplicating` break delivery on purpose. It also speaks
//! the part of Nchan loadgen's `--target nchan` uses: `POST /pub/<ch>` and `GET /sub/<ch>`
//! (WebSocket, or a long-poll keyed by `If-None-Match`), raw payloads from the oldest on.
//! [`Options`] break it the way hosts break: answers lost after the append, WebSockets
//! cut, a gap with a replay (a store whose history changed), a gateway whose store is down.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Body = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every message once, in order.
    Correct,
    /// Never delivers seqs with `seq % 5 == 3`.
    Lossy,
    /// Delivers seqs with `seq % 5 == 3` twice.
    Duplicating,
}

impl Mode {
    fn copies(self, seq: u64) -> usize {
        match (self, seq % 5 == 3) {
            (Mode::Lossy, true) => 0,
            (Mode::Duplicating, true) => 2,
            _ => 1,
        }
    }
}

#[derive(Default)]
pub struct Options {
    pub subscriber_secret: Option<String>,
    pub publisher_key: Option<String>,
    /// Every n-th single publish is appended but answered 503, as if the answer was lost.
    pub lose_answer_every: Option<u64>,
    /// `Idempotency-Key` is not honoured: a repeat is appended again (default: a repeat is
    /// answered with the first seq, as pushgate does).
    pub ignore_keys: bool,
    /// Each WebSocket is cut (no close frame) after sending this many frames.
    pub ws_cut_after: Option<usize>,
    /// The first time a WebSocket is about to send this seq on a channel, it sends a gap
    /// frame (`first_seq` 1, a new epoch) and everything from seq 1 again first.
    pub gap_at: Option<u64>,
    /// Every request is answered 503 (a gateway whose store is down).
    pub unavailable: bool,
    /// A broadcast naming more channels than this is refused (413), as the gateway's
    /// `--max-broadcast-channels` does.
    pub max_broadcast_channels: Option<usize>,
}

struct Chan {
    log: Mutex<Vec<(u64, String)>>,
    tx: watch::Sender<u64>,
}

struct State {
    mode: Mode,
    opts: Options,
    addr: SocketAddr,
    channels: Mutex<HashMap<String, Arc<Chan>>>,
    open: Mutex<i64>,
    /// Single publishes seen (for `lose_answer_every`).
    publishes: AtomicU64,
    /// (channel, idempotency key) -> seq.
    keys: Mutex<HashMap<(String, String), u64>>,
    /// Channels that had their `gap_at` gap.
    gapped: Mutex<HashSet<String>>,
    /// `POST /v1/broadcast` requests answered 200, with the channels each named.
    broadcasts: Mutex<Vec<usize>>,
}

pub struct Fake {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Fake {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Total messages accepted across channels.
    pub fn published(&self) -> u64 {
        self.state
            .channels
            .lock()
            .unwrap()
            .values()
            .map(|c| c.log.lock().unwrap().len() as u64)
            .sum()
    }

    /// The channels each accepted broadcast request named, in order.
    pub fn broadcasts(&self) -> Vec<usize> {
        self.state.broadcasts.lock().unwrap().clone()
    }
}

/// Starts the fake on 127.0.0.1:0.
pub async fn start(mode: Mode, opts: Options) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(State {
        mode,
        opts,
        addr,
        channels: Mutex::new(HashMap::new()),
        open: Mutex::new(0),
        publishes: AtomicU64::new(0),
        keys: Mutex::new(HashMap::new()),
        gapped: Mutex::new(HashSet::new()),
        broadcasts: Mutex::new(Vec::new()),
    });
    let s = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(s.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Fake { addr, state }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body.into()).boxed_unsync())
        .unwrap()
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl State {
    fn chan(&self, name: &str) -> Arc<Chan> {
        self.channels
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Chan {
                    log: Mutex::new(Vec::new()),
                    tx: watch::channel(0).0,
                })
            })
            .clone()
    }

    /// Appends `data` unless `key` was seen on the channel: the seq either way.
    fn publish_keyed(&self, channel: &str, data: String, key: Option<&str>) -> u64 {
        let Some(key) = key.filter(|_| !self.opts.ignore_keys) else {
            return self.publish(channel, data);
        };
        let k = (channel.to_string(), key.to_string());
        let mut keys = self.keys.lock().unwrap();
        if let Some(&seq) = keys.get(&k) {
            return seq;
        }
        let seq = self.publish(channel, data);
        keys.insert(k, seq);
        seq
    }

    fn publish(&self, channel: &str, data: String) -> u64 {
        let c = self.chan(channel);
        let mut log = c.log.lock().unwrap();
        let seq = log.len() as u64 + 1;
        log.push((seq, data));
        drop(log);
        c.tx.send_replace(seq);
        seq
    }

    /// Frames after `since`, as this mode delivers them: (seq, json).
    fn after(&self, c: &Chan, since: u64) -> Vec<(u64, String)> {
        self.render_after(c, since, false)
    }

    /// [`Self::after`]; `raw`: the payload itself, as Nchan sends it.
    fn render_after(&self, c: &Chan, since: u64, raw: bool) -> Vec<(u64, String)> {
        let log = c.log.lock().unwrap();
        let mut out = Vec::new();
        for (seq, data) in log.iter().filter(|(s, _)| *s > since) {
            for _ in 0..self.mode.copies(*seq) {
                let frame = if raw {
                    data.clone()
                } else {
                    format!(r#"{{"seq":{seq},"data":{data}}}"#)
                };
                out.push((*seq, frame));
            }
        }
        out
    }

    /// The channel a subscriber request is for, checking its token when auth is on.
    fn subscriber_channel(&self, q: &HashMap<String, String>) -> Result<String, StatusCode> {
        match &self.opts.subscriber_secret {
            Some(secret) => {
                let token = q.get("token").ok_or(StatusCode::UNAUTHORIZED)?;
                protocol::token::decode(secret.as_bytes(), token, now())
                    .map(|c| c.channel)
                    .map_err(|e| StatusCode::from_u16(e.status()).unwrap())
            }
            None => q.get("channel").cloned().ok_or(StatusCode::BAD_REQUEST),
        }
    }

    fn publisher_ok(&self, req: &Request<Incoming>) -> bool {
        match &self.opts.publisher_key {
            None => true,
            Some(k) => req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == format!("Bearer {k}")),
        }
    }
}

async fn handle(s: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let q = query(&req);
    if s.opts.unavailable {
        return Ok(full(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":"store_unavailable"}"#,
        ));
    }
    let r = match (req.method().as_str(), path.as_str()) {
        ("GET", "/v1/assign") => {
            let channel = match s.subscriber_channel(&q) {
                Ok(c) => c,
                Err(st) => return Ok(full(st, r#"{"error":"auth"}"#)),
            };
            let auth = match q.get("token") {
                Some(t) => format!("channel={channel}&token={t}"),
                None => format!("channel={channel}"),
            };
            let a = s.addr;
            full(
                StatusCode::OK,
                format!(
                    r#"{{"worker":"fake-1","ws_url":"ws://{a}/v1/ws?{auth}","poll_url":"http://{a}/v1/poll?{auth}","sse_url":"http://{a}/v1/sse?{auth}","expires_in":60}}"#
                ),
            )
        }
        ("POST", p) if p.starts_with("/pub/") => {
            let channel = p["/pub/".len()..].to_string();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            s.publish(&channel, String::from_utf8_lossy(&body).into_owned());
            full(StatusCode::CREATED, "queued messages: 1")
        }
        ("GET", p) if p.starts_with("/sub/") => {
            let channel = p["/sub/".len()..].to_string();
            if req.headers().contains_key("sec-websocket-key") {
                ws_stream(s, req, channel, 0, true)
            } else {
                nchan_poll(s, req, channel).await
            }
        }
        ("GET", "/v1/ws") => ws(s, req, q),
        ("GET", "/v1/poll") => poll(s, q).await,
        ("GET", "/v1/sse") => sse(s, req, q),
        ("POST", "/v1/publish") => {
            if !s.publisher_ok(&req) {
                return Ok(full(
                    StatusCode::UNAUTHORIZED,
                    r#"{"error":"unauthorized"}"#,
                ));
            }
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let mut accepted = 0;
            let mut rejected = Vec::new();
            for (i, line) in String::from_utf8_lossy(&body).lines().enumerate() {
                match serde_json::from_str::<serde_json::Value>(line) {
                    Ok(v) if v["channel"].is_string() => {
                        s.publish(v["channel"].as_str().unwrap(), v["data"].to_string());
                        accepted += 1;
                    }
                    _ => rejected.push(format!(r#"{{"line":{i},"error":"bad line"}}"#)),
                }
            }
            full(
                StatusCode::OK,
                format!(
                    r#"{{"accepted":{accepted},"rejected":[{}]}}"#,
                    rejected.join(",")
                ),
            )
        }
        ("POST", "/v1/broadcast") => {
            if !s.publisher_ok(&req) {
                return Ok(full(
                    StatusCode::UNAUTHORIZED,
                    r#"{"error":"unauthorized"}"#,
                ));
            }
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
                return Ok(full(StatusCode::BAD_REQUEST, r#"{"error":"bad_json"}"#));
            };
            let channels: Vec<&str> = v["channels"]
                .as_array()
                .map(|a| a.iter().filter_map(|c| c.as_str()).collect())
                .unwrap_or_default();
            if s.opts
                .max_broadcast_channels
                .is_some_and(|max| channels.len() > max)
            {
                return Ok(full(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    r#"{"error":"too_many_channels"}"#,
                ));
            }
            let data = v["data"].to_string();
            for c in &channels {
                s.publish_keyed(c, data.clone(), v["id"].as_str());
            }
            s.broadcasts.lock().unwrap().push(channels.len());
            full(
                StatusCode::OK,
                format!(r#"{{"accepted":{},"rejected":[]}}"#, channels.len()),
            )
        }
        ("POST", p) if p.starts_with("/v1/publish/") => {
            if !s.publisher_ok(&req) {
                return Ok(full(
                    StatusCode::UNAUTHORIZED,
                    r#"{"error":"unauthorized"}"#,
                ));
            }
            let channel = p["/v1/publish/".len()..].to_string();
            let key = req
                .headers()
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let data = match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(v) => v.to_string(),
                Err(_) => serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
                    .to_string(),
            };
            let seq = s.publish_keyed(&channel, data, key.as_deref());
            let n = s.publishes.fetch_add(1, Ordering::Relaxed) + 1;
            if s.opts
                .lose_answer_every
                .is_some_and(|every| n.is_multiple_of(every))
            {
                return Ok(full(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"error":"store_unavailable"}"#,
                ));
            }
            full(StatusCode::ACCEPTED, format!(r#"{{"seq":{seq}}}"#))
        }
        ("GET", "/v1/workers") => {
            let open = *s.open.lock().unwrap();
            full(
                StatusCode::OK,
                format!(
                    r#"{{"workers":[{{"id":"fake-1","addresses":["{}"],"connections":{open},"capacity":100000,"state":"healthy"}}]}}"#,
                    s.addr
                ),
            )
        }
        ("GET", "/metrics") => {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let kb: u64 = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            full(
                StatusCode::OK,
                format!(
                    "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n",
                    kb * 1024
                ),
            )
        }
        _ => full(StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#),
    };
    Ok(r)
}

fn ws(s: Arc<State>, req: Request<Incoming>, q: HashMap<String, String>) -> Response<Body> {
    let channel = match s.subscriber_channel(&q) {
        Ok(c) => c,
        Err(st) => return full(st, r#"{"error":"auth"}"#),
    };
    let since: u64 = q
        .get("since")
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    ws_stream(s, req, channel, since, false)
}

/// A WebSocket of `channel` from after `since` (`u64::MAX`: live only); `raw` as in
/// [`State::render_after`].
fn ws_stream(
    s: Arc<State>,
    mut req: Request<Incoming>,
    channel: String,
    since: u64,
    raw: bool,
) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return full(StatusCode::BAD_REQUEST, r#"{"error":"not a websocket"}"#);
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let c = s.chan(&channel);
        *s.open.lock().unwrap() += 1;
        let mut rx = c.tx.subscribe();
        // Without `since`, only live messages: start after the current last seq.
        let mut sent = if since == u64::MAX {
            *rx.borrow_and_update()
        } else {
            since
        };
        let mut frames = 0usize;
        'outer: loop {
            rx.borrow_and_update();
            let mut pending = s.render_after(&c, sent, raw).into_iter();
            while let Some((seq, frame)) = pending.next() {
                if s.opts.gap_at == Some(seq) && s.gapped.lock().unwrap().insert(channel.clone()) {
                    // The log's history changed: say so, then everything from seq 1 again.
                    let gap = r#"{"gap":true,"epoch":2,"first_seq":1}"#;
                    if ws.send(Message::text(gap)).await.is_err() {
                        break 'outer;
                    }
                    sent = 0;
                    pending = s.render_after(&c, sent, raw).into_iter();
                    continue;
                }
                if ws.send(Message::text(frame)).await.is_err() {
                    break 'outer;
                }
                sent = sent.max(seq);
                frames += 1;
                if s.opts.ws_cut_after.is_some_and(|n| frames >= n) {
                    // Gone without a close frame, as a killed worker's connections are.
                    break 'outer;
                }
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { break },
                m = ws.next() => match m {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    _ => {}
                },
            }
        }
        *s.open.lock().unwrap() -= 1;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(Full::new(Bytes::new()).boxed_unsync())
        .unwrap()
}

async fn poll(s: Arc<State>, q: HashMap<String, String>) -> Response<Body> {
    let channel = match s.subscriber_channel(&q) {
        Ok(c) => c,
        Err(st) => return full(st, r#"{"error":"auth"}"#),
    };
    let since: u64 = q.get("since").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout: u64 = q.get("timeout").and_then(|v| v.parse().ok()).unwrap_or(30);
    let c = s.chan(&channel);
    let mut rx = c.tx.subscribe();
    *s.open.lock().unwrap() += 1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    loop {
        let last = *rx.borrow_and_update();
        if last > since || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            _ = rx.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
    *s.open.lock().unwrap() -= 1;
    let frames = s.after(&c, since);
    let next = c.log.lock().unwrap().len() as u64;
    let next = next.max(since);
    let msgs: Vec<String> = frames.into_iter().map(|(_, f)| f).collect();
    full(
        StatusCode::OK,
        format!(r#"{{"messages":[{}],"next":{next}}}"#, msgs.join(",")),
    )
}

/// Nchan's long-poll: the first message after the one named by `If-None-Match` (its
/// index), held until there is one; answered with `Etag` = that message's index.
async fn nchan_poll(s: Arc<State>, req: Request<Incoming>, channel: String) -> Response<Body> {
    let since: u64 = req
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let c = s.chan(&channel);
    let mut rx = c.tx.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if *rx.borrow_and_update() > since {
            break;
        }
        tokio::select! {
            _ = rx.changed() => {}
            _ = tokio::time::sleep_until(deadline) => return full(StatusCode::NOT_MODIFIED, ""),
        }
    }
    let (seq, body) = s.render_after(&c, since, true).remove(0);
    Response::builder()
        .status(StatusCode::OK)
        .header("etag", seq.to_string())
        .header("last-modified", "Thu, 01 Jan 1970 00:00:00 GMT")
        .body(Full::new(Bytes::from(body)).boxed_unsync())
        .unwrap()
}

fn sse(s: Arc<State>, req: Request<Incoming>, q: HashMap<String, String>) -> Response<Body> {
    let channel = match s.subscriber_channel(&q) {
        Ok(c) => c,
        Err(st) => return full(st, r#"{"error":"auth"}"#),
    };
    let header: Option<u64> = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let since = header.or_else(|| q.get("since").and_then(|v| v.parse().ok()));
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let c = s.chan(&channel);
        *s.open.lock().unwrap() += 1;
        let mut w = c.tx.subscribe();
        let mut sent = since.unwrap_or_else(|| *w.borrow_and_update());
        let _ = tx.send(Bytes::from_static(b": hello\n\n")).await;
        'outer: loop {
            w.borrow_and_update();
            for (seq, frame) in s.after(&c, sent) {
                if tx
                    .send(Bytes::from(format!("id: {seq}\ndata: {frame}\n\n")))
                    .await
                    .is_err()
                {
                    break 'outer;
                }
                sent = sent.max(seq);
            }
            tokio::select! {
                r = w.changed() => if r.is_err() { break },
                _ = tx.closed() => break,
            }
        }
        *s.open.lock().unwrap() -= 1;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .body(StreamBody::new(stream).boxed_unsync())
        .unwrap()
}
