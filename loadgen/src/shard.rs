//! Splitting a run over child processes when one process may not open enough files: the
//! open-file limit, the child command lines, the READY/GO/RESULT line protocol, the merge.

use std::ffi::OsString;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tokio_util::sync::CancellationToken;

use crate::cli::{Mode, Plan};
use crate::memory;
use crate::result::RawResult;
use crate::scenario::{progress_line, show_progress, Progress, Ready, StopReason};

/// Files kept free for everything that is not a client socket.
const RESERVE: u64 = 200;

/// Raises the soft open-file limit to the hard one; returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Clients one process may hold given the open-file limit and the connections it needs besides.
pub fn clients_per_process(plan: &Plan, nofile: u64) -> u64 {
    if let Some(n) = plan.common.max_per_process {
        return n.max(1);
    }
    let pools = plan.clients.assign_connections as u64
        + plan
            .publish
            .as_ref()
            .map(|p| p.publish_connections as u64 + u64::from(p.broadcast_every.is_some()))
            .unwrap_or(0);
    let extra = pools * plan.common.gateway.len() as u64;
    nofile.saturating_sub(RESERVE + extra).max(1)
}

/// Shard `i` of `k` over `n` clients: (offset, count).
pub fn share(n: u64, k: u64, i: u64) -> (u64, u64) {
    let lo = n * i / k;
    let hi = n * (i + 1) / k;
    (lo, hi - lo)
}

/// Channels shard `i` of `k` publishes to: its share of `--channels` (rounded up), never
/// more than its clients (as [`Plan::publish_channels`] works it out in the child).
fn shard_channels(plan: &Plan, k: u64, i: u64) -> u64 {
    let (_, clients) = share(plan.clients.clients, k, i);
    match plan.publish.as_ref().and_then(|p| p.channels) {
        Some(c) => c.div_ceil(k).min(clients),
        None => clients,
    }
}

/// Shard `i`'s part of `n` channels per broadcast, in proportion to the channels each
/// of the `weights.len()` shards publishes to: the parts add up to `n`, and none is
/// more than its shard's channels as long as `n` is not more than all of them.
pub fn weighted_share(n: u64, weights: &[u64], i: usize) -> u64 {
    let total: u64 = weights.iter().sum();
    if total == 0 {
        return 0;
    }
    let below: u64 = weights[..i].iter().sum();
    let upto = |w: u64| (u128::from(n) * u128::from(w) / u128::from(total)) as u64;
    upto(below + weights[i]) - upto(below)
}

/// The source addresses of shard `i` of `k`: a contiguous slice, or one address round-robin
/// when there are fewer addresses than shards.
pub fn ip_share<T: Clone>(ips: &[T], k: usize, i: usize) -> Vec<T> {
    if ips.is_empty() {
        return Vec::new();
    }
    if ips.len() < k {
        return vec![ips[i % ips.len()].clone()];
    }
    let (lo, n) = share(ips.len() as u64, k as u64, i as u64);
    ips[lo as usize..(lo + n) as usize].to_vec()
}

/// The command line of shard `i`: the parent's own arguments, then overrides (clap takes
/// the last occurrence of a flag).
pub fn child_args(plan: &Plan, parent_args: &[OsString], k: u64, i: u64) -> Vec<OsString> {
    let (off, count) = share(plan.clients.clients, k, i);
    let mut a: Vec<OsString> = parent_args.to_vec();
    let mut push = |flag: &str, v: String| {
        a.push(flag.into());
        a.push(v.into());
    };
    push("--shard", format!("{i}/{k}"));
    push(
        "--client-offset",
        (plan.common.client_offset + off).to_string(),
    );
    push("--clients", count.to_string());
    push("--channel-prefix", plan.prefix.clone());
    push("--ramp", format!("{}/s", plan.clients.ramp / k as f64));
    if let Some(p) = &plan.publish {
        push("--rate", format!("{}/s", p.rate / k as f64));
        if let Some(c) = p.channels {
            push("--channels", c.div_ceil(k).to_string());
        }
        if p.broadcast_every.is_some() {
            // Each shard broadcasts to its own channels at the same times: together one
            // broadcast naming `--broadcast-channels` (at most all channels published to).
            let weights: Vec<u64> = (0..k).map(|j| shard_channels(plan, k, j)).collect();
            let n = p.broadcast_channels.min(weights.iter().sum());
            push(
                "--broadcast-channels",
                weighted_share(n, &weights, i as usize).to_string(),
            );
        }
    }
    if let Some(c) = &plan.churn {
        push("--churn-rate", format!("{}/s", c.rate / k as f64));
    }
    if let Some(ips) = &plan.common.source_ips {
        let mine = crate::cli::SourceIpList(ip_share(&ips.0, k as usize, i as usize));
        push("--source-ips", mine.to_arg());
    }
    a.push("--quiet".into());
    a
}

