//! The worker's configuration: clap flags, each also read from `PUSHGATE_<FLAG>`, with
//! defaults in one place and a `validate()` step.

use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Everything a worker can be told at start.
#[derive(clap::Parser, Clone)]
#[command(
    name = "worker",
    version,
    about = "pushgate worker: holds client connections and delivers messages"
)]
pub struct Config {
    /// Gateway to open a link to (`http://host:port`, or `https://host:port` for a link
    /// over TLS; repeatable: one link to each, env value comma-separated). With several, subscriptions go over one of them and
    /// deliveries come over all (gateways that share a Redis store).
    #[arg(
        long,
        env = "PUSHGATE_GATEWAY",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    pub gateway: Vec<String>,

    /// Client-facing plain address to listen on (repeatable; env value comma-separated).
    /// Port 0 picks a free port. Default 127.0.0.2:9000 when neither this nor
    /// `--listen-tls` is given.
    #[arg(long, env = "PUSHGATE_LISTEN", value_delimiter = ',')]
    pub listen: Vec<SocketAddr>,

    /// Client-facing TLS address (wss://, https://) to listen on (repeatable; env value
    /// comma-separated); needs `--tls-cert` and `--tls-key`.
    #[arg(long, env = "PUSHGATE_LISTEN_TLS", value_delimiter = ',')]
    pub listen_tls: Vec<SocketAddr>,

    /// PEM certificate chain for `--listen-tls` (leaf first); reread on SIGHUP.
    #[arg(long, env = "PUSHGATE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`; reread on SIGHUP.
    #[arg(long, env = "PUSHGATE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM) that `https://` gateways' certificates are checked against,
    /// instead of the system's roots. The gateway's own certificate file works for a
    /// self-signed one.
    #[arg(long, env = "PUSHGATE_GATEWAY_CA")]
    pub gateway_ca: Option<PathBuf>,

    /// Name the `https://` gateways' certificates must carry (and the SNI sent), when it
    /// is not the host in `--gateway` (dialing an IP, say).
    #[arg(long, env = "PUSHGATE_GATEWAY_TLS_NAME")]
    pub gateway_tls_name: Option<String>,

    /// Host name (or IP) clients are told to dial instead of the bound IP, with each
    /// listener's port: the name on the certificate, a public name behind NAT, or the
    /// address to use when listening on 0.0.0.0.
    #[arg(long, env = "PUSHGATE_ADVERTISE")]
    pub advertise: Option<String>,

    /// Worker id shown by the gateway (default: derived from the first listen address and pid).
    #[arg(long, env = "PUSHGATE_ID")]
    pub id: Option<String>,

    /// Most client connections held at once (default: RLIMIT_NOFILE soft limit minus 64,
    /// capped at 10,000,000).
    #[arg(long, env = "PUSHGATE_CAPACITY")]
    pub capacity: Option<usize>,

    /// HS256 secret subscriber tokens are checked with; without it everything is open.
    #[arg(long, env = "PUSHGATE_SUBSCRIBER_SECRET", hide_env_values = true)]
    pub subscriber_secret: Option<String>,

