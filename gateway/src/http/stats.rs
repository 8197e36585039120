//! `GET /v1/stats` (admin surface): what the dashboard draws, in one answer. The gateway's
//! own `/metrics` samples and, for every worker it knows, the registry's view plus that
//! worker's `/metrics` samples, read by the gateway from the worker's first plain address
//! (so the page needs no way to the workers, and its numbers are `/metrics`' numbers).
//! One round at a time, reused for 900 ms: many open dashboards cost one round a second.
//! With `--admin-key`, the gateway presents it to the workers (local workers get it).

use super::reply::{json_resp, Resp};
use crate::app::App;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::StatusCode;
use serde_json::{json, Map, Value};
use std::time::Duration;
use tokio::time::Instant;

/// How long one round's answer is served again.
const REUSE: Duration = Duration::from_millis(900);
/// How long a worker's `/metrics` may take.
const WORKER_TIMEOUT: Duration = Duration::from_secs(1);
/// Most bytes read of one worker's `/metrics`.
const MAX_METRICS_BYTES: usize = 4 << 20;

pub async fn stats(app: &App) -> Resp {
    let mut cache = app.stats_cache.lock().await;
    if let Some((at, body)) = &*cache {
        if at.elapsed() < REUSE {
            return json_resp(StatusCode::OK, body.clone());
        }
    }
    let gateway = samples(&String::from_utf8_lossy(
        &super::views::refreshed_metrics(app).await,
    ));
    let workers = app.registry.list(Instant::now());
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<Full<Bytes>>();
    let auth = app.config.admin_key.as_ref().map(|k| format!("Bearer {k}"));
    let reads = workers.iter().map(|w| {
        let client = client.clone();
        let addr = w.addrs.first().cloned();
        let auth = auth.as_deref();
        async move {
            let Some(addr) = addr else {
                return Err("no plain address to read /metrics from".to_string());
            };
            worker_metrics(&client, &addr, auth).await
        }
    });
    let read = futures_util::future::join_all(reads).await;
    let list: Vec<Value> = workers
        .iter()
        .zip(read)
        .map(|(w, m)| {
            let (metrics, error) = match m {
                Ok(m) => (Value::Object(m), Value::Null),
                Err(e) => (Value::Null, Value::String(e)),
            };
            json!({
                "id": &*w.id,
                "state": w.state.as_str(),
                "addresses": w.addrs,
                "connections": w.connections,
                "capacity": w.capacity,
                "metrics": metrics,
                "error": error,
            })
        })
        .collect();
    let store = match app.config.store_kind() {
        Ok(crate::config::StoreKind::Memory) => "memory",
        Ok(crate::config::StoreKind::Redis(crate::store::redis::RedisTarget::Cluster(_))) => {
            "redis+cluster"
        }
        Ok(_) => "redis",
        Err(_) => "unknown",
    };
    let body = Bytes::from(
        json!({
            "at_ms": crate::store::now_ms(),
            "gateway_id": app.gateway_id,
            "store": {
                "kind": store,
                "healthy": app.store_healthy.load(std::sync::atomic::Ordering::Relaxed),
            },
            "gateway": gateway,
            "workers": list,
        })
        .to_string(),
    );
    *cache = Some((Instant::now(), body.clone()));
    json_resp(StatusCode::OK, body)
}

async fn worker_metrics(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    addr: &str,
    auth: Option<&str>,
) -> Result<Map<String, Value>, String> {
    let mut req = hyper::Request::get(format!("http://{addr}/metrics"));
    // Workers given the fleet's --admin-key ask for it (the gateway's own is the one).
    if let Some(a) = auth {
        req = req.header(hyper::header::AUTHORIZATION, a);
    }
    let req = req
        .body(Full::default())
        .map_err(|e| format!("bad address {addr}: {e}"))?;
    let resp = tokio::time::timeout(WORKER_TIMEOUT, client.request(req))
        .await
        .map_err(|_| format!("{addr}/metrics did not answer within 1 s"))?
        .map_err(|e| format!("{addr}/metrics: {e}"))?;
    if resp.status() != StatusCode::OK {
        return Err(format!("{addr}/metrics answered {}", resp.status()));
    }
    let body = tokio::time::timeout(
        WORKER_TIMEOUT,
        Limited::new(resp.into_body(), MAX_METRICS_BYTES).collect(),
    )
    .await
    .map_err(|_| format!("{addr}/metrics did not finish within 1 s"))?
    .map_err(|e| format!("{addr}/metrics: {e}"))?
    .to_bytes();
    Ok(samples(&String::from_utf8_lossy(&body)))
}

/// The `pushgate_*` and `process_*` samples of a Prometheus text exposition, keyed by
/// their series as written (`name{labels}`).
fn samples(text: &str) -> Map<String, Value> {
    text.lines()
        .filter(|l| l.starts_with("pushgate_") || l.starts_with("process_"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let v: f64 = value.parse().ok()?;
            Some((series.to_string(), serde_json::Number::from_f64(v)?.into()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_keep_series_and_values_and_skip_the_rest() {
        let m = samples(
            "# HELP pushgate_x help\n# TYPE pushgate_x counter\npushgate_x_total 3\n\
             pushgate_open{transport=\"ws\"} 12\nprocess_resident_memory_bytes 1.5e6\n\
             other_thing 1\npushgate_bad notanumber\npushgate_h_bucket{le=\"+Inf\"} 7\n",
        );
        assert_eq!(m["pushgate_x_total"], 3.0);
        assert_eq!(m["pushgate_open{transport=\"ws\"}"], 12.0);
        assert_eq!(m["process_resident_memory_bytes"], 1_500_000.0);
        assert_eq!(m["pushgate_h_bucket{le=\"+Inf\"}"], 7.0);
        assert_eq!(m.len(), 4);
    }
}
