//! The public HTTP API of the gateway (hyper 1.x, HTTP/1.1): assign, publish (single and
//! NDJSON batch), channel and worker views, dashboard, metrics, health, and the worker link
//! upgrade. Every error is JSON `{"error":code,"message":text}`; CORS on assign (and on
//! publish only when configured).

use crate::broadcast;
use crate::config::Config;
use crate::link;
use crate::metrics;
use crate::ndjson;
use crate::net;
use crate::registry::Registry;
use crate::store::{AnyStore, Published, Store, StoreError};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use protocol::query::{percent_decode, percent_encode_into, query_pairs};
use serde_json::json;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// Response type of every handler.
pub type Resp = Response<Full<Bytes>>;

/// How long a client may take to send request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Channels of one broadcast handed to the store at a time.
const BROADCAST_CHUNK: usize = 4096;
/// How long open connections get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

static DASHBOARD: &str = include_str!("dashboard.html");

/// Shared state of the gateway: configuration, store, registry, shutdown wiring.
pub struct App {
    pub config: Config,
    pub store: AnyStore,
    pub registry: Registry,
    /// Sent to workers in `Welcome`.
    pub gateway_id: String,
    pub shutdown: CancellationToken,
    /// Connection and link tasks, awaited (with a deadline) at shutdown.
    pub tracker: TaskTracker,
    subscribe_cors: Cors,
    publish_cors: Option<Cors>,
}

impl App {
    pub fn new(
        config: Config,
        store: AnyStore,
        gateway_id: String,
        shutdown: CancellationToken,
    ) -> Self {
        let registry = Registry::new(config.worker_timeout());
        let subscribe_cors = Cors::new(&config.allow_origins, "GET, OPTIONS");
        let publish_cors = (!config.publish_allow_origins.is_empty())
            .then(|| Cors::new(&config.publish_allow_origins, "POST, OPTIONS"));
        App {
            config,
            store,
            registry,
            gateway_id,
            shutdown,
            tracker: TaskTracker::new(),
            subscribe_cors,
            publish_cors,
        }
    }
}

/// Allowed origins of one group of endpoints.
struct Cors {
    any: bool,
    origins: Vec<String>,
    methods: &'static str,
}