    /// File holding `--subscriber-secret` instead (surrounding whitespace ignored; not
    /// readable by group or others).
    #[arg(
        long,
        env = "PUSHGATE_SUBSCRIBER_SECRET_FILE",
        conflicts_with = "subscriber_secret"
    )]
    pub subscriber_secret_file: Option<PathBuf>,

    /// Key `/metrics` asks for (`Authorization: Bearer KEY`, or Basic with KEY as the
    /// password), as the gateway's `--admin-key` does for its admin surface; unset:
    /// `/metrics` (counters and gauges only, no channel names) is open. Local workers get
    /// their gateway's.
    #[arg(long, env = "PUSHGATE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// File holding `--admin-key` instead (surrounding whitespace ignored; not readable by
    /// group or others).
    #[arg(long, env = "PUSHGATE_ADMIN_KEY_FILE", conflicts_with = "admin_key")]
    pub admin_key_file: Option<PathBuf>,

    /// Shared key presented to the gateway when opening the link (the gateway's
    /// `--link-key`); needed when the gateway has one.
    #[arg(long, env = "PUSHGATE_LINK_KEY", hide_env_values = true)]
    pub link_key: Option<String>,

    /// File holding `--link-key` instead (surrounding whitespace ignored; not readable by
    /// group or others).
    #[arg(long, env = "PUSHGATE_LINK_KEY_FILE", conflicts_with = "link_key")]
    pub link_key_file: Option<PathBuf>,

    /// Origins allowed for browser clients (repeatable; `*` allows any).
    #[arg(
        long,
        env = "PUSHGATE_ALLOW_ORIGIN",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub allow_origin: Vec<String>,

    /// Event-loop threads (default: available parallelism).
    #[arg(long, env = "PUSHGATE_THREADS")]
    pub threads: Option<usize>,

    /// Log lines on stderr: `text` (colour only on a terminal) or `json` (one object per
    /// line). Level from `RUST_LOG` (default `info`).
    #[arg(long, env = "PUSHGATE_LOG_FORMAT", value_enum, default_value_t = crate::logging::LogFormat::Text)]
    pub log_format: crate::logging::LogFormat,

    /// Listen backlog of every listening socket.
    #[arg(long, env = "PUSHGATE_BACKLOG", default_value_t = 4096)]
    pub backlog: i32,

    /// Every connection is visited once per interval: WebSocket ping, SSE comment; a
    /// WebSocket silent for 2.5 intervals is closed.
    #[arg(long, env = "PUSHGATE_PING_INTERVAL_SECS", default_value_t = 30)]
    pub ping_interval_secs: u32,

    /// Longest long-poll hold a client may ask for (`timeout=`); longer asks are clamped.
    #[arg(long, env = "PUSHGATE_MAX_POLL_TIMEOUT_SECS", default_value_t = 120)]
    pub max_poll_timeout_secs: u32,

    /// Largest request head (request line + headers) accepted; more gets 431.
    #[arg(long, env = "PUSHGATE_MAX_HEADER_BYTES", default_value_t = 8192)]
    pub max_header_bytes: usize,

    /// Largest WebSocket frame a client may send; more closes with 1009.
    #[arg(long, env = "PUSHGATE_MAX_CLIENT_FRAME_BYTES", default_value_t = 65536)]
    pub max_client_frame_bytes: u64,

    /// Most bytes queued for one slow connection; more closes it (WebSocket code 4003).
    #[arg(long, env = "PUSHGATE_MAX_PENDING_BYTES", default_value_t = 1024 * 1024)]
    pub max_pending_bytes: usize,

    /// How long a delivery that arrives after a hole (seqs missing before it) is held for
    /// the missing ones to come before they are fetched from the store, in milliseconds.
    #[arg(long, env = "PUSHGATE_HOLE_WAIT_MS", default_value_t = 100)]
    pub hole_wait_ms: u64,

    /// Bytes of out-of-order deliveries one loop thread holds while holes wait to be
    /// filled; past it held copies are dropped and fetched from the store instead.
    #[arg(long, env = "PUSHGATE_MAX_HELD_BYTES", default_value_t = 1024 * 1024)]
    pub max_held_bytes: usize,

    /// How long a closing connection may take to flush its last bytes (a WebSocket's close
    /// frame, after at most the one frame that was on the wire) and see the client's EOF.
    #[arg(long, env = "PUSHGATE_CLOSE_LINGER_SECS", default_value_t = 10)]
    pub close_linger_secs: u32,

    /// Most client connections one source IP may hold open on this worker; more are
    /// refused at accept with 429 `too_many_connections`. 0: no limit. When set, each
    /// connection costs ~40-50 B more (its IP, kept until it closes). NAT'd clients and load
    /// generators share an IP: size it for them.
    #[arg(long, env = "PUSHGATE_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: u32,

    /// New connections per second one source IP may open on this worker (over all its
    /// threads); more are refused at accept with 429 `connect_rate_limited` and
    /// `Retry-After`. 0: no limit.
    #[arg(long, env = "PUSHGATE_CONNECT_RATE_PER_IP", default_value_t = 0.0)]
    pub connect_rate_per_ip: f64,

    /// Seconds' worth of `--connect-rate-per-ip` a quiet source IP may save up and spend
    /// at once.
    #[arg(long, env = "PUSHGATE_CONNECT_BURST_SECS", default_value_t = 1.0)]
    pub connect_burst_secs: f64,

    /// Most source IPs the connect-rate limit remembers (idle ones are forgotten first,
    /// and within 16 s anyway).
    #[arg(long, env = "PUSHGATE_RATE_LIMIT_ENTRIES", default_value_t = 100_000)]
    pub rate_limit_entries: usize,

    /// Time a new connection (or an idle keep-alive one) has to send a complete request.
    #[arg(long, env = "PUSHGATE_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10)]
    pub handshake_timeout_secs: u32,

    /// Depth of the queue from the event loops to the gateway link; when full, new
    /// subscribers get 503.
    #[arg(long, env = "PUSHGATE_LINK_QUEUE", default_value_t = 65536)]
    pub link_queue: usize,

    /// SO_RCVBUF for client sockets (bytes; default: the kernel's).
    #[arg(long, env = "PUSHGATE_SOCKET_RECV_BUFFER")]
    pub socket_recv_buffer: Option<usize>,

    /// SO_SNDBUF for client sockets (bytes; default: the kernel's).
    #[arg(long, env = "PUSHGATE_SOCKET_SEND_BUFFER")]
    pub socket_send_buffer: Option<usize>,
}

