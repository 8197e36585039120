//! `pushgate`: publish and subscribe from shell scripts, over the public HTTP contract.
//!
//!     pushgate pub --gateway https://push.example CHANNEL DATA
//!     pushgate sub --gateway https://push.example CHANNEL [--since S] [--count N] [--timeout SECS]
//!
//! `sub` asks `/v1/assign` where to connect and reads the channel's messages over a
//! WebSocket, printing each one's JSON on its own line. `--session-file PATH` keeps the TLS
//! sessions between runs, so a script that runs this many times a minute resumes instead
//! of making a full handshake each time (`-v` says which it was).

mod session_file;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use openssl::ssl::{Ssl, SslContext, SslMethod, SslSessionCacheMode, SslStream, SslVerifyMode};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "pushgate",
    version,
    about = "pushgate client: publish and subscribe from the command line"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish DATA (`-` reads it from stdin) to CHANNEL; prints the answer (`{"seq":N}`).
    Pub {
        #[command(flatten)]
        common: Common,
        channel: String,
        data: String,
        /// Publisher key (the gateway's `--publisher-key`).
        #[arg(long, env = "PUSHGATE_PUBLISHER_KEY", hide_env_values = true)]
        key: Option<String>,
    },
    /// Print CHANNEL's messages, one JSON object per line.
    Sub {
        #[command(flatten)]
        common: Common,
        channel: String,
        /// Resume after this seq (the messages retained since then come first).
        #[arg(long)]
        since: Option<u64>,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds (with `--count`: a failure if fewer came).
        #[arg(long)]
        timeout: Option<f64>,
        /// Subscriber token, when the gateway checks them.
        #[arg(long, env = "PUSHGATE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

#[derive(Args)]
struct Common {
    /// The gateway (`http://` or `https://`).
    #[arg(
        long,
        env = "PUSHGATE_GATEWAY",
        default_value = "http://127.0.0.1:8080"
    )]
    gateway: String,
    /// CA certificates (PEM) to trust instead of the system's.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Keep TLS sessions in this file between runs (mode 0600).
    #[arg(long)]
    session_file: Option<PathBuf>,
    /// Say on stderr how each TLS connection was made (`tls: full` / `tls: resumed`) and
    /// how many bytes it moved.
    #[arg(short, long)]
    verbose: bool,
}

/// `scheme://host[:port]/path?query`, split.
struct Url {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> anyhow::Result<Url> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("wss://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("ws://") {
        (false, r)
    } else {
        bail!("{url:?}: not an http(s):// or ws(s):// URL");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']').to_owned(),
            p.parse().context("bad port")?,
        ),
        _ => (authority.to_owned(), if tls { 443 } else { 80 }),
    };
    if host.is_empty() {
        bail!("{url:?}: no host");
    }
    Ok(Url {
        tls,
        host,
        port,
        path: path.to_owned(),
    })
}

/// Bytes moved over a socket (both ways), for `-v`.
#[derive(Debug)]
struct Counted {
    inner: TcpStream,
    read: u64,
    written: u64,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

enum Stream {
    Plain(Counted),
    Tls(Box<SslStream<Counted>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => &s.inner,
            Stream::Tls(s) => &s.get_ref().inner,
        }
    }

    fn counts(&self) -> (u64, u64) {
        match self {
            Stream::Plain(s) => (s.written, s.read),
            Stream::Tls(s) => (s.get_ref().written, s.get_ref().read),
        }
    }
}

/// How connections are made: the TLS client (made on the first TLS dial) and the sessions
/// it keeps.
struct Dialer {
    tls: Option<SslContext>,
    ca: Option<PathBuf>,
    sessions: Option<Arc<Mutex<session_file::SessionFile>>>,
    /// The server name the connection being made is for (connections are made one at a
    /// time): the name its tickets are kept under.
    current: Arc<Mutex<String>>,
    verbose: bool,
}

impl Dialer {
    fn new(common: &Common) -> anyhow::Result<Dialer> {
        let sessions = match &common.session_file {
            Some(p) => Some(Arc::new(Mutex::new(session_file::SessionFile::open(p)?))),
            None => None,
        };
        Ok(Dialer {
            tls: None,
            ca: common.ca.clone(),
            sessions,
            current: Arc::new(Mutex::new(String::new())),
            verbose: common.verbose,
        })
    }

    /// The TLS context: `--ca`, or the system's roots (reading those costs ~40 ms, so only
    /// when they are needed).
    fn context(&mut self) -> anyhow::Result<&SslContext> {
        if self.tls.is_none() {
            let ctx = self.build_context()?;
            self.tls = Some(ctx);
        }
        Ok(self.tls.as_ref().expect("made above"))
    }

