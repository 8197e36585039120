//! What can go wrong, and what a server said when it refused.

use std::time::Duration;

/// The result of this crate's calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A request a gateway or worker answered with an error: its status and the JSON error
/// body `{"error":"<code>","message":"<text>"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status (401, 413, 429, 503, ...).
    pub status: u16,
    /// The body's `error` code (`unauthorized`, `too_large`, `rate_limited`, ...); empty
    /// when the body was not the JSON error shape.
    pub code: String,
    /// The body's `message`, or the body itself when it was not the JSON error shape.
    pub message: String,
    /// `Retry-After` (whole seconds), when the answer carried one.
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        if !self.code.is_empty() {
            write!(f, " {}", self.code)?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// An error of a publish, or the reason a subscription stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error status.
    #[error("{0}")]
    Refused(Refusal),
    /// A newer connection took the channel (WebSocket close 4001, the SSE event
    /// `{"closed":"replaced"}`, poll 409): the subscription stops and does not reconnect.
    #[error("replaced by a newer connection on this channel")]
    Replaced,
    /// A URL that is not `http(s)://` or `ws(s)://` with a host.
    #[error("bad URL {url:?}: {why}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The TCP connection could not be made.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// A TLS handshake failed, or no TLS configuration could be made.
    #[error("TLS: {0}")]
    Tls(String),
    /// No answer within the deadline.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The HTTP exchange failed (connection closed, malformed answer).
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The WebSocket failed.
    #[error("WebSocket: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    /// An answer that is not what the contract says.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

impl Error {
    /// The HTTP status, when the server refused.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Refused(r) => Some(r.status),
            _ => None,
        }
    }

    /// The JSON `error` code, when the server refused with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Refused(r) if !r.code.is_empty() => Some(&r.code),
            _ => None,
        }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for Error {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Error {
        Error::WebSocket(Box::new(e))
    }
}
