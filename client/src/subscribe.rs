//! Subscribing: assign, one connection (WebSocket, SSE or long-poll), resume with `since`
//! and `epoch`, duplicates dropped, gaps told, reconnects with jittered back-off, and the
//! worker's close codes honoured (the rules of the README's "How clients should reconnect").

use crate::error::{Error, Refusal, Result};
use crate::net::{self, Body, Io, Target, Tls};
use crate::sse::SseParser;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::Method;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

/// How to hold the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// WebSocket, falling back to SSE and then long-poll when one does not open (the
    /// worker answers, but not as that transport: a proxy that refuses upgrades, say).
    /// Once one opens, reconnects stay on it.
    #[default]
    Auto,
    /// WebSocket (`ws_url`).
    Ws,
    /// Server-Sent Events (`sse_url`).
    Sse,
    /// Long-poll (`poll_url`).
    Poll,
}

impl Transport {
    fn order(self) -> Vec<Transport> {
        match self {
            Transport::Auto => vec![Transport::Ws, Transport::Sse, Transport::Poll],
            t => vec![t],
        }
    }
}

/// What to subscribe to, and how. Build with [`SubscribeOptions::new`] or
/// [`SubscribeOptions::with_token`]; every field is public.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// The gateway's base URL (`http://` or `https://`).
    pub gateway: String,
    /// The channel (open mode).
    pub channel: Option<String>,
    /// The subscriber token (with `--subscriber-secret`; it names the channel). A token
    /// refused with 401/403 stops the subscription.
    pub token: Option<String>,
    /// Resume after this seq: `Some(0)` (the default) is everything retained, then live;
    /// `None` is live only.
    pub since: Option<u64>,
    /// The epoch `since` belongs to, so a lost history is told as a gap.
    pub epoch: Option<u64>,
    /// The transport (default [`Transport::Auto`]).
    pub transport: Transport,
    /// More query parameters for `/v1/assign` (e.g. `("tls", "false")`).
    pub assign_params: Vec<(String, String)>,
    /// The first reconnect wait (200 ms), jittered by 0.5-1.5.
    pub base_delay: Duration,
    /// The longest reconnect wait before jitter (3.2 s).
    pub max_delay: Duration,
    /// A transport not open by then counts as failed (10 s); also the deadline of assign.
    pub open_timeout: Duration,
    /// How long a long-poll is held (30 s).
    pub poll_timeout: Duration,
    /// A WebSocket or SSE stream silent this long (the worker pings every 30 s) is reopened
    /// (75 s).
    pub heartbeat_timeout: Duration,
    /// The TLS configuration for `https://` and `wss://` (default: the system's roots).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl SubscribeOptions {
    /// Subscribes to `channel` on an open gateway (no subscriber secret).
    pub fn new(gateway: impl Into<String>, channel: impl Into<String>) -> SubscribeOptions {
        SubscribeOptions {
            channel: Some(channel.into()),
            ..SubscribeOptions::base(gateway.into())
        }
    }

    /// Subscribes with a token your backend signed (the token names the channel).
    pub fn with_token(gateway: impl Into<String>, token: impl Into<String>) -> SubscribeOptions {
        SubscribeOptions {
            token: Some(token.into()),
            ..SubscribeOptions::base(gateway.into())
        }
    }

    fn base(gateway: String) -> SubscribeOptions {
        SubscribeOptions {
            gateway,
            channel: None,
            token: None,
            since: Some(0),
            epoch: None,
            transport: Transport::Auto,
            assign_params: Vec::new(),
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_millis(3200),
            open_timeout: Duration::from_secs(10),
            poll_timeout: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(75),
            tls: None,
        }
    }

    /// Resume after `since` (`None`: live only).
    pub fn since(mut self, since: Option<u64>) -> SubscribeOptions {
        self.since = since;
        self
    }

    /// The epoch of `since`.
    pub fn epoch(mut self, epoch: Option<u64>) -> SubscribeOptions {
        self.epoch = epoch;
        self
    }

    /// The transport.
    pub fn transport(mut self, transport: Transport) -> SubscribeOptions {
        self.transport = transport;
        self
    }

    /// The TLS configuration (see [`tls_config_with_ca`](crate::tls_config_with_ca)).
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> SubscribeOptions {
        self.tls = Some(config);
        self
    }
}

