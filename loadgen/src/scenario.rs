//! One process's run: ramp clients up, meet the barrier (memory reading, or a parent's GO),
//! hold / publish / churn, drain, close, check; returns a `RawResult`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use crate::checker::{CheckTotals, Published, SeqChecker};
use crate::cli::{Mode, Plan};
use crate::clients::{client_task, ClientCtx, Slot};
use crate::lean::LeanPlane;
use crate::memory;
use crate::net::{Gateways, SourceIps};
use crate::publish::{publish_phase, PublishCtx};
use crate::result::{Counters, LaneRaw, RawHists, RawResult};
use crate::stats::{hist_from_b64, hist_to_b64, Stats, TickPrev};

/// How long the clients together may take to stop and hand back what they received.
const CLOSE_DEADLINE: Duration = Duration::from_secs(60);

/// Why the whole run stopped early, if it did.
#[derive(Clone, Default)]
pub struct StopReason(Arc<Mutex<Option<&'static str>>>);

impl StopReason {
    pub fn set(&self, why: &'static str) {
        self.0.lock().unwrap().get_or_insert(why);
    }

    pub fn get(&self) -> &'static str {
        self.0.lock().unwrap().unwrap_or("completed")
    }
}

/// The live figures shown on the progress line (and sent by shards to their parent).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    pub connected: u64,
    pub target: u64,
    pub published: u64,
    pub delivered: u64,
    pub errors: u64,
    pub p99_us: u64,
}

/// Renders the progress line.
pub fn progress_line(elapsed: Duration, p: &Progress, last: &Progress) -> String {
    format!(
        "\r[{:>5.0}s] connected {}/{} | published {}/s | delivered {}/s | p99 {:.2} ms | errors {}   ",
        elapsed.as_secs_f64(),
        p.connected,
        p.target,
        p.published.saturating_sub(last.published),
        p.delivered.saturating_sub(last.delivered),
        p.p99_us as f64 / 1000.0,
        p.errors
    )
}

/// What this process reports when all its clients are connected.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ready {
    pub connected: u64,
    pub per_worker: BTreeMap<String, i64>,
}

/// How the process meets the "all connected" barrier.
pub enum Barrier {
    /// A standalone process: read memory before and after, then go on.
    Local { before: Option<memory::Snapshot> },
    /// A shard: tell the parent `READY`, wait for `GO` on stdin.
    Child,
}

/// Whether a progress line goes to stderr.
pub fn show_progress(plan: &Plan) -> bool {
    use std::io::IsTerminal;
    !plan.common.quiet && !plan.is_child() && std::io::stderr().is_terminal()
}

/// Runs one process's share of the scenario, phase by phase.
pub async fn run_process(
    plan: Arc<Plan>,
    mut barrier: Barrier,
    stop_all: CancellationToken,
    why: StopReason,
) -> anyhow::Result<RawResult> {
    let started_unix_ms = crate::stats::unix_nanos() / 1_000_000;
    let mut p = Process::new(plan.clone(), stop_all)?;
    if let Barrier::Local { before } = &mut barrier {
        if plan.mode != Mode::Publish {
            let began = Instant::now();
            *before = Some(crate::target::snapshot(&plan).await);
            p.stats.phase("baseline", began);
        }
    }
    let connected = p.connect_phase().await;
    let (ready, memory, baseline) = p.barrier(barrier).await;
    let main = p
        .main_phase(&connected.slots, connected.churner(), baseline)
        .await?;
    let connected_at_end = p.stats.connected.load(Ordering::Relaxed).max(0) as u64;
    let check = p.close_and_check(connected.handles, &main.table).await;
    Ok(p.result(ResultParts {
        connected_at_end,
        started_unix_ms,
        connect_phase_secs: connected.secs,
        ready,
        memory,
        main,
        check,
        stopped_by: why.get(),
    }))
}

/// What one process's phases share.
struct Process {
    plan: Arc<Plan>,
    stats: Arc<Stats>,
    src: Arc<SourceIps>,
    /// Clients this process opens (0 for `publish`).
    n: u64,
    stop_all: CancellationToken,
    clients_stop: CancellationToken,
    ctx: Arc<ClientCtx>,
    /// Clients on the lean plane (`--client-plane`), else a task each.
    lean: bool,
    ticker: Option<tokio::task::JoinHandle<()>>,
    ticker_stop: CancellationToken,
}

