//! Command line: clap derive subcommands, value parsers (durations, rates, source-IP ranges)
//! and the one `Plan` every subcommand is turned into.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "pushgate load generator: connect scale, memory per connection, publish rate, \
             delivery latency, loss and churn, against any deployment's public HTTP contract"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open N clients through /v1/assign at a ramp rate, hold them, close them; measures
    /// connect rate, connect time and memory per connection on every worker.
    #[command(args_override_self = true)]
    Connect(ConnectArgs),
    /// Connect clients, publish to their channels, check every delivery (loss, duplicates,
    /// order) and measure publish-to-receive latency.
    #[command(args_override_self = true)]
    Run(RunArgs),
    /// Like `run`, while a fraction of the clients drop and come back with `since`.
    #[command(args_override_self = true)]
    Churn(ChurnArgs),
    /// Publish at a target rate, singly or as NDJSON batches; no subscribers.
    #[command(args_override_self = true)]
    Publish(PublishArgs),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Ws,
    Poll,
    Sse,
    /// Clients use ws, poll and sse in turn, in the shares of `--transport-mix` (default:
    /// equal).
    Mixed,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Poll => "poll",
            Transport::Sse => "sse",
            Transport::Mixed => "mixed",
        }
    }

    /// The concrete transports, in the order `mixed` hands them out (and stats counts them).
    pub const CONCRETE: [Transport; 3] = [Transport::Ws, Transport::Poll, Transport::Sse];

    /// Index of a concrete transport in [`Transport::CONCRETE`] (`mixed` is never a
    /// client's transport; it counts as ws).
    pub fn lane(self) -> usize {
        match self {
            Transport::Ws | Transport::Mixed => 0,
            Transport::Poll => 1,
            Transport::Sse => 2,
        }
    }
}

/// The share of each concrete transport among the clients, as integer weights in
/// [`Transport::CONCRETE`] order (ws, poll, sse), reduced by their common divisor. Client
/// `i` takes position `i % total` of one cycle: the ws clients first, then poll, then sse
/// (`ws=80,sse=10,poll=10` is 8 ws, 1 poll, 1 sse per 10 clients), so any contiguous run
/// of clients (a shard, the first seconds of a ramp) has the mix within one cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportMix {
    weights: [u64; 3],
}

impl Default for TransportMix {
    /// An equal split: ws, poll, sse in turn.
    fn default() -> Self {
        TransportMix { weights: [1; 3] }
    }
}

impl TransportMix {
    /// Every client on `t` (`mixed` counts as the default split).
    pub fn only(t: Transport) -> TransportMix {
        if t == Transport::Mixed {
            return TransportMix::default();
        }
        let mut weights = [0; 3];
        weights[t.lane()] = 1;
        TransportMix { weights }
    }

    fn reduced(weights: [u64; 3]) -> TransportMix {
        fn gcd(a: u64, b: u64) -> u64 {
            if b == 0 {
                a
            } else {
                gcd(b, a % b)
            }
        }
        let g = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
        TransportMix {
            weights: weights.map(|w| w / g),
        }
    }

    fn total(self) -> u64 {
        self.weights.iter().sum()
    }

    /// The concrete transport of client `i` (global index).
    pub fn for_client(self, i: u64) -> Transport {
        let mut r = i % self.total();
        for (k, &w) in self.weights.iter().enumerate() {
            if r < w {
                return Transport::CONCRETE[k];
            }
            r -= w;
        }
        unreachable!("a position within the cycle falls in some transport's share")
    }

    /// The concrete transports clients of this mix use, in [`Transport::CONCRETE`] order.
    pub fn concrete(self) -> Vec<Transport> {
        Transport::CONCRETE
            .iter()
            .zip(self.weights)
            .filter(|(_, w)| *w > 0)
            .map(|(&t, _)| t)
            .collect()
    }

    /// How many of the clients `0..n` use each concrete transport of the mix.
    pub fn counts(self, n: u64) -> Vec<(Transport, u64)> {
        let (cycles, rest) = (n / self.total(), n % self.total());
        let mut start = 0;
        let mut out = Vec::new();
        for (k, &w) in self.weights.iter().enumerate() {
            if w > 0 {
                let in_rest = rest.saturating_sub(start).min(w);
                out.push((Transport::CONCRETE[k], cycles * w + in_rest));
            }
            start += w;
        }
        out
    }

