//! A pushgate subscriber in a few lines of tokio-tungstenite: assign, WebSocket, resume
//! with `since` and `epoch`, jittered back-off, stop when replaced (docs/recipes.md).
//!
//!     cargo run -p loadgen --example subscribe -- http://127.0.0.1:8080 device-7 [COUNT]

use futures_util::StreamExt;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// `GET {gateway}/v1/assign?channel=...` over plain HTTP/1.1; the `ws_url` of the answer.
async fn assign(gateway: &str, channel: &str) -> anyhow::Result<String> {
    let host = gateway.strip_prefix("http://").unwrap_or(gateway);
    let mut tcp = tokio::net::TcpStream::connect(host).await?;
    let req = format!(
        "GET /v1/assign?channel={channel} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "assign: {head} {body}");
    let v: serde_json::Value = serde_json::from_str(body)?;
    Ok(v["ws_url"].as_str().unwrap_or_default().to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (gateway, channel) = (&args[1], &args[2]);
    let mut left: i64 = args.get(3).map_or(Ok(-1), |n| n.parse())?;
    let (mut since, mut epoch) = (0u64, None::<u64>);
    let mut failures = 0u32;
    loop {
        let mut opened = false;
        let mut code = None;
        if let Ok(url) = assign(gateway, channel).await {
            let mut url = format!("{url}&since={since}");
            if let Some(e) = epoch {
                url.push_str(&format!("&epoch={e}"));
            }
            if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await {
                opened = true;
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) => {
                            let f: serde_json::Value = serde_json::from_str(t.as_str())?;
                            if f["gap"] == true {
                                // Messages before first_seq are gone: reload the state.
                                epoch = f["epoch"].as_u64();
                                since = f["first_seq"].as_u64().unwrap_or(1) - 1;
                                continue;
                            }
                            let seq = f["seq"].as_u64().unwrap_or(0);
                            if seq <= since {
                                continue; // a duplicate
                            }
                            since = seq;
                            println!("{seq} {}", f["data"]);
                            left -= 1;
                            if left == 0 {
                                return Ok(());
                            }
                        }
                        Message::Close(frame) => code = frame.map(|f| u16::from(f.code)),
                        _ => {} // pings are answered by tungstenite
                    }
                }
            }
        }
        if code == Some(4001) {
            anyhow::bail!("replaced: another connection has this channel");
        }
        // After a connection that worked: 200 ms; each failure (or 1013, 4003) doubles it,
        // up to 3.2 s; every wait × a random 0.5-1.5.
        let backs_off = !opened || matches!(code, Some(1013 | 4003));
        failures = if backs_off { failures + 1 } else { 0 };
        let ms = (200u64 << failures.min(4)) as f64 * (0.5 + rand::random::<f64>());
        eprintln!("closed ({code:?}); reconnecting in {ms:.0} ms");
        tokio::time::sleep(Duration::from_millis(ms as u64)).await;
    }
}