/// One message, in seq order, each seq once.
#[derive(Debug, Clone)]
pub struct Message {
    /// Its seq on the channel.
    pub seq: u64,
    /// The published JSON value as sent (a JSON string when the payload was not JSON).
    pub data: Box<RawValue>,
    /// The channel's epoch, once known (from [`SubscribeOptions::epoch`] or a gap).
    pub epoch: Option<u64>,
}

impl Message {
    /// `data` decoded as `T` (`serde_json::Value` for anything).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(self.data.get())
    }
}

/// Messages were lost: those after `since` and before `first_seq` are not retained any
/// more, or the channel's history was lost (`epoch` is not `previous_epoch`). Reload the
/// state from your backend; the messages from `first_seq` on follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The channel's epoch now.
    pub epoch: u64,
    /// The first seq that follows.
    pub first_seq: u64,
    /// The last seq this subscriber had.
    pub since: Option<u64>,
    /// The epoch this subscriber had.
    pub previous_epoch: Option<u64>,
}

/// What a subscription yields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A message.
    Message(Message),
    /// A gap, before the messages that follow it.
    Gap(Gap),
    /// A connection opened (`transport` is never `Auto`).
    Open {
        /// The transport it uses.
        transport: Transport,
        /// The worker it is on.
        worker: String,
    },
    /// A connection ended or failed; the next attempt (assign again, resume) follows after
    /// `delay`.
    Reconnecting {
        /// Why (`closed`, `shutdown`, `refused`, `too_slow`, `assign_failed`, a server's
        /// error code, ...).
        reason: String,
        /// The wait before the next attempt.
        delay: Duration,
        /// Failures in a row (0 after a working connection dropped).
        attempt: u32,
    },
}

/// A subscription: yields [`Event`]s from [`Subscriber::next`] (or as a
/// [`Stream`](Subscriber::into_stream)) until it stops.
///
/// It stops, with an error, when a newer connection took the channel
/// ([`Error::Replaced`]), or on a refusal that cannot pass by waiting: 400 (a bad channel
/// name) and 401/403 (the token) as [`Error::Refused`]. Everything else (a worker that
/// died, a gateway that cannot be reached, 503, 429) is retried: assign again, resume.
///
/// Nothing is sent before the first `next()`, and nothing is read while `next()` is not
/// awaited (a WebSocket's unread messages wait in the socket; a long-poll is held only
/// while `next()` runs). A `next()` dropped before it returned loses nothing.
pub struct Subscriber {
    gateway: Target,
    opts: SubscribeOptions,
    tls: Tls,
    order: Vec<Transport>,
    idx: usize,
    last_seq: Option<u64>,
    epoch: Option<u64>,
    duplicates: u64,
    attempt: u32,
    conn: Option<Conn>,
    opened_at: Instant,
    retry_at: Option<Instant>,
    queue: VecDeque<Event>,
    stop: Option<Error>,
    stopped: bool,
    transport: Option<Transport>,
    worker: Option<String>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("gateway", &self.opts.gateway)
            .field("channel", &self.opts.channel)
            .field("last_seq", &self.last_seq)
            .field("epoch", &self.epoch)
            .field("transport", &self.transport)
            .field("worker", &self.worker)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    /// A subscription with `opts`. Errs only on options that can never work (a bad
    /// gateway URL, neither channel nor token); the first [`next`](Subscriber::next)
    /// connects.
    pub fn connect(opts: SubscribeOptions) -> Result<Subscriber> {
        let gateway = Target::parse(&opts.gateway)?;
        if opts.channel.is_none() && opts.token.is_none() {
            return Err(Error::Protocol("a channel or a token is required".into()));
        }
        Ok(Subscriber {
            gateway,
            tls: opts.tls.clone().map(Tls::custom).unwrap_or_default(),
            order: opts.transport.order(),
            idx: 0,
            last_seq: opts.since,
            epoch: opts.epoch,
            duplicates: 0,
            attempt: 0,
            conn: None,
            opened_at: Instant::now(),
            retry_at: None,
            queue: VecDeque::new(),
            stop: None,
            stopped: false,
            transport: None,
            worker: None,
            opts,
        })
    }

