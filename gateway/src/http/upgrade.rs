//! The worker link upgrade: `GET /v1/link` with `Upgrade: pushgate-link/2` answers 101 and
//! hands the connection to [`crate::link::serve::serve_link`].

use super::auth::{bearer, constant_time_eq};
use super::guard_io::GuardIo;
use super::rejection::Rejection;
use super::reply::{empty, Resp};
use crate::app::App;
use crate::link;
use crate::link::refusals::Refusal;
use crate::link::serve::LinkPeer;
use crate::link::shared_tcp::SharedTcp;
use bytes::BytesMut;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};

/// `GET /v1/link` with `Upgrade: pushgate-link/2`: answers 101 and hands the connection to
/// [`link::serve::serve_link`].
pub fn upgrade_link(app: &Arc<App>, mut req: Request<Incoming>) -> Resp {
    let wants = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(protocol::link::wants_link_upgrade);
    let ip = req
        .extensions()
        .get::<crate::net::Peer>()
        .map(|p| p.0)
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    if !wants {
        let upgrade = req
            .headers()
            .get(header::UPGRADE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if let Some(n) = app.link_refusals.count(Refusal::Version, Instant::now()) {
            warn!(
                peer = %ip,
                upgrade = upgrade.as_deref().unwrap_or("(none)"),
                refused = n,
                "worker link refused: it asks for another link protocol than {} (run the same pushgate release on gateways and workers)",
                protocol::link::LINK_UPGRADE
            );
        }
        return Rejection::UpgradeRequired.response();
    }
    if let Some(key) = &app.config.link_key {
        let given = bearer(req.headers()).unwrap_or("");
        if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
            if let Some(n) = app.link_refusals.count(Refusal::LinkKey, Instant::now()) {
                warn!(
                    peer = %ip,
                    refused = n,
                    "worker link refused: {} link key (the worker's --link-key must be this gateway's)",
                    if given.is_empty() { "no" } else { "wrong" }
                );
            }
            return Rejection::LinkKey.response();
        }
    }
    let plain = LinkPeer { ip, tls: false };
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
        // What hyper read past the request, then what the guard had read past it.
        let rest = |hyper_buf: &[u8], guard_buf: &[u8]| {
            let mut read_buf = BytesMut::from(hyper_buf);
            read_buf.extend_from_slice(guard_buf);
            read_buf
        };
        let upgraded = match upgraded.downcast::<TokioIo<GuardIo<TcpStream>>>() {
            Ok(parts) => {
                let (stream, guard_buf) = parts.io.into_inner().into_parts();
                let read_buf = rest(&parts.read_buf, &guard_buf);
                // Shared by the reader, the writer and the direct path of `LinkHandle::send`.
                let stream = Arc::new(stream);
                let (r, w) = (SharedTcp(stream.clone()), SharedTcp(stream.clone()));
                return link::serve::serve_link(app2, plain, r, w, read_buf, Some(stream)).await;
            }
            Err(upgraded) => upgraded,
        };
        match upgraded.downcast::<TokioIo<GuardIo<TlsStream<TcpStream>>>>() {
            Ok(parts) => {
                let (stream, guard_buf) = parts.io.into_inner().into_parts();
                let read_buf = rest(&parts.read_buf, &guard_buf);
                let (r, w) = tokio::io::split(stream);
                let peer = LinkPeer { ip, tls: true };
                link::serve::serve_link(app2, peer, r, w, read_buf, None).await;
            }
            Err(upgraded) => {
                let (r, w) = tokio::io::split(TokioIo::new(upgraded));
                link::serve::serve_link(app2, plain, r, w, BytesMut::new(), None).await;
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