    /// The flag value that gives this mix (`ws=8,poll=1,sse=1`).
    pub fn to_arg(self) -> String {
        Transport::CONCRETE
            .iter()
            .zip(self.weights)
            .map(|(t, w)| format!("{}={w}", t.name()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Parses `ws=80,sse=10,poll=10`: a weight per transport (whole numbers; one left out
/// gets none; at least one above 0).
pub fn parse_transport_mix(s: &str) -> anyhow::Result<TransportMix> {
    let mut weights: [Option<u64>; 3] = [None; 3];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, w) = part
            .split_once('=')
            .with_context(|| format!("bad share {part:?} in {s:?} (try ws=80,sse=10,poll=10)"))?;
        let t = Transport::CONCRETE
            .iter()
            .find(|t| t.name() == name.trim())
            .with_context(|| format!("unknown transport {name:?} in {s:?} (ws, poll or sse)"))?;
        let w: u64 = w
            .trim()
            .parse()
            .with_context(|| format!("bad weight {w:?} in {s:?} (a whole number)"))?;
        if w > 1_000_000 {
            bail!("weight {w} in {s:?} is too large (at most 1000000)");
        }
        if weights[t.lane()].replace(w).is_some() {
            bail!("{} given twice in {s:?}", t.name());
        }
    }
    let weights = weights.map(|w| w.unwrap_or(0));
    if weights.iter().all(|&w| w == 0) {
        bail!("no transport has a share in {s:?}");
    }
    Ok(TransportMix::reduced(weights))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// Each message to a uniformly random channel.
    Random,
    /// Message k to channel k mod channels.
    RoundRobin,
    /// `--rate` counts rounds; each round publishes one message to every channel.
    All,
}

/// Flags every subcommand has.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Gateway base URL. Repeat it (or give a comma list) for several gateways sharing one
    /// store: assigns and publishes go to them in turn, and a request that finds its
    /// gateway unreachable (or answering 5xx) goes on to the next one.
    #[arg(
        long,
        env = "PUSHGATE_GATEWAY",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    pub gateway: Vec<String>,
    /// Channel i is `<prefix>-<i>`; default `lg-<random>`.
    #[arg(long)]
    pub channel_prefix: Option<String>,
    /// Sign HS256 subscriber tokens with this secret and assign with `?token=`.
    #[arg(long, env = "PUSHGATE_SUBSCRIBER_SECRET", hide_env_values = true)]
    pub subscriber_secret: Option<String>,
    /// Publisher key sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "PUSHGATE_PUBLISHER_KEY", hide_env_values = true)]
    pub publisher_key: Option<String>,
    /// Ask `/v1/assign` for the TLS URLs of workers that have TLS listeners (`wss://`,
    /// `https://`); without it loadgen asks for the plain ones (`tls=false`).
    #[arg(long)]
    pub tls: bool,
    /// PEM CA certificate(s) that TLS workers' certificates are checked against.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Accept any TLS certificate (measurements only: no protection at all).
    #[arg(long)]
    pub insecure: bool,
    /// Never offer a TLS ticket: every handshake is full (to compare with resumption).
    #[arg(long)]
    pub tls_no_resume: bool,
    /// Local source addresses, bound round-robin: `127.0.1.1-127.0.1.40`, a comma list, or both.
    #[arg(long, value_parser = parse_source_ips)]
    pub source_ips: Option<SourceIpList>,
    /// Write every figure as JSON to this file (`-` for stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Hard bound on the whole run.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub max_duration: Duration,
    /// No progress line and no human summary.
    #[arg(long)]
    pub quiet: bool,
    /// Timeout of one connect (assign + TCP + handshake).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Timeout of one HTTP request (assign, publish, metrics).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Exit non-zero when more errors than this occur.
    #[arg(long, default_value_t = 0)]
    pub max_errors: u64,
    /// Clients one process may hold before splitting into child processes
    /// (default: open-file limit minus a reserve).
    #[arg(long)]
    pub max_per_process: Option<u64>,
    /// Internal: this process is shard i of k (i/k), run by a parent loadgen.
    #[arg(long, hide = true, value_parser = parse_shard)]
    pub shard: Option<(u32, u32)>,
    /// Internal: global index of this process's first client.
    #[arg(long, hide = true, default_value_t = 0)]
    pub client_offset: u64,
    #[command(flatten)]
    pub target: crate::target::TargetArgs,
}

/// Flags of subcommands that open clients.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Number of clients (one channel each).
    #[arg(long, default_value_t = 100)]
    pub clients: u64,
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: Transport,
    /// With `--transport mixed`: each transport's share, as weights, e.g.
    /// `ws=80,sse=10,poll=10` (a transport left out gets none). Default: an equal split.
    #[arg(long, value_parser = parse_transport_mix)]
    pub transport_mix: Option<TransportMix>,
    /// Connect rate, e.g. `5000/s`.
    #[arg(long, default_value = "5000/s", value_parser = parse_rate)]
    pub ramp: f64,
    /// Wait after all clients connected before reading memory.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Long-poll `timeout` parameter in seconds.
    #[arg(long, default_value_t = 30)]
    pub poll_timeout: u64,
    /// Keep-alive connections used for /v1/assign (per gateway).
    #[arg(long, default_value_t = 16)]
    pub assign_connections: usize,
    /// Connections that end unexpectedly (the worker went away, a reset, a 5xx, WebSocket
    /// close 1001/1006/1011/1012/1013/4002, SSE `resync`/`refused`) and reconnect attempts
    /// that fail that way are counted as drops, not errors: the client assigns again and
    /// resumes with `since`. So are `replaced` ends (4001, poll 409, SSE `replaced`) of a
    /// client's live connection, which only the server reordering subscriptions causes;
    /// each drop kind is reported. For runs that kill hosts on purpose; loss still fails.
    #[arg(long)]
    pub allow_drops: bool,
    /// How clients are driven: `lean` = one mio event loop per core over a table of small
    /// structs (~0.5 KB per idle client: for a million on one machine; plain TCP to
    /// pushgate only), `tasks` = a tokio task per client (TLS, Nchan), `auto` = `lean`
    /// where it can be used.
    #[arg(long, value_enum, default_value = "auto")]
    pub client_plane: ClientPlane,
}

/// How a process drives its clients (`--client-plane`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ClientPlane {
    #[default]
    Auto,
    Tasks,
    Lean,
}

impl ClientArgs {
    /// Which transport each client uses.
    pub fn mix(&self) -> TransportMix {
        match self.transport {
            Transport::Mixed => self.transport_mix.unwrap_or_default(),
            t => TransportMix::only(t),
        }
    }
}