    /// The last seq received (where a resume starts).
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// The channel's epoch, once known.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// Messages dropped because their seq was not above the last one.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// The transport of the current (or last) connection.
    pub fn transport(&self) -> Option<Transport> {
        self.transport
    }

    /// The worker of the current (or last) connection.
    pub fn worker(&self) -> Option<&str> {
        self.worker.as_deref()
    }

    /// The next event; `Some(Err(_))` once when the subscription stops, then `None`.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Some(Ok(ev));
            }
            if let Some(e) = self.stop.take() {
                self.stopped = true;
                return Some(Err(e));
            }
            if self.stopped {
                return None;
            }
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at).await;
                self.retry_at = None;
            }
            let Some(conn) = self.conn.as_mut() else {
                match self.open().await {
                    Ok((conn, frames)) => {
                        self.conn = Some(conn);
                        self.opened_at = Instant::now();
                        self.queue.push_back(Event::Open {
                            transport: self.transport.unwrap_or_default(),
                            worker: self.worker.clone().unwrap_or_default(),
                        });
                        frames.into_iter().for_each(|f| self.accept(f));
                    }
                    Err(end) => self.ended(end, false),
                }
                continue;
            };
            match conn
                .read(&self.tls, &self.opts, self.last_seq, self.epoch)
                .await
            {
                Ok(frames) => frames.into_iter().for_each(|f| self.accept(f)),
                Err(end) => {
                    self.conn = None;
                    self.ended(end, true);
                }
            }
        }
    }

    /// Ends the subscription (a WebSocket is closed with 1000); `next()` then answers
    /// `None`.
    pub async fn close(&mut self) {
        self.stopped = true;
        self.queue.clear();
        self.stop = None;
        if let Some(Conn::Ws(mut ws)) = self.conn.take() {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
        }
    }

    /// This subscription as a [`Stream`] of the same items as [`next`](Subscriber::next).
    pub fn into_stream(self) -> impl Stream<Item = Result<Event>> + Send + 'static {
        futures_util::stream::unfold(self, |mut s| async move { s.next().await.map(|e| (e, s)) })
    }

    /// The frames of a connection, as the subscriber's position moves.
    fn accept(&mut self, f: Frame) {
        match f {
            Frame::Gap { epoch, first_seq } => {
                let gap = Gap {
                    epoch,
                    first_seq,
                    since: self.last_seq,
                    previous_epoch: self.epoch,
                };
                self.epoch = Some(epoch);
                self.last_seq = Some(first_seq.saturating_sub(1));
                self.queue.push_back(Event::Gap(gap));
            }
            Frame::Message { seq, data } => {
                if self.last_seq.is_some_and(|last| seq <= last) {
                    self.duplicates += 1;
                    return;
                }
                self.last_seq = Some(seq);
                self.queue.push_back(Event::Message(Message {
                    seq,
                    data,
                    epoch: self.epoch,
                }));
            }
            // A live-only long-poll learns the channel's position from `next`, so nothing
            // published between two polls is missed.
            Frame::Position(next) => {
                self.last_seq.get_or_insert(next);
            }
        }
    }

    /// The reconnect rules: stop, or wait and try again.
    fn ended(&mut self, end: Ending, opened: bool) {
        let wait = match end.action {
            Action::Stop(e) => {
                self.stop = Some(e);
                return;
            }
            Action::Wait(d) => Some(d),
            Action::Retry | Action::Backoff => None,
        };
        if end.transport_failed {
            self.idx = (self.idx + 1) % self.order.len();
        }
        let lived = opened && self.opened_at.elapsed() >= Duration::from_secs(1);
        if matches!(end.action, Action::Retry) && lived {
            self.attempt = 0;
        } else {
            self.attempt = self.attempt.saturating_add(1);
        }
        let (base, max) = (self.opts.base_delay, self.opts.max_delay);
        let mut delay = backoff(base, max, self.attempt, rand::random::<f64>());
        if let Some(w) = wait {
            delay = delay.max(w);
        }
        self.retry_at = Some(Instant::now() + delay);
        self.queue.push_back(Event::Reconnecting {
            reason: end.reason,
            delay,
            attempt: self.attempt,
        });
    }

    /// Assign, then open the current transport with `since` and `epoch`.
    async fn open(&mut self) -> Result<(Conn, Vec<Frame>), Ending> {
        let a = self.assign().await?;
        let kind = self.order[self.idx % self.order.len()];
        self.transport = Some(kind);
        self.worker = a.worker;
        let url = match kind {
            Transport::Ws | Transport::Auto => a.ws_url,
            Transport::Sse => a.sse_url,
            Transport::Poll => a.poll_url,
        }
        .ok_or_else(|| Ending::failed("no_url"))?;
        let resume = resume_url(&url, self.last_seq, self.epoch);
        let t = Target::parse(&resume).map_err(|_| Ending::failed("bad_url"))?;
        let timeout = self.opts.open_timeout;
        match kind {
            Transport::Ws | Transport::Auto => open_ws(&t, &resume, &self.tls, timeout).await,
            Transport::Sse => open_sse(&t, &self.tls, timeout).await,
            Transport::Poll => {
                let mut poll = PollConn {
                    url,
                    sender: None,
                    in_flight: false,
                    hold: Duration::ZERO,
                };
                match poll
                    .poll(&self.tls, timeout, self.last_seq, self.epoch)
                    .await
                {
                    Ok(frames) => Ok((Conn::Poll(poll), frames)),
                    Err(PollError::Refused(r)) => Err(http_ending(r)),
                    Err(PollError::Connect(e)) => Err(connect_ending(e)),
                    Err(PollError::Failed(why)) => Err(Ending::failed(why)),
                }
            }
        }
    }

    async fn assign(&self) -> Result<Assigned, Ending> {
        let mut url = String::from("/v1/assign");
        if let Some(c) = &self.opts.channel {
            url = net::with_param(&url, "channel", c);
        }
        if let Some(t) = &self.opts.token {
            url = net::with_param(&url, "token", t);
        }
        for (k, v) in &self.opts.assign_params {
            url = net::with_param(&url, k, v);
        }
        let t = self.gateway.join(&url);
        let exchange = async {
            let mut sender = net::http_connect(&t, &self.tls, self.opts.open_timeout).await?;
            let req = net::request(Method::GET, &t)
                .body(Body::default())
                .expect("a valid request");
            let resp = sender.send_request(req).await?;
            let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
            let body = net::read_body(resp, 64 << 10).await?;
            Ok::<_, Error>((status, headers, body))
        };
        let (status, headers, body) =
            match tokio::time::timeout(self.opts.open_timeout, exchange).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) | Err(_) => return Err(Ending::backoff("assign_failed")),
            };
        if status != 200 {
            return Err(http_ending(net::refusal(status, &headers, &body)));
        }
        serde_json::from_slice(&body).map_err(|_| Ending::backoff("assign_failed"))
    }
}

