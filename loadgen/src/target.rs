//! Which server loadgen talks to: pushgate (the public contract, the default) or Nchan
//! (nginx module), for side-by-side comparisons. Nchan has no assign step and sends the raw
//! payload, so for it the check uses a per-channel counter the publisher puts in the
//! payload's `i` field (1, 2, 3... per channel) instead of the server's seq. Memory can
//! come from `/proc/<pid>/status` of given server processes instead of `/metrics`.

use std::time::Duration;

use bytes::Bytes;
use clap::{Args, ValueEnum};
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderValue;
use hyper::Method;
use serde::Deserialize;

use crate::checker::{Seen, SeqChecker};
use crate::cli::Plan;
use crate::clients::{ClientCtx, SessionEnd, Slot};
use crate::memory::{self, Snapshot, WorkerReading};
use crate::net::{http_connect, request, ReqBody, Target};
use crate::stats::{unix_nanos, Stats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Server {
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
    pub target: Server,
    /// Nchan base URL (with `--target nchan`), e.g. `http://127.0.0.1:8090`.
    #[arg(long)]
    pub nchan_url: Option<String>,
    /// Read memory as VmRSS of these server processes (repeatable) instead of `/metrics`.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
}

/// The worker id connections to Nchan are counted under.
pub const NCHAN_WORKER: &str = "nchan";

pub fn is_nchan(plan: &Plan) -> bool {
    plan.common.target.target == Server::Nchan
}

/// Checks the target flags.
pub fn validate(plan: &Plan) -> anyhow::Result<()> {
    let t = &plan.common.target;
    match t.target {
        Server::Pushgate => Ok(()),
        Server::Nchan => {
            let url = t
                .nchan_url
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("--target nchan needs --nchan-url"))?;
            if !url.starts_with("http://") {
                anyhow::bail!("--nchan-url must be an http:// URL");
            }
            if plan
                .publish
                .as_ref()
                .is_some_and(|p| p.batch != 1 || p.broadcast)
            {
                anyhow::bail!(
                    "--target nchan publishes one message per request: --batch 1, no --broadcast"
                );
            }
            if plan.common.subscriber_secret.is_some() {
                anyhow::bail!("--subscriber-secret is pushgate-only");
            }
            Ok(())
        }
    }
}

/// Base URL publishes go to.
pub fn publish_base(plan: &Plan) -> &str {
    match (&plan.common.target.target, &plan.common.target.nchan_url) {
        (Server::Nchan, Some(u)) => u.trim_end_matches('/'),
        _ => &plan.common.gateway,
    }
}

/// Publish path of a channel.
pub fn publish_path(plan: &Plan, channel: &str) -> String {
    if is_nchan(plan) {
        format!("/pub/{channel}")
    } else {
        format!("/v1/publish/{channel}")
    }
}

/// Nchan subscriber URLs: `(ws, http)` for a channel.
pub fn nchan_urls(plan: &Plan, channel: &str) -> (String, String) {
    let base = publish_base(plan);
    let http = format!("{base}/sub/{channel}");
    let ws = format!("ws://{}", http.trim_start_matches("http://"));
    (ws, http)
}

/// The payload fields loadgen itself publishes.
#[derive(Debug, Deserialize)]
struct Stamp {
    t: u64,
    i: u64,
}

/// Handles one raw Nchan message: the payload itself, `i` = per-channel counter (from 1).
pub fn on_raw(stats: &Stats, checker: &mut SeqChecker, slot: &Slot, payload: &[u8]) {
    match serde_json::from_slice::<Stamp>(payload) {
        Ok(s) => {
            stats
                .delivered
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if checker.observe(s.i) != Seen::Duplicate {
                slot.unique
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                slot.max_seq
                    .fetch_max(s.i, std::sync::atomic::Ordering::Relaxed);
            }
            stats.record_delivery(s.t);
        }
        Err(_) => stats.error("bad_frame"),
    }
}