impl Cors {
    fn new(origins: &[String], methods: &'static str) -> Self {
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

    fn apply(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        if !self.any {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if let Some(v) = self.allow(origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
    }

    fn preflight(&self, origin: Option<&HeaderValue>, req_headers: Option<&HeaderValue>) -> Resp {
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

/// Accepts connections until `app.shutdown`, one task per connection (tracked).
pub async fn serve(listener: TcpListener, app: Arc<App>) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = app.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _peer)) => {
                net::tune_accepted(&stream);
                app.tracker.spawn(serve_connection(app.clone(), stream));
            }
            Err(e) if net::is_fd_exhaustion(&e) => {
                warn!(error = %e, "accept failed: out of file descriptors; backing off");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => debug!(error = %e, "accept failed"),
        }
    }
}

/// Serves one HTTP/1.1 connection (upgrades included) until it ends or shutdown drains it.
async fn serve_connection(app: Arc<App>, stream: TcpStream) {
    let shutdown = app.shutdown.clone();
    let svc = hyper::service::service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(handle(app, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!(error = %e, "http connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, conn).await;
        }
    }
}

/// A channel name from a path segment; one that does not decode is empty (refused as a bad
/// channel name by the handler).
fn decode_segment(s: &str) -> String {
    percent_decode(s, false)
        .map(|c| c.into_owned())
        .unwrap_or_default()
}

enum Route {
    Dashboard,
    Healthz,
    Metrics,
    Assign,
    PublishBatch,
    Broadcast,
    Publish(String),
    Channel(String),
    Workers,
    Link,
    NotFound,
}

impl Route {
    fn parse(path: &str) -> Route {
        match path {
            "/" | "/index.html" => Route::Dashboard,
            "/healthz" => Route::Healthz,
            "/metrics" => Route::Metrics,
            "/v1/assign" => Route::Assign,
            "/v1/publish" => Route::PublishBatch,
            "/v1/broadcast" => Route::Broadcast,
            "/v1/workers" => Route::Workers,
            protocol::link::LINK_PATH => Route::Link,
            _ => {
                if let Some(c) = path.strip_prefix("/v1/publish/") {
                    Route::Publish(decode_segment(c))
                } else if let Some(c) = path.strip_prefix("/v1/channels/") {
                    Route::Channel(decode_segment(c))
                } else {
                    Route::NotFound
                }
            }
        }
    }

    fn allowed(&self) -> &'static str {
        match self {
            Route::Assign => "GET, OPTIONS",
            Route::Publish(_) | Route::PublishBatch | Route::Broadcast => "POST, OPTIONS",
            _ => "GET",
        }
    }
}

/// Answers one request.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Resp {
    let route = Route::parse(req.uri().path());
    let origin = req.headers().get(header::ORIGIN).cloned();
    let cors = match route {
        Route::Assign => Some(&app.subscribe_cors),
        Route::Publish(_) | Route::PublishBatch | Route::Broadcast => app.publish_cors.as_ref(),
        _ => None,
    };
    let method = req.method().clone();
    let mut resp = if method == Method::OPTIONS
        && matches!(
            route,
            Route::Assign | Route::Publish(_) | Route::PublishBatch | Route::Broadcast
        ) {
        match cors {
            Some(c) => c.preflight(
                origin.as_ref(),
                req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS),
            ),
            None => {
                let mut r = empty(StatusCode::NO_CONTENT);
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(route.allowed()));
                r
            }
        }
    } else {
        match (&route, &method) {
            (Route::NotFound, _) => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
            (Route::Dashboard, &Method::GET) => {
                let mut r = Response::new(Full::new(Bytes::from_static(DASHBOARD.as_bytes())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            (Route::Healthz, &Method::GET) => json_resp(StatusCode::OK, r#"{"status":"ok"}"#),
            (Route::Metrics, &Method::GET) => metrics_resp(&app).await,
            (Route::Assign, &Method::GET) => assign(&app, req.uri().query().unwrap_or("")),
            (Route::Publish(channel), &Method::POST) => publish(&app, channel, req).await,
            (Route::PublishBatch, &Method::POST) => publish_batch(&app, req).await,
            (Route::Broadcast, &Method::POST) => broadcast(&app, req).await,
            (Route::Channel(channel), &Method::GET) => channel_info(&app, channel).await,
            (Route::Workers, &Method::GET) => workers(&app),
            (Route::Link, &Method::GET) => upgrade_link(&app, req),
            _ => {
                let mut r = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    &format!(
                        "{method} is not allowed here (allowed: {})",
                        route.allowed()
                    ),
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(route.allowed()));
                r
            }
        }
    };
    if let Some(c) = cors {
        c.apply(origin.as_ref(), resp.headers_mut());
    }
    resp
}

fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn json_resp(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A contract error response.
pub fn error(status: StatusCode, code: &str, message: &str) -> Resp {
    json_resp(status, protocol::envelope::error_body(code, message))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn assign(app: &App, query: &str) -> Resp {
    let mut channel_param = None;
    let mut token_param = None;
    for pair in query_pairs(query) {
        let Ok((k, v)) = pair else {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_query",
                "the query string has a malformed percent-escape",
            );
        };
        match &*k {
            "channel" => channel_param = Some(v.into_owned()),
            "token" => token_param = Some(v.into_owned()),
            _ => {}
        }
    }
    let (channel, token, expires_in) = match &app.config.subscriber_secret {
        Some(secret) => {
            let token = token_param.unwrap_or_default();
            let claims = match protocol::token::decode(secret.as_bytes(), &token, unix_now()) {
                Ok(c) => c,
                Err(e) => {
                    let status =
                        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
                    return error(status, e.code(), &e.to_string());
                }
            };
            if channel_param.as_ref().is_some_and(|c| *c != claims.channel) {
                let e = protocol::token::TokenError::WrongChannel;
                return error(StatusCode::FORBIDDEN, e.code(), &e.to_string());
            }
            let expires_in = claims.exp.saturating_sub(unix_now());
            (claims.channel, Some(token), expires_in)
        }
        None => {
            let Some(channel) = channel_param else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_channel",
                    "the channel query parameter is required",
                );
            };
            (channel, None, app.config.token_expires_secs)
        }
    };
    if let Err(e) = protocol::validate_channel(&channel) {
        return error(StatusCode::BAD_REQUEST, "bad_channel", &e.to_string());
    }
    let Some(a) = app.registry.pick(Instant::now()) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_worker",
            "no healthy worker with free capacity is registered",
        );
    };
    metrics::ASSIGN_TOTAL.inc();
    let mut query =
        String::with_capacity(channel.len() + token.as_ref().map_or(0, |t| t.len()) + 16);
    query.push_str("channel=");
    percent_encode_into(&mut query, &channel);
    if let Some(t) = &token {
        query.push_str("&token=");
        percent_encode_into(&mut query, t);
    }
    let (ws, http) = if a.secure {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    let body = json!({
        "worker": &*a.worker_id,
        "ws_url": format!("{ws}://{}/v1/ws?{query}", a.addr),
        "poll_url": format!("{http}://{}/v1/poll?{query}", a.addr),
        "sse_url": format!("{http}://{}/v1/sse?{query}", a.addr),
        "expires_in": expires_in,
    });
    json_resp(StatusCode::OK, body.to_string())
}