struct ChildState {
    progress: Progress,
    ready: Option<Ready>,
    result: Option<RawResult>,
    exited: bool,
}

/// Runs the scenario over `k` child processes and merges their results. The parent reads
/// memory before starting them and after all report READY, then tells them GO.
pub async fn run_parent(
    plan: Arc<Plan>,
    k: u64,
    stop_all: CancellationToken,
    why: StopReason,
) -> anyhow::Result<RawResult> {
    let exe = std::env::current_exe().context("finding loadgen's own executable")?;
    let parent_args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let measure = plan.mode != Mode::Publish;
    let before = if measure {
        Some(crate::target::snapshot(&plan).await)
    } else {
        None
    };

    let states: Arc<Vec<Mutex<ChildState>>> = Arc::new(
        (0..k)
            .map(|_| {
                Mutex::new(ChildState {
                    progress: Progress::default(),
                    ready: None,
                    result: None,
                    exited: false,
                })
            })
            .collect(),
    );
    let changed = Arc::new(tokio::sync::Notify::new());
    let mut children: Vec<Child> = Vec::new();
    let mut stdins: Vec<Option<ChildStdin>> = Vec::new();
    let mut readers = Vec::new();
    for i in 0..k {
        let mut child = tokio::process::Command::new(&exe)
            .args(child_args(&plan, &parent_args, k, i))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting shard {i}"))?;
        stdins.push(child.stdin.take());
        let stdout = child.stdout.take().context("child stdout")?;
        let (states, changed) = (states.clone(), changed.clone());
        readers.push(tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let (tag, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                let mut st = states[i as usize].lock().unwrap();
                match tag {
                    "PROGRESS" => {
                        if let Ok(p) = serde_json::from_str(rest) {
                            st.progress = p;
                        }
                    }
                    "READY" => st.ready = Some(serde_json::from_str(rest).unwrap_or_default()),
                    "RESULT" => match serde_json::from_str(rest) {
                        Ok(r) => st.result = Some(r),
                        Err(e) => tracing::error!("shard {i}: unreadable result: {e}"),
                    },
                    _ => {}
                }
                drop(st);
                changed.notify_waiters();
            }
            states[i as usize].lock().unwrap().exited = true;
            changed.notify_waiters();
        }));
        children.push(child);
    }

    let progress_stop = CancellationToken::new();
    let printer = show_progress(&plan).then(|| {
        tokio::spawn(print_progress(
            states.clone(),
            k,
            plan.clients.clients,
            progress_stop.clone(),
        ))
    });

    // Barrier: every shard READY (or gone).
    loop {
        let notified = changed.notified();
        let all = states.iter().all(|s| {
            let s = s.lock().unwrap();
            s.ready.is_some() || s.exited
        });
        if all || stop_all.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = notified => {}
            _ = stop_all.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let mut memory_result = None;
    if let (Some(before), false) = (before, stop_all.is_cancelled()) {
        let after = tokio::select! {
            _ = stop_all.cancelled() => None,
            a = crate::target::settled_snapshot(&plan) => Some(a),
        };
        if let Some(after) = after {
            let mut per_worker = std::collections::HashMap::new();
            let mut connected = 0;
            for s in states.iter() {
                if let Some(r) = &s.lock().unwrap().ready {
                    connected += r.connected;
                    for (w, n) in &r.per_worker {
                        *per_worker.entry(w.clone()).or_insert(0) += n;
                    }
                }
            }
            memory_result = Some(memory::compare(before, after, &per_worker, connected));
        }
    }
    for stdin in stdins.iter_mut().flatten() {
        let _ = stdin.write_all(b"GO\n").await;
        let _ = stdin.flush().await;
    }

    // Wait for every shard to finish; on stop, closing stdin tells them to wrap up.
    {
        let wait_all = async {
            for c in children.iter_mut() {
                let _ = c.wait().await;
            }
        };
        tokio::pin!(wait_all);
        tokio::select! {
            _ = &mut wait_all => {}
            _ = stop_all.cancelled() => {
                stdins.clear();
                if tokio::time::timeout(Duration::from_secs(30), &mut wait_all).await.is_err() {
                    why.set("interrupted");
                }
            }
        }
    }
    for c in children.iter_mut() {
        let _ = c.start_kill();
    }
    for r in readers {
        let _ = r.await;
    }
    progress_stop.cancel();
    if let Some(p) = printer {
        let _ = p.await;
    }

    let mut merged: Option<RawResult> = None;
    let mut missing = 0;
    for s in states.iter() {
        match s.lock().unwrap().result.take() {
            Some(r) => match &mut merged {
                Some(m) => m.merge(&r)?,
                None => merged = Some(r),
            },
            None => missing += 1,
        }
    }
    let Some(mut merged) = merged else {
        bail!("no shard produced a result");
    };
    if missing > 0 {
        *merged.errors.entry("shard_lost".to_string()).or_insert(0) += missing;
    }
    merged.shards = k as u32;
    merged.clients = plan.clients.clients;
    merged.memory = memory_result;
    if why.get() != "completed" {
        merged.stopped_by = why.get().to_string();
    }
    Ok(merged)
}