/// An Nchan long-poll connection: keep-alive, `If-Modified-Since` / `If-None-Match` from
/// the previous answer's `Last-Modified` / `Etag`.
pub struct NchanPoll {
    sender: SendRequest<ReqBody>,
    target: Target,
    last_modified: Option<HeaderValue>,
    etag: Option<HeaderValue>,
}

pub async fn nchan_poll_connect(ctx: &ClientCtx, url: &str) -> Result<NchanPoll, String> {
    let target = Target::parse(url).map_err(|_| "poll_bad_url".to_string())?;
    let sender = http_connect(&ctx.src, &target)
        .await
        .map_err(|_| "poll_connect".to_string())?;
    Ok(NchanPoll {
        sender,
        target,
        last_modified: None,
        etag: None,
    })
}

/// Polls until stopped, churned or failed. 304/408 (Nchan's subscriber timeout) poll again.
pub async fn nchan_poll_session(
    ctx: &ClientCtx,
    mut c: NchanPoll,
    checker: &mut SeqChecker,
    slot: &Slot,
) -> SessionEnd {
    let limit = Duration::from_secs(ctx.plan.clients.poll_timeout + 15);
    loop {
        let mut req = request(Method::GET, &c.target, &c.target.path, None, Bytes::new());
        if let Some(v) = &c.last_modified {
            req.headers_mut().insert("if-modified-since", v.clone());
        }
        if let Some(v) = &c.etag {
            req.headers_mut().insert("if-none-match", v.clone());
        }
        let exchange = async {
            let resp = c.sender.send_request(req).await.map_err(|_| "poll_error")?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|_| "poll_error")?.to_bytes();
            Ok::<_, &'static str>((parts, body))
        };
        let r = tokio::select! {
            _ = ctx.stop.cancelled() => return SessionEnd::Stopped,
            _ = slot.churn.notified() => return SessionEnd::Churned,
            r = tokio::time::timeout(limit, exchange) => r,
        };
        let (parts, body) = match r {
            Err(_) => return SessionEnd::Error("poll_timeout".into()),
            Ok(Err(kind)) => return SessionEnd::Error(kind.into()),
            Ok(Ok(x)) => x,
        };
        match parts.status.as_u16() {
            200 => {
                c.last_modified = parts.headers.get("last-modified").cloned();
                c.etag = parts.headers.get("etag").cloned();
                on_raw(&ctx.stats, checker, slot, &body);
            }
            304 | 408 => {}
            s => return SessionEnd::Error(format!("poll_http_{s}")),
        }
    }
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
/// pushgate's `/metrics` (nothing for Nchan).
pub async fn snapshot(plan: &Plan) -> Snapshot {
    let pids = &plan.common.target.server_pids;
    if pids.is_empty() && !is_nchan(plan) {
        return memory::snapshot(&plan.common.gateway).await;
    }
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
    if plan.common.target.server_pids.is_empty() && !is_nchan(plan) {
        return memory::settled_snapshot(&plan.common.gateway, plan.clients.settle).await;
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
    use crate::checker::{CheckTotals, Published};

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

    #[test]
    fn raw_payloads_are_checked_by_counter() {
        let stats = Stats::new();
        let slot = Slot::default();
        let mut c = SeqChecker::default();
        let t = unix_nanos() - 1_000_000;
        for i in [1u64, 2, 2, 4] {
            on_raw(
                &stats,
                &mut c,
                &slot,
                format!(r#"{{"t":{t},"i":{i},"pad":"xx"}}"#).as_bytes(),
            );
        }
        on_raw(&stats, &mut c, &slot, b"not json");
        let p = Published::default();
        for i in 1..=4 {
            p.accepted_seq(i);
        }
        let mut totals = CheckTotals::default();
        totals.add_channel(&c, &p);
        assert_eq!((totals.lost, totals.duplicated, totals.unique), (1, 1, 3));
        assert_eq!(slot.max_seq.load(std::sync::atomic::Ordering::Relaxed), 4);
        assert_eq!(stats.errors.lock().unwrap().get("bad_frame"), Some(&1));
        assert!(stats.hists.lock().unwrap().latency.max() >= 1000);
    }
}
