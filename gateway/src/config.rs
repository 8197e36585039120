//! The gateway's configuration: clap flags with `PUSHGATE_*` environment fallbacks, all
//! defaults in one place, a `validate()` step, secrets masked in `Debug`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::store::redis::RedisTarget;

/// Which store keeps channel logs and the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// In-process, sharded (the default; nothing to run beside the gateway).
    Memory,
    /// Redis (one node, or a cluster through its seed nodes).
    Redis(RedisTarget),
}

/// Every flag of `gateway`. Each flag can also come from `PUSHGATE_<FLAG>` (upper case,
/// `-` -> `_`); repeatable flags take comma-separated values from the environment.
#[derive(clap::Parser, Clone)]
#[command(
    name = "gateway",
    version,
    about = "pushgate gateway: assigns clients to workers, accepts publishes, keeps per-channel logs"
)]
pub struct Config {
    /// Address of the public API (and of worker links).
    #[arg(long, env = "PUSHGATE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Threads of the gateway, each with its own runtime and its own SO_REUSEPORT listener on
    /// `--listen` (default: available parallelism).
    #[arg(long, env = "PUSHGATE_THREADS")]
    pub threads: Option<usize>,

    /// Log lines on stderr: `text` (colour only on a terminal) or `json` (one object per
    /// line); local workers log the same way. Level from `RUST_LOG` (default `info`).
    #[arg(long, env = "PUSHGATE_LOG_FORMAT", value_enum, default_value_t = worker::logging::LogFormat::Text)]
    pub log_format: worker::logging::LogFormat,

    /// Worker processes to start and supervise on this host (`<worker-exe> worker ...`).
    #[arg(long, env = "PUSHGATE_LOCAL_WORKERS", default_value_t = 0)]
    pub local_workers: u32,

    /// `memory`, `redis://HOST:PORT[/DB]` or `redis+cluster://H1:P1,H2:P2,...`.
    #[arg(long, env = "PUSHGATE_STORE", default_value = "memory")]
    pub store: String,

    /// How long a channel's seq and epoch outlive its last activity (both stores), so an
    /// idle channel goes on counting and a late resume is told of its gap. The memory
    /// store keeps at most --max-channels of them (~100 B each plus the name).
    #[arg(long, env = "PUSHGATE_CHANNEL_META_SECS", default_value_t = 30 * 24 * 3600)]
    pub channel_meta_secs: u64,