/// Hard cap on `--capacity`: slab keys must fit the 24 bits `sub_id` gives them.
pub const MAX_CAPACITY: usize = 10_000_000;
/// Most loop threads: the thread index takes 8 bits of a `sub_id`.
pub const MAX_THREADS: usize = 256;

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("gateway", &self.gateway)
            .field("listen", &self.listen)
            .field("listen_tls", &self.listen_tls)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("advertise", &self.advertise)
            .field("id", &self.id)
            .field("capacity", &self.capacity)
            .field(
                "subscriber_secret",
                &self.subscriber_secret.as_ref().map(|_| "<masked>"),
            )
            .field("subscriber_secret_file", &self.subscriber_secret_file)
            .field("link_key", &self.link_key.as_ref().map(|_| "<masked>"))
            .field("link_key_file", &self.link_key_file)
            .field("admin_key", &self.admin_key.as_ref().map(|_| "<masked>"))
            .field("admin_key_file", &self.admin_key_file)
            .field("allow_origin", &self.allow_origin)
            .field("threads", &self.threads)
            .field("log_format", &self.log_format)
            .field("backlog", &self.backlog)
            .field("ping_interval_secs", &self.ping_interval_secs)
            .field("max_poll_timeout_secs", &self.max_poll_timeout_secs)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("max_client_frame_bytes", &self.max_client_frame_bytes)
            .field("max_pending_bytes", &self.max_pending_bytes)
            .field("hole_wait_ms", &self.hole_wait_ms)
            .field("max_held_bytes", &self.max_held_bytes)
            .field("close_linger_secs", &self.close_linger_secs)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("connect_rate_per_ip", &self.connect_rate_per_ip)
            .field("connect_burst_secs", &self.connect_burst_secs)
            .field("rate_limit_entries", &self.rate_limit_entries)
            .field("handshake_timeout_secs", &self.handshake_timeout_secs)
            .field("link_queue", &self.link_queue)
            .field("socket_recv_buffer", &self.socket_recv_buffer)
            .field("socket_send_buffer", &self.socket_send_buffer)
            .finish()
    }
}