/// The key of an `Authorization: Bearer <key>` header (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// Checks `Authorization: Bearer <key>` against the configured publisher keys; `Some` is
/// the refusal to send.
fn refuse_publisher(app: &App, headers: &HeaderMap) -> Option<Resp> {
    if app.config.publisher_keys.is_empty() {
        return None;
    }
    let ok = bearer(headers).is_some_and(|p| {
        app.config.publisher_keys.iter().fold(false, |acc, k| {
            acc | constant_time_eq(k.as_bytes(), p.as_bytes())
        })
    });
    if ok {
        return None;
    }
    metrics::PUBLISH_REJECTED
        .with_label_values(&["unauthorized"])
        .inc();
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid publisher key is required (Authorization: Bearer <key>)",
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(r)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn too_large(what: &str, limit: usize) -> Resp {
    metrics::PUBLISH_REJECTED
        .with_label_values(&["too_large"])
        .inc();
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        &format!("{what} exceeds {limit} bytes"),
    )
}

/// Reads a request body of at most `limit` bytes.
async fn read_body(req: Request<Incoming>, limit: usize, what: &str) -> Result<Bytes, Resp> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(what, limit));
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(what, limit)),
        Err(e) => {
            metrics::PUBLISH_REJECTED
                .with_label_values(&["bad_request"])
                .inc();
            Err(error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("could not read the body: {e}"),
            ))
        }
    }
}

fn store_error(e: &StoreError) -> Resp {
    metrics::PUBLISH_REJECTED
        .with_label_values(&[e.code()])
        .inc();
    error(StatusCode::SERVICE_UNAVAILABLE, e.code(), &e.to_string())
}

async fn publish(app: &App, channel: &str, req: Request<Incoming>) -> Resp {
    if let Some(r) = refuse_publisher(app, req.headers()) {
        return r;
    }
    if let Err(e) = protocol::validate_channel(channel) {
        metrics::PUBLISH_REJECTED
            .with_label_values(&["bad_channel"])
            .inc();
        return error(StatusCode::BAD_REQUEST, "bad_channel", &e.to_string());
    }
    let key = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str().ok().map(str::trim) {
            Some(k) if ndjson::check_key(k).is_ok() => Some(k.to_owned()),
            _ => {
                metrics::PUBLISH_REJECTED
                    .with_label_values(&["bad_request"])
                    .inc();
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_idempotency_key",
                    &format!(
                        "Idempotency-Key must be 1-{} visible ASCII bytes",
                        ndjson::MAX_KEY_LEN
                    ),
                );
            }
        },
    };
    let body = match read_body(req, app.config.max_message_bytes, "the message").await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let data = protocol::envelope::payload_to_data(body);
    match app
        .store
        .publish(channel, data, key.as_deref(), Instant::now())
        .await
    {
        Ok(p) => {
            if !p.duplicate {
                metrics::PUBLISH_TOTAL.inc();
            }
            let mut out = String::with_capacity(24);
            let _ = write!(out, "{{\"seq\":{}}}", p.seq);
            json_resp(StatusCode::ACCEPTED, out)
        }
        Err(e) => store_error(&e),
    }
}