/// Flags of subcommands that publish.
#[derive(Debug, Clone, Args)]
pub struct PublishOpts {
    /// Target messages per second (for `--pattern all`: rounds per second).
    #[arg(long, default_value = "100/s", value_parser = parse_rate)]
    pub rate: f64,
    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Channels to publish to (default: one per client; for `publish`: 100).
    #[arg(long)]
    pub channels: Option<u64>,
    #[arg(long, value_enum, default_value = "round-robin")]
    pub pattern: Pattern,
    /// Messages per request: 1 = `POST /v1/publish/{channel}`, more = NDJSON batches.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Send each batch as one `POST /v1/broadcast`: the same data on the `--batch`
    /// channels it names (each channel still counts as one message).
    #[arg(long)]
    pub broadcast: bool,
    /// Publish over long-lived publish streams (`POST /v1/publish?stream=1`), one per
    /// publish connection: each message is one NDJSON line sent when it is due (lines due
    /// together leave in one write), answered with its seq on the same connection.
    /// pushgate only; `--batch 1`, no `--retry-for`.
    #[arg(long)]
    pub publish_stream: bool,
    /// Approximate payload size; padded with a `pad` string.
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Keep-alive connections used for publishing (concurrent requests; per gateway).
    #[arg(long, default_value_t = 8)]
    pub publish_connections: usize,
    /// Retry a publish that failed (no connection, timeout, reset, 5xx) for up to this long,
    /// on the next gateway, with backoff. Every publish then carries an idempotency key
    /// (`Idempotency-Key` header, the `id` of NDJSON lines and broadcasts), so a retry of a
    /// publish that was committed after all is answered with its first seq, not appended
    /// again. 0 = one attempt, no keys.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub retry_for: Duration,
    /// Alongside the publish stream, one `POST /v1/broadcast` every DUR, the first DUR
    /// after publishing starts: one payload (`"b":<broadcast number>` in it) on
    /// `--broadcast-channels` distinct channels drawn at random afresh each time; every
    /// channel it is accepted on expects it like any other message. Split into processes,
    /// each process names its share of the channels among its own, at the same times: the
    /// run still sends one broadcast per DUR naming `--broadcast-channels` in all.
    #[arg(long, value_parser = parse_duration)]
    pub broadcast_every: Option<Duration>,
    /// Channels each `--broadcast-every` broadcast names (at most the channels published to).
    #[arg(long, default_value_t = 100_000)]
    pub broadcast_channels: u64,
    /// Most channels one `POST /v1/broadcast` names: the gateway's own
    /// `--max-broadcast-channels` (100,000 unless set). A `--broadcast-every` broadcast
    /// naming more goes out as several requests, back to back, with one payload.
    #[arg(long, default_value_t = 100_000)]
    pub max_broadcast_channels: u64,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub clients: ClientArgs,
    /// How long to hold the clients once all are connected.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub hold: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub clients: ClientArgs,
    #[command(flatten)]
    pub publish: PublishOpts,
    /// After publishing, wait at most this long for outstanding deliveries.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Read memory again after the drain and `--settle`, clients still open: what the
    /// workers keep once the messages have passed (`memory_after_drain`). One process only.
    #[arg(long)]
    pub memory_after_drain: bool,
    #[command(flatten)]
    pub check: CheckArgs,
}

/// How deliveries are judged (`run`, `churn`).
#[derive(Debug, Clone, Default, Args)]
pub struct CheckArgs {
    /// Gap frames do not fail the run (they are still counted and reported with their
    /// times): for runs that restart the store on purpose. Loss, duplicates and
    /// reordering still fail it; what a gap's replay sends again is not a duplicate.
    #[arg(long)]
    pub allow_gaps: bool,
    /// Also check the message number `i` every payload carries: one message received
    /// under two seqs (a publish appended twice) counts as `id_duplicated`. Keeps a map
    /// per client of what it received: for bounded runs.
    #[arg(long)]
    pub check_ids: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Fraction of the clients that drop and come back.
    #[arg(long, default_value_t = 0.2)]
    pub fraction: f64,
    /// Drops per second across the churning clients (default: churning clients / 2 s).
    #[arg(long, value_parser = parse_rate)]
    pub churn_rate: Option<f64>,
    /// Mean wait before coming back; each wait is jittered uniformly in [0.5x, 1.5x].
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub backoff: Duration,
    /// Publish this long with every client steady before the first drop (a steady phase,
    /// then the churn phase, in one run). 0 = drops from the first publish on.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub churn_after: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub publish: PublishOpts,
}

/// What the scenario does after connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Connect,
    Run,
    Churn,
    Publish,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Connect => "connect",
            Mode::Run => "run",
            Mode::Churn => "churn",
            Mode::Publish => "publish",
        }
    }
}

/// Churn settings.
#[derive(Debug, Clone)]
pub struct ChurnPlan {
    pub fraction: f64,
    pub rate: f64,
    pub backoff: Duration,
    /// Steady publishing before the first drop.
    pub after: Duration,
}

/// Everything one scenario needs, whatever subcommand it came from.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: Mode,
    pub common: CommonArgs,
    pub prefix: String,
    pub clients: ClientArgs,
    pub publish: Option<PublishOpts>,
    pub hold: Duration,
    pub drain: Duration,
    pub churn: Option<ChurnPlan>,
    /// `run`/`churn --memory-after-drain`.
    pub memory_after_drain: bool,
    /// `run`/`churn` check flags.
    pub check: CheckArgs,
}

