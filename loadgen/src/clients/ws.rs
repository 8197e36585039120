//! WebSocket client: tokio-tungstenite over a bound TcpStream with small buffers
//! (4 KiB read, eager writes), text frames checked, close codes counted.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use super::{ClientCtx, SessionEnd, Slot};
use crate::checker::SeqChecker;
use crate::net::{with_param, Stream, Target};

pub type WsConn = WebSocketStream<Stream>;

/// Small buffers: loadgen holds many idle sockets too.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
}

/// Opens the WebSocket at `url` (plus `since`, and `epoch` once a gap told it).
pub async fn connect(
    ctx: &ClientCtx,
    url: &str,
    since: Option<u64>,
    epoch: Option<u64>,
) -> Result<WsConn, String> {
    let mut url = match since {
        Some(s) => with_param(url, "since", s),
        None => url.to_string(),
    };
    if let Some(e) = epoch {
        url = with_param(&url, "epoch", e);
    }
    let target = Target::parse(&url).map_err(|_| "ws_bad_url".to_string())?;
    let addr = target
        .resolve()
        .await
        .map_err(|_| "ws_resolve".to_string())?;
    let stream = ctx
        .src
        .dial(addr, &target)
        .await
        .map_err(|e| crate::net::dial_error_kind("ws", &e))?;
    match tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config())).await {
        Ok((ws, _resp)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => Err(format!("ws_http_{}", resp.status().as_u16())),
        Err(_) => Err("ws_handshake".to_string()),
    }
}

/// Reads frames until stopped, churned or closed.
pub async fn session(
    ctx: &ClientCtx,
    mut ws: WsConn,
    checker: &mut SeqChecker,
    slot: &Slot,
) -> SessionEnd {
    loop {
        tokio::select! {
            _ = ctx.stop.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                return SessionEnd::Stopped;
            }
            _ = slot.churn.notified() => return SessionEnd::Churned,
            m = ws.next() => match m {
                None => return SessionEnd::Error("ws_eof".into()),
                Some(Err(_)) => return SessionEnd::Error("ws_error".into()),
                Some(Ok(Message::Text(t))) => {
                    if let Some(end) = ctx.on_text(checker, slot, t.as_bytes()) {
                        return SessionEnd::Error(end);
                    }
                }
                Some(Ok(Message::Binary(_))) => ctx.stats.error("ws_binary_frame"),
                Some(Ok(Message::Close(f))) => {
                    let code = f.map(|f| u16::from(f.code)).unwrap_or(1005);
                    return SessionEnd::Error(format!("ws_close_{code}"));
                }
                Some(Ok(_)) => {}
            }
        }
    }
}
