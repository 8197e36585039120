//! Request routing, CORS, error replies and subscribing.

use super::conn::{HAS_EPOCH, HAS_POS, KEEP_ALIVE, SUBSCRIBED};
use super::EventLoop;
use crate::http1::{self, Request};
use crate::metrics::{metrics, CloseReason, Transport};
use crate::shared::sub_id;
use crate::{sse, ws};
use protocol::link::Up;
use tokio::sync::mpsc::error::TrySendError;

/// Default long-poll hold.
pub(super) const DEFAULT_POLL_TIMEOUT: u64 = 30;

impl EventLoop {
    // ---- requests ----

    pub(super) fn cors_for(&self, origin: Option<&str>) -> u16 {
        let list = &self.shared.config.allow_origin;
        if self.shared.any_origin {
            return list
                .iter()
                .position(|o| o == "*")
                .map_or(0, |i| i as u16 + 1);
        }
        match origin {
            Some(o) => list.iter().position(|a| a == o).map_or(0, |i| i as u16 + 1),
            None => 0,
        }
    }

    pub(super) fn origin_value(&self, cors: u16) -> Option<&str> {
        (cors > 0).then(|| self.shared.config.allow_origin[cors as usize - 1].as_str())
    }

    pub(super) fn reply_error(
        &mut self,
        key: usize,
        status: u16,
        code: &str,
        message: &str,
        cors: Option<u16>,
    ) {
        self.out.clear();
        let origin = cors.and_then(|c| self.origin_value(c)).map(str::to_owned);
        http1::write_error(&mut self.out, status, code, message, origin.as_deref(), b"");
        if self.send_out(key) {
            self.close_after_flush(key, CloseReason::Done);
        }
    }

    pub(super) fn handle_request(&mut self, key: usize, req: &Request<'_>) {
        tracing::trace!(
            thread = self.index,
            key,
            method = req.method,
            path = req.path,
            "request"
        );
        match req.path {
            "/healthz" | "/metrics" => {
                if req.method != "GET" && req.method != "HEAD" {
                    return self.reply_error(key, 405, "method_not_allowed", "use GET", None);
                }
                self.out.clear();
                if req.path == "/healthz" {
                    let body = br#"{"status":"ok"}"#;
                    http1::write_json(&mut self.out, 200, body, None, false);
                } else {
                    let mut body = Vec::new();
                    crate::metrics::render(&mut body);
                    http1::write_head(
                        &mut self.out,
                        200,
                        "text/plain; version=0.0.4",
                        Some(body.len()),
                        None,
                        false,
                        b"",
                    );
                    self.out.extend_from_slice(&body);
                }
                if self.send_out(key) {
                    self.close_after_flush(key, CloseReason::Done);
                }
            }
            "/v1/ws" => {
                if req.method != "GET" {
                    return self.reply_error(key, 405, "method_not_allowed", "use GET", None);
                }
                if !req.upgrade_websocket || req.ws_key.is_none() {
                    return self.reply_error(
                        key,
                        400,
                        "bad_request",
                        "a WebSocket upgrade is required",
                        None,
                    );
                }
                if req.ws_version != Some(b"13") {
                    return self.reply_error(
                        key,
                        400,
                        "bad_request",
                        "Sec-WebSocket-Version must be 13",
                        None,
                    );
                }
                if let Some(o) = req.origin {
                    if !self.shared.any_origin && self.cors_for(Some(o)) == 0 {
                        return self.reply_error(
                            key,
                            403,
                            "origin_not_allowed",
                            "this origin is not allowed",
                            None,
                        );
                    }
                }
                self.subscribe(key, Transport::Ws, req);
            }
            "/v1/poll" | "/v1/sse" => {
                let cors = self.cors_for(req.origin);
                match req.method {
                    "OPTIONS" => {
                        self.out.clear();
                        let origin = self.origin_value(cors).map(str::to_owned);
                        http1::write_preflight(&mut self.out, origin.as_deref());
                        if self.send_out(key) {
                            self.close_after_flush(key, CloseReason::Done);
                        }
                    }
                    "GET" => {
                        let t = if req.path == "/v1/poll" {
                            Transport::Poll
                        } else {
                            Transport::Sse
                        };
                        self.subscribe(key, t, req);
                    }
                    _ => self.reply_error(
                        key,
                        405,
                        "method_not_allowed",
                        "use GET or OPTIONS",
                        Some(cors),
                    ),
                }
            }
            _ => self.reply_error(key, 404, "not_found", "no such route", None),
        }
    }