/// `url` with `since` and `epoch` (when known).
fn resume_url(url: &str, since: Option<u64>, epoch: Option<u64>) -> String {
    let mut url = url.to_owned();
    if let Some(s) = since {
        url = net::with_param(&url, "since", &s.to_string());
    }
    if let Some(e) = epoch {
        url = net::with_param(&url, "epoch", &e.to_string());
    }
    url
}

/// `/v1/assign`'s answer.
#[derive(Deserialize)]
struct Assigned {
    worker: Option<String>,
    ws_url: Option<String>,
    sse_url: Option<String>,
    poll_url: Option<String>,
}

/// What one connection yields.
#[derive(Debug)]
enum Frame {
    Message { seq: u64, data: Box<RawValue> },
    Gap { epoch: u64, first_seq: u64 },
    Position(u64),
}

/// A WebSocket frame or SSE event: a message, a gap, or (SSE) the worker's last word.
#[derive(Deserialize)]
struct Wire {
    seq: Option<u64>,
    data: Option<Box<RawValue>>,
    #[serde(default)]
    gap: bool,
    epoch: Option<u64>,
    first_seq: Option<u64>,
    closed: Option<String>,
}

enum Parsed {
    Frame(Frame),
    Closed(String),
}

fn parse_wire(text: &str) -> Option<Parsed> {
    let w: Wire = serde_json::from_str(text).ok()?;
    if let Some(c) = w.closed {
        return Some(Parsed::Closed(c));
    }
    if w.gap {
        return Some(Parsed::Frame(Frame::Gap {
            epoch: w.epoch?,
            first_seq: w.first_seq?,
        }));
    }
    Some(Parsed::Frame(Frame::Message {
        seq: w.seq?,
        data: w.data.unwrap_or_else(null),
    }))
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is JSON")
}

