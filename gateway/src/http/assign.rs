//! `GET /v1/assign`: the least-loaded healthy worker for a channel, as URLs that already
//! carry everything the client needs (channel, token).

use super::reply::{error, json_resp, Resp};
use crate::app::App;
use crate::metrics;
use hyper::StatusCode;
use protocol::query::{percent_encode_into, query_pairs};
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
