//! `chaos`: the fault-injection proxy from the command line (see the library's docs).
//!
//!   chaos --listen 127.0.0.1:7000 --upstream 127.0.0.1:8080 --seed 7 --segment 1 \
//!         --delay-us 0-500 --reset-after-bytes 2000-50000

use chaos::{parse_range, Faults, Proxy, Ways};
use clap::Parser;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "chaos",
    version,
    about = "Fault-injection TCP proxy: byte-by-byte segments, delays, pauses, half-closes, resets and blackholes, replayable from --seed"
)]
struct Cli {
    /// Where the proxy listens.
    #[arg(long)]
    listen: SocketAddr,
    /// Where every connection is forwarded.
    #[arg(long)]
    upstream: SocketAddr,
    /// Seed of every random choice (print it with a failing run to replay it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Largest write, in bytes (1: byte by byte), with TCP_NODELAY.
    #[arg(long)]
    segment: Option<usize>,
    /// Pause before each write, in µs: `A-B` (random in the range) or `A`.
    #[arg(long, value_parser = parse_range)]
    delay_us: Option<std::ops::RangeInclusive<u64>>,
    /// A stall of this many ms before one read in `--pause-every`.
    #[arg(long)]
    pause_ms: Option<u64>,
    #[arg(long, default_value_t = 100)]
    pause_every: u32,
    /// Reset both sides (RST) after a random number of bytes in this range.
    #[arg(long, value_parser = parse_range)]
    reset_after_bytes: Option<std::ops::RangeInclusive<u64>>,
    /// Shut the client->upstream direction (FIN) after a random number of bytes in this range.
    #[arg(long, value_parser = parse_range)]
    half_close_after_bytes: Option<std::ops::RangeInclusive<u64>>,
    /// Which directions --segment, --delay-us and --pause-ms shape: both, to-upstream
    /// (what the server reads) or to-client.
    #[arg(long, default_value = "both", value_parser = ["both", "to-upstream", "to-client"])]
    ways: String,
    /// Accept and read, never forward.
    #[arg(long)]
    blackhole: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "chaos=info".into()),
        )
        .init();
    let c = Cli::parse();
    let us = |r: std::ops::RangeInclusive<u64>| {
        Duration::from_micros(*r.start())..=Duration::from_micros(*r.end())
    };
    let faults = Faults {
        seed: c.seed,
        ways: match c.ways.as_str() {
            "to-upstream" => Ways::ToUpstream,
            "to-client" => Ways::ToClient,
            _ => Ways::Both,
        },
        segment: c.segment,
        delay: c.delay_us.map(us),
        pause: c.pause_ms.map(Duration::from_millis),
        pause_every: c.pause_every,
        reset_after: c.reset_after_bytes,
        half_close_after: c.half_close_after_bytes,
        blackhole: c.blackhole,
    };
    let proxy = Proxy::start(c.listen, c.upstream, faults.clone()).await?;
    tracing::info!(listen = %proxy.addr, upstream = %c.upstream, ?faults, "chaos proxy listening");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
