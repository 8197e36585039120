//! `GET /v1/assign`: the least-loaded healthy worker for a channel, as URLs that already
//! carry everything the client needs (channel, token).

use super::rejection::Rejection;
use super::reply::{json_resp, Resp};
use crate::app::App;
use crate::metrics;
use hyper::StatusCode;
use protocol::query::{percent_encode_into, query_pairs};
use protocol::token::TokenError;
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn assign(app: &App, query: &str) -> Resp {
    pick(app, query).unwrap_or_else(|r| r.response())
}

fn pick(app: &App, query: &str) -> Result<Resp, Rejection> {
    let mut channel_param = None;
    let mut token_param = None;
    let mut want_tls = true;
    for pair in query_pairs(query) {
        let (k, v) = pair.map_err(|_| Rejection::BadQuery)?;
        match &*k {
            "channel" => channel_param = Some(v.into_owned()),
            "token" => token_param = Some(v.into_owned()),
            "tls" => {
                want_tls = match &*v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(Rejection::BadQuery),
                }
            }
            _ => {}
        }
    }
    let (channel, token, expires_in) = match &app.config.subscriber_secret {
        Some(secret) => {
            let token = token_param.unwrap_or_default();
            let claims = protocol::token::decode(secret.as_bytes(), &token, unix_now())
                .map_err(Rejection::Token)?;
            if channel_param.as_ref().is_some_and(|c| *c != claims.channel) {
                return Err(Rejection::Token(TokenError::WrongChannel));
            }
            let expires_in = claims.exp.saturating_sub(unix_now());
            (claims.channel, Some(token), expires_in)
        }
        None => {
            let channel = channel_param.ok_or(Rejection::MissingChannel)?;
            (channel, None, app.config.token_expires_secs)
        }
    };
    protocol::validate_channel(&channel).map_err(Rejection::BadChannel)?;
    let a = app
        .registry
        .pick_in(
            Instant::now(),
            Some(&app.router.fleet),
            crate::store::now_ms(),
            want_tls,
        )
        .ok_or(Rejection::NoWorker)?;
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
    Ok(json_resp(StatusCode::OK, body.to_string()))
}