    fn build_context(&self) -> anyhow::Result<SslContext> {
        let mut b = SslContext::builder(SslMethod::tls_client())?;
        b.set_min_proto_version(Some(openssl::ssl::SslVersion::TLS1_2))?;
        b.set_verify(SslVerifyMode::PEER);
        match &self.ca {
            Some(ca) => b
                .set_ca_file(ca)
                .with_context(|| format!("--ca {}", ca.display()))?,
            None => b.set_default_verify_paths()?,
        }
        if let Some(s) = &self.sessions {
            // TLS 1.3 tickets come after the handshake: each one the server sends is kept
            // (the last wins), under the name the connection was made to.
            b.set_session_cache_mode(
                SslSessionCacheMode::CLIENT | SslSessionCacheMode::NO_INTERNAL,
            );
            let (s, current) = (s.clone(), self.current.clone());
            b.set_new_session_callback(move |_, session| {
                let name = current.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Ok(der) = session.to_der() {
                    s.lock().unwrap_or_else(|e| e.into_inner()).put(&name, der);
                }
            });
        }
        Ok(b.build())
    }

    fn dial(&mut self, url: &Url, timeout: Duration) -> anyhow::Result<Stream> {
        use std::net::ToSocketAddrs;
        let addr = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .with_context(|| format!("resolve {}", url.host))?
            .next()
            .with_context(|| format!("{} has no address", url.host))?;
        let tcp = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connect {}:{}", url.host, url.port))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let counted = Counted {
            inner: tcp,
            read: 0,
            written: 0,
        };
        if !url.tls {
            return Ok(Stream::Plain(counted));
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = url.host.clone();
        let mut ssl = Ssl::new(self.context()?)?;
        // SNI (for a name, not an IP) and the name the certificate must carry.
        if url.host.parse::<std::net::IpAddr>().is_err() {
            ssl.set_hostname(&url.host)?;
        }
        let param = ssl.param_mut();
        param.set_hostflags(openssl::x509::verify::X509CheckFlags::NO_PARTIAL_WILDCARDS);
        match url.host.parse::<std::net::IpAddr>() {
            Ok(ip) => param.set_ip(ip)?,
            Err(_) => param.set_host(&url.host)?,
        }
        let mut offered = false;
        if let Some(s) = &self.sessions {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(der) = s.get(&url.host) {
                match openssl::ssl::SslSession::from_der(der) {
                    Ok(sess) => {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs() as i64)
                            .unwrap_or(0);
                        if sess.time() + sess.timeout() > now {
                            // SAFETY: the session was made by a connector configured as
                            // this one (same code, same flags), which is what OpenSSL's
                            // `-sess_in` relies on too.
                            unsafe { ssl.set_session(&sess)? };
                            offered = true;
                        } else {
                            s.forget(&url.host);
                        }
                    }
                    Err(_) => s.forget(&url.host),
                }
            }
        }
        let stream = ssl
            .connect(counted)
            .map_err(|e| anyhow::anyhow!("TLS handshake with {}: {e}", url.host))?;
        if self.verbose {
            let kind = if stream.ssl().session_reused() {
                "resumed"
            } else if offered {
                "full (the saved session was not taken)"
            } else {
                "full"
            };
            eprintln!("tls: {kind} ({} {})", url.host, stream.ssl().version_str());
        }
        Ok(Stream::Tls(Box::new(stream)))
    }

    fn finish(&self) -> anyhow::Result<()> {
        if let Some(s) = &self.sessions {
            s.lock().unwrap_or_else(|e| e.into_inner()).save()?;
        }
        Ok(())
    }
}