    /// Most bytes one channel's retained messages take in the Redis store (data + key +
    /// per-message overhead); beyond it the oldest go first.
    #[arg(
        long,
        env = "PUSHGATE_RETENTION_CHANNEL_BYTES",
        default_value_t = 16 * 1024 * 1024
    )]
    pub retention_channel_bytes: usize,

    /// Deadline of every Redis call; past it the operation fails (publish: 503).
    #[arg(long, env = "PUSHGATE_REDIS_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_timeout_ms: u64,

    /// Most Redis calls in flight at once, and most publishes queued for a batch call;
    /// more fail at once (publish: 503).
    #[arg(long, env = "PUSHGATE_REDIS_MAX_INFLIGHT", default_value_t = 10_000)]
    pub redis_max_inflight: usize,

    /// This Redis keeps every acknowledged write across a restart (`appendonly yes`,
    /// `appendfsync always`): a restarted node is the same history. Without it a node that
    /// answers with a new replication id (every restart does) opens a new epoch for each
    /// channel it serves, so a restart from an older snapshot can never repeat a seq.
    #[arg(long, env = "PUSHGATE_REDIS_DURABLE")]
    pub redis_durable: bool,

    /// Bytes of deliveries kept for workers that have no link to this gateway yet (a
    /// gateway that just started, with a shared store); sent when the worker links.
    #[arg(long, env = "PUSHGATE_PARKED_DELIVERY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub parked_delivery_bytes: usize,

    /// How long such a delivery is kept (ms); after it, the message waits in the store.
    #[arg(long, env = "PUSHGATE_PARKED_DELIVERY_MS", default_value_t = 5000)]
    pub parked_delivery_ms: u64,

    /// Prefix of every key the Redis store writes.
    #[arg(long, env = "PUSHGATE_REDIS_KEY_PREFIX", default_value = "pg")]
    pub redis_key_prefix: String,

    /// Bearer keys accepted on the publish endpoints; none configured = publishing is open.
    #[arg(
        long = "publisher-key",
        env = "PUSHGATE_PUBLISHER_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub publisher_keys: Vec<String>,

    /// File holding the publisher keys instead, one per line (blank lines and surrounding
    /// whitespace ignored; not readable by group or others).
    #[arg(
        long,
        env = "PUSHGATE_PUBLISHER_KEY_FILE",
        conflicts_with = "publisher_keys"
    )]
    pub publisher_key_file: Option<PathBuf>,

    /// HS256 secret subscriber tokens are signed with; unset = subscribing is open.
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

    /// Key workers must present (`Authorization: Bearer`) to open a link; unset with
    /// `--local-workers`: a random one is made and given to them; unset otherwise: any
    /// host that reaches this port may register as a worker.
    #[arg(long, env = "PUSHGATE_LINK_KEY", hide_env_values = true)]
    pub link_key: Option<String>,

    /// File holding `--link-key` instead (surrounding whitespace ignored; not readable by
    /// group or others).
    #[arg(long, env = "PUSHGATE_LINK_KEY_FILE", conflicts_with = "link_key")]
    pub link_key_file: Option<PathBuf>,

    /// Key of the admin surface (dashboard, `/metrics`, `/v1/workers`, `/v1/channels/…`):
    /// `Authorization: Bearer KEY`, or Basic auth with KEY as the password (browsers ask).
    /// Unset: the admin surface answers loopback clients only (and anyone on
    /// `--admin-listen`). `/healthz` never asks.
    #[arg(long, env = "PUSHGATE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// File holding `--admin-key` instead (surrounding whitespace ignored; not readable by
    /// group or others).
    #[arg(long, env = "PUSHGATE_ADMIN_KEY_FILE", conflicts_with = "admin_key")]
    pub admin_key_file: Option<PathBuf>,

    /// Serve the admin surface (and `/healthz`) on this address, plain HTTP, instead of on
    /// `--listen`: e.g. a private interface or loopback only. Without `--admin-key`, anyone
    /// who reaches it sees it.
    #[arg(long, env = "PUSHGATE_ADMIN_LISTEN")]
    pub admin_listen: Option<std::net::SocketAddr>,

    /// Serve the API and worker links over TLS with this certificate chain (PEM; with
    /// `--tls-key`). Reloaded on SIGHUP.
    #[arg(long, env = "PUSHGATE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key of `--tls-cert` (PEM).
    #[arg(long, env = "PUSHGATE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Rotation period of the fleet's TLS session-ticket keys, which the gateways generate
    /// and hand to every worker (tickets resume on any worker; a ticket lives at most two
    /// periods).
    #[arg(long, env = "PUSHGATE_TICKET_ROTATE_SECS", default_value_t = 3600)]
    pub ticket_rotate_secs: u64,

    /// Ticket keys from a file instead (64 hex digits per line, the first seals, all
    /// open; mode 600), reread on SIGHUP.
    #[arg(long, env = "PUSHGATE_TICKET_KEY_FILE")]
    pub ticket_key_file: Option<PathBuf>,

    /// Origins allowed by CORS on assign (and, passed on to workers, poll and SSE).
    #[arg(
        long = "allow-origin",
        env = "PUSHGATE_ALLOW_ORIGIN",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub allow_origins: Vec<String>,

    /// Origins allowed by CORS on the publish endpoints; none = no CORS headers there.
    #[arg(
        long = "publish-allow-origin",
        env = "PUSHGATE_PUBLISH_ALLOW_ORIGIN",
        value_delimiter = ','
    )]
    pub publish_allow_origins: Vec<String>,

    /// Messages retained per channel.
    #[arg(long, env = "PUSHGATE_RETENTION_MESSAGES", default_value_t = 100)]
    pub retention_messages: usize,

    /// Seconds a message stays retained.
    #[arg(long, env = "PUSHGATE_RETENTION_SECS", default_value_t = 600)]
    pub retention_secs: u64,

    /// Largest publish body (single publish) and largest `data` of a batch line.
    #[arg(long, env = "PUSHGATE_MAX_MESSAGE_BYTES", default_value_t = 65536)]
    pub max_message_bytes: usize,

    /// Bytes all retained messages may take together (data + per-message overhead);
    /// beyond it the oldest go first.
    #[arg(
        long,
        env = "PUSHGATE_RETENTION_TOTAL_BYTES",
        default_value_t = 268_435_456
    )]
    pub retention_total_bytes: usize,

    /// Most channels the store tracks at once.
    #[arg(long, env = "PUSHGATE_MAX_CHANNELS", default_value_t = 10_000_000)]
    pub max_channels: usize,

    /// Most request-body bytes the gateway holds at once over all publish requests (a body
    /// reserves its Content-Length, or its limit when chunked, while it is read and
    /// published); past it a publish gets 503 `busy` at once.
    #[arg(long, env = "PUSHGATE_MAX_INFLIGHT_BODY_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_inflight_body_bytes: usize,

    /// Largest NDJSON batch body.
    #[arg(long, env = "PUSHGATE_MAX_BATCH_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_batch_bytes: usize,

    /// Most lines in one NDJSON batch.
    #[arg(long, env = "PUSHGATE_MAX_BATCH_LINES", default_value_t = 100_000)]
    pub max_batch_lines: usize,

    /// Most channels one `POST /v1/broadcast` may name.
    #[arg(
        long,
        env = "PUSHGATE_MAX_BROADCAST_CHANNELS",
        default_value_t = 100_000
    )]
    pub max_broadcast_channels: usize,

    /// Largest request head (request line + headers) accepted; more gets 431 and the
    /// connection is closed. Also what a connection with an unfinished head may hold.
    #[arg(long, env = "PUSHGATE_MAX_HEADER_BYTES", default_value_t = 8192)]
    pub max_header_bytes: usize,

    /// Seconds a request body may take to arrive once its head is in; a slower one gets 408
    /// and the connection is closed.
    #[arg(long, env = "PUSHGATE_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub body_timeout_secs: u64,

    /// Seconds a publish stream (`POST /v1/publish?stream=1`) may go without a byte (a
    /// blank line keeps it open); then it is answered `request_timeout` and closed.
    #[arg(long, env = "PUSHGATE_PUBLISH_STREAM_IDLE_SECS", default_value_t = 300)]
    pub publish_stream_idle_secs: u64,

    /// Publishes per second from one source IP (NDJSON lines and broadcast channels count
    /// one each); more get 429 with `Retry-After`. 0: no limit.
    #[arg(long, env = "PUSHGATE_PUBLISH_RATE_PER_IP", default_value_t = 0.0)]
    pub publish_rate_per_ip: f64,

    /// Publishes per second under one publisher key (`Authorization: Bearer`); more get
    /// 429 with `Retry-After`. 0: no limit.
    #[arg(long, env = "PUSHGATE_PUBLISH_RATE_PER_KEY", default_value_t = 0.0)]
    pub publish_rate_per_key: f64,

    /// Seconds' worth of the publish rates a quiet publisher may save up and send at once.
    #[arg(long, env = "PUSHGATE_PUBLISH_BURST_SECS", default_value_t = 1.0)]
    pub publish_burst_secs: f64,

    /// Most source IPs and most keys the publish rate limits remember (idle ones go first).
    #[arg(long, env = "PUSHGATE_RATE_LIMIT_ENTRIES", default_value_t = 100_000)]
    pub rate_limit_entries: usize,

    /// A worker silent for longer than this is stale and gets no new clients.
    #[arg(long, env = "PUSHGATE_WORKER_TIMEOUT_SECS", default_value_t = 3)]
    pub worker_timeout_secs: u64,

    /// Frames queued per worker link; a link whose queue fills is closed (the worker
    /// reconnects and resumes).
    #[arg(long, env = "PUSHGATE_LINK_QUEUE", default_value_t = 262_144)]
    pub link_queue: usize,

    /// `expires_in` reported by assign when no subscriber secret is configured.
    #[arg(long, env = "PUSHGATE_TOKEN_EXPIRES_SECS", default_value_t = 3600)]
    pub token_expires_secs: u64,

    /// First loopback IP of local workers: worker i listens on base + i (last octet).
    #[arg(
        long,
        env = "PUSHGATE_LOCAL_WORKER_IP_BASE",
        default_value = "127.0.0.2"
    )]
    pub local_worker_ip_base: Ipv4Addr,

    /// Port local workers listen on (0: any free port).
    #[arg(long, env = "PUSHGATE_LOCAL_WORKER_PORT", default_value_t = 0)]
    pub local_worker_port: u16,

    /// Bound IPs per local worker; IP j of a worker adds j to the third octet.
    #[arg(long, env = "PUSHGATE_LOCAL_WORKER_IPS", default_value_t = 1)]
    pub local_worker_ips: u32,

    /// Executable started as `<exe> worker <flags>` for local workers (default: this one).
    #[arg(long, env = "PUSHGATE_WORKER_EXE")]
    pub worker_exe: Option<PathBuf>,

    /// Extra argument passed to every local worker (repeat for more).
    #[arg(
        long = "local-worker-arg",
        env = "PUSHGATE_LOCAL_WORKER_ARG",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    pub local_worker_args: Vec<String>,
}