/// The running clients: a task each, or the lean plane's loops.
enum Clients {
    Tasks(Vec<tokio::task::JoinHandle<SeqChecker>>),
    Lean(LeanPlane),
}

/// Makes the k-th started client drop and come back.
type Churn = Arc<dyn Fn(usize) + Send + Sync>;

/// The connect phase's outcome.
struct Connected {
    slots: Vec<Arc<Slot>>,
    handles: Clients,
    secs: f64,
}

impl Connected {
    fn churner(&self) -> Churn {
        match &self.handles {
            Clients::Tasks(_) => {
                let slots = self.slots.clone();
                Arc::new(move |k| slots[k].churn.notify_one())
            }
            Clients::Lean(plane) => {
                let c = plane.churner();
                Arc::new(move |k| c.churn(k))
            }
        }
    }
}

/// The main phase's outcome.
struct MainPhase {
    table: Arc<Vec<Published>>,
    publish_secs: f64,
    deliver_secs: f64,
    memory_after_drain: Option<memory::MemoryResult>,
}

/// Everything [`Process::result`] puts together.
struct ResultParts {
    /// Clients connected once publishing and the drain were over, before the close.
    connected_at_end: u64,
    started_unix_ms: u64,
    connect_phase_secs: f64,
    ready: Ready,
    memory: Option<memory::MemoryResult>,
    main: MainPhase,
    check: Option<CheckTotals>,
    stopped_by: &'static str,
}

impl Process {
    /// Shared state, the assign pool and the progress ticker.
    fn new(plan: Arc<Plan>, stop_all: CancellationToken) -> anyhow::Result<Process> {
        let n = if plan.mode == Mode::Publish {
            0
        } else {
            plan.clients.clients
        };
        let transports = if n == 0 {
            Vec::new()
        } else {
            plan.clients.mix().concrete()
        };
        let stats = Arc::new(
            Stats::tolerating(plan.clients.allow_drops, plan.check.allow_gaps)
                .with_transports(&transports),
        );
        let mut src = SourceIps::new(
            plan.common
                .source_ips
                .clone()
                .map(|l| l.0)
                .unwrap_or_default(),
        );
        if let Some((config, tickets)) = crate::tls::client_config(&plan.common, n)? {
            src = src.with_tls(config, tickets);
        }
        let src = Arc::new(src);
        let assign = Arc::new(Gateways::new(
            &plan.common.gateway,
            src.clone(),
            plan.clients.assign_connections,
            plan.common.request_timeout,
        )?);
        let clients_stop = CancellationToken::new();
        let ticker_stop = CancellationToken::new();
        let ticker = tokio::spawn(ticker(plan.clone(), stats.clone(), n, ticker_stop.clone()));
        let lean = plan.lean_plane()?;
        let ctx = Arc::new(ClientCtx {
            plan: plan.clone(),
            stats: stats.clone(),
            src: src.clone(),
            assign,
            stop: clients_stop.clone(),
            initial_since: if plan.mode == Mode::Connect {
                None
            } else {
                Some(0)
            },
        });
        Ok(Process {
            plan,
            stats,
            src,
            n,
            stop_all,
            clients_stop,
            ctx,
            lean,
            ticker: Some(ticker),
            ticker_stop,
        })
    }