async fn publish_batch(app: &App, req: Request<Incoming>) -> Resp {
    if let Some(r) = refuse_publisher(app, req.headers()) {
        return r;
    }
    let is_ndjson = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-ndjson"));
    if !is_ndjson {
        metrics::PUBLISH_REJECTED
            .with_label_values(&["bad_request"])
            .inc();
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "POST /v1/publish takes Content-Type: application/x-ndjson",
        );
    }
    let body = match read_body(req, app.config.max_batch_bytes, "the batch").await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (lines, mut rejected) = match ndjson::parse_batch(
        &body,
        app.config.max_batch_lines,
        app.config.max_message_bytes,
    ) {
        Ok(x) => x,
        Err(e) => {
            metrics::PUBLISH_REJECTED
                .with_label_values(&["too_large"])
                .inc();
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_lines",
                &e.to_string(),
            );
        }
    };
    drop(body);
    if !rejected.is_empty() {
        metrics::PUBLISH_REJECTED
            .with_label_values(&["bad_request"])
            .inc_by(rejected.len() as u64);
    }
    let now = Instant::now();
    let mut results = Vec::with_capacity(lines.len());
    for line in &lines {
        let r = app
            .store
            .publish(&line.channel, line.data.clone(), line.key.as_deref(), now)
            .await;
        results.push(r);
    }
    let accepted = tally(&results, |i, code| {
        rejected.push(ndjson::Rejected {
            line: lines[i].line,
            error: code.to_owned(),
        })
    });
    rejected.sort_by_key(|r| r.line);
    let rejected: Vec<_> = rejected
        .iter()
        .map(|r| json!({"line": r.line, "error": r.error}))
        .collect();
    json_resp(
        StatusCode::OK,
        json!({"accepted": accepted, "rejected": rejected}).to_string(),
    )
}

/// Counts the accepted appends of a batch (NDJSON or broadcast), meters new publishes and
/// refusals, and hands each refusal (its index, its code) to `reject`.
fn tally(
    results: &[Result<Published, StoreError>],
    mut reject: impl FnMut(usize, &'static str),
) -> u64 {
    let mut accepted = 0;
    let mut published = 0;
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(p) => {
                accepted += 1;
                published += u64::from(!p.duplicate);
            }
            Err(e) => {
                metrics::PUBLISH_REJECTED
                    .with_label_values(&[e.code()])
                    .inc();
                reject(i, e.code());
            }
        }
    }
    metrics::PUBLISH_TOTAL.inc_by(published);
    accepted
}

/// `POST /v1/broadcast`: the same message on every listed channel, each a normal append
/// with its own seq. The data is rendered once and the same `Bytes` goes to every channel;
/// the store takes each shard lock once for all the channels it holds.
async fn broadcast(app: &App, req: Request<Incoming>) -> Resp {
    if let Some(r) = refuse_publisher(app, req.headers()) {
        return r;
    }
    let body = match read_body(req, app.config.max_batch_bytes, "the broadcast").await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parsed = match broadcast::parse(
        &body,
        app.config.max_broadcast_channels,
        app.config.max_message_bytes,
    ) {
        Ok(p) => p,
        Err(e) => {
            let (status, code, reason) = match e {
                broadcast::BroadcastError::Invalid(_) => {
                    (StatusCode::BAD_REQUEST, "bad_request", "bad_request")
                }
                broadcast::BroadcastError::TooManyChannels(_) => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_many_channels",
                    "too_large",
                ),
                broadcast::BroadcastError::DataTooLarge(_) => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "too_large",
                ),
            };
            metrics::PUBLISH_REJECTED.with_label_values(&[reason]).inc();
            return error(status, code, &e.to_string());
        }
    };
    let (channels, mut rejected) = broadcast::split_channels(&parsed.channels);
    if !rejected.is_empty() {
        metrics::PUBLISH_REJECTED
            .with_label_values(&["bad_channel"])
            .inc_by(rejected.len() as u64);
    }
    // In chunks, yielding in between: a 100,000-channel broadcast does not hold a runtime
    // thread for its whole length, and link writers start on the first chunk's deliveries.
    let now = Instant::now();
    let mut results = Vec::with_capacity(channels.len());
    for (i, chunk) in channels.chunks(BROADCAST_CHUNK).enumerate() {
        if i > 0 {
            tokio::task::yield_now().await;
        }
        results.extend(
            app.store
                .publish_many(chunk, parsed.data.clone(), parsed.key.as_deref(), now)
                .await,
        );
    }
    let accepted = tally(&results, |i, code| {
        rejected.push(broadcast::Rejected {
            channel: channels[i].to_owned(),
            error: code.to_owned(),
        })
    });
    metrics::BROADCAST_TOTAL.inc();
    let rejected: Vec<_> = rejected
        .iter()
        .map(|r| json!({"channel": r.channel, "error": r.error}))
        .collect();
    json_resp(
        StatusCode::OK,
        json!({"accepted": accepted, "rejected": rejected}).to_string(),
    )
}

