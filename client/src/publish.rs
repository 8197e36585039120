//! Publishing: `POST /v1/publish/{channel}`, NDJSON batches and broadcasts.

use crate::error::{Error, Result};
use crate::net::{self, Body, Target, Tls};
use bytes::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::AUTHORIZATION;
use hyper::Method;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Idle keep-alive connections a publisher keeps for its next requests.
const IDLE_CONNECTIONS: usize = 8;
/// Largest answer read (a batch's `rejected` list can be long).
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Publishes to a gateway. Cheap to clone; clones share their keep-alive connections.
///
/// ```no_run
/// # async fn f() -> pushgate_client::Result<()> {
/// let publisher = pushgate_client::Publisher::new("http://127.0.0.1:8080")?.key("k1");
/// let p = publisher.publish("device-42", r#"{"cmd":"reboot"}"#).await?;
/// println!("seq {}", p.seq);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Publisher {
    base: Target,
    key: Option<String>,
    tls: Tls,
    timeout: Duration,
    idle: Arc<Mutex<Vec<SendRequest<Body>>>>,
}

/// A single publish's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Published {
    /// The message's seq on its channel. A repeated idempotency key answers the seq of
    /// the message it first published (and nothing is delivered twice).
    pub seq: u64,
}

/// One line of an NDJSON batch: `{"channel","data","id"?}`.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// The channel.
    pub channel: String,
    /// The message (any JSON value).
    pub data: serde_json::Value,
    /// The idempotency key, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl Line {
    /// A line without an idempotency key.
    pub fn new(channel: impl Into<String>, data: serde_json::Value) -> Line {
        Line {
            channel: channel.into(),
            data,
            id: None,
        }
    }

    /// This line with an idempotency key.
    pub fn id(mut self, id: impl Into<String>) -> Line {
        self.id = Some(id.into());
        self
    }
}

/// A batch's answer: lines published, and the ones refused (numbered from 1).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BatchResult {
    /// Lines accepted.
    pub accepted: u64,
    /// Lines refused, with why.
    pub rejected: Vec<RejectedLine>,
}

/// A batch line the gateway refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RejectedLine {
    /// The line's number (the first is 1).
    pub line: u64,
    /// Why.
    pub error: String,
}

/// A broadcast's answer: channels the message went to, and the ones refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BroadcastResult {
    /// Channels that got the message.
    pub accepted: u64,
    /// Channels refused (bad or repeated names), with why.
    pub rejected: Vec<RejectedChannel>,
}

/// A broadcast channel the gateway refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RejectedChannel {
    /// The channel as sent.
    pub channel: String,
    /// Why.
    pub error: String,
}

impl Publisher {
    /// A publisher for the gateway at `gateway` (`http://` or `https://`, with an optional
    /// base path). Nothing is sent until the first publish.
    pub fn new(gateway: &str) -> Result<Publisher> {
        Ok(Publisher {
            base: Target::parse(gateway)?,
            key: None,
            tls: Tls::default(),
            timeout: Duration::from_secs(30),
            idle: Arc::default(),
        })
    }

    /// Sends `Authorization: Bearer <key>` (the gateway's `--publisher-key`).
    pub fn key(mut self, key: impl Into<String>) -> Publisher {
        self.key = Some(key.into());
        self
    }

    /// The TLS configuration for an `https://` gateway (default: the system's roots;
    /// see [`tls_config_with_ca`](crate::tls_config_with_ca)).
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Publisher {
        self.tls = Tls::custom(config);
        self
    }