/// What ends a connection, as the reconnect rules see it.
#[derive(Debug)]
enum Action {
    /// An unexpected end after a working connection: again after the base delay.
    Retry,
    /// A failure, or the server asked to slow down: the delay doubles each time.
    Backoff,
    /// The server said how long (429 `Retry-After`): at least that.
    Wait(Duration),
    /// Do not reconnect.
    Stop(Error),
}

#[derive(Debug)]
struct Ending {
    action: Action,
    reason: String,
    /// The transport did not open: the next attempt uses the next one.
    transport_failed: bool,
}

impl Ending {
    fn new(action: Action, reason: impl Into<String>) -> Ending {
        Ending {
            action,
            reason: reason.into(),
            transport_failed: false,
        }
    }
    fn retry(reason: impl Into<String>) -> Ending {
        Ending::new(Action::Retry, reason)
    }
    fn backoff(reason: impl Into<String>) -> Ending {
        Ending::new(Action::Backoff, reason)
    }
    fn failed(reason: impl Into<String>) -> Ending {
        Ending {
            transport_failed: true,
            ..Ending::backoff(reason)
        }
    }
}

/// What a worker's WebSocket close code means (the JavaScript client's `closeAction`).
fn close_ending(code: u16) -> Ending {
    match code {
        4001 => Ending::new(Action::Stop(Error::Replaced), "replaced"),
        1013 => Ending::backoff("refused"),
        4003 => Ending::backoff("too_slow"),
        4002 => Ending::retry("resync"),
        1001 => Ending::retry("shutdown"),
        1002 | 1007 | 1009 => Ending::backoff("protocol_error"),
        _ => Ending::retry("closed"),
    }
}

/// What an error answer (assign, a WebSocket handshake, SSE, poll) means. The token is
/// fixed, so 401/403 cannot pass by waiting.
fn http_ending(r: Refusal) -> Ending {
    let reason = if r.code.is_empty() {
        format!("http_{}", r.status)
    } else {
        r.code.clone()
    };
    match r.status {
        409 => Ending::new(Action::Stop(Error::Replaced), "replaced"),
        _ if r.code == "replaced" => Ending::new(Action::Stop(Error::Replaced), "replaced"),
        429 => Ending::new(Action::Wait(r.retry_after.unwrap_or_default()), reason),
        400 | 401 | 403 => Ending::new(Action::Stop(Error::Refused(r)), reason),
        404 | 405 => Ending::failed(reason),
        _ => Ending::backoff(reason),
    }
}

/// A connection that could not be made: back off and assign again (the worker may be
/// dead); the transport itself did not fail.
fn connect_ending(e: Error) -> Ending {
    match e {
        Error::Connect { .. } | Error::Timeout("connect") => Ending::backoff("connect_failed"),
        Error::Tls(_) | Error::Timeout(_) => Ending::backoff("tls_failed"),
        _ => Ending::failed("handshake_failed"),
    }
}

/// The wait before attempt `attempt`: `base × 2^attempt`, at most `max`, × 0.5-1.5
/// (`jitter` in 0..1).
fn backoff(base: Duration, max: Duration, attempt: u32, jitter: f64) -> Duration {
    let d = base.saturating_mul(1 << attempt.min(20)).min(max);
    d.mul_f64(0.5 + jitter.clamp(0.0, 1.0))
}

/// One open connection.
enum Conn {
    Ws(Box<WebSocketStream<Box<dyn Io>>>),
    Sse {
        body: Incoming,
        _sender: SendRequest<Body>,
        parser: SseParser,
        closed: Option<String>,
    },
    Poll(PollConn),
}