async fn channel_info(app: &App, channel: &str) -> Resp {
    if let Err(e) = protocol::validate_channel(channel) {
        return error(StatusCode::BAD_REQUEST, "bad_channel", &e.to_string());
    }
    let info = app.store.channel_info(channel, Instant::now()).await;
    json_resp(
        StatusCode::OK,
        json!({
            "online": info.online,
            "worker": info.worker.as_deref(),
            "last_seq": info.last_seq,
            "buffered": info.buffered,
        })
        .to_string(),
    )
}

fn workers(app: &App) -> Resp {
    let list: Vec<_> = app
        .registry
        .list(Instant::now())
        .into_iter()
        .map(|w| {
            json!({
                "id": &*w.id,
                "addresses": w.addrs,
                "connections": w.connections,
                "capacity": w.capacity,
                "state": w.state.as_str(),
            })
        })
        .collect();
    json_resp(StatusCode::OK, json!({ "workers": list }).to_string())
}

async fn metrics_resp(app: &App) -> Resp {
    let stats = app.store.stats().await;
    metrics::STORE_BYTES.set(stats.bytes as i64);
    metrics::STORE_CHANNELS.set(stats.channels as i64);
    let [healthy, stale, disconnected, starting] = app.registry.counts(Instant::now());
    metrics::WORKERS
        .with_label_values(&["starting"])
        .set(starting as i64);
    metrics::WORKERS
        .with_label_values(&["healthy"])
        .set(healthy as i64);
    metrics::WORKERS
        .with_label_values(&["stale"])
        .set(stale as i64);
    metrics::WORKERS
        .with_label_values(&["disconnected"])
        .set(disconnected as i64);
    let mut r = Response::new(Full::new(Bytes::from(metrics::render())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// `GET /v1/link` with `Upgrade: pushgate-link/1`: answers 101 and hands the connection to
/// [`link::serve_link`].
fn upgrade_link(app: &Arc<App>, mut req: Request<Incoming>) -> Resp {
    let wants = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case(protocol::link::LINK_UPGRADE))
        });
    if !wants {
        let mut r = error(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "worker links upgrade to pushgate-link/1",
        );
        r.headers_mut().insert(
            header::UPGRADE,
            HeaderValue::from_static(protocol::link::LINK_UPGRADE),
        );
        return r;
    }
    if let Some(key) = &app.config.link_key {
        let given = bearer(req.headers()).unwrap_or("");
        if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "link_key",
                "a worker link needs the gateway's link key (Authorization: Bearer <key>)",
            );
        }
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let app2 = app.clone();
    app.tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                debug!(error = %e, "worker link upgrade failed");
                return;
            }
        };
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let read_buf = BytesMut::from(&parts.read_buf[..]);
                let (r, w) = parts.io.into_inner().into_split();
                link::serve_link(app2, r, w, read_buf).await;
            }
            Err(upgraded) => {
                let (r, w) = tokio::io::split(TokioIo::new(upgraded));
                link::serve_link(app2, r, w, BytesMut::new()).await;
            }
        }
    });
    let mut r = empty(StatusCode::SWITCHING_PROTOCOLS);
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    r.headers_mut().insert(
        header::UPGRADE,
        HeaderValue::from_static(protocol::link::LINK_UPGRADE),
    );
    r
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