    /// Starts the clients at the ramp and waits until each has connected once or failed.
    async fn connect_phase(&self) -> Connected {
        let (plan, stats) = (&self.plan, &self.stats);
        let mut slots = Vec::with_capacity(self.n as usize);
        let mut handles = Vec::new();
        let mut plane = if self.lean && self.n > 0 {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            match LeanPlane::new(self.ctx.clone(), cores.min(4)) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the lean client plane: a task per client instead");
                    None
                }
            }
        } else {
            None
        };
        let mix = plan.clients.mix();
        let connect_start = tokio::time::Instant::now();
        let began = Instant::now();
        for i in 0..self.n {
            let due = connect_start + Duration::from_secs_f64(i as f64 / plan.clients.ramp);
            tokio::select! {
                _ = self.stop_all.cancelled() => break,
                _ = tokio::time::sleep_until(due) => {}
            }
            let index = plan.common.client_offset + i;
            let transport = mix.for_client(index);
            stats.lanes[transport.lane()]
                .clients
                .fetch_add(1, Ordering::Relaxed);
            let slot = Arc::new(Slot::new(transport));
            slots.push(slot.clone());
            match &mut plane {
                Some(p) => p.start(index, slot),
                None => handles.push(tokio::spawn(client_task(self.ctx.clone(), index, slot))),
            }
        }
        let spawned = slots.len() as u64;
        while stats.first_done.load(Ordering::Relaxed) < spawned && !self.stop_all.is_cancelled() {
            tokio::select! {
                _ = self.stop_all.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        crate::target::cpu_mark(plan, "connected");
        if self.n > 0 {
            stats.phase("ramp", began);
        }
        let secs = if self.n > 0 {
            connect_start.elapsed().as_secs_f64()
        } else {
            0.0
        };
        Connected {
            slots,
            handles: match plane {
                Some(p) => Clients::Lean(p),
                None => Clients::Tasks(handles),
            },
            secs,
        }
    }

    /// Meets the barrier: a standalone process reads memory, a shard waits for `GO`.
    /// Returns what is connected, the memory reading, and the baseline for the reading
    /// after the drain (the first reading, when asked for).
    async fn barrier(
        &self,
        barrier: Barrier,
    ) -> (
        Ready,
        Option<memory::MemoryResult>,
        Option<memory::Snapshot>,
    ) {
        let stats = &self.stats;
        let ready = Ready {
            connected: stats.connected.load(Ordering::Relaxed).max(0) as u64,
            per_worker: stats
                .per_worker
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        };
        let mut memory_result = None;
        let mut baseline = None;
        let began = Instant::now();
        match barrier {
            Barrier::Local {
                before: Some(before),
            } if !self.stop_all.is_cancelled() => {
                if self.plan.memory_after_drain {
                    baseline = Some(before.clone());
                }
                memory_result = memory_since(&self.plan, stats, &self.stop_all, before).await;
                stats.phase("settle", began);
            }
            Barrier::Local { .. } => {}
            Barrier::Child => {
                // The parent settles and reads memory meanwhile.
                child_barrier(&ready, self.stop_all.clone()).await;
                stats.phase("settle", began);
            }
        }
        (ready, memory_result, baseline)
    }

    /// Holds (`connect`) or publishes, churns and drains (`run`, `churn`, `publish`).
    async fn main_phase(
        &self,
        slots: &[Arc<Slot>],
        churn: Churn,
        mut baseline: Option<memory::Snapshot>,
    ) -> anyhow::Result<MainPhase> {
        let plan = &self.plan;
        let mut main = MainPhase {
            table: Arc::new(
                (0..plan.publish_channels())
                    .map(|_| Published::default())
                    .collect(),
            ),
            publish_secs: 0.0,
            deliver_secs: 0.0,
            memory_after_drain: None,
        };
        match plan.mode {
            Mode::Connect => {
                let began = Instant::now();
                tokio::select! {
                    _ = self.stop_all.cancelled() => {}
                    _ = tokio::time::sleep(plan.hold) => {}
                }
                self.stats.phase("hold", began);
            }
            Mode::Run | Mode::Churn | Mode::Publish if !self.stop_all.is_cancelled() => {
                let opts = plan
                    .publish
                    .clone()
                    .expect("publishing mode has publish options");
                let pctx = Arc::new(PublishCtx {
                    plan: plan.clone(),
                    opts: opts.clone(),
                    stats: self.stats.clone(),
                    table: main.table.clone(),
                    channel_base: plan.common.client_offset,
                    stop: self.stop_all.clone(),
                    key_prefix: format!("lg{:08x}", rand::random::<u32>()),
                });
                crate::target::cpu_mark(plan, "publish_start");
                let t0 = Instant::now();
                let churn_stop = CancellationToken::new();
                let churner = plan.churn.clone().map(|c| {
                    tokio::spawn(churn_loop(
                        slots.len(),
                        churn.clone(),
                        c.after,
                        c.fraction,
                        c.rate,
                        churn_stop.clone(),
                    ))
                });
                // `--churn-after`: a steady phase first, marked when the churn begins.
                let steady = plan.churn.as_ref().map_or(Duration::ZERO, |c| c.after);
                let steady = steady.min(opts.duration);
                let steady_mark = (!steady.is_zero()).then(|| {
                    let (stats, stop) = (self.stats.clone(), churn_stop.clone());
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = tokio::time::sleep(steady) => stats.phase("publish", t0),
                        }
                    })
                });
                let r = publish_phase(pctx, self.src.clone(), opts.duration).await;
                churn_stop.cancel();
                if let Some(m) = steady_mark {
                    let _ = m.await;
                }
                if let Some(c) = churner {
                    let _ = c.await;
                }
                main.publish_secs = t0.elapsed().as_secs_f64();
                // Churn mode publishes while clients drop and resume: one phase, `churn`
                // (after the steady `publish` phase with `--churn-after`).
                let name = if plan.mode == Mode::Churn {
                    "churn"
                } else {
                    "publish"
                };
                self.stats.phase(name, t0 + steady);
                r?;
                if plan.mode != Mode::Publish {
                    let began = Instant::now();
                    drain(slots, &main.table, plan.drain, &self.stop_all).await;
                    self.stats.phase("drain", began);
                }
                main.deliver_secs = t0.elapsed().as_secs_f64();
                crate::target::cpu_mark(plan, "drained");
                if let Some(before) = baseline.take() {
                    // Clients still open; long-polls have re-polled during the settle time.
                    let began = Instant::now();
                    main.memory_after_drain =
                        memory_since(plan, &self.stats, &self.stop_all, before).await;
                    self.stats.phase("settle", began);
                }
            }
            _ => {}
        }
        Ok(main)
    }

    /// Closes every client, collects what each received and checks it against what was
    /// published (`run`, `churn`); stops the ticker.
    async fn close_and_check(
        &mut self,
        handles: Clients,
        table: &[Published],
    ) -> Option<CheckTotals> {
        self.clients_stop.cancel();
        let began = Instant::now();
        let checkers: Vec<SeqChecker> = match handles {
            Clients::Tasks(handles) => {
                let mut checkers = Vec::with_capacity(handles.len());
                // A client stops within about a second of the cancel (a WebSocket close is
                // bounded by 1 s), but a process starved of CPU (many shards, workers and
                // their sockets closing on few cores) takes longer in wall time: one
                // deadline for all of them, not one per client in turn. A client whose
                // record did not come back is an error of its own kind (its channel's
                // messages also count as lost).
                let deadline = tokio::time::Instant::now() + CLOSE_DEADLINE;
                for h in handles {
                    match tokio::time::timeout_at(deadline, h).await {
                        Ok(Ok(c)) => checkers.push(c),
                        Ok(Err(_)) => {
                            self.stats.error("client_task_failed");
                            checkers.push(SeqChecker::default());
                        }
                        Err(_) => {
                            self.stats.error("client_not_stopped");
                            checkers.push(SeqChecker::default());
                        }
                    }
                }
                checkers
            }
            Clients::Lean(plane) => tokio::task::spawn_blocking(move || plane.stop())
                .await
                .unwrap_or_default(),
        };
        if !checkers.is_empty() {
            self.stats.phase("close", began);
        }
        let mode = self.plan.mode;
        let check = (mode == Mode::Run || mode == Mode::Churn).then(|| {
            let mut t = CheckTotals::default();
            let none = SeqChecker::default();
            for (i, p) in table.iter().enumerate() {
                // A client never started (stopped during the ramp) received nothing.
                t.add_channel(checkers.get(i).unwrap_or(&none), p);
            }
            for c in checkers.iter().skip(table.len()) {
                t.add_channel(c, &Published::default());
            }
            t
        });
        self.ticker_stop.cancel();
        if let Some(t) = self.ticker.take() {
            let _ = t.await;
        }
        check
    }

    /// The process's result from its counters, histograms and phases.
    fn result(self, parts: ResultParts) -> RawResult {
        let Process {
            plan,
            stats,
            n,
            src,
            ..
        } = self;
        let mut prev = stats_prev(&stats);
        stats.tick(&mut prev);
        let h = stats.hists.lock().unwrap();
        let transports = stats
            .transports
            .iter()
            .map(|&t| {
                let (i, lane) = (t.lane(), &stats.lanes[t.lane()]);
                LaneRaw {
                    transport: t.name().to_string(),
                    clients: lane.clients.load(Ordering::Relaxed),
                    connects_ok: lane.connects_ok.load(Ordering::Relaxed),
                    delivered: lane.delivered.load(Ordering::Relaxed),
                    connect_us: hist_to_b64(&h.lane_connect[i]),
                    latency_us: hist_to_b64(&h.lane_latency[i]),
                }
            })
            .collect();
        let first_ok = stats.first_ok.load(Ordering::Relaxed);
        let first_done = stats.first_done.load(Ordering::Relaxed);
        let result = RawResult {
            command: plan.mode.name().to_string(),
            transport: plan.clients.transport.name().to_string(),
            gateway: plan.gateways_label(),
            channel_prefix: plan.prefix.clone(),
            clients: n,
            shards: 1,
            started_unix_ms: parts.started_unix_ms,
            elapsed_secs: stats.start.elapsed().as_secs_f64(),
            connect_phase_secs: parts.connect_phase_secs,
            publish_secs: parts.main.publish_secs,
            deliver_secs: parts.main.deliver_secs,
            stopped_by: parts.stopped_by.to_string(),
            max_errors: plan.common.max_errors,
            allow_gaps: plan.check.allow_gaps,
            counters: Counters {
                connect_attempts: stats.connect_attempts.load(Ordering::Relaxed),
                connects_ok: stats.connects_ok.load(Ordering::Relaxed),
                first_ok,
                first_failed: first_done
                    .saturating_sub(first_ok)
                    .min(n.saturating_sub(first_ok)),
                reconnects: stats.reconnects.load(Ordering::Relaxed),
                dropped_on_purpose: stats.dropped_on_purpose.load(Ordering::Relaxed),
                peak_connected: stats.peak_connected.load(Ordering::Relaxed).max(0) as u64,
                connected_at_ready: parts.ready.connected,
                publish_requests: stats.publish_requests.load(Ordering::Relaxed),
                publish_attempted: stats.publish_attempted.load(Ordering::Relaxed),
                published: stats.published.load(Ordering::Relaxed),
                publish_rejected: stats.publish_rejected.load(Ordering::Relaxed),
                delivered: stats.delivered.load(Ordering::Relaxed),
                publish_retries: stats.publish_retries.load(Ordering::Relaxed),
                published_after_retry: stats.published_after_retry.load(Ordering::Relaxed),
                connected_at_end: parts.connected_at_end,
                tls_full: src.tls_full.load(Ordering::Relaxed),
                tls_resumed: src.tls_resumed.load(Ordering::Relaxed),
                tls_offered: src.tls_offered(),
            },
            check: parts.check,
            errors: stats.errors.lock().unwrap().clone(),
            drops: stats.drops.lock().unwrap().clone(),
            publish_status: stats.publish_status.lock().unwrap().clone(),
            per_worker: parts.ready.per_worker,
            hists: RawHists {
                connect_us: hist_to_b64(&h.connect),
                assign_us: hist_to_b64(&h.assign),
                latency_us: hist_to_b64(&h.latency),
                publish_us: hist_to_b64(&h.publish),
                tls_handshake_us: hist_to_b64(&src.tls_handshake.lock().unwrap()),
                latency_steady_us: hist_to_b64(&h.latency_steady),
                latency_broadcast_us: hist_to_b64(&h.latency_broadcast),
            },
            timeline: stats.timeline.lock().unwrap().clone(),
            memory: parts.memory,
            memory_after_drain: parts.main.memory_after_drain,
            span_ns: stats.span(),
            phases: stats.phases.lock().unwrap().clone(),
            transports,
            broadcasts: stats.broadcasts.lock().unwrap().values().cloned().collect(),
        };
        result
    }
}

