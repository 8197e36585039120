//! URLs, connections (plain or TLS), and HTTP/1 exchanges over hyper's connection API.

use crate::error::{Error, Refusal, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A byte stream: a TCP connection, or TLS over one.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// What one HTTP exchange sends.
pub(crate) type Body = Full<Bytes>;

/// A URL split into what a connection needs.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub tls: bool,
    /// Host without IPv6 brackets (for connecting and for TLS).
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Target {
    /// Parses `http(s)://` or `ws(s)://` URLs.
    pub fn parse(url: &str) -> Result<Target> {
        let bad = |why| Error::Url {
            url: url.to_owned(),
            why,
        };
        let (tls, rest) = [
            ("https://", true),
            ("wss://", true),
            ("http://", false),
            ("ws://", false),
        ]
        .iter()
        .find_map(|(p, tls)| url.strip_prefix(p).map(|r| (*tls, r)))
        .ok_or_else(|| bad("not an http(s):// or ws(s):// URL"))?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        if authority.contains('@') {
            return Err(bad("user info in a URL is not supported"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            match after.strip_prefix(':') {
                Some(p) => (h, p.parse().map_err(|_| bad("bad port"))?),
                None if after.is_empty() => (h, default_port),
                None => return Err(bad("junk after ']'")),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| bad("bad port"))?),
                None => (authority, default_port),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Target {
            tls,
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            path,
        })
    }

    /// This target with `path` instead (a gateway's base path kept in front of it).
    pub fn join(&self, path: &str) -> Target {
        let base = self
            .path
            .split('?')
            .next()
            .unwrap_or("")
            .trim_end_matches('/');
        Target {
            path: format!("{base}{path}"),
            ..self.clone()
        }
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.authority_host(), self.port)
    }

    fn authority_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

/// Appends `key=value` (value percent-encoded) to a URL's query.
pub(crate) fn with_param(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={}", encode(value))
}

/// Percent-encodes everything but RFC 3986's unreserved characters and the channel
/// name's `:` and `@`, which are safe in a path segment and in a query value.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The TLS client configuration used for `https://` and `wss://` URLs.
#[derive(Clone, Default)]
pub(crate) struct Tls(Option<Arc<ClientConfig>>);

impl Tls {
    pub fn custom(config: Arc<ClientConfig>) -> Tls {
        Tls(Some(config))
    }

    fn config(&self) -> Result<Arc<ClientConfig>> {
        if let Some(c) = &self.0 {
            return Ok(c.clone());
        }
        static SYSTEM: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
        SYSTEM
            .get_or_init(|| {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = rustls::RootCertStore::empty();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    return Err("no system CA certificates found; give a TLS configuration".into());
                }
                config_with_roots(roots).map_err(|e| e.to_string())
            })
            .clone()
            .map_err(Error::Tls)
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "custom"
        } else {
            "system roots"
        })
    }
}

fn config_with_roots(roots: rustls::RootCertStore) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TLS client configuration that trusts the CA certificates in `pem` (one or more PEM
/// `CERTIFICATE` blocks) instead of the system's: for a fleet with a private CA.
pub fn tls_config_with_ca(pem: &[u8]) -> Result<Arc<ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| Error::Tls(format!("CA PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Tls(format!("CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::Tls("no certificate in the CA PEM".into()));
    }
    config_with_roots(roots)
}

