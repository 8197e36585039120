//! Sockets and plain HTTP/1.1: URL targets, bound source addresses (round-robin, with
//! `IP_BIND_ADDRESS_NO_PORT`), one-connection hyper clients and a small keep-alive pool.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

/// Where an absolute http(s)/ws(s) URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// `https://` or `wss://`.
    pub tls: bool,
    /// Path and query, e.g. `/v1/ws?channel=c`.
    pub path: String,
}

impl Target {
    /// Parses `http://host:port/path?query` (also `ws://`, `https://`, `wss://`).
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let (scheme, rest) = url
            .split_once("://")
            .with_context(|| format!("not an absolute URL: {url}"))?;
        let (default_port, tls) = match scheme {
            "http" | "ws" => (80, false),
            "https" | "wss" => (443, true),
            s => bail!("unsupported scheme {s:?} in {url}"),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').context("bad IPv6 authority")?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().context("bad port")?,
                None => default_port,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().with_context(|| format!("bad port in {url}"))?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            bail!("no host in {url}");
        }
        Ok(Target {
            host,
            port,
            tls,
            path,
        })
    }

    /// `host:port` for the Host header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Resolves the host (an IP literal needs no lookup).
    pub async fn resolve(&self) -> anyhow::Result<SocketAddr> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .next()
            .ok_or_else(|| anyhow!("{} does not resolve", self.host))
    }
}

/// Appends `&name=value` (or `?name=value`) to a URL or path.
pub fn with_param(url: &str, name: &str, value: impl std::fmt::Display) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{name}={value}")
}

/// A dial that failed in the TLS handshake (a certificate not trusted, say), as opposed to
/// the TCP connect.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake: {0}")]
pub struct TlsFailed(pub String);

fn is_tls_failure(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<TlsFailed>())
}

fn dial_kind(prefix: &str, tls: bool) -> String {
    format!("{prefix}_{}", if tls { "tls" } else { "connect" })
}

/// `<prefix>_tls` for a dial that failed in its TLS handshake, else `<prefix>_connect`.
pub fn dial_error_kind(prefix: &str, e: &std::io::Error) -> String {
    dial_kind(prefix, is_tls_failure(e))
}

/// [`dial_error_kind`] for an error with the dial's somewhere in its chain.
pub fn connect_error_kind(prefix: &str, e: &anyhow::Error) -> String {
    let tls = e
        .chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(is_tls_failure);
    dial_kind(prefix, tls)
}

/// A connection to a target: plain TCP, or TLS over it for `https://` / `wss://`.
pub type Stream = tokio_util::either::Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// How connections are dialed: local source addresses used round-robin (empty = let the
/// kernel choose), and the TLS client for TLS targets, with its handshake counts.
pub struct SourceIps {
    ips: Vec<IpAddr>,
    next: AtomicUsize,
    tls: Option<tokio_rustls::TlsConnector>,
    /// TLS handshakes done: full, resumed.
    pub tls_full: AtomicU64,
    pub tls_resumed: AtomicU64,
    /// TLS handshake time, TCP connected to handshake done (µs).
    pub tls_handshake: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
    /// The TLS client's tickets (how many handshakes offered one).
    pub tickets: Option<Arc<crate::tls::TicketPool>>,
}

impl Default for SourceIps {
    fn default() -> Self {
        SourceIps {
            ips: Vec::new(),
            next: AtomicUsize::new(0),
            tls: None,
            tls_full: AtomicU64::new(0),
            tls_resumed: AtomicU64::new(0),
            tls_handshake: std::sync::Mutex::new(crate::stats::new_hist()),
            tickets: None,
        }
    }
}