impl Plan {
    pub fn from_command(command: Command) -> anyhow::Result<Plan> {
        let default_clients = ClientArgs {
            clients: 0,
            transport: Transport::Ws,
            transport_mix: None,
            ramp: 5000.0,
            settle: Duration::ZERO,
            poll_timeout: 30,
            assign_connections: 4,
            allow_drops: false,
            client_plane: ClientPlane::Tasks,
        };
        let (memory_after_drain, check) = match &command {
            Command::Run(a) => (a.memory_after_drain, a.check.clone()),
            Command::Churn(c) => (c.run.memory_after_drain, c.run.check.clone()),
            _ => (false, CheckArgs::default()),
        };
        let (mode, common, clients, publish, hold, drain, churn) = match command {
            Command::Connect(a) => (
                Mode::Connect,
                a.common,
                a.clients,
                None,
                a.hold,
                Duration::ZERO,
                None,
            ),
            Command::Run(a) => (
                Mode::Run,
                a.common,
                a.clients,
                Some(a.publish),
                Duration::ZERO,
                a.drain,
                None,
            ),
            Command::Churn(c) => {
                let churning = (c.run.clients.clients as f64 * c.fraction).ceil();
                let rate = c.churn_rate.unwrap_or((churning / 2.0).max(1.0));
                let churn = ChurnPlan {
                    fraction: c.fraction,
                    rate,
                    backoff: c.backoff,
                    after: c.churn_after,
                };
                let r = c.run;
                (
                    Mode::Churn,
                    r.common,
                    r.clients,
                    Some(r.publish),
                    Duration::ZERO,
                    r.drain,
                    Some(churn),
                )
            }
            Command::Publish(a) => {
                let mut p = a.publish;
                p.channels.get_or_insert(100);
                (
                    Mode::Publish,
                    a.common,
                    default_clients,
                    Some(p),
                    Duration::ZERO,
                    Duration::ZERO,
                    None,
                )
            }
        };
        let prefix = match &common.channel_prefix {
            Some(p) => p.clone(),
            None => format!("lg-{:08x}", rand::random::<u32>()),
        };
        let plan = Plan {
            mode,
            common,
            prefix,
            clients,
            publish,
            hold,
            drain,
            churn,
            memory_after_drain,
            check,
        };
        plan.validate()?;
        Ok(plan)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let sample = format!("{}-{}", self.prefix, u64::MAX);
        if sample.len() > 128
            || !sample
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b))
        {
            bail!("--channel-prefix must be made of [A-Za-z0-9_.:@-] and leave room for `-<index>` within 128 bytes");
        }
        if self.common.gateway.is_empty() {
            bail!("--gateway needs at least one URL");
        }
        if let Some(g) = self
            .common
            .gateway
            .iter()
            .find(|g| !g.starts_with("http://"))
        {
            bail!("--gateway must be an http:// URL (TLS is not supported by loadgen yet): {g}");
        }
        if self.clients.ramp <= 0.0 {
            bail!("--ramp must be positive");
        }
        if self.clients.transport_mix.is_some() && self.clients.transport != Transport::Mixed {
            bail!("--transport-mix needs --transport mixed");
        }
        if let Some(p) = &self.publish {
            if p.rate <= 0.0 {
                bail!("--rate must be positive");
            }
            if p.batch == 0 || p.publish_connections == 0 {
                bail!("--batch and --publish-connections must be at least 1");
            }
            if p.channels == Some(0) {
                bail!("--channels must be at least 1");
            }
            if p.publish_stream
                && (p.batch != 1
                    || p.broadcast
                    || !p.retry_for.is_zero()
                    || self.common.target.target != crate::target::ServerKind::Pushgate)
            {
                bail!("--publish-stream publishes single lines to pushgate: it takes --batch 1, no --broadcast and no --retry-for");
            }
            if p.broadcast_every.is_some_and(|d| d.is_zero()) {
                bail!("--broadcast-every must be more than 0");
            }
            // A shard's share of the broadcast channels may be none.
            if p.broadcast_every.is_some() && p.broadcast_channels == 0 && !self.is_child() {
                bail!("--broadcast-channels must be at least 1");
            }
            if p.max_broadcast_channels == 0 {
                bail!("--max-broadcast-channels must be at least 1");
            }
        }
        if let Some(c) = &self.churn {
            if !(0.0..=1.0).contains(&c.fraction) {
                bail!("--fraction must be within 0..=1");
            }
            if c.rate <= 0.0 {
                bail!("--churn-rate must be positive");
            }
        }
        if self.mode != Mode::Publish && self.clients.clients == 0 {
            bail!("--clients must be at least 1");
        }
        crate::target::validate(self)?;
        if self.clients.assign_connections == 0 {
            bail!("--assign-connections must be at least 1");
        }
        Ok(())
    }

    /// The server this plan drives.
    pub fn server(&self) -> &'static dyn crate::target::Server {
        crate::target::server(self.common.target.target)
    }

    /// Whether clients run on the lean plane (`--client-plane`, `auto` resolved).
    pub fn lean_plane(&self) -> anyhow::Result<bool> {
        let why = crate::lean::LeanPlane::unsupported(self);
        Ok(match (self.clients.client_plane, why) {
            (ClientPlane::Tasks, _) => false,
            (ClientPlane::Auto, why) => why.is_none(),
            (ClientPlane::Lean, None) => true,
            (ClientPlane::Lean, Some(why)) => {
                bail!("--client-plane lean does not drive {why}; use tasks or auto")
            }
        })
    }

    /// Channels this process publishes to: `--channels` (default one per client, for
    /// `publish` 100), never more than its clients.
    pub fn publish_channels(&self) -> u64 {
        match (&self.publish, self.mode) {
            (Some(p), Mode::Publish) => p.channels.unwrap_or(100),
            (Some(p), _) => p
                .channels
                .unwrap_or(self.clients.clients)
                .min(self.clients.clients),
            (None, _) => 0,
        }
    }

    /// Channels each `--broadcast-every` broadcast of this process names (0 without one).
    pub fn broadcast_channels(&self) -> u64 {
        match &self.publish {
            Some(p) if p.broadcast_every.is_some() => {
                p.broadcast_channels.min(self.publish_channels())
            }
            _ => 0,
        }
    }

    /// Channel name of global client/channel index `i`.
    pub fn channel(&self, i: u64) -> String {
        format!("{}-{}", self.prefix, i)
    }

    /// The first gateway: the one memory is read through and results are labelled with.
    pub fn gateway(&self) -> &str {
        &self.common.gateway[0]
    }

    /// Every gateway, as one label (`a,b`).
    pub fn gateways_label(&self) -> String {
        self.common.gateway.join(",")
    }

    /// Is this process a child shard?
    pub fn is_child(&self) -> bool {
        self.common.shard.is_some()
    }
}