impl Conn {
    /// Reads until there are frames, or the connection ends.
    async fn read(
        &mut self,
        tls: &Tls,
        opts: &SubscribeOptions,
        since: Option<u64>,
        epoch: Option<u64>,
    ) -> Result<Vec<Frame>, Ending> {
        let beat = opts.heartbeat_timeout;
        match self {
            Conn::Ws(ws) => loop {
                let msg = match tokio::time::timeout(beat, ws.next()).await {
                    Err(_) => return Err(Ending::retry("heartbeat_timeout")),
                    Ok(None | Some(Err(_))) => return Err(Ending::retry("closed")),
                    Ok(Some(Ok(m))) => m,
                };
                match msg {
                    WsMessage::Text(t) => {
                        if let Some(Parsed::Frame(f)) = parse_wire(t.as_str()) {
                            return Ok(vec![f]);
                        }
                    }
                    WsMessage::Close(frame) => {
                        return Err(close_ending(frame.map_or(1005, |f| u16::from(f.code))))
                    }
                    _ => {}
                }
            },
            Conn::Sse {
                body,
                parser,
                closed,
                ..
            } => {
                loop {
                    let chunk = match tokio::time::timeout(beat, body.frame()).await {
                        Err(_) => return Err(Ending::retry("heartbeat_timeout")),
                        Ok(None | Some(Err(_))) => break,
                        Ok(Some(Ok(f))) => f,
                    };
                    let Ok(data) = chunk.into_data() else {
                        continue;
                    };
                    let mut events = Vec::new();
                    if parser.feed(&data, &mut events).is_err() {
                        return Err(Ending::backoff("protocol_error"));
                    }
                    let mut frames = Vec::new();
                    for ev in events {
                        match parse_wire(&ev.data) {
                            Some(Parsed::Frame(f)) => frames.push(f),
                            Some(Parsed::Closed(c)) => *closed = Some(c),
                            None => {}
                        }
                    }
                    if !frames.is_empty() {
                        return Ok(frames);
                    }
                }
                // The stream ended; the worker's last word says why.
                Err(match closed.take().as_deref() {
                    Some("replaced") => Ending::new(Action::Stop(Error::Replaced), "replaced"),
                    Some("refused") => Ending::backoff("refused"),
                    Some(other) => Ending::retry(other),
                    None => Ending::retry("closed"),
                })
            }
            Conn::Poll(p) => {
                // The first poll (at open) answered at once; the ones after it are held.
                p.hold = opts.poll_timeout;
                p.poll(tls, opts.open_timeout, since, epoch)
                    .await
                    .map_err(|e| match e {
                        PollError::Refused(r) => http_ending(r),
                        PollError::Connect(_) | PollError::Failed(_) => {
                            Ending::retry("poll_failed")
                        }
                    })
            }
        }
    }
}

async fn open_ws(
    t: &Target,
    url: &str,
    tls: &Tls,
    timeout: Duration,
) -> Result<(Conn, Vec<Frame>), Ending> {
    let io = net::dial(t, tls, timeout).await.map_err(connect_ending)?;
    match tokio::time::timeout(timeout, tokio_tungstenite::client_async(url, io)).await {
        Err(_) => Err(Ending::failed("open_timeout")),
        Ok(Ok((ws, _))) => Ok((Conn::Ws(Box::new(ws)), Vec::new())),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let body = resp.body().as_deref().unwrap_or_default();
            Err(http_ending(net::refusal(
                resp.status().as_u16(),
                resp.headers(),
                body,
            )))
        }
        Ok(Err(_)) => Err(Ending::failed("ws_failed")),
    }
}