impl std::fmt::Debug for SourceIps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceIps")
            .field("ips", &self.ips)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl SourceIps {
    pub fn new(ips: Vec<IpAddr>) -> SourceIps {
        SourceIps {
            ips,
            ..Default::default()
        }
    }

    /// Dials TLS targets with `config` (one session cache for every client).
    pub fn with_tls(
        mut self,
        config: Arc<rustls::ClientConfig>,
        tickets: Arc<crate::tls::TicketPool>,
    ) -> SourceIps {
        self.tls = Some(tokio_rustls::TlsConnector::from(config));
        self.tickets = Some(tickets);
        self
    }

    /// TLS handshakes that offered a ticket.
    pub fn tls_offered(&self) -> u64 {
        self.tickets
            .as_ref()
            .map_or(0, |t| t.offered.load(Ordering::Relaxed))
    }

    /// Connects to `target` (resolved as `addr`), with TLS when it is a TLS URL.
    pub async fn dial(&self, addr: SocketAddr, target: &Target) -> std::io::Result<Stream> {
        let tcp = self.connect(addr).await?;
        if !target.tls {
            return Ok(tokio_util::either::Either::Left(tcp));
        }
        let Some(tls) = &self.tls else {
            return Err(std::io::Error::other("a TLS URL needs --ca or --insecure"));
        };
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(std::io::Error::other)?;
        let t0 = std::time::Instant::now();
        let s = tls.connect(name, tcp).await.map_err(|e| {
            tracing::debug!(error = %e, host = %target.host, "TLS handshake failed");
            // A TLS refusal (certificate, protocol) is its own kind; the connection being
            // reset or closed mid-handshake is a connect failure like any other.
            if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
                std::io::Error::other(TlsFailed(e.to_string()))
            } else {
                e
            }
        })?;
        let us = t0.elapsed().as_micros() as u64;
        let _ = self.tls_handshake.lock().unwrap().record(us.max(1));
        let counter = match s.get_ref().1.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => &self.tls_resumed,
            _ => &self.tls_full,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(tokio_util::either::Either::Right(s))
    }

    /// The next source address of the same family as `dst`, if any are configured.
    pub fn pick(&self, dst: &SocketAddr) -> Option<IpAddr> {
        if self.ips.is_empty() {
            return None;
        }
        let n = self.ips.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| self.ips[(start + k) % n])
            .find(|ip| ip.is_ipv4() == dst.is_ipv4())
    }

    /// Connects to `dst`, bound to the next source address. The port is left to `connect`
    /// (`IP_BIND_ADDRESS_NO_PORT`), so ports are unique per 4-tuple, not per source address.
    pub async fn connect(&self, dst: SocketAddr) -> std::io::Result<TcpStream> {
        let stream = match self.pick(&dst) {
            None => TcpStream::connect(dst).await?,
            Some(src) => {
                let socket = if dst.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                set_bind_no_port(&socket);
                socket.bind(SocketAddr::new(src, 0))?;
                socket.connect(dst).await?
            }
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

fn set_bind_no_port(socket: &TcpSocket) {
    bind_no_port(socket.as_raw_fd());
}

/// `IP_BIND_ADDRESS_NO_PORT` on `fd`: a bound source address takes its port at connect.
pub fn bind_no_port(fd: std::os::fd::RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Request body type of every loadgen HTTP client.
pub type ReqBody = Full<Bytes>;

/// Opens one HTTP/1.1 connection and drives it on its own task.
pub async fn http_connect(
    src: &SourceIps,
    target: &Target,
) -> anyhow::Result<SendRequest<ReqBody>> {
    let addr = target.resolve().await?;
    let stream = src
        .dial(addr, target)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Builds a request with Host and optional bearer auth.
pub fn request(
    method: Method,
    target: &Target,
    path: &str,
    bearer: Option<&str>,
    body: Bytes,
) -> Request<ReqBody> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, target.authority());
    if let Some(key) = bearer {
        b = b.header(hyper::header::AUTHORIZATION, format!("Bearer {key}"));
    }
    b.body(Full::new(body)).expect("valid request")
}

/// Why an HTTP exchange failed, as a bounded label.
#[derive(Debug)]
pub enum HttpError {
    Connect(anyhow::Error),
    Timeout,
    Io(anyhow::Error),
}

impl HttpError {
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Connect(_) => "connect",
            HttpError::Timeout => "timeout",
            HttpError::Io(_) => "io",
        }
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Connect(e) => write!(f, "connect: {e:#}"),
            HttpError::Timeout => write!(f, "timeout"),
            HttpError::Io(e) => write!(f, "io: {e:#}"),
        }
    }
}

