//! The accept loop and the HTTP/1.1 settings of every connection (upgrades included).

use super::guard_io::GuardIo;
use super::rejection::Rejection;
use super::routes::handle;
use crate::app::App;
use crate::net;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

/// How long a client may take to send request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long open connections get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client on the TLS listener may take to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `app.shutdown`, one task per connection (tracked).
pub async fn serve(listener: TcpListener, app: Arc<App>, plane: net::Plane) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = app.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                net::tune_accepted(&stream);
                if app.tls.is_some() && plane == net::Plane::Api {
                    app.tracker.spawn(serve_tls(app.clone(), stream, peer.ip()));
                } else {
                    app.tracker
                        .spawn(serve_connection(app.clone(), stream, peer.ip(), plane));
                }
            }
            Err(e) if net::is_fd_exhaustion(&e) => {
                warn!(error = %e, "accept failed: out of file descriptors; backing off");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => debug!(error = %e, "accept failed"),
        }
    }
}

/// `--tls-cert`: the handshake (bounded in time), then HTTP as on a plain connection. Plain
/// HTTP gets a plain JSON 400 `tls_required`; every failure is counted by reason.
async fn serve_tls(app: Arc<App>, stream: TcpStream, peer: std::net::IpAddr) {
    let Some(files) = &app.tls else { return };
    let fail = |reason: &str| {
        crate::metrics::TLS_FAILURES
            .with_label_values(&[reason])
            .inc()
    };
    let deadline = tokio::time::Instant::now() + TLS_HANDSHAKE_TIMEOUT;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        // A TLS record starts with its content type: 22, handshake.
        Ok(Ok(1)) if first[0] != 0x16 => {
            fail("plain_http");
            let mut stream = stream;
            let _ = stream
                .write_all(&Rejection::TlsRequired.raw_response())
                .await;
            let _ = stream.shutdown().await;
            return;
        }
        Ok(Ok(1)) => {}
        Ok(_) => return,
        Err(_) => return fail("timeout"),
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(files.config());
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(error = %e, "TLS handshake failed");
            return fail("refused");
        }
        Err(_) => return fail("timeout"),
    };
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    crate::metrics::TLS_HANDSHAKES
        .with_label_values(&[if resumed { "resumed" } else { "full" }])
        .inc();
    serve_connection(app, tls, peer, net::Plane::Api).await
}

/// Serves one HTTP/1.1 connection (upgrades included) until it ends or shutdown drains it.
async fn serve_connection<S>(app: Arc<App>, stream: S, peer: std::net::IpAddr, plane: net::Plane)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = app.shutdown.clone();
    let max_header_bytes = app.config.max_header_bytes;
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let app = app.clone();
        req.extensions_mut().insert(net::Peer(peer));
        req.extensions_mut().insert(plane);
        async move { Ok::<_, Infallible>(handle(app, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // The guard below refuses longer heads first; this stays as a backstop.
        .max_header_size(max_header_bytes)
        // No read while a request is in flight (hyper's early-EOF probe): the next head is
        // read, and a bad one refused by the guard, only once this answer is out.
        .half_close(true);
    let io = GuardIo::new(stream, max_header_bytes);
    let conn = builder
        .serve_connection(TokioIo::new(io), svc)
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