impl Config {
    /// Parses flags (and env fallbacks) the way the binary does; `args[0]` is the program name.
    pub fn parse_from_args<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        <Config as clap::Parser>::try_parse_from(args)
    }

    /// Reads `--subscriber-secret-file` and `--link-key-file` into their secrets (see
    /// [`read_secret_file`]); a secret given both ways is an error. Once read, the file
    /// fields are empty, so a second call does nothing.
    pub fn load_secret_files(&mut self) -> anyhow::Result<()> {
        load_secret(
            "--subscriber-secret",
            &mut self.subscriber_secret,
            &mut self.subscriber_secret_file,
        )?;
        load_secret("--link-key", &mut self.link_key, &mut self.link_key_file)?;
        load_secret("--admin-key", &mut self.admin_key, &mut self.admin_key_file)
    }

    /// Checks values clap cannot check on its own.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.listen_tls.is_empty() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            bail!("--listen-tls needs --tls-cert and --tls-key");
        }
        if let Some(a) = &self.advertise {
            if a.is_empty() || a.contains(['/', ' ', '?', '#', '@']) {
                bail!("--advertise must be a host name or IP, got {a:?}");
            }
        }
        if self.advertise.is_none() {
            if let Some(a) = self
                .listen
                .iter()
                .chain(&self.listen_tls)
                .find(|a| a.ip().is_unspecified())
            {
                bail!(
                    "--listen {a} binds every address, and clients cannot dial {}: give --advertise HOST (the name or IP clients reach this worker at)",
                    a.ip()
                );
            }
        }
        if self.gateway.is_empty() {
            bail!("at least one --gateway is required");
        }
        for g in &self.gateway {
            let (host, _, tls) = gateway_target(g).with_context(|| format!("--gateway {g}"))?;
            if tls {
                crate::tls::client::server_name(&host, self.gateway_tls_name.as_deref())
                    .with_context(|| format!("--gateway {g}"))?;
            }
        }
        let threads = self.threads();
        if threads == 0 || threads > MAX_THREADS {
            bail!("--threads must be 1..={MAX_THREADS}");
        }
        let cap = self.capacity();
        if cap == 0 || cap > MAX_CAPACITY {
            bail!("--capacity must be 1..={MAX_CAPACITY}");
        }
        if self.backlog <= 0 {
            bail!("--backlog must be positive");
        }
        if self.ping_interval_secs == 0 {
            bail!("--ping-interval-secs must be at least 1");
        }
        if self.max_poll_timeout_secs == 0 || self.max_poll_timeout_secs > 86_400 {
            bail!("--max-poll-timeout-secs must be 1..=86400");
        }
        if self.handshake_timeout_secs == 0 || self.handshake_timeout_secs > 3600 {
            bail!("--handshake-timeout-secs must be 1..=3600");
        }
        if self.max_header_bytes < 256 || self.max_header_bytes > 1024 * 1024 {
            bail!("--max-header-bytes must be 256..=1048576");
        }
        if self.max_client_frame_bytes < 125 {
            bail!("--max-client-frame-bytes must be at least 125");
        }
        if !(1024..=1 << 30).contains(&self.max_pending_bytes) {
            bail!("--max-pending-bytes must be between 1024 and 1 GiB");
        }
        if !(1..=300).contains(&self.close_linger_secs) {
            bail!("--close-linger-secs must be 1..=300");
        }
        if !(1..=10_000).contains(&self.hole_wait_ms) {
            bail!("--hole-wait-ms must be 1..=10000");
        }
        if self.max_held_bytes > 1 << 30 {
            bail!("--max-held-bytes must be at most 1 GiB");
        }
        if self.link_queue == 0 {
            bail!("--link-queue must be positive");
        }
        if !(self.connect_rate_per_ip.is_finite() && self.connect_rate_per_ip >= 0.0) {
            bail!("--connect-rate-per-ip must be 0 (off) or a positive rate");
        }
        if !(self.connect_burst_secs.is_finite() && self.connect_burst_secs > 0.0) {
            bail!("--connect-burst-secs must be more than 0");
        }
        if self.rate_limit_entries == 0 {
            bail!("--rate-limit-entries must be at least 1");
        }
        if self.allow_origin.is_empty() || self.allow_origin.len() > u16::MAX as usize - 1 {
            bail!("--allow-origin needs 1..65534 entries");
        }
        if let Some(id) = &self.id {
            if id.is_empty() || id.len() > 256 {
                bail!("--id must be 1..=256 bytes");
            }
        }
        Ok(())
    }

    /// Every client listener, in `--listen` then `--listen-tls` order, with whether it
    /// speaks TLS.
    pub fn listeners(&self) -> Vec<(SocketAddr, bool)> {
        let plain = if self.listen.is_empty() && self.listen_tls.is_empty() {
            vec![SocketAddr::from(([127, 0, 0, 2], 9000))]
        } else {
            self.listen.clone()
        };
        let tls = self.listen_tls.iter().map(|&a| (a, true));
        plain.into_iter().map(|a| (a, false)).chain(tls).collect()
    }

    /// `--threads`, or the machine's available parallelism.
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(MAX_THREADS)
        })
    }

    /// `--capacity`, or the open-file soft limit minus 64 (capped at [`MAX_CAPACITY`]).
    pub fn capacity(&self) -> usize {
        self.capacity.unwrap_or_else(|| {
            let soft = nofile_soft_limit().unwrap_or(1024);
            (soft.saturating_sub(64) as usize).clamp(1, MAX_CAPACITY)
        })
    }

    /// Whether `--allow-origin` lets any origin in.
    pub fn any_origin(&self) -> bool {
        self.allow_origin.iter().any(|o| o == "*")
    }
}