/// Reads memory once the settle time has passed (nothing if stopped first) and compares
/// it with `before` over the clients connected now.
async fn memory_since(
    plan: &Plan,
    stats: &Stats,
    stop: &CancellationToken,
    before: memory::Snapshot,
) -> Option<memory::MemoryResult> {
    let after = tokio::select! {
        _ = stop.cancelled() => return None,
        a = crate::target::settled_snapshot(plan) => a,
    };
    let connected = stats.connected.load(Ordering::Relaxed).max(0) as u64;
    let per_worker = stats.per_worker.lock().unwrap().clone();
    Some(memory::compare(before, after, &per_worker, connected))
}

/// The cumulative counters as of the last tick (so the final tick is a delta).
fn stats_prev(stats: &Stats) -> TickPrev {
    let tl = stats.timeline.lock().unwrap();
    let mut prev = TickPrev {
        published: tl.iter().map(|t| t.published).sum(),
        delivered: tl.iter().map(|t| t.delivered).sum(),
        errors: tl.iter().map(|t| t.errors).sum(),
        lane_delivered: [0; 3],
    };
    for l in tl.iter().flat_map(|t| &t.transports) {
        if let Some(t) = crate::cli::Transport::CONCRETE
            .iter()
            .find(|t| t.name() == l.transport)
        {
            prev.lane_delivered[t.lane()] += l.delivered;
        }
    }
    prev
}