/// Sends one request on `sender` and reads the whole response body, under `timeout`.
pub async fn exchange(
    sender: &mut SendRequest<ReqBody>,
    req: Request<ReqBody>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), HttpError> {
    let fut = async {
        sender.ready().await.map_err(|e| HttpError::Io(e.into()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| HttpError::Io(e.into()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| HttpError::Io(e.into()))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or(Err(HttpError::Timeout))
}

/// A few keep-alive connections to one host, used round-robin; a broken one is reopened.
pub struct HttpPool {
    target: Target,
    src: Arc<SourceIps>,
    slots: Vec<tokio::sync::Mutex<Option<SendRequest<ReqBody>>>>,
    next: AtomicUsize,
    timeout: Duration,
}

impl HttpPool {
    pub fn new(target: Target, src: Arc<SourceIps>, size: usize, timeout: Duration) -> HttpPool {
        HttpPool {
            target,
            src,
            slots: (0..size.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            timeout,
        }
    }

    /// One request; `path` is path and query on the pool's host.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        bearer: Option<&str>,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // Prefer an idle slot; otherwise queue on the round-robin one.
        let mut guard = None;
        for k in 0..n {
            if let Ok(g) = self.slots[(start + k) % n].try_lock() {
                guard = Some(g);
                break;
            }
        }
        let mut guard = match guard {
            Some(g) => g,
            None => self.slots[start % n].lock().await,
        };
        if guard.as_ref().is_none_or(|s| s.is_closed()) {
            // A connect that timed out never sent the request: a connect error.
            let c = tokio::time::timeout(self.timeout, http_connect(&self.src, &self.target))
                .await
                .map_err(|_| HttpError::Connect(anyhow!("connect timed out")))?
                .map_err(HttpError::Connect)?;
            *guard = Some(c);
        }
        let mut req = request(method, &self.target, path, bearer, body);
        for (k, v) in headers {
            req.headers_mut().insert(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                hyper::header::HeaderValue::from_str(v).expect("header value"),
            );
        }
        let sender = guard.as_mut().expect("connected");
        let r = exchange(sender, req, self.timeout).await;
        if r.is_err() {
            *guard = None;
        }
        r
    }
}

/// How long a gateway that could not be reached is passed over (tried last).
const DOWN_FOR: Duration = Duration::from_secs(1);

/// One [`HttpPool`] per gateway: each request goes to the next gateway in turn and, when
/// that one cannot be reached, on to the following one, each at most once. "Cannot be
/// reached" is a failed connect for every request (it was never sent); for an idempotent
/// one (an assign, a publish with an idempotency key) also a timeout, a reset or a 5xx. A gateway that could not be reached is tried last
/// for a second, so a dead host costs one refused connect, not one per request. With one
/// gateway this is exactly one [`HttpPool::send`].
pub struct Gateways {
    bases: Vec<String>,
    pools: Vec<HttpPool>,
    down_until: Vec<std::sync::Mutex<Option<std::time::Instant>>>,
    next: AtomicUsize,
}

impl Gateways {
    /// `size` keep-alive connections to each of `bases` (`http://host:port`).
    pub fn new(
        bases: &[String],
        src: Arc<SourceIps>,
        size: usize,
        timeout: Duration,
    ) -> anyhow::Result<Gateways> {
        if bases.is_empty() {
            bail!("no gateway");
        }
        let mut pools = Vec::with_capacity(bases.len());
        for b in bases {
            pools.push(HttpPool::new(Target::parse(b)?, src.clone(), size, timeout));
        }
        Ok(Gateways {
            bases: bases
                .iter()
                .map(|b| b.trim_end_matches('/').to_string())
                .collect(),
            down_until: bases.iter().map(|_| std::sync::Mutex::new(None)).collect(),
            pools,
            next: AtomicUsize::new(0),
        })
    }

    /// Base URL of gateway `i` (no trailing slash).
    pub fn base(&self, i: usize) -> &str {
        &self.bases[i]
    }

    /// The order this request tries the gateways in: round-robin, reachable ones first.
    fn order(&self) -> Vec<usize> {
        let n = self.pools.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = std::time::Instant::now();
        let (mut up, mut down) = (Vec::with_capacity(n), Vec::new());
        for k in 0..n {
            let i = (start + k) % n;
            let is_down = self.down_until[i]
                .lock()
                .unwrap()
                .is_some_and(|until| until > now);
            if is_down {
                down.push(i);
            } else {
                up.push(i);
            }
        }
        up.extend(down);
        up
    }

    /// One request, failing over as described on [`Gateways`]; also says which gateway
    /// gave the answer (or the last error).
    pub async fn send(
        &self,
        idempotent: bool,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        bearer: Option<&str>,
        body: Bytes,
    ) -> (Result<(StatusCode, Bytes), HttpError>, usize) {
        let order = self.order();
        let last = order.len() - 1;
        for (k, i) in order.into_iter().enumerate() {
            let r = self.pools[i]
                .send(method.clone(), path, headers, bearer, body.clone())
                .await;
            let unreachable = matches!(r, Err(HttpError::Connect(_) | HttpError::Timeout));
            *self.down_until[i].lock().unwrap() =
                unreachable.then(|| std::time::Instant::now() + DOWN_FOR);
            let failed = match &r {
                Err(HttpError::Connect(_)) => true,
                Err(_) => idempotent,
                Ok((status, _)) => idempotent && status.is_server_error(),
            };
            if !failed || k == last {
                return (r, i);
            }
        }
        unreachable!("at least one gateway")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_are_told_apart_from_connect_failures() {
        let tls = std::io::Error::other(TlsFailed("unknown issuer".into()));
        assert_eq!(dial_error_kind("ws", &tls), "ws_tls");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(dial_error_kind("ws", &refused), "ws_connect");
        let wrapped = anyhow::Error::from(tls).context("connect 127.0.0.2:9");
        assert_eq!(connect_error_kind("sse", &wrapped), "sse_tls");
        let wrapped = anyhow::Error::from(refused).context("connect 127.0.0.2:9");
        assert_eq!(connect_error_kind("poll", &wrapped), "poll_connect");
        // A TLS failure is a setup error, not a drop to resume from.
        assert!(!crate::stats::is_drop_kind("ws_tls"));
    }

    #[test]
    fn targets() {
        let t = Target::parse("ws://127.0.0.2:9000/v1/ws?channel=a&token=b").unwrap();
        assert_eq!(t.host, "127.0.0.2");
        assert_eq!(t.port, 9000);
        assert_eq!(t.path, "/v1/ws?channel=a&token=b");
        let t = Target::parse("http://localhost").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        let t = Target::parse("http://h:1?x=1").unwrap();
        assert_eq!(t.path, "/?x=1");
        let t = Target::parse("http://[::1]:8080/x").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority()),
            ("::1", 8080, "[::1]:8080".to_string())
        );
        let t = Target::parse("wss://h/x").unwrap();
        assert!(t.tls && t.port == 443);
        assert!(!Target::parse("ws://h/x").unwrap().tls);
        assert!(Target::parse("ftp://h/x").is_err());
        assert!(Target::parse("/relative").is_err());
        assert_eq!(with_param("/a?b=1", "since", 5), "/a?b=1&since=5");
        assert_eq!(with_param("/a", "since", 5), "/a?since=5");
    }

    #[test]
    fn gateways_take_turns_and_unreachable_ones_go_last() {
        let g = Gateways::new(
            &["http://10.0.0.1:1".into(), "http://10.0.0.2:2/".into()],
            Arc::new(SourceIps::default()),
            1,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(g.base(1), "http://10.0.0.2:2");
        assert_eq!(g.order(), vec![0, 1]);
        assert_eq!(g.order(), vec![1, 0]);
        *g.down_until[0].lock().unwrap() = Some(std::time::Instant::now() + DOWN_FOR);
        assert_eq!(g.order(), vec![1, 0]);
        assert_eq!(g.order(), vec![1, 0]);
        // Once its time is over it takes its turn again.
        *g.down_until[0].lock().unwrap() = Some(std::time::Instant::now());
        assert_eq!(g.order(), vec![0, 1]);
        assert!(Gateways::new(&[], Arc::new(SourceIps::default()), 1, DOWN_FOR).is_err());
    }

    #[tokio::test]
    async fn a_refused_connect_goes_to_the_next_gateway_a_timeout_only_if_idempotent() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A gateway that answers 200, and one that accepts and never answers.
        let ok = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ok_url = format!("http://{}", ok.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = ok.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while s.read(&mut buf).await.is_ok_and(|n| n > 0) {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                });
            }
        });
        let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mute_url = format!("http://{}", mute.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                held.push(mute.accept().await.unwrap().0);
            }
        });
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let src = Arc::new(SourceIps::default());
        let g = Gateways::new(
            &[refused, ok_url.clone()],
            src.clone(),
            1,
            Duration::from_millis(300),
        )
        .unwrap();
        for _ in 0..2 {
            let (r, i) = g
                .send(false, Method::GET, "/", &[], None, Bytes::new())
                .await;
            assert_eq!((r.unwrap().0, i), (StatusCode::OK, 1));
        }
        let g = Gateways::new(&[mute_url, ok_url], src, 1, Duration::from_millis(300)).unwrap();
        // Not idempotent: the timed-out request may have been done; it is not sent again.
        let (r, i) = g
            .send(false, Method::POST, "/", &[], None, Bytes::new())
            .await;
        assert!(matches!(r, Err(HttpError::Timeout)) && i == 0, "{r:?}");
        // Idempotent: the next gateway answers.
        g.next.store(0, Ordering::Relaxed);
        let (r, i) = g
            .send(true, Method::GET, "/", &[], None, Bytes::new())
            .await;
        assert_eq!((r.unwrap().0, i), (StatusCode::OK, 1));
    }

    #[test]
    fn source_ips_round_robin_by_family() {
        let s = SourceIps::new(vec![
            "127.0.1.1".parse().unwrap(),
            "::1".parse().unwrap(),
            "127.0.1.2".parse().unwrap(),
        ]);
        let v4: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let picks: Vec<_> = (0..4).map(|_| s.pick(&v4).unwrap().to_string()).collect();
        assert!(picks.iter().all(|p| p.starts_with("127.0.1.")));
        assert!(
            picks.contains(&"127.0.1.1".to_string()) && picks.contains(&"127.0.1.2".to_string())
        );
        assert_eq!(SourceIps::default().pick(&v4), None);
    }
}
