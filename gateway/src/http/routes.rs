//! Routing: which handler answers a request (by path and method), preflights, `405` with
//! `Allow`, and the CORS headers of the endpoint groups that have them.

use super::rejection::Rejection;
use super::reply::empty;
use super::stream::Body;
use super::{assign, publish, stream, upgrade, views};
use crate::app::App;
use crate::link::handle::coalesced;
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use protocol::query::percent_decode;
use std::sync::Arc;

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
    Stats,
    Link,
    ClientJs,
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
            "/v1/stats" => Route::Stats,
            views::CLIENT_JS_PATH => Route::ClientJs,
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
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let route = Route::parse(req.uri().path());
    let origin = req.headers().get(header::ORIGIN).cloned();
    let cors = match route {
        // The client module too: a page on another origin imports it (module scripts are
        // fetched with CORS).
        Route::Assign | Route::ClientJs => Some(&app.subscribe_cors),
        Route::Publish(_) | Route::PublishBatch | Route::Broadcast => app.publish_cors.as_ref(),
        _ => None,
    };
    let method = req.method().clone();
    if let Route::Dashboard | Route::Metrics | Route::Workers | Route::Stats | Route::Channel(_) =
        route
    {
        let peer = req.extensions().get::<crate::net::Peer>().map(|p| p.0);
        let plane = req
            .extensions()
            .get::<crate::net::Plane>()
            .copied()
            .unwrap_or(crate::net::Plane::Api);
        if let Err(r) = super::auth::check_admin(&app, req.headers(), peer, plane) {
            return r.response().map(Either::Left);
        }
    } else if req.extensions().get::<crate::net::Plane>() == Some(&crate::net::Plane::Admin)
        && !matches!(route, Route::Healthz)
    {
        // The admin listener serves the admin surface and /healthz, nothing else.
        return Rejection::NotFound.response().map(Either::Left);
    }
    if method == Method::POST
        && matches!(route, Route::PublishBatch)
        && stream::wants_stream(req.uri().query())
    {
        let mut resp = stream::publish_stream(app.clone(), req);
        if let Some(c) = cors {
            c.apply(origin.as_ref(), resp.headers_mut());
        }
        return resp;
    }
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
            (Route::NotFound, _) => Rejection::NotFound.response(),
            (Route::Dashboard, &Method::GET) => views::dashboard(),
            (Route::Healthz, &Method::GET) => views::healthz(&app),
            (Route::Metrics, &Method::GET) => views::metrics_resp(&app).await,
            (Route::Assign, &Method::GET) => assign::assign(&app, req.uri().query().unwrap_or("")),
            (Route::Publish(channel), &Method::POST) => publish::publish(&app, channel, req).await,
            // Many deliveries per request: queued for each link's writer (one write per
            // batch) rather than written one by one.
            (Route::PublishBatch, &Method::POST) => {
                coalesced(publish::publish_batch(&app, req)).await
            }
            (Route::Broadcast, &Method::POST) => coalesced(publish::broadcast(&app, req)).await,
            (Route::Channel(channel), &Method::GET) => views::channel_info(&app, channel).await,
            (Route::Workers, &Method::GET) => views::workers(&app),
            (Route::Stats, &Method::GET) => super::stats::stats(&app).await,
            (Route::ClientJs, &Method::GET) => {
                views::client_js(req.headers().get(header::IF_NONE_MATCH))
            }
            (Route::Link, &Method::GET) => upgrade::upgrade_link(&app, req),
            _ => Rejection::MethodNotAllowed {
                method,
                allowed: route.allowed(),
            }
            .response(),
        }
    };
    if let Some(c) = cors {
        c.apply(origin.as_ref(), resp.headers_mut());
    }
    resp.map(Either::Left)
}
