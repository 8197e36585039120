//! Requests: a parsed head is routed (`session::request`), answered, or subscribed.

use super::conn::Out;
use super::conn::{HAS_EPOCH, HAS_POS, KEEP_ALIVE, SUBSCRIBED};
use super::EventLoop;
use crate::http1::{self, Request};
use crate::metrics::{metrics, CloseReason, Transport};
use crate::session::request::{self, Rejection, Route, Subscribe, SubscribeRules};
use crate::shared::sub_id;
use crate::{sse, ws};
use protocol::link::Up;
use tokio::sync::mpsc::error::TrySendError;

impl EventLoop {
    /// Answers with a JSON error and closes; `cors` is the connection's CORS index.
    pub(super) fn reply_error(&mut self, key: usize, e: &Rejection, cors: u16) {
        self.out.clear();
        let origin = self.shared.origin(cors);
        http1::write_error(&mut self.out, e.status, e.code, &e.message, origin, b"");
        self.send_final(key, CloseReason::Done);
    }

    pub(super) fn handle_request(&mut self, key: usize, req: &Request<'_>) {
        tracing::trace!(
            thread = self.index,
            key,
            method = req.method,
            path = req.path,
            "request"
        );
        let cors = if request::has_cors(req.path) {
            self.shared.cors_index(req.origin)
        } else {
            0
        };
        let origin_allowed = self.shared.any_origin || self.shared.cors_index(req.origin) != 0;
        let route = match request::route(req, origin_allowed) {
            Ok(r) => r,
            Err(e) => return self.reply_error(key, &e, cors),
        };
        self.out.clear();
        match route {
            Route::Health => {
                let body = br#"{"status":"ok"}"#;
                http1::write_json(&mut self.out, 200, body, None, false);
            }
            Route::Metrics
                if self.shared.config.admin_key.as_deref().is_some_and(|k| {
                    !crate::config::authorization_carries(k, req.authorization)
                }) =>
            {
                let e = Rejection::new(
                    401,
                    "admin_unauthorized",
                    "/metrics needs the admin key (Authorization: Bearer <key>, or Basic with the key as the password)",
                );
                return self.reply_error(key, &e, cors);
            }
            Route::Metrics => {
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
            Route::Preflight => http1::write_preflight(&mut self.out, self.shared.origin(cors)),
            Route::Subscribe(t) => return self.subscribe(key, t, req, cors),
        }
        self.send_final(key, CloseReason::Done);
    }

    /// Checks a subscribe request, asks the gateway for the channel and answers the head
    /// (101, the SSE head, or nothing yet for a poll, which is held on the wheel).
    fn subscribe(&mut self, key: usize, transport: Transport, req: &Request<'_>, cors: u16) {
        let rules = SubscribeRules {
            secret: self.shared.secret.as_deref(),
            max_poll_timeout_secs: self.shared.config.max_poll_timeout_secs,
        };
        let s = match request::subscribe(transport, req, rules, self.now.unix) {
            Ok(s) => s,
            Err(e) => return self.reply_error(key, &e, cors),
        };
        if request::replaced_reconnect(transport, req) {
            metrics().sse_replaced_stops.inc();
            self.out.clear();
            sse::write_stop(&mut self.out, self.shared.origin(cors));
            return self.send_final(key, CloseReason::Done);
        }
        let gen = match self.ask_gateway(key, &s) {
            Ok(gen) => gen,
            Err(e) => return self.reply_error(key, &e, cors),
        };
        let conn = &mut self.conns[key];
        conn.gen = gen;
        conn.flags = SUBSCRIBED;
        conn.pos = s.since.unwrap_or(0);
        if s.since.is_some() {
            conn.flags |= HAS_POS;
        }
        conn.epoch = s.epoch.unwrap_or(0);
        if s.epoch.is_some() {
            conn.flags |= HAS_EPOCH;
        }
        if req.keep_alive {
            conn.flags |= KEEP_ALIVE;
        }
        conn.cors = cors;
        conn.channel = Some(s.channel.into_boxed_str());
        conn.set_transport(transport);
        tracing::debug!(
            thread = self.index,
            key,
            transport = transport.as_str(),
            "subscribed"
        );
        self.out.clear();
        match transport {
            Transport::Ws => ws::write_handshake(&mut self.out, req.ws_key.unwrap_or_default()),
            Transport::Sse => sse::write_head(&mut self.out, self.shared.origin(cors)),
            _ => self.add_deadline(self.now.secs + s.hold_secs + 1, key, gen),
        }
        self.send(key, Out::Head);
    }

    /// Sends the `Subscribe` (under a new generation, returned), unless the link is down
    /// or its queue full.
    fn ask_gateway(&mut self, key: usize, s: &Subscribe) -> Result<u32, Rejection> {
        if !self.shared.link_is_up() {
            let down = "the gateway link is down; retry shortly";
            return Err(Rejection::new(503, "unavailable", down));
        }
        let gen = self.gen();
        let up = Up::Subscribe {
            sub_id: sub_id(self.index, key, gen),
            since: s.since,
            epoch: s.epoch,
            resume: false,
            max_bytes: self.page_bytes() as u32,
            channel: s.channel.clone(),
            opened_us: self.now.unix_us,
        };
        match self.shared.up_tx.try_send(up) {
            Ok(()) => Ok(gen),
            Err(TrySendError::Full(_)) => {
                metrics().link_queue_full.inc();
                let busy = "the worker is busy; retry shortly";
                Err(Rejection::new(503, "unavailable", busy))
            }
            Err(TrySendError::Closed(_)) => {
                Err(Rejection::new(503, "unavailable", "the worker is stopping"))
            }
        }
    }
}