    /// How long a request may take, connecting included (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Publisher {
        self.timeout = timeout;
        self
    }

    /// Publishes `body` (a `String`, `Vec<u8>`, `Bytes` or `&'static str`) to `channel`:
    /// JSON goes through as JSON, anything else as a string. Answers the message's seq.
    pub async fn publish(&self, channel: &str, body: impl Into<Bytes>) -> Result<Published> {
        self.publish_inner(channel, body.into(), None).await
    }

    /// Publishes with an `Idempotency-Key`: a repeat within the retention window answers
    /// the first one's seq and is not delivered again.
    pub async fn publish_with_key(
        &self,
        channel: &str,
        body: impl Into<Bytes>,
        idempotency_key: &str,
    ) -> Result<Published> {
        self.publish_inner(channel, body.into(), Some(idempotency_key))
            .await
    }

    async fn publish_inner(
        &self,
        channel: &str,
        body: Bytes,
        key: Option<&str>,
    ) -> Result<Published> {
        let path = format!("/v1/publish/{}", net::encode(channel));
        let headers: &[(&str, &str)] = match key {
            Some(k) => &[("idempotency-key", k)],
            None => &[],
        };
        self.post(&path, headers, body).await
    }

    /// Publishes many messages in one `POST /v1/publish` (NDJSON). A bad line never
    /// loses the good ones: the answer lists what was refused.
    pub async fn publish_batch(
        &self,
        lines: impl IntoIterator<Item = Line>,
    ) -> Result<BatchResult> {
        let mut body = Vec::new();
        for line in lines {
            serde_json::to_writer(&mut body, &line).map_err(|e| Error::Protocol(e.to_string()))?;
            body.push(b'\n');
        }
        self.post(
            "/v1/publish",
            &[("content-type", "application/x-ndjson")],
            body.into(),
        )
        .await
    }

    /// Publishes `data` on every channel listed (`POST /v1/broadcast`), each with its own
    /// next seq; `id` is the idempotency key on each channel.
    pub async fn broadcast<S: AsRef<str>>(
        &self,
        channels: &[S],
        data: &serde_json::Value,
        id: Option<&str>,
    ) -> Result<BroadcastResult> {
        let channels: Vec<&str> = channels.iter().map(AsRef::as_ref).collect();
        let mut v = serde_json::json!({ "channels": channels, "data": data });
        if let Some(id) = id {
            v["id"] = id.into();
        }
        self.post(
            "/v1/broadcast",
            &[("content-type", "application/json")],
            v.to_string().into(),
        )
        .await
    }

    /// POSTs `body` to `path` and reads a 2xx answer as `T`.
    async fn post<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<T> {
        let target = self.base.join(path);
        let exchange = async {
            let (mut sender, reused) = self.connection(&target).await?;
            let mut resp = sender
                .send_request(self.build(&target, headers, body.clone()))
                .await;
            if reused && matches!(&resp, Err(e) if e.is_canceled()) {
                // The kept connection had closed before the request went out: nothing of
                // it was sent, so a fresh connection may send it.
                sender = net::http_connect(&target, &self.tls, self.timeout).await?;
                resp = sender
                    .send_request(self.build(&target, headers, body))
                    .await;
            }
            let resp = resp?;
            let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
            let answer = net::read_body(resp, MAX_ANSWER_BYTES).await?;
            self.keep(sender);
            Ok::<_, Error>((status, headers, answer))
        };
        let (status, headers, answer) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Error::Timeout("publish"))??;
        if !(200..300).contains(&status) {
            return Err(Error::Refused(net::refusal(status, &headers, &answer)));
        }
        serde_json::from_slice(&answer)
            .map_err(|e| Error::Protocol(format!("{e}: {:?}", String::from_utf8_lossy(&answer))))
    }

    fn build(
        &self,
        target: &Target,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> hyper::Request<Body> {
        let mut b = net::request(Method::POST, target);
        if let Some(k) = &self.key {
            b = b.header(AUTHORIZATION, format!("Bearer {k}"));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::new(body)).expect("a valid request")
    }

    /// A kept connection that is still open, or a new one (`true`: kept).
    async fn connection(&self, target: &Target) -> Result<(SendRequest<Body>, bool)> {
        loop {
            let kept = self.idle.lock().expect("idle list").pop();
            match kept {
                Some(mut s) if !s.is_closed() => {
                    if s.ready().await.is_ok() {
                        return Ok((s, true));
                    }
                }
                Some(_) => continue,
                None => break,
            }
        }
        Ok((
            net::http_connect(target, &self.tls, self.timeout).await?,
            false,
        ))
    }

    fn keep(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("idle list");
        if idle.len() < IDLE_CONNECTIONS {
            idle.push(sender);
        }
    }
}