    pub(super) fn subscribe(&mut self, key: usize, transport: Transport, req: &Request<'_>) {
        let cors = if transport == Transport::Ws {
            0
        } else {
            self.cors_for(req.origin)
        };
        let q = match http1::parse_subscribe_query(req.query) {
            Ok(q) => q,
            Err((code, msg)) => return self.reply_error(key, 400, code, &msg, Some(cors)),
        };
        let mut since = q.since;
        if transport == Transport::Sse {
            if let Some(id) = req.last_event_id.and_then(|v| v.parse::<u64>().ok()) {
                since = Some(id);
            }
        }
        if let Some(secret) = &self.shared.secret {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if let Err(e) =
                protocol::token::verify(secret, q.token.as_deref().unwrap_or(""), &q.channel, now)
            {
                let msg = e.to_string();
                return self.reply_error(key, e.status(), e.code(), &msg, Some(cors));
            }
        }
        if !self.shared.link_is_up() {
            return self.reply_error(
                key,
                503,
                "unavailable",
                "the gateway link is down; retry shortly",
                Some(cors),
            );
        }
        let gen = self.gen();
        let sub = sub_id(self.index, key, gen);
        let up = Up::Subscribe {
            sub_id: sub,
            since,
            epoch: q.epoch,
            resume: false,
            max_bytes: u32::MAX,
            channel: q.channel.clone(),
        };
        match self.shared.up_tx.try_send(up) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics().link_queue_full.inc();
                return self.reply_error(
                    key,
                    503,
                    "unavailable",
                    "the worker is busy; retry shortly",
                    Some(cors),
                );
            }
            Err(TrySendError::Closed(_)) => {
                return self.reply_error(
                    key,
                    503,
                    "unavailable",
                    "the worker is stopping",
                    Some(cors),
                );
            }
        }
        let conn = &mut self.conns[key];
        conn.gen = gen;
        conn.flags = SUBSCRIBED;
        if let Some(s) = since {
            conn.pos = s;
            conn.flags |= HAS_POS;
        } else {
            conn.pos = 0;
        }
        if let Some(e) = q.epoch {
            conn.epoch = e;
            conn.flags |= HAS_EPOCH;
        } else {
            conn.epoch = 0;
        }
        if req.keep_alive {
            conn.flags |= KEEP_ALIVE;
        }
        conn.cors = cors;
        conn.channel = Some(q.channel.into_boxed_str());
        metrics().open(Transport::Http).dec();
        metrics().open(transport).inc();
        conn.transport = transport;
        tracing::debug!(
            thread = self.index,
            key,
            transport = transport.as_str(),
            "subscribed"
        );
        self.out.clear();
        match transport {
            Transport::Ws => ws::write_handshake(&mut self.out, req.ws_key.unwrap_or_default()),
            Transport::Sse => {
                let origin = self.origin_value(cors).map(str::to_owned);
                sse::write_head(&mut self.out, origin.as_deref());
            }
            _ => {
                let timeout = q
                    .timeout
                    .unwrap_or(DEFAULT_POLL_TIMEOUT)
                    .min(self.shared.config.max_poll_timeout_secs as u64)
                    as u32;
                self.add_deadline(self.now + timeout + 1, key, gen);
            }
        }
        self.send_out(key);
    }
}