async fn print_progress(
    states: Arc<Vec<Mutex<ChildState>>>,
    k: u64,
    target: u64,
    stop: CancellationToken,
) {
    let start = std::time::Instant::now();
    let mut last = Progress::default();
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = interval.tick() => {}
        }
        let mut p = Progress {
            target,
            ..Progress::default()
        };
        for s in states.iter() {
            let s = s.lock().unwrap();
            p.connected += s.progress.connected;
            p.published += s.progress.published;
            p.delivered += s.progress.delivered;
            p.errors += s.progress.errors;
            p.p99_us = p.p99_us.max(s.progress.p99_us);
        }
        eprint!("{} [{k} shards]", progress_line(start.elapsed(), &p, &last));
        last = p;
    }
    eprintln!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_everything_once() {
        for (n, k) in [(10u64, 3u64), (19_800, 2), (40_001, 3), (5, 5)] {
            let mut next = 0;
            for i in 0..k {
                let (off, count) = share(n, k, i);
                assert_eq!(off, next);
                next += count;
            }
            assert_eq!(next, n);
        }
        assert_eq!(ip_share(&[1, 2, 3, 4, 5], 2, 0), vec![1, 2]);
        assert_eq!(ip_share(&[1, 2, 3, 4, 5], 2, 1), vec![3, 4, 5]);
        assert_eq!(ip_share(&[1, 2], 3, 2), vec![1]);
        assert!(ip_share::<u8>(&[], 3, 2).is_empty());
    }

    #[test]
    fn child_args_override() {
        use clap::Parser;
        let argv = [
            "loadgen",
            "run",
            "--clients",
            "10",
            "--rate",
            "30/s",
            "--source-ips",
            "127.0.1.1-127.0.1.4",
        ];
        let plan = Plan::from_command(crate::cli::Cli::parse_from(argv).command).unwrap();
        let parent: Vec<OsString> = argv[1..].iter().map(OsString::from).collect();
        let args = child_args(&plan, &parent, 3, 1);
        let mut full = vec![OsString::from("loadgen")];
        full.extend(args);
        let child = Plan::from_command(crate::cli::Cli::parse_from(full).command).unwrap();
        assert_eq!(child.clients.clients, 3);
        assert_eq!(child.common.client_offset, 3);
        assert_eq!(child.common.shard, Some((1, 3)));
        assert_eq!(child.prefix, plan.prefix);
        assert_eq!(child.publish.unwrap().rate, 10.0);
        assert_eq!(child.common.source_ips.unwrap().0.len(), 1);
        assert!(child.common.quiet);
    }

    #[test]
    fn broadcast_channels_split_over_shards() {
        use clap::Parser;
        for (weights, n) in [
            (vec![3u64, 3, 4], 10u64),
            (vec![3, 3, 4], 4),
            (vec![333_333, 333_333, 333_334], 100_000),
            (vec![5, 0, 7], 12),
            (vec![1, 1, 1], 1),
        ] {
            let parts: Vec<u64> = (0..weights.len())
                .map(|i| weighted_share(n, &weights, i))
                .collect();
            assert_eq!(parts.iter().sum::<u64>(), n, "{weights:?} {n}");
            for (p, w) in parts.iter().zip(&weights) {
                assert!(p <= w, "{parts:?} over {weights:?}");
            }
        }
        assert_eq!(weighted_share(9, &[0, 0], 1), 0);
        // 10 clients on 3 shards (3, 3, 4), 12 channels asked for (4 each, capped at the
        // shard's clients): the 9 broadcast channels split as the channels do.
        let argv = [
            "loadgen",
            "run",
            "--clients",
            "10",
            "--channels",
            "12",
            "--broadcast-every",
            "1m",
            "--broadcast-channels",
            "9",
        ];
        let plan = Plan::from_command(crate::cli::Cli::parse_from(argv).command).unwrap();
        let parent: Vec<OsString> = argv[1..].iter().map(OsString::from).collect();
        let mut named = 0;
        for i in 0..3 {
            let mut full = vec![OsString::from("loadgen")];
            full.extend(child_args(&plan, &parent, 3, i));
            let child = Plan::from_command(crate::cli::Cli::parse_from(full).command).unwrap();
            assert_eq!(child.publish_channels(), shard_channels(&plan, 3, i));
            assert!(child.broadcast_channels() <= child.publish_channels());
            named += child.broadcast_channels();
        }
        assert_eq!(named, 9);
        // More than all channels: every channel, each shard all of its own.
        let argv = [
            "loadgen",
            "run",
            "--clients",
            "10",
            "--broadcast-every",
            "1m",
        ];
        let plan = Plan::from_command(crate::cli::Cli::parse_from(argv).command).unwrap();
        assert_eq!(plan.broadcast_channels(), 10);
        let parent: Vec<OsString> = argv[1..].iter().map(OsString::from).collect();
        let shares: Vec<u64> = (0..3)
            .map(|i| {
                let mut full = vec![OsString::from("loadgen")];
                full.extend(child_args(&plan, &parent, 3, i));
                Plan::from_command(crate::cli::Cli::parse_from(full).command)
                    .unwrap()
                    .broadcast_channels()
            })
            .collect();
        assert_eq!(shares, [3, 3, 4]);
    }

    #[test]
    fn merged_results_add_up() {
        let mut a = blank();
        a.errors.insert("a".into(), 1);
        a.counters.first_ok = 5;
        a.timeline.push(crate::stats::TickRaw {
            t: 1,
            connected: 5,
            published: 0,
            delivered: 0,
            errors: 0,
            latency: crate::stats::hist_to_b64(&crate::stats::new_hist()),
            transports: Vec::new(),
        });
        let h = crate::stats::hist_to_b64(&crate::stats::new_hist());
        a.timeline[0].transports.push(crate::stats::LaneTick {
            transport: "sse".into(),
            connected: 5,
            delivered: 2,
            latency: h.clone(),
        });
        a.transports.push(crate::result::LaneRaw {
            transport: "sse".into(),
            clients: 5,
            connects_ok: 5,
            delivered: 2,
            connect_us: h.clone(),
            latency_us: h,
        });
        let phase = |name: &str, start_secs, end_secs| crate::stats::PhaseMark {
            name: name.into(),
            start_secs,
            end_secs,
        };
        a.phases = vec![phase("ramp", 0.1, 1.0), phase("hold", 1.0, 2.0)];
        let mut b = a.clone();
        b.phases = vec![phase("ramp", 0.2, 1.5), phase("hold", 1.5, 2.2)];
        a.merge(&b).unwrap();
        assert_eq!(a.counters.first_ok, 10);
        assert_eq!(a.errors.get("a"), Some(&2));
        assert_eq!(a.timeline.len(), 1);
        assert_eq!(a.timeline[0].connected, 10);
        assert_eq!(a.timeline[0].transports.len(), 1);
        assert_eq!(a.timeline[0].transports[0].delivered, 4);
        assert_eq!(
            (a.transports[0].clients, a.transports[0].delivered),
            (10, 4)
        );
        assert_eq!(
            a.phases,
            [phase("ramp", 0.1, 1.5), phase("hold", 1.0, 2.2)],
            "each phase spans its shards"
        );
    }

    fn blank() -> RawResult {
        use std::collections::BTreeMap;
        let h = crate::stats::hist_to_b64(&crate::stats::new_hist());
        RawResult {
            command: "run".into(),
            transport: "ws".into(),
            gateway: String::new(),
            channel_prefix: String::new(),
            clients: 0,
            shards: 1,
            started_unix_ms: 0,
            elapsed_secs: 0.0,
            connect_phase_secs: 0.0,
            publish_secs: 0.0,
            deliver_secs: 0.0,
            stopped_by: "completed".into(),
            max_errors: 0,
            allow_gaps: false,
            counters: Default::default(),
            check: None,
            errors: BTreeMap::new(),
            drops: BTreeMap::new(),
            publish_status: BTreeMap::new(),
            per_worker: BTreeMap::new(),
            hists: crate::result::RawHists {
                connect_us: h.clone(),
                assign_us: h.clone(),
                latency_us: h.clone(),
                publish_us: h.clone(),
                tls_handshake_us: h.clone(),
                latency_steady_us: h.clone(),
                latency_broadcast_us: h,
            },
            timeline: Vec::new(),
            memory: None,
            memory_after_drain: None,
            span_ns: None,
            phases: Vec::new(),
            transports: Vec::new(),
            broadcasts: Vec::new(),
        }
    }
}