/// The scenario as parsed, for the report and the JSON (`parameters`): what ran, whatever
/// came from flags, defaults or the environment. Durations in seconds, rates per second.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Parameters {
    pub mode: String,
    pub target: String,
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nchan_url: Option<String>,
    pub transport: String,
    /// `--transport-mix` as given (reduced: `ws=8,poll=1,sse=1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_mix: Option<String>,
    pub clients: u64,
    /// Clients per concrete transport (`ws`, `poll`, `sse`), in that order.
    pub clients_by_transport: Vec<(String, u64)>,
    pub ramp_per_sec: f64,
    pub settle_secs: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_secs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_secs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishParameters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub churn: Option<ChurnParameters>,
    pub poll_timeout_secs: u64,
    /// `lean` or `tasks` (`--client-plane`, resolved).
    #[serde(default)]
    pub client_plane: String,
    pub tls: bool,
    pub source_ips: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_process: Option<u64>,
    pub max_duration_secs: f64,
    pub connect_timeout_secs: f64,
    pub request_timeout_secs: f64,
    pub max_errors: u64,
    pub allow_drops: bool,
    pub allow_gaps: bool,
    pub check_ids: bool,
    pub memory_after_drain: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_pids: Vec<u32>,
}

/// The publishing part of [`Parameters`].
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PublishParameters {
    pub rate_per_sec: f64,
    pub duration_secs: f64,
    pub channels: u64,
    pub pattern: String,
    pub batch: usize,
    pub broadcast: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub publish_stream: bool,
    pub payload_bytes: usize,
    pub publish_connections: usize,
    pub retry_for_secs: f64,
    /// `--broadcast-every`, and the channels each of those broadcasts names in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_every_secs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast_channels: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_broadcast_channels: Option<u64>,
}

/// The churn part of [`Parameters`].
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ChurnParameters {
    pub fraction: f64,
    pub rate_per_sec: f64,
    pub backoff_secs: f64,
    /// `--churn-after`: steady publishing before the first drop.
    #[serde(default)]
    pub after_secs: f64,
}