/// Once a second: close the timeline entry, show progress (or send it to the parent).
async fn ticker(plan: Arc<Plan>, stats: Arc<Stats>, target: u64, stop: CancellationToken) {
    let show = show_progress(&plan);
    let child = plan.is_child();
    let mut prev = TickPrev::default();
    let mut last = Progress::default();
    let mut interval = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = interval.tick() => {}
        }
        let tick = stats.tick(&mut prev);
        let p = Progress {
            connected: tick.connected,
            target,
            published: prev.published,
            delivered: prev.delivered,
            errors: prev.errors,
            p99_us: hist_from_b64(&tick.latency)
                .map(|h| h.value_at_quantile(0.99))
                .unwrap_or(0),
        };
        if child {
            println!("PROGRESS {}", serde_json::to_string(&p).unwrap_or_default());
            let _ = std::io::stdout().flush();
        } else if show {
            eprint!("{}", progress_line(stats.start.elapsed(), &p, &last));
        }
        last = p;
    }
    if show {
        eprintln!();
    }
}

/// Shard side of the barrier: `READY {json}` on stdout, then wait for `GO` on stdin. Stdin
/// closing (the parent went away or wants everything to stop) cancels the run.
async fn child_barrier(ready: &Ready, stop_all: CancellationToken) {
    println!("READY {}", serde_json::to_string(ready).unwrap_or_default());
    let _ = std::io::stdout().flush();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut go_tx = Some(go_tx);
        loop {
            match lines.next_line().await {
                Ok(Some(l)) if l.trim() == "GO" => {
                    if let Some(tx) = go_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Some(_)) => {}
                _ => {
                    stop_all.cancel();
                    break;
                }
            }
        }
    });
    let _ = go_rx.await;
}

/// Drops random clients of the churning set at `rate` per second until stopped.
async fn churn_loop(
    n: usize,
    churn: Churn,
    after: Duration,
    fraction: f64,
    rate: f64,
    stop: CancellationToken,
) {
    let churning = ((n as f64) * fraction).ceil() as usize;
    let churning = churning.min(n);
    if churning == 0 {
        return;
    }
    let start = tokio::time::Instant::now() + after;
    let pacer = crate::publish::Pacer { rate };
    for k in 0.. {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(start + pacer.due(k)) => {}
        }
        let i = rand::rng().random_range(0..churning);
        churn(i);
    }
}

/// Waits until every channel received all it should, or `limit` passes.
async fn drain(
    slots: &[Arc<Slot>],
    table: &[Published],
    limit: Duration,
    stop_all: &CancellationToken,
) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let done = table.iter().zip(slots).all(|(p, s)| match p.expected() {
            None => true,
            Some((lo, hi)) => {
                s.max_seq.load(Ordering::Relaxed) >= hi
                    && s.unique.load(Ordering::Relaxed) > hi - lo
            }
        });
        if done || tokio::time::Instant::now() >= deadline || stop_all.is_cancelled() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