/// Largest secret file read: a secret is a line, not a document.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Moves the one secret in `file` (if given; surrounding whitespace ignored) into `value`,
/// emptying `file`; `flag` names both in errors.
/// Whether an `Authorization` value carries `key`: `Bearer KEY`, or `Basic` with KEY as the
/// password (any user name; what browsers send after their prompt). Compared in constant
/// time. The worker's `/metrics` and the gateway's admin surface both ask this.
pub fn authorization_carries(key: &str, authorization: Option<&str>) -> bool {
    use base64::Engine as _;
    let Some((scheme, value)) = authorization.and_then(|a| a.trim().split_once(' ')) else {
        return false;
    };
    let given = if scheme.eq_ignore_ascii_case("bearer") {
        value.trim().as_bytes().to_vec()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(value.trim()) else {
            return false;
        };
        match raw.iter().position(|&b| b == b':') {
            Some(i) => raw[i + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    given.len() == key.len()
        && given
            .iter()
            .zip(key.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

pub fn load_secret(
    flag: &str,
    value: &mut Option<String>,
    file: &mut Option<PathBuf>,
) -> anyhow::Result<()> {
    let Some(path) = file.take() else {
        return Ok(());
    };
    if value.is_some() {
        bail!("{flag} and {flag}-file are both given; use one");
    }
    let text = read_secret_file(&format!("{flag}-file"), &path)?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let (Some(secret), None) = (lines.next(), lines.next()) else {
        bail!(
            "{flag}-file {}: holds more than one line; it takes one secret",
            path.display()
        );
    };
    *value = Some(secret.to_owned());
    Ok(())
}

/// The text of a file that holds secrets (`--*-file` flags, `--ticket-key-file`): it must
/// be a regular file (a symlink to one is fine), readable by its owner only (mode & 077 =
/// 0), at most 64 KiB and not blank. Errors name `flag` and the path, never the content.
pub fn read_secret_file(flag: &str, path: &Path) -> anyhow::Result<zeroize::Zeroizing<String>> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let at = || format!("{flag} {}", path.display());
    // Checked before opening: opening a FIFO would wait for a writer.
    let meta = std::fs::metadata(path).with_context(at)?;
    if !meta.is_file() {
        bail!("{}: not a regular file", at());
    }
    let mut f = std::fs::File::open(path).with_context(at)?;
    // Checked again on what was opened (the path may have changed in between).
    let meta = f.metadata().with_context(at)?;
    let mode = meta.permissions().mode() & 0o777;
    if !meta.is_file() {
        bail!("{}: not a regular file", at());
    }
    if mode & 0o077 != 0 {
        bail!("{}: mode {mode:o} lets others read it; chmod 600 it", at());
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    (&mut f)
        .take(MAX_SECRET_FILE + 1)
        .read_to_string(&mut text)
        .with_context(at)?;
    if text.len() as u64 > MAX_SECRET_FILE {
        bail!("{}: larger than {MAX_SECRET_FILE} bytes", at());
    }
    if text.trim().is_empty() {
        bail!("{}: empty", at());
    }
    Ok(text)
}

fn nofile_soft_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0).then_some(lim.rlim_cur)
}

/// Splits `http://host:port[/...]` or `https://...` into `(host, port, tls)` (port 80 or
/// 443 when absent).
pub fn gateway_target(url: &str) -> anyhow::Result<(String, u16, bool)> {
    let (rest, tls) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (r, false),
        (_, Some(r)) => (r, true),
        _ => bail!("{url:?} must start with http:// or https://"),
    };
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = split_authority(url, rest, default_port)?;
    Ok((host, port, tls))
}

fn split_authority(url: &str, rest: &str, default_port: u16) -> anyhow::Result<(String, u16)> {
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        bail!("{url:?} has no host");
    }
    if let Some(stripped) = authority.strip_prefix('[') {
        // [v6]:port
        let (host, after) = stripped
            .split_once(']')
            .with_context(|| format!("{url:?}: unclosed ["))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().with_context(|| format!("{url:?}: bad port"))?,
            None => default_port,
        };
        return Ok((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Ok((
            host.to_owned(),
            port.parse().with_context(|| format!("{url:?}: bad port"))?,
        )),
        None => Ok((authority.to_owned(), default_port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let c = Config::parse_from_args(["worker"]).unwrap();
        assert_eq!(c.gateway, vec!["http://127.0.0.1:8080".to_string()]);
        assert_eq!(
            c.listeners(),
            vec![("127.0.0.2:9000".parse().unwrap(), false)]
        );
        assert_eq!(c.allow_origin, vec!["*".to_string()]);
        assert_eq!(c.backlog, 4096);
        c.validate().unwrap();
        assert!(c.capacity() >= 1);
    }

    #[test]
    fn an_unspecified_listen_address_needs_advertise() {
        let c = Config::parse_from_args(["worker", "--listen", "0.0.0.0:9000"]).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--advertise"), "{e}");
        let c = Config::parse_from_args([
            "worker",
            "--listen",
            "0.0.0.0:9000",
            "--advertise",
            "push.example.com",
        ])
        .unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn version_and_log_format() {
        let e = Config::parse_from_args(["worker", "--version"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
        assert!(e.to_string().contains(env!("CARGO_PKG_VERSION")), "{e}");
        let c = Config::parse_from_args(["worker", "--log-format", "json"]).unwrap();
        assert_eq!(c.log_format, crate::logging::LogFormat::Json);
        assert!(Config::parse_from_args(["worker", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn repeatable_listen_and_masked_secret() {
        let c = Config::parse_from_args([
            "worker",
            "--listen",
            "127.0.0.2:0",
            "--listen",
            "127.0.0.3:0",
            "--subscriber-secret",
            "hunter2",
        ])
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("<masked>"));
    }

    /// A fresh directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let d = std::env::temp_dir().join(format!("pg-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            TempDir(d)
        }

        fn file(&self, name: &str, text: &str, mode: u32) -> PathBuf {
            use std::os::unix::fs::PermissionsExt;
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn load(args: &[&str]) -> anyhow::Result<Config> {
        let mut c = Config::parse_from_args(std::iter::once("worker").chain(args.iter().copied()))?;
        c.load_secret_files()?;
        Ok(c)
    }

    #[test]
    fn secrets_come_from_files_that_only_their_owner_reads() {
        let d = TempDir::new("worker-secrets");
        let key = d.file("link", "  k3y-from-file \n\n", 0o600);
        let secret = d.file("sub", "s3cret\n", 0o400);
        let (k, s) = (key.to_str().unwrap(), secret.to_str().unwrap());
        let c = load(&["--link-key-file", k, "--subscriber-secret-file", s]).unwrap();
        assert_eq!(c.link_key.as_deref(), Some("k3y-from-file"));
        assert_eq!(c.subscriber_secret.as_deref(), Some("s3cret"));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("k3y") && !dbg.contains("s3cret"), "{dbg}");
        // Read once: a second call changes nothing.
        let mut again = c.clone();
        again.load_secret_files().unwrap();
        assert_eq!(again.link_key.as_deref(), Some("k3y-from-file"));

        let refused = |args: &[&str], want: &str| {
            let err = format!("{:#}", load(args).unwrap_err());
            assert!(err.contains(want), "{args:?}: {err}");
            assert!(!err.contains("k3y") && !err.contains("s3cret"), "{err}");
        };
        let open = d.file("open", "k3y\n", 0o644);
        let group = d.file("group", "k3y\n", 0o640);
        let empty = d.file("empty", " \n\n", 0o600);
        let two = d.file("two", "k3y\nk3y2\n", 0o600);
        let missing = d.0.join("missing");
        let dir = d.0.to_str().unwrap();
        for (p, want) in [
            (&open, "mode 644 lets others read it"),
            (&group, "mode 640"),
            (&empty, "empty"),
            (&two, "more than one line"),
            (&missing, "No such file"),
        ] {
            refused(&["--link-key-file", p.to_str().unwrap()], want);
            refused(
                &["--link-key-file", p.to_str().unwrap()],
                p.to_str().unwrap(),
            );
        }
        refused(&["--subscriber-secret-file", dir], "not a regular file");
        // The flag and its file together: refused by the parser.
        let both = load(&["--link-key", "x", "--link-key-file", k]).unwrap_err();
        assert!(both.to_string().contains("cannot be used with"), "{both}");
        // Built in code: refused when the file is read.
        let mut c = Config::parse_from_args(["worker", "--link-key", "x"]).unwrap();
        c.link_key_file = Some(key.clone());
        let err = c.load_secret_files().unwrap_err().to_string();
        assert!(err.contains("both given"), "{err}");
    }

    #[test]
    fn connect_rate_flags_validate() {
        let c = Config::parse_from_args(["worker"]).unwrap();
        assert_eq!(
            (
                c.connect_rate_per_ip,
                c.connect_burst_secs,
                c.rate_limit_entries
            ),
            (0.0, 1.0, 100_000)
        );
        let c = Config::parse_from_args(["worker", "--connect-rate-per-ip", "2.5"]).unwrap();
        c.validate().unwrap();
        for bad in [
            "--connect-rate-per-ip=-1",
            "--connect-rate-per-ip=inf",
            "--connect-burst-secs=0",
            "--rate-limit-entries=0",
        ] {
            let c = Config::parse_from_args(["worker", bad]).unwrap();
            assert!(c.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn gateway_urls() {
        assert_eq!(
            gateway_target("http://127.0.0.1:8080").unwrap(),
            ("127.0.0.1".into(), 8080, false)
        );
        assert_eq!(
            gateway_target("http://gw.local/").unwrap(),
            ("gw.local".into(), 80, false)
        );
        assert_eq!(
            gateway_target("http://[::1]:81").unwrap(),
            ("::1".into(), 81, false)
        );
        assert_eq!(
            gateway_target("https://gw.example").unwrap(),
            ("gw.example".into(), 443, true)
        );
        assert_eq!(
            gateway_target("https://[::1]:8443/").unwrap(),
            ("::1".into(), 8443, true)
        );
        assert!(gateway_target("ftp://x").is_err());
        assert!(gateway_target("http://x:notaport").is_err());
    }
}

#[cfg(test)]
mod authorization_tests {
    use super::authorization_carries;

    #[test]
    fn the_key_is_carried_as_bearer_or_as_a_basic_password() {
        assert!(authorization_carries("k1", Some("Bearer k1")));
        assert!(authorization_carries("k1", Some("bearer  k1 ")));
        // "ops:k1" and ":k1"
        assert!(authorization_carries("k1", Some("Basic b3BzOmsx")));
        assert!(authorization_carries("k1", Some("Basic Omsx")));
        assert!(!authorization_carries("k1", None));
        assert!(!authorization_carries("k1", Some("Bearer k2")));
        assert!(!authorization_carries("k1", Some("Bearer k1x")));
        assert!(!authorization_carries("k1", Some("Basic !!")));
        assert!(!authorization_carries("k1", Some("k1")));
    }
}