async fn open_sse(t: &Target, tls: &Tls, timeout: Duration) -> Result<(Conn, Vec<Frame>), Ending> {
    let mut sender = net::http_connect(t, tls, timeout)
        .await
        .map_err(connect_ending)?;
    let req = net::request(Method::GET, t)
        .header(hyper::header::ACCEPT, "text/event-stream")
        .header(hyper::header::CACHE_CONTROL, "no-cache")
        .body(Body::default())
        .expect("a valid request");
    let resp = match tokio::time::timeout(timeout, sender.send_request(req)).await {
        Err(_) => return Err(Ending::failed("open_timeout")),
        Ok(Err(_)) => return Err(Ending::failed("sse_failed")),
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    let event_stream = resp
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if status == 200 && event_stream {
        let conn = Conn::Sse {
            body: resp.into_body(),
            _sender: sender,
            parser: SseParser::default(),
            closed: None,
        };
        return Ok((conn, Vec::new()));
    }
    if status == 200 {
        return Err(Ending::failed("not_an_event_stream"));
    }
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(timeout, net::read_body(resp, 64 << 10))
        .await
        .ok()
        .and_then(|b| b.ok())
        .unwrap_or_default();
    Err(http_ending(net::refusal(status, &headers, &body)))
}

/// A long-poll subscription: one keep-alive connection to the worker, re-dialled when the
/// worker closed it between polls.
struct PollConn {
    url: String,
    sender: Option<SendRequest<Body>>,
    /// A poll was sent and its answer not read (a dropped `next()`): the connection cannot
    /// be reused.
    in_flight: bool,
    hold: Duration,
}

enum PollError {
    Refused(Refusal),
    Connect(Error),
    Failed(&'static str),
}

/// `{"messages":[...],"next":S2}` with the gap fields when a resume was not served whole.
#[derive(Deserialize)]
struct PollAnswer {
    messages: Vec<PollMessage>,
    next: Option<u64>,
    #[serde(default)]
    gap: bool,
    epoch: Option<u64>,
    first_seq: Option<u64>,
}

#[derive(Deserialize)]
struct PollMessage {
    seq: u64,
    data: Option<Box<RawValue>>,
}

impl PollConn {
    /// One poll: held up to `hold`, answered with what is retained after `since`.
    async fn poll(
        &mut self,
        tls: &Tls,
        open_timeout: Duration,
        since: Option<u64>,
        epoch: Option<u64>,
    ) -> Result<Vec<Frame>, PollError> {
        let url = net::with_param(
            &resume_url(&self.url, since, epoch),
            "timeout",
            &self.hold.as_secs().to_string(),
        );
        let t = Target::parse(&url).map_err(|_| PollError::Failed("bad_url"))?;
        if self.in_flight || self.sender.as_ref().is_some_and(|s| s.is_closed()) {
            self.sender = None;
        }
        let sender = match &mut self.sender {
            Some(s) => s,
            None => self.sender.insert(
                net::http_connect(&t, tls, open_timeout)
                    .await
                    .map_err(PollError::Connect)?,
            ),
        };
        let req = net::request(Method::GET, &t)
            .body(Body::new(Bytes::new()))
            .expect("a valid request");
        self.in_flight = true;
        let limit = self.hold + Duration::from_secs(15) + open_timeout;
        let exchange = async {
            let resp = sender.send_request(req).await?;
            let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
            let body = net::read_body(resp, 256 << 20).await?;
            Ok::<_, Error>((status, headers, body))
        };
        let (status, headers, body) = match tokio::time::timeout(limit, exchange).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => return Err(PollError::Failed("poll_failed")),
            Err(_) => return Err(PollError::Failed("poll_timeout")),
        };
        self.in_flight = false;
        if status != 200 {
            return Err(PollError::Refused(net::refusal(status, &headers, &body)));
        }
        let a: PollAnswer =
            serde_json::from_slice(&body).map_err(|_| PollError::Failed("not_a_poll_answer"))?;
        let mut frames = Vec::with_capacity(a.messages.len() + 2);
        if let (true, Some(epoch), Some(first_seq)) = (a.gap, a.epoch, a.first_seq) {
            frames.push(Frame::Gap { epoch, first_seq });
        }
        frames.extend(a.messages.into_iter().map(|m| Frame::Message {
            seq: m.seq,
            data: m.data.unwrap_or_else(null),
        }));
        if let Some(next) = a.next {
            frames.push(Frame::Position(next));
        }
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(status: u16, code: &str) -> Refusal {
        Refusal {
            status,
            code: code.into(),
            message: String::new(),
            retry_after: None,
        }
    }

    fn summary(e: &Ending) -> (&'static str, &str, bool) {
        let a = match e.action {
            Action::Retry => "retry",
            Action::Backoff => "backoff",
            Action::Wait(_) => "wait",
            Action::Stop(Error::Replaced) => "stop-replaced",
            Action::Stop(_) => "stop",
        };
        (a, e.reason.as_str(), e.transport_failed)
    }

    #[test]
    fn close_codes_as_the_javascript_client() {
        let cases = [
            (4001, "stop-replaced", "replaced"),
            (1013, "backoff", "refused"),
            (4003, "backoff", "too_slow"),
            (4002, "retry", "resync"),
            (1001, "retry", "shutdown"),
            (1009, "backoff", "protocol_error"),
            (1006, "retry", "closed"),
            (1011, "retry", "closed"),
            (1005, "retry", "closed"),
        ];
        for (code, action, reason) in cases {
            assert_eq!(
                summary(&close_ending(code)),
                (action, reason, false),
                "{code}"
            );
        }
    }

    #[test]
    fn http_answers() {
        assert_eq!(
            summary(&http_ending(refusal(409, "replaced"))).0,
            "stop-replaced"
        );
        assert_eq!(
            summary(&http_ending(refusal(401, "bad_token"))),
            ("stop", "bad_token", false)
        );
        assert_eq!(
            summary(&http_ending(refusal(403, ""))),
            ("stop", "http_403", false)
        );
        assert_eq!(summary(&http_ending(refusal(400, "bad_channel"))).0, "stop");
        assert_eq!(
            summary(&http_ending(refusal(503, "refused"))),
            ("backoff", "refused", false)
        );
        assert_eq!(
            summary(&http_ending(refusal(503, "no_worker"))),
            ("backoff", "no_worker", false)
        );
        assert_eq!(
            summary(&http_ending(refusal(404, ""))),
            ("backoff", "http_404", true)
        );
        let mut r = refusal(429, "too_many_connections");
        r.retry_after = Some(Duration::from_secs(2));
        assert!(matches!(http_ending(r).action, Action::Wait(d) if d == Duration::from_secs(2)));
    }

    #[test]
    fn waits_double_and_jitter() {
        let (b, m) = (Duration::from_millis(200), Duration::from_millis(3200));
        assert_eq!(backoff(b, m, 0, 0.5), Duration::from_millis(200));
        assert_eq!(backoff(b, m, 1, 0.5), Duration::from_millis(400));
        assert_eq!(backoff(b, m, 4, 0.5), Duration::from_millis(3200));
        assert_eq!(backoff(b, m, 40, 0.5), Duration::from_millis(3200));
        assert_eq!(backoff(b, m, 0, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(b, m, 0, 1.0), Duration::from_millis(300));
    }

    #[test]
    fn frames_parse() {
        match parse_wire(r#"{"seq":3,"data":{"a":[1,2]}}"#) {
            Some(Parsed::Frame(Frame::Message { seq: 3, data })) => {
                assert_eq!(data.get(), r#"{"a":[1,2]}"#)
            }
            _ => panic!("a message"),
        }
        match parse_wire(r#"{"seq":4,"data":null}"#) {
            Some(Parsed::Frame(Frame::Message { seq: 4, data })) => assert_eq!(data.get(), "null"),
            _ => panic!("a message"),
        }
        assert!(matches!(
            parse_wire(r#"{"gap":true,"epoch":7,"first_seq":9}"#),
            Some(Parsed::Frame(Frame::Gap {
                epoch: 7,
                first_seq: 9
            }))
        ));
        assert!(matches!(
            parse_wire(r#"{"closed":"replaced","message":"m"}"#),
            Some(Parsed::Closed(c)) if c == "replaced"
        ));
        assert!(parse_wire("not json").is_none());
        assert!(parse_wire(r#"{"data":1}"#).is_none());
    }

    #[test]
    fn position_duplicates_and_gaps() {
        let mut s =
            Subscriber::connect(SubscribeOptions::new("http://h", "c").since(None)).unwrap();
        s.accept(Frame::Position(5));
        assert_eq!(s.last_seq(), Some(5));
        s.accept(Frame::Message {
            seq: 5,
            data: null(),
        });
        assert_eq!(s.duplicates(), 1);
        s.accept(Frame::Message {
            seq: 6,
            data: null(),
        });
        s.accept(Frame::Gap {
            epoch: 2,
            first_seq: 10,
        });
        s.accept(Frame::Message {
            seq: 10,
            data: null(),
        });
        assert_eq!((s.last_seq(), s.epoch()), (Some(10), Some(2)));
        let evs: Vec<_> = s.queue.drain(..).collect();
        assert!(matches!(&evs[0], Event::Message(m) if m.seq == 6 && m.epoch.is_none()));
        assert!(matches!(
            &evs[1],
            Event::Gap(Gap {
                epoch: 2,
                first_seq: 10,
                since: Some(6),
                previous_epoch: None
            })
        ));
        assert!(matches!(&evs[2], Event::Message(m) if m.seq == 10 && m.epoch == Some(2)));
    }
}
