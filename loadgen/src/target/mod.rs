//! Which server loadgen talks to: pushgate (the public contract, the default) or Nchan
//! (nginx module), for side-by-side comparisons. Everything that differs between them is
//! behind [`Server`] ([`pushgate::Pushgate`], [`nchan::Nchan`]); the rest of loadgen asks
//! `plan.server()` and never checks which one it has. Memory can come from
//! `/proc/<pid>/status` of given server processes instead of `/metrics`.

pub mod nchan;
pub mod pushgate;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hyper::StatusCode;

use crate::checker::{Published, SeqChecker};
use crate::cli::{Plan, Transport};
use crate::clients::{ClientCtx, Conn, Slot};
use crate::memory::{self, Snapshot, WorkerReading};
use crate::stats::{unix_nanos, Stats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// pushgate's public contract: /v1/assign, /v1/publish, /v1/workers, /metrics.
    Pushgate,
    /// Nchan: subscribe at `<nchan-url>/sub/<channel>`, publish `POST <nchan-url>/pub/<channel>`.
    Nchan,
}

/// Flags choosing the server kind (part of every subcommand's common flags).
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Server kind.
    #[arg(long, value_enum, default_value = "pushgate")]
    pub target: ServerKind,
    /// Nchan base URL (with `--target nchan`), e.g. `http://127.0.0.1:8090`.
    #[arg(long)]
    pub nchan_url: Option<String>,
    /// Read memory as VmRSS of these server processes (repeatable) instead of `/metrics`.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
}

/// A connection being opened: `(worker it is counted under, connection)` or an error label.
pub type Opening<'a> = Pin<Box<dyn Future<Output = Result<(String, Conn), String>> + Send + 'a>>;

/// How a single publish was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SingleAnswer {
    /// Accepted as this seq (what the subscriber's check will see).
    Seq(u64),
    /// Accepted, but the answer did not say which seq.
    Unnumbered,
    /// Refused.
    Refused,
}

/// What differs between the servers loadgen drives.
pub trait Server: Send + Sync {
    /// Checks the flags that matter to this server.
    fn validate(&self, plan: &Plan) -> anyhow::Result<()>;

    /// Base URLs publishes go to (in turn, failing over).
    fn publish_bases(&self, plan: &Plan) -> Vec<String>;

    /// Path of a single publish to `channel`.
    fn publish_path(&self, channel: &str) -> String;

    /// The `i` field of the payload of single publish `k` to the channel of `entry`.
    fn stamp(&self, entry: &Published, k: u64) -> u64;

    /// What the answer to a single publish whose payload carried `stamp` means.
    fn single_answer(&self, status: StatusCode, body: &[u8], stamp: u64) -> SingleAnswer;

    /// One text message (WebSocket frame / SSE event data) as the server sends it;
    /// `Some(kind)` when the message ends the stream.
    fn on_text(
        &self,
        stats: &Stats,
        checker: &mut SeqChecker,
        slot: &Slot,
        text: &[u8],
    ) -> Option<String>;

    /// Opens a subscriber connection for `channel` (resuming after `since`, in `epoch`
    /// once a gap told it, where the server can).
    fn open<'a>(
        &'a self,
        ctx: &'a ClientCtx,
        channel: &'a str,
        transport: Transport,
        since: Option<u64>,
        epoch: Option<u64>,
        started: Instant,
    ) -> Opening<'a>;

    /// Whether memory can be read from the server's own `/metrics`.
    fn has_metrics(&self) -> bool;
}

/// The server a plan drives.
pub fn server(kind: ServerKind) -> &'static dyn Server {
    match kind {
        ServerKind::Pushgate => &pushgate::Pushgate,
        ServerKind::Nchan => &nchan::Nchan,
    }
}

/// Checks the target flags.
pub fn validate(plan: &Plan) -> anyhow::Result<()> {
    plan.server().validate(plan)
}

/// Memory comes from `/metrics` (not from `--server-pid` processes).
fn from_metrics(plan: &Plan) -> bool {
    plan.common.target.server_pids.is_empty() && plan.server().has_metrics()
}

/// VmRSS of a process in bytes, from `/proc/<pid>/status`.
pub fn pid_rss(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss(&text)
}

/// `VmRSS:   1234 kB` → bytes.
pub fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// One memory reading: with `--server-pid`, each pid is a "worker" (`pid <n>`); else
/// the server's `/metrics` (nothing for a server without them).
pub async fn snapshot(plan: &Plan) -> Snapshot {
    if from_metrics(plan) {
        return memory::snapshot(plan.gateway()).await;
    }
    let pids = &plan.common.target.server_pids;
    let mut snap = Snapshot {
        sockstat: std::fs::read_to_string("/proc/net/sockstat")
            .ok()
            .and_then(|t| memory::parse_sockstat(&t)),
        ..Default::default()
    };
    for &pid in pids {
        snap.workers.push(WorkerReading {
            id: format!("pid {pid}"),
            address: None,
            rss: pid_rss(pid),
            connections: None,
        });
    }
    snap
}

/// [`snapshot`] after the settle time, read twice half a second apart (the later kept).
pub async fn settled_snapshot(plan: &Plan) -> Snapshot {
    if from_metrics(plan) {
        return memory::settled_snapshot(plan.gateway(), plan.clients.settle).await;
    }
    tokio::time::sleep(plan.clients.settle).await;
    let _ = snapshot(plan).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    snapshot(plan).await
}

/// utime + stime of a process in clock ticks, from `/proc/<pid>/stat`.
pub fn pid_cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ticks(&text)
}

/// Fields 14 and 15 (utime, stime) of a `/proc/<pid>/stat` line; the command name in
/// parentheses may hold spaces, so fields are counted after the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After `)`: state is field 3, so utime (14) is index 11 and stime (15) index 12.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// With `--server-pid`: prints `SERVER_CPU <label> <unix_ms> <cpu_ms> [<pid>=<cpu_ms> ...]`
/// (Σ utime + stime of the server processes, then each process) on stderr, so a script can
/// take the CPU of one phase (e.g. only the publish + delivery, without connect and close).
pub fn cpu_mark(plan: &Plan, label: &str) {
    let pids = &plan.common.target.server_pids;
    if pids.is_empty() {
        return;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let each: Vec<(u32, u64)> = pids
        .iter()
        .filter_map(|&p| Some((p, pid_cpu_ticks(p)?)))
        .collect();
    let ticks: u64 = each.iter().map(|(_, t)| t).sum();
    let mut line = format!(
        "SERVER_CPU {label} {} {}",
        unix_nanos() / 1_000_000,
        ticks * 1000 / hz
    );
    for (pid, t) in each {
        line.push_str(&format!(" {pid}={}", t * 1000 / hz));
    }
    eprintln!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmrss() {
        let s = "Name:\tnginx\nVmHWM:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads: 1\n";
        assert_eq!(parse_vmrss(s), Some(5120 * 1024));
        assert_eq!(parse_vmrss("Name: x\n"), None);
        assert!(pid_rss(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn stat_ticks() {
        let line = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 70 30 0 0 20 0 1 0";
        assert_eq!(parse_stat_ticks(line), Some(100));
        assert!(pid_cpu_ticks(std::process::id()).is_some());
        assert_eq!(parse_stat_ticks("garbage"), None);
    }
}