impl Config {
    /// Reads `--publisher-key-file`, `--subscriber-secret-file` and `--link-key-file` into
    /// their secrets (each checked by `worker::config::read_secret_file`: a regular file,
    /// mode & 077 = 0, not empty); a secret given both ways is an error. Once read, the
    /// file fields are empty, so a second call does nothing.
    pub fn load_secret_files(&mut self) -> anyhow::Result<()> {
        if let Some(path) = self.publisher_key_file.take() {
            anyhow::ensure!(
                self.publisher_keys.is_empty(),
                "--publisher-key and --publisher-key-file are both given; use one"
            );
            let text = worker::config::read_secret_file("--publisher-key-file", &path)?;
            self.publisher_keys = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
        }
        use worker::config::load_secret;
        load_secret(
            "--subscriber-secret",
            &mut self.subscriber_secret,
            &mut self.subscriber_secret_file,
        )?;
        load_secret("--link-key", &mut self.link_key, &mut self.link_key_file)?;
        load_secret("--admin-key", &mut self.admin_key, &mut self.admin_key_file)
    }

    /// Checks what clap cannot: ranges, combinations, unsupported choices.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let StoreKind::Redis(_) = self.store_kind()? {
            anyhow::ensure!(
                self.redis_timeout_ms >= 1 && self.redis_max_inflight >= 1,
                "--redis-timeout-ms and --redis-max-inflight must be at least 1"
            );
            anyhow::ensure!(
                !self.redis_key_prefix.is_empty() && !self.redis_key_prefix.contains(['{', '}']),
                "--redis-key-prefix must be non-empty and free of braces"
            );
        }
        anyhow::ensure!(
            self.channel_meta_secs >= self.retention_secs,
            "--channel-meta-secs must be at least --retention-secs (a channel's seq must outlive its messages)"
        );
        anyhow::ensure!(
            (1..=302_400).contains(&self.ticket_rotate_secs),
            "--ticket-rotate-secs must be 1 to 302400 (a TLS 1.3 ticket lives at most 7 days, two periods here)"
        );
        anyhow::ensure!(
            self.retention_messages >= 1,
            "--retention-messages must be at least 1"
        );
        anyhow::ensure!(
            self.retention_secs >= 1,
            "--retention-secs must be at least 1"
        );
        anyhow::ensure!(
            self.max_message_bytes >= 1,
            "--max-message-bytes must be at least 1"
        );
        anyhow::ensure!(
            self.max_message_bytes <= protocol::link::MAX_FRAME / 2,
            "--max-message-bytes must fit a link frame"
        );
        anyhow::ensure!(
            self.max_inflight_body_bytes >= self.max_batch_bytes
                && self.max_inflight_body_bytes >= self.max_message_bytes,
            "--max-inflight-body-bytes must hold at least one largest batch and message"
        );
        anyhow::ensure!(self.max_channels >= 1, "--max-channels must be at least 1");
        anyhow::ensure!(
            self.max_batch_bytes >= 1,
            "--max-batch-bytes must be at least 1"
        );
        anyhow::ensure!(
            self.max_batch_lines >= 1,
            "--max-batch-lines must be at least 1"
        );
        anyhow::ensure!(
            self.max_broadcast_channels >= 1,
            "--max-broadcast-channels must be at least 1"
        );
        anyhow::ensure!(
            (256..=1024 * 1024).contains(&self.max_header_bytes),
            "--max-header-bytes must be 256..=1048576"
        );
        anyhow::ensure!(
            self.body_timeout_secs >= 1,
            "--body-timeout-secs must be at least 1"
        );
        anyhow::ensure!(
            self.publish_stream_idle_secs >= 1,
            "--publish-stream-idle-secs must be at least 1"
        );
        anyhow::ensure!(
            [self.publish_rate_per_ip, self.publish_rate_per_key]
                .iter()
                .all(|r| r.is_finite() && *r >= 0.0),
            "--publish-rate-per-ip and --publish-rate-per-key must be 0 (off) or a positive rate"
        );
        anyhow::ensure!(
            self.publish_burst_secs.is_finite() && self.publish_burst_secs > 0.0,
            "--publish-burst-secs must be more than 0"
        );
        anyhow::ensure!(
            self.worker_timeout_secs >= 1,
            "--worker-timeout-secs must be at least 1"
        );
        anyhow::ensure!(self.link_queue >= 16, "--link-queue must be at least 16");
        anyhow::ensure!(
            self.token_expires_secs >= 1,
            "--token-expires-secs must be at least 1"
        );
        if let Some(secret) = &self.subscriber_secret {
            anyhow::ensure!(!secret.is_empty(), "--subscriber-secret must not be empty");
        }
        if let Some(key) = &self.admin_key {
            anyhow::ensure!(!key.is_empty(), "--admin-key must not be empty");
        }
        anyhow::ensure!(
            self.publisher_keys.iter().all(|k| !k.is_empty()),
            "--publisher-key must not be empty"
        );
        anyhow::ensure!(
            !self.allow_origins.is_empty(),
            "--allow-origin needs at least one origin"
        );
        anyhow::ensure!(
            self.threads.is_none_or(|n| (1..=1024).contains(&n)),
            "--threads must be 1..=1024"
        );
        if self.local_workers > 0 {
            anyhow::ensure!(
                self.local_worker_ips >= 1,
                "--local-worker-ips must be at least 1"
            );
            let [_, _, c, d] = self.local_worker_ip_base.octets();
            anyhow::ensure!(
                d as u32 + self.local_workers - 1 <= 255,
                "--local-workers {} do not fit after --local-worker-ip-base {} (last octet)",
                self.local_workers,
                self.local_worker_ip_base
            );
            anyhow::ensure!(
                c as u32 + self.local_worker_ips - 1 <= 255,
                "--local-worker-ips {} do not fit after --local-worker-ip-base {} (third octet)",
                self.local_worker_ips,
                self.local_worker_ip_base
            );
        }
        Ok(())
    }

    /// The parsed `--store` value.
    pub fn store_kind(&self) -> anyhow::Result<StoreKind> {
        let s = self.store.trim();
        if s.eq_ignore_ascii_case("memory") {
            return Ok(StoreKind::Memory);
        }
        match RedisTarget::parse(s) {
            Some(Ok(t)) => Ok(StoreKind::Redis(t)),
            Some(Err(e)) => anyhow::bail!("--store {e}"),
            None => anyhow::bail!(
                "--store must be `memory`, `redis://HOST:PORT[/DB]` or `redis+cluster://H1:P1,H2:P2,...`, not {s:?}"
            ),
        }
    }

    /// True when neither publishers nor subscribers have to authenticate.
    pub fn is_open(&self) -> bool {
        self.subscriber_secret.is_none() && self.publisher_keys.is_empty()
    }

    pub fn worker_timeout(&self) -> Duration {
        Duration::from_secs(self.worker_timeout_secs)
    }

    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs)
    }

    pub fn publish_stream_idle(&self) -> Duration {
        Duration::from_secs(self.publish_stream_idle_secs)
    }

    pub fn retention_age(&self) -> Duration {
        Duration::from_secs(self.retention_secs)
    }

    /// IP `j` of local worker `i`: base + i in the last octet, + j in the third.
    pub fn local_worker_ip(&self, i: u32, j: u32) -> IpAddr {
        let [a, b, c, d] = self.local_worker_ip_base.octets();
        IpAddr::V4(Ipv4Addr::new(a, b, c + j as u8, d + i as u8))
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let masked_keys: Vec<&str> = self.publisher_keys.iter().map(|_| "***").collect();
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("threads", &self.threads)
            .field("log_format", &self.log_format)
            .field("local_workers", &self.local_workers)
            .field("store", &self.store)
            .field("channel_meta_secs", &self.channel_meta_secs)
            .field("retention_channel_bytes", &self.retention_channel_bytes)
            .field("redis_timeout_ms", &self.redis_timeout_ms)
            .field("redis_max_inflight", &self.redis_max_inflight)
            .field("redis_key_prefix", &self.redis_key_prefix)
            .field("redis_durable", &self.redis_durable)
            .field("parked_delivery_bytes", &self.parked_delivery_bytes)
            .field("parked_delivery_ms", &self.parked_delivery_ms)
            .field("publisher_keys", &masked_keys)
            .field(
                "subscriber_secret",
                &self.subscriber_secret.as_ref().map(|_| "***"),
            )
            .field("publisher_key_file", &self.publisher_key_file)
            .field("subscriber_secret_file", &self.subscriber_secret_file)
            .field("link_key", &self.link_key.as_ref().map(|_| "***"))
            .field("admin_key", &self.admin_key.as_ref().map(|_| "***"))
            .field("admin_key_file", &self.admin_key_file)
            .field("admin_listen", &self.admin_listen)
            .field("link_key_file", &self.link_key_file)
            .field("allow_origins", &self.allow_origins)
            .field("publish_allow_origins", &self.publish_allow_origins)
            .field("retention_messages", &self.retention_messages)
            .field("retention_secs", &self.retention_secs)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("retention_total_bytes", &self.retention_total_bytes)
            .field("max_channels", &self.max_channels)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("max_batch_lines", &self.max_batch_lines)
            .field("max_broadcast_channels", &self.max_broadcast_channels)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("body_timeout_secs", &self.body_timeout_secs)
            .field("worker_timeout_secs", &self.worker_timeout_secs)
            .field("link_queue", &self.link_queue)
            .field("token_expires_secs", &self.token_expires_secs)
            .field("local_worker_ip_base", &self.local_worker_ip_base)
            .field("local_worker_port", &self.local_worker_port)
            .field("local_worker_ips", &self.local_worker_ips)
            .field("worker_exe", &self.worker_exe)
            .field("local_worker_args", &self.local_worker_args)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["gateway"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap()
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = parse(&[]);
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.allow_origins, vec!["*".to_string()]);
        assert!(c.publish_allow_origins.is_empty());
        assert_eq!(
            (c.retention_messages, c.retention_secs, c.max_message_bytes),
            (100, 600, 65536)
        );
        assert_eq!(c.store_kind().unwrap(), StoreKind::Memory);
        c.validate().unwrap();
        assert!(c.is_open());
    }

    #[test]
    fn secrets_are_masked_and_stores_parse() {
        let c = parse(&[
            "--publisher-key",
            "k1",
            "--publisher-key",
            "k2",
            "--subscriber-secret",
            "topsecret",
        ]);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("k1") && !dbg.contains("topsecret"), "{dbg}");
        assert_eq!(c.publisher_keys, vec!["k1", "k2"]);
        let r = parse(&["--store", "redis://127.0.0.1:6379"]);
        r.validate().unwrap();
        assert_eq!(
            r.store_kind().unwrap(),
            StoreKind::Redis(RedisTarget::Single("redis://127.0.0.1:6379".into()))
        );
        let c = parse(&["--store", "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"]);
        assert!(
            matches!(c.store_kind().unwrap(), StoreKind::Redis(RedisTarget::Cluster(n)) if n.len() == 2)
        );
        let err = parse(&["--store", "postgres://x"]).validate().unwrap_err();
        assert!(err.to_string().contains("redis+cluster://"), "{err}");
        let short = parse(&["--store", "redis://h:1", "--channel-meta-secs", "10"]);
        assert!(short.validate().is_err(), "meta shorter than retention");
        let short = parse(&["--channel-meta-secs", "10"]);
        assert!(short.validate().is_err(), "in the memory store too");
    }

    #[test]
    fn local_worker_ips() {
        let c = parse(&["--local-workers", "3", "--local-worker-ips", "2"]);
        c.validate().unwrap();
        assert_eq!(c.local_worker_ip(0, 0).to_string(), "127.0.0.2");
        assert_eq!(c.local_worker_ip(2, 1).to_string(), "127.0.1.4");
        let bad = parse(&["--local-workers", "255"]);
        assert!(bad.validate().is_err());
    }
}
