//! The read-only views: the dashboard page (its data: `stats.rs`), `/healthz`, `/metrics`,
//! `GET /v1/channels/{channel}` and `GET /v1/workers`.

use super::rejection::Rejection;
use super::reply::{json_resp, Resp};
use crate::app::App;
use crate::metrics;
use crate::store::{now_ms, Store};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::json;
use std::sync::LazyLock;
use tokio::time::Instant;

/// The dashboard with uPlot (`assets/vendor/uplot`, MIT) inlined: one self-contained page.
static DASHBOARD: std::sync::LazyLock<Bytes> = std::sync::LazyLock::new(|| {
    let page = include_str!("dashboard.html")
        .replace(
            "/*UPLOT_CSS*/",
            include_str!("../../../assets/vendor/uplot/uPlot.min.css"),
        )
        .replace(
            "/*UPLOT_JS*/",
            include_str!("../../../assets/vendor/uplot/uPlot.iife.min.js"),
        );
    Bytes::from(page)
});

/// Where the JavaScript client is served.
pub const CLIENT_JS_PATH: &str = "/client/pushgate.js";

/// The JavaScript client (`clients/js/pushgate.js`), as built into this binary.
pub static CLIENT_JS: &str = include_str!("../../../clients/js/pushgate.js");

/// Its entity tag: a hash of the bytes, so a cache revalidates to a new release's client.
static CLIENT_JS_ETAG: LazyLock<HeaderValue> = LazyLock::new(|| {
    // FNV-1a, 64 bits: stable across builds and platforms (std's hasher is neither).
    let hash = CLIENT_JS.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    HeaderValue::from_str(&format!("\"{hash:016x}\"")).expect("hex is a header value")
});

/// `GET /client/pushgate.js`: the client module (cached for 5 minutes, then revalidated by
/// its ETag; 304 when the `If-None-Match` names it).
pub fn client_js(if_none_match: Option<&HeaderValue>) -> Resp {
    let etag = &*CLIENT_JS_ETAG;
    let fresh = if_none_match
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == etag)
        });
    let mut r = if fresh {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(CLIENT_JS.as_bytes())));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        );
        r.headers_mut().insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        r
    };
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    r.headers_mut().insert(header::ETAG, etag.clone());
    r
}

/// `GET /`: the self-contained dashboard page.
pub fn dashboard() -> Resp {
    let mut r = Response::new(Full::new(DASHBOARD.clone()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET /healthz`: 200 `{"status":"ok"}`, or 503 while the store does not answer.
pub fn healthz(app: &App) -> Resp {
    if app.store_healthy.load(std::sync::atomic::Ordering::Relaxed) {
        json_resp(StatusCode::OK, r#"{"status":"ok"}"#)
    } else {
        json_resp(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"unavailable","error":"store_unavailable","message":"the store does not answer"}"#,
        )
    }
}

pub async fn channel_info(app: &App, channel: &str) -> Resp {
    if let Err(e) = protocol::validate_channel(channel) {
        return Rejection::BadChannel(e).response();
    }
    let info = app.store.channel_info(channel, now_ms()).await;
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

pub fn workers(app: &App) -> Resp {
    let list: Vec<_> = app
        .registry
        .list(Instant::now())
        .into_iter()
        .map(|w| {
            json!({
                "id": &*w.id,
                "addresses": w.addrs,
                "tls_addresses": w.tls_addrs,
                "connections": w.connections,
                "capacity": w.capacity,
                "state": w.state.as_str(),
            })
        })
        .collect();
    // With a shared store: every worker of the fleet registry, as the gateways that see
    // it renew it (linked here or not).
    let now = now_ms();
    let fleet: Vec<_> = app
        .router
        .fleet
        .list()
        .into_iter()
        .map(|(id, l)| {
            json!({
                "id": &*id,
                "incarnation": l.incarnation.to_string(),
                "addresses": l.addrs,
                "tls_addresses": l.tls_addrs,
                "connections": l.connections,
                "capacity": l.capacity,
                "lease_ms": l.until_ms as i64 - now as i64,
            })
        })
        .collect();
    // Worker link attempts this gateway refused since it started, by reason.
    let refused: serde_json::Map<String, serde_json::Value> = app
        .link_refusals
        .totals()
        .into_iter()
        .map(|(why, n)| (why.as_str().to_owned(), n.into()))
        .collect();
    json_resp(
        StatusCode::OK,
        json!({ "workers": list, "fleet": fleet, "refused_links": refused }).to_string(),
    )
}

pub async fn metrics_resp(app: &App) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(refreshed_metrics(app).await)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// The gateway's exposition, its gauges (store, workers by state) read now.
pub async fn refreshed_metrics(app: &App) -> Vec<u8> {
    let stats = app.store.stats().await;
    metrics::STORE_BYTES.set(stats.bytes as i64);
    metrics::STORE_CHANNELS.set(stats.channels as i64);
    metrics::STORE_IDLE_CHANNELS.set(stats.idle_channels as i64);
    let [healthy, stale, disconnected, starting] = app.registry.counts(Instant::now());
    for (state, n) in [
        ("starting", starting),
        ("healthy", healthy),
        ("stale", stale),
        ("disconnected", disconnected),
    ] {
        metrics::WORKERS.with_label_values(&[state]).set(n as i64);
    }
    metrics::render()
}