/// Opens a connection to `t` (TLS for `https://`/`wss://`), within `timeout`.
pub(crate) async fn dial(t: &Target, tls: &Tls, timeout: Duration) -> Result<Box<dyn Io>> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((t.host.as_str(), t.port)))
        .await
        .map_err(|_| Error::Timeout("connect"))?
        .map_err(|source| Error::Connect {
            addr: t.addr(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    if !t.tls {
        return Ok(Box::new(tcp));
    }
    let name = ServerName::try_from(t.host.clone())
        .map_err(|_| Error::Tls(format!("{:?} is not a TLS server name", t.host)))?;
    let connector = tokio_rustls::TlsConnector::from(tls.config()?);
    let stream = tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| Error::Timeout("TLS handshake"))?
        .map_err(|e| Error::Tls(e.to_string()))?;
    Ok(Box::new(stream))
}

/// Opens an HTTP/1 connection to `t`; its driver runs on a task of its own until the
/// returned sender (and any response body) is dropped.
pub(crate) async fn http_connect(
    t: &Target,
    tls: &Tls,
    timeout: Duration,
) -> Result<SendRequest<Body>> {
    let io = dial(t, tls, timeout).await?;
    let (sender, conn) = tokio::time::timeout(
        timeout,
        hyper::client::conn::http1::handshake(TokioIo::new(io)),
    )
    .await
    .map_err(|_| Error::Timeout("HTTP handshake"))??;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// A request to `t` (its path and query) with the `Host` header set.
pub(crate) fn request(method: hyper::Method, t: &Target) -> hyper::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(t.path.as_str())
        .header(hyper::header::HOST, t.authority.as_str())
}

/// Reads a whole response body, at most `limit` bytes.
pub(crate) async fn read_body(
    resp: Response<hyper::body::Incoming>,
    limit: usize,
) -> Result<Bytes> {
    match Limited::new(resp.into_body(), limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => match e.downcast::<hyper::Error>() {
            Ok(e) => Err(Error::Http(*e)),
            Err(_) => Err(Error::Protocol(format!("an answer over {limit} bytes"))),
        },
    }
}

/// A `Retry-After` header in whole seconds (at most an hour).
pub(crate) fn retry_after(headers: &hyper::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(hyper::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(3600)))
}

/// The refusal an error answer carries.
pub(crate) fn refusal(status: u16, headers: &hyper::HeaderMap, body: &[u8]) -> Refusal {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: Option<String>,
        message: Option<String>,
    }
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => (b.error.unwrap_or_default(), b.message.unwrap_or_default()),
        Err(_) => (
            String::new(),
            String::from_utf8_lossy(body).trim().to_owned(),
        ),
    };
    Refusal {
        status,
        code,
        message,
        retry_after: retry_after(headers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        let t = Target::parse("https://gw.example/push/").unwrap();
        assert!(t.tls);
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("gw.example", 443, "/push/")
        );
        assert_eq!(
            t.join("/v1/assign?channel=a").path,
            "/push/v1/assign?channel=a"
        );
        let t = Target::parse("ws://127.0.0.2:9000/v1/ws?channel=a").unwrap();
        assert!(!t.tls);
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.2", 9000));
        assert_eq!(t.path, "/v1/ws?channel=a");
        assert_eq!(t.authority, "127.0.0.2:9000");
        let t = Target::parse("http://[::1]:8080").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 8080, "/")
        );
        assert_eq!(t.addr(), "[::1]:8080");
        assert_eq!(t.join("/v1/publish/x").path, "/v1/publish/x");
        let t = Target::parse("http://h?x=1").unwrap();
        assert_eq!(t.path, "/?x=1");
        for bad in [
            "ftp://x",
            "http://",
            "http://h:port",
            "http://u@h",
            "http://[::1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn params_encode() {
        assert_eq!(
            with_param("ws://h/v1/ws?channel=a", "since", "5"),
            "ws://h/v1/ws?channel=a&since=5"
        );
        assert_eq!(
            with_param("http://h/v1/assign", "channel", "d:1@x"),
            "http://h/v1/assign?channel=d:1@x"
        );
        assert_eq!(encode("a b/c&d"), "a%20b%2Fc%26d");
    }

    #[test]
    fn refusals_read() {
        let mut h = hyper::HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        let r = refusal(
            429,
            &h,
            br#"{"error":"rate_limited","message":"slow down"}"#,
        );
        assert_eq!(r.code, "rate_limited");
        assert_eq!(r.retry_after, Some(Duration::from_secs(3)));
        assert_eq!(r.to_string(), "HTTP 429 rate_limited: slow down");
        let r = refusal(502, &hyper::HeaderMap::new(), b"bad gateway\n");
        assert_eq!((r.code.as_str(), r.message.as_str()), ("", "bad gateway"));
    }
}