/// A value-enum's flag spelling (`round-robin`, `nchan`).
fn flag_name(v: &impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

impl Plan {
    /// The parsed scenario of this (parent) process.
    pub fn parameters(&self) -> Parameters {
        let n = if self.mode == Mode::Publish {
            0
        } else {
            self.clients.clients
        };
        let c = &self.common;
        Parameters {
            mode: self.mode.name().to_string(),
            target: flag_name(&c.target.target),
            gateways: c.gateway.clone(),
            nchan_url: c.target.nchan_url.clone(),
            transport: self.clients.transport.name().to_string(),
            transport_mix: self.clients.transport_mix.map(|m| m.to_arg()),
            clients: n,
            clients_by_transport: if n == 0 {
                Vec::new()
            } else {
                self.clients
                    .mix()
                    .counts(n)
                    .into_iter()
                    .map(|(t, k)| (t.name().to_string(), k))
                    .collect()
            },
            ramp_per_sec: self.clients.ramp,
            settle_secs: self.clients.settle.as_secs_f64(),
            hold_secs: (self.mode == Mode::Connect).then_some(self.hold.as_secs_f64()),
            drain_secs: matches!(self.mode, Mode::Run | Mode::Churn)
                .then(|| self.drain.as_secs_f64()),
            publish: self.publish.as_ref().map(|p| PublishParameters {
                rate_per_sec: p.rate,
                duration_secs: p.duration.as_secs_f64(),
                channels: self.publish_channels(),
                pattern: flag_name(&p.pattern),
                batch: p.batch,
                broadcast: p.broadcast,
                publish_stream: p.publish_stream,
                payload_bytes: p.payload_bytes,
                publish_connections: p.publish_connections,
                retry_for_secs: p.retry_for.as_secs_f64(),
                broadcast_every_secs: p.broadcast_every.map(|d| d.as_secs_f64()),
                broadcast_channels: p.broadcast_every.map(|_| self.broadcast_channels()),
                max_broadcast_channels: p.broadcast_every.map(|_| p.max_broadcast_channels),
            }),
            churn: self.churn.as_ref().map(|ch| ChurnParameters {
                fraction: ch.fraction,
                rate_per_sec: ch.rate,
                backoff_secs: ch.backoff.as_secs_f64(),
                after_secs: ch.after.as_secs_f64(),
            }),
            poll_timeout_secs: self.clients.poll_timeout,
            client_plane: match self.lean_plane() {
                Ok(true) => "lean",
                _ => "tasks",
            }
            .to_string(),
            tls: c.tls,
            source_ips: c.source_ips.as_ref().map(|l| l.0.len()).unwrap_or(0),
            max_per_process: c.max_per_process,
            max_duration_secs: c.max_duration.as_secs_f64(),
            connect_timeout_secs: c.connect_timeout.as_secs_f64(),
            request_timeout_secs: c.request_timeout.as_secs_f64(),
            max_errors: c.max_errors,
            allow_drops: self.clients.allow_drops,
            allow_gaps: self.check.allow_gaps,
            check_ids: self.check.check_ids,
            memory_after_drain: self.memory_after_drain,
            server_pids: c.target.server_pids.clone(),
        }
    }
}

/// Flags whose value is a secret: shown as `***` in the command line a report prints.
const SECRET_FLAGS: [&str; 2] = ["--subscriber-secret", "--publisher-key"];

/// The command line as run, each argument shell-quoted where it needs it, secrets
/// replaced by `***`: what the report and the JSON show (`command_line`).
pub fn command_line(args: impl IntoIterator<Item = std::ffi::OsString>) -> String {
    let mut out = Vec::new();
    let mut hide_next = false;
    for a in args {
        let a = a.to_string_lossy().into_owned();
        if hide_next {
            hide_next = false;
            out.push("***".to_string());
            continue;
        }
        if SECRET_FLAGS.contains(&a.as_str()) {
            hide_next = true;
            out.push(a);
        } else if let Some(flag) = SECRET_FLAGS
            .iter()
            .find(|f| a.strip_prefix(**f).is_some_and(|r| r.starts_with('=')))
        {
            out.push(format!("{flag}=***"));
        } else {
            out.push(shell_quote(&a));
        }
    }
    out.join(" ")
}

/// `a` as a POSIX shell word: unchanged when it is made of safe characters, else in
/// single quotes (a `'` inside as `'\''`).
pub fn shell_quote(a: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=,+%@^".contains(c);
    if !a.is_empty() && a.chars().all(safe) {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

/// Parses `10s`, `500ms`, `2m`, `1h`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("bad duration {s:?} (try 10s, 500ms, 2m)"))?;
    if !v.is_finite() || v < 0.0 {
        bail!("bad duration {s:?}");
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// Parses a rate per second: `5000/s`, `300/m`, `10/h` or a bare number (per second).
pub fn parse_rate(s: &str) -> anyhow::Result<f64> {
    let s = s.trim();
    let (num, per) = match s.split_once('/') {
        Some((n, unit)) => {
            let per = match unit.trim() {
                "s" | "sec" => 1.0,
                "m" | "min" => 60.0,
                "h" => 3600.0,
                u => bail!("bad rate unit {u:?} in {s:?} (use /s, /m or /h)"),
            };
            (n, per)
        }
        None => (s, 1.0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .with_context(|| format!("bad rate {s:?} (try 5000/s)"))?;
    if !v.is_finite() || v <= 0.0 {
        bail!("rate must be positive: {s:?}");
    }
    Ok(v / per)
}

/// Parses `i/k` (0-based shard index of k shards).
pub fn parse_shard(s: &str) -> anyhow::Result<(u32, u32)> {
    let (i, k) = s.split_once('/').context("shard must be i/k")?;
    let (i, k): (u32, u32) = (i.parse()?, k.parse()?);
    if k == 0 || i >= k {
        bail!("shard index out of range: {s}");
    }
    Ok((i, k))
}

/// A list of local source addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceIpList(pub Vec<IpAddr>);

impl SourceIpList {
    /// The flag value that reproduces this list (a comma list).
    pub fn to_arg(&self) -> String {
        self.0
            .iter()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Parses `127.0.1.1-127.0.1.40`, `a,b,c`, or a comma list of both (IPv4 ranges; IPv6 singles).
pub fn parse_source_ips(s: &str) -> anyhow::Result<SourceIpList> {
    const MAX: u64 = 1 << 20;
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: Ipv4Addr = a
                    .trim()
                    .parse()
                    .with_context(|| format!("bad address in range {part:?}"))?;
                let b: Ipv4Addr = b
                    .trim()
                    .parse()
                    .with_context(|| format!("bad address in range {part:?}"))?;
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a {
                    bail!("range {part:?} runs backwards");
                }
                if (b - a) as u64 + out.len() as u64 >= MAX {
                    bail!("too many source addresses");
                }
                out.extend((a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
            }
            None => out.push(
                part.parse()
                    .with_context(|| format!("bad address {part:?}"))?,
            ),
        }
    }
    if out.is_empty() {
        bail!("no source addresses in {s:?}");
    }
    Ok(SourceIpList(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("5000/s").unwrap(), 5000.0);
        assert_eq!(parse_rate("120/m").unwrap(), 2.0);
        assert_eq!(parse_rate("7").unwrap(), 7.0);
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("5/d").is_err());
    }

    #[test]
    fn source_ip_ranges() {
        let l = parse_source_ips("127.0.1.1-127.0.1.3").unwrap();
        assert_eq!(l.0.len(), 3);
        assert_eq!(l.0[0], "127.0.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(l.0[2], "127.0.1.3".parse::<IpAddr>().unwrap());
        // Across an octet boundary.
        let l = parse_source_ips("127.0.1.255-127.0.2.1").unwrap();
        assert_eq!(l.to_arg(), "127.0.1.255,127.0.2.0,127.0.2.1");
        // Comma list mixed with a range, and IPv6 singles.
        let l = parse_source_ips("127.0.0.5, 127.0.1.1-127.0.1.2,::1").unwrap();
        assert_eq!(l.0.len(), 4);
        assert_eq!(parse_source_ips(&l.to_arg()).unwrap(), l);
        assert!(parse_source_ips("127.0.1.5-127.0.1.1").is_err());
        assert!(parse_source_ips("nonsense").is_err());
        assert!(parse_source_ips("").is_err());
        assert!(parse_source_ips("0.0.0.0-255.255.255.255").is_err());
    }

    #[test]
    fn shards_and_transports() {
        assert_eq!(parse_shard("1/3").unwrap(), (1, 3));
        assert!(parse_shard("3/3").is_err());
        let even = TransportMix::only(Transport::Mixed);
        assert_eq!(even.for_client(4), Transport::Poll);
        assert_eq!(
            TransportMix::only(Transport::Sse).for_client(4),
            Transport::Sse
        );
    }

    #[test]
    fn cli_parses_and_later_flags_override() {
        let cli = Cli::try_parse_from([
            "loadgen",
            "run",
            "--clients",
            "10",
            "--rate",
            "50/s",
            "--clients",
            "4",
            "--shard",
            "0/2",
        ])
        .unwrap();
        let plan = Plan::from_command(cli.command).unwrap();
        assert_eq!(plan.clients.clients, 4);
        assert_eq!(plan.publish.unwrap().rate, 50.0);
        assert!(plan.prefix.starts_with("lg-"));
        assert_eq!(
            plan.common.gateway,
            vec!["http://127.0.0.1:8080".to_string()]
        );
    }

    #[test]
    fn command_lines_are_quoted_and_hide_secrets() {
        let argv = [
            "target/release/loadgen",
            "run",
            "--gateway",
            "http://127.0.0.1:8080",
            "--channel-prefix",
            "it's",
            "--publisher-key",
            "k1",
            "--subscriber-secret=s2",
            "--rate",
            "200/s",
            "",
            "a b",
        ];
        assert_eq!(
            command_line(argv.iter().map(std::ffi::OsString::from)),
            "target/release/loadgen run --gateway http://127.0.0.1:8080 --channel-prefix 'it'\\''s' \
             --publisher-key *** --subscriber-secret=*** --rate 200/s '' 'a b'"
        );
    }

    #[test]
    fn parameters_say_what_runs() {
        let cli = Cli::try_parse_from([
            "loadgen",
            "churn",
            "--clients",
            "10",
            "--transport",
            "mixed",
            "--rate",
            "50/s",
            "--channels",
            "20",
        ])
        .unwrap();
        let p = Plan::from_command(cli.command).unwrap().parameters();
        assert_eq!(p.mode, "churn");
        assert_eq!(p.target, "pushgate");
        let by: Vec<(&str, u64)> = p
            .clients_by_transport
            .iter()
            .map(|(t, n)| (t.as_str(), *n))
            .collect();
        assert_eq!(by, [("ws", 4), ("poll", 3), ("sse", 3)]);
        let publish = p.publish.unwrap();
        assert_eq!((publish.rate_per_sec, publish.channels), (50.0, 10));
        assert_eq!(publish.pattern, "round-robin");
        assert_eq!(p.churn.unwrap().rate_per_sec, 1.0);
        assert_eq!(p.drain_secs, Some(5.0));
        assert_eq!(p.hold_secs, None);
        for n in [0u64, 1, 2, 3, 7] {
            let even = TransportMix::default();
            let counts = even.counts(n);
            let by_client =
                |t: Transport| (0..n).filter(|&i| even.for_client(i) == t).count() as u64;
            for (t, k) in counts {
                assert_eq!(k, by_client(t), "{n} {t:?}");
            }
        }
    }

    #[test]
    fn periodic_broadcast_flags() {
        let plan = |args: &[&str]| {
            let argv = ["loadgen", "run", "--clients", "50"].iter().chain(args);
            Plan::from_command(Cli::try_parse_from(argv).unwrap().command)
        };
        let p = plan(&["--broadcast-every", "1m"]).unwrap();
        // 100,000 by default, capped at the 50 channels published to.
        assert_eq!(p.broadcast_channels(), 50);
        let publish = p.parameters().publish.unwrap();
        assert_eq!(publish.broadcast_every_secs, Some(60.0));
        assert_eq!(publish.broadcast_channels, Some(50));
        assert_eq!(publish.max_broadcast_channels, Some(100_000));
        let p = plan(&["--broadcast-every", "2s", "--broadcast-channels", "20"]).unwrap();
        assert_eq!(p.broadcast_channels(), 20);
        let p = plan(&["--broadcast-channels", "20"]).unwrap();
        assert_eq!(
            p.broadcast_channels(),
            0,
            "no broadcasts without --broadcast-every"
        );
        assert_eq!(p.parameters().publish.unwrap().broadcast_channels, None);
        assert!(plan(&["--broadcast-every", "0s"]).is_err());
        assert!(plan(&["--broadcast-every", "1s", "--broadcast-channels", "0"]).is_err());
        assert!(plan(&["--broadcast-every", "1s", "--max-broadcast-channels", "0"]).is_err());
        // A shard's share may be none.
        let shard = [
            "--broadcast-every",
            "1s",
            "--broadcast-channels",
            "0",
            "--shard",
            "1/2",
        ];
        assert_eq!(plan(&shard).unwrap().broadcast_channels(), 0);
        let nchan = ["--target", "nchan", "--nchan-url", "http://127.0.0.1:1"];
        assert!(plan(&nchan).is_ok());
        let with = [&nchan[..], &["--broadcast-every", "1s"]].concat();
        assert!(plan(&with).is_err());
    }

    #[test]
    fn several_gateways_and_fault_flags() {
        let cli = Cli::try_parse_from([
            "loadgen",
            "churn",
            "--gateway",
            "http://10.0.0.1:8080,http://10.0.0.2:8080",
            "--gateway",
            "http://10.0.0.3:8080",
            "--retry-for",
            "15s",
            "--allow-drops",
            "--allow-gaps",
            "--check-ids",
        ])
        .unwrap();
        let plan = Plan::from_command(cli.command).unwrap();
        assert_eq!(plan.common.gateway.len(), 3);
        assert_eq!(plan.gateway(), "http://10.0.0.1:8080");
        assert_eq!(
            plan.gateways_label(),
            "http://10.0.0.1:8080,http://10.0.0.2:8080,http://10.0.0.3:8080"
        );
        assert_eq!(
            plan.publish.as_ref().unwrap().retry_for,
            Duration::from_secs(15)
        );
        assert!(plan.clients.allow_drops && plan.check.allow_gaps && plan.check.check_ids);
        // Every gateway must be http://.
        let cli =
            Cli::try_parse_from(["loadgen", "run", "--gateway", "http://a:1,https://b:2"]).unwrap();
        assert!(Plan::from_command(cli.command).is_err());
    }

    #[test]
    fn transport_mix_weights() {
        let mix = parse_transport_mix("ws=80,sse=10,poll=10").unwrap();
        assert_eq!(mix.to_arg(), "ws=8,poll=1,sse=1");
        let cycle: Vec<&str> = (0..10).map(|i| mix.for_client(i).name()).collect();
        assert_eq!(
            cycle,
            ["ws", "ws", "ws", "ws", "ws", "ws", "ws", "ws", "poll", "sse"]
        );
        assert_eq!(mix.for_client(1_000_008), Transport::Poll);
        // Counts agree with what each client is given, at any n and for any slice of
        // clients (a shard starting mid-cycle).
        for mix in [
            mix,
            parse_transport_mix("ws=3,sse=2").unwrap(),
            parse_transport_mix("poll=7").unwrap(),
            TransportMix::default(),
        ] {
            for n in [0u64, 1, 7, 9, 10, 11, 99, 1000, 1003] {
                for (t, k) in mix.counts(n) {
                    let by_client = (0..n).filter(|&i| mix.for_client(i) == t).count() as u64;
                    assert_eq!(k, by_client, "{mix:?} {n} {t:?}");
                }
            }
        }
        let ws_sse = parse_transport_mix("ws=3,sse=2").unwrap();
        assert_eq!(ws_sse.concrete(), [Transport::Ws, Transport::Sse]);
        assert_eq!(ws_sse.counts(12), [(Transport::Ws, 8), (Transport::Sse, 4)]);
        // 1,000,000 clients at 80/10/10: exactly 800,000 / 100,000 / 100,000.
        assert_eq!(
            mix.counts(1_000_000),
            [
                (Transport::Ws, 800_000),
                (Transport::Poll, 100_000),
                (Transport::Sse, 100_000)
            ]
        );
        for bad in [
            "",
            "ws",
            "ws=x",
            "tcp=1",
            "ws=1,ws=2",
            "ws=0,sse=0",
            "ws=-1",
        ] {
            assert!(parse_transport_mix(bad).is_err(), "{bad:?}");
        }

        // The flag: needs `mixed`, reaches the parameters and the per-transport counts.
        let plan = |extra: &[&str]| {
            let mut argv = vec!["loadgen", "run", "--clients", "20"];
            argv.extend(extra);
            Plan::from_command(Cli::try_parse_from(argv).unwrap().command)
        };
        let p = plan(&[
            "--transport",
            "mixed",
            "--transport-mix",
            "ws=80,sse=10,poll=10",
        ])
        .unwrap()
        .parameters();
        assert_eq!(p.transport_mix.as_deref(), Some("ws=8,poll=1,sse=1"));
        let by: Vec<(&str, u64)> = p
            .clients_by_transport
            .iter()
            .map(|(t, n)| (t.as_str(), *n))
            .collect();
        assert_eq!(by, [("ws", 16), ("poll", 2), ("sse", 2)]);
        assert!(plan(&["--transport", "ws", "--transport-mix", "ws=1"]).is_err());
        let even = plan(&["--transport", "mixed"]).unwrap();
        assert_eq!(even.clients.mix(), TransportMix::default());
        assert_eq!(even.parameters().transport_mix, None);
    }
}