/// One HTTP/1.1 request (`Connection: close`); status and body.
fn http(
    dialer: &mut Dialer,
    method: &str,
    url: &Url,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut s = dialer.dial(url, timeout)?;
    let mut req = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        url.path,
        url.host,
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    s.flush()?;
    let mut raw = Vec::new();
    // A TLS peer that closes without close_notify still gave a whole answer.
    let _ = s.read_to_end(&mut raw);
    if dialer.verbose {
        let (out, inn) = s.counts();
        eprintln!(
            "bytes: {out} sent, {inn} received ({} {})",
            method, url.path
        );
    }
    let text_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP answer")?;
    let head = String::from_utf8_lossy(&raw[..text_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let mut body = raw[text_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let len = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if len == 0 || b.len() < i + 2 + len {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + len]);
        b = &b[(i + 4 + len).min(b.len())..];
    }
    out
}

/// `s` percent-encoded as the gateway decodes it (path segment or query value).
fn percent(s: &str) -> String {
    let mut out = String::new();
    protocol::query::percent_encode_into(&mut out, s);
    out
}

fn gateway_url(common: &Common, path: &str) -> anyhow::Result<Url> {
    let mut u = parse_url(&common.gateway).context("--gateway")?;
    u.path = format!("{}{path}", u.path.trim_end_matches('/'));
    Ok(u)
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pushgate: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    const TIMEOUT: Duration = Duration::from_secs(10);
    match cli.command {
        Command::Pub {
            common,
            channel,
            data,
            key,
        } => {
            let body = if data == "-" {
                let mut b = Vec::new();
                std::io::stdin().read_to_end(&mut b)?;
                b
            } else {
                data.into_bytes()
            };
            let mut dialer = Dialer::new(&common)?;
            let url = gateway_url(&common, &format!("/v1/publish/{}", percent(&channel)))?;
            let auth = key.map(|k| format!("Bearer {k}"));
            let mut headers = Vec::new();
            if let Some(a) = &auth {
                headers.push(("Authorization", a.as_str()));
            }
            let (status, answer) = http(&mut dialer, "POST", &url, &headers, &body, TIMEOUT)?;
            dialer.finish()?;
            if (200..300).contains(&status) {
                println!("{}", String::from_utf8_lossy(&answer).trim_end());
                Ok(0)
            } else {
                eprintln!(
                    "pushgate: {status} {}",
                    String::from_utf8_lossy(&answer).trim_end()
                );
                Ok(1)
            }
        }
        Command::Sub {
            common,
            channel,
            since,
            count,
            timeout,
            token,
        } => {
            let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
            let mut dialer = Dialer::new(&common)?;
            let mut path = format!("/v1/assign?channel={}", percent(&channel));
            if let Some(t) = &token {
                path.push_str(&format!("&token={}", percent(t)));
            }
            let url = gateway_url(&common, &path)?;
            let (status, answer) = http(&mut dialer, "GET", &url, &[], b"", TIMEOUT)?;
            if status != 200 {
                dialer.finish()?;
                eprintln!(
                    "pushgate: assign: {status} {}",
                    String::from_utf8_lossy(&answer).trim_end()
                );
                return Ok(1);
            }
            let v: serde_json::Value = serde_json::from_slice(&answer).context("assign answer")?;
            let mut ws_url = v["ws_url"]
                .as_str()
                .context("assign answer has no ws_url")?
                .to_owned();
            if let Some(s) = since {
                ws_url.push_str(&format!("&since={s}"));
            }
            let target = parse_url(&ws_url)?;
            let stream = dialer.dial(&target, TIMEOUT)?;
            let (mut ws, _) = tungstenite::client(ws_url.as_str(), stream)
                .map_err(|e| anyhow::anyhow!("WebSocket to {ws_url}: {e}"))?;
            let mut got = 0u64;
            let stdout = std::io::stdout();
            let code = loop {
                if count.is_some_and(|c| got >= c) {
                    break 0;
                }
                let wait = match deadline {
                    Some(d) => match d.checked_duration_since(Instant::now()) {
                        Some(w) if !w.is_zero() => w,
                        _ => break i32::from(count.is_some()),
                    },
                    None => Duration::from_secs(3600),
                };
                ws.get_ref().tcp().set_read_timeout(Some(wait))?;
                match ws.read() {
                    Ok(tungstenite::Message::Text(t)) => {
                        let mut out = stdout.lock();
                        writeln!(out, "{t}")?;
                        out.flush()?;
                        got += 1;
                    }
                    Ok(tungstenite::Message::Close(frame)) => {
                        if let Some(f) = frame {
                            eprintln!(
                                "pushgate: closed by the worker: {} {}",
                                u16::from(f.code),
                                f.reason
                            );
                        }
                        break 1;
                    }
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue;
                    }
                    Err(e) => {
                        eprintln!("pushgate: {e}");
                        break 1;
                    }
                }
            };
            let _ = ws.close(None);
            let _ = ws.flush();
            dialer.finish()?;
            if code != 0 && count.is_some() {
                eprintln!("pushgate: {got} of {} messages", count.unwrap_or(0));
            }
            Ok(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("wss://push.example/v1/ws?channel=a").unwrap();
        assert!(u.tls && u.host == "push.example" && u.port == 443 && u.path == "/v1/ws?channel=a");
        let u = parse_url("http://127.0.0.1:8080").unwrap();
        assert!(!u.tls && u.port == 8080 && u.path == "/");
        let u = parse_url("https://[::1]:8443/x").unwrap();
        assert!(u.host == "::1" && u.port == 8443);
        assert!(parse_url("ftp://x").is_err());
        assert_eq!(percent("a b/ü:x"), "a%20b%2F%C3%BC:x");
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
    }
}
