//! loadgen: scale and soak tool for pushgate, speaking only the public HTTP contract.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod checker;
mod cli;
mod clients;
mod lean;
mod memory;
mod net;
mod publish;
mod report;
mod result;
mod scenario;
mod shard;
mod stats;
mod target;
mod tls;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Mode, Plan};
use crate::result::Summary;
use crate::scenario::{Barrier, StopReason};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "loadgen=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let plan = match Plan::from_command(cli.command) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = rt.block_on(run(plan));
    // Do not wait for blocked stdin readers or lingering sockets.
    rt.shutdown_background();
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the plan; `Ok(passed)`.
async fn run(plan: Arc<Plan>) -> anyhow::Result<bool> {
    let nofile = shard::raise_nofile();
    let stop_all = CancellationToken::new();
    let why = StopReason::default();
    spawn_stoppers(plan.common.max_duration, stop_all.clone(), why.clone());

    if plan.is_child() {
        let raw = scenario::run_process(plan, Barrier::Child, stop_all, why).await?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "RESULT {}", serde_json::to_string(&raw)?)?;
        out.flush()?;
        return Ok(true);
    }

    let per_process = shard::clients_per_process(&plan, nofile);
    let raw = if plan.mode != Mode::Publish && plan.clients.clients > per_process {
        let k = plan.clients.clients.div_ceil(per_process);
        if plan.memory_after_drain {
            anyhow::bail!(
                "--memory-after-drain needs one process: at most {per_process} clients here (open-file limit {nofile})"
            );
        }
        if !plan.common.quiet {
            eprintln!(
                "loadgen: {} clients over {k} processes (at most {per_process} each; open-file limit {nofile})",
                plan.clients.clients
            );
        }
        shard::run_parent(plan.clone(), k, stop_all, why).await?
    } else {
        scenario::run_process(plan.clone(), Barrier::Local { before: None }, stop_all, why).await?
    };
    let mut summary = Summary::from_raw(&raw)?;
    summary.command_line = cli::command_line(std::env::args_os());
    summary.parameters = Some(plan.parameters());
    // The summary goes to stdout (`loadgen ... > out.txt` keeps it), unless stdout carries
    // the JSON (`--json -`); progress and errors stay on stderr.
    if !plan.common.quiet {
        if plan
            .common
            .json
            .as_ref()
            .is_some_and(|p| p.as_os_str() == "-")
        {
            eprint!("{}", summary.human());
        } else {
            print!("{}", summary.human());
        }
    }
    if let Some(path) = &plan.common.json {
        let text = serde_json::to_string_pretty(&summary)?;
        if path.as_os_str() == "-" {
            println!("{text}");
        } else {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if let Some(path) = &plan.common.report {
        std::fs::write(path, report::html(&summary))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(summary.passed)
}

/// Ctrl-C, SIGTERM and `--max-duration` stop the run cleanly; a second Ctrl-C exits at once.
fn spawn_stoppers(max: std::time::Duration, stop_all: CancellationToken, why: StopReason) {
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let sigterm = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => why.set("interrupted"),
            _ = sigterm => why.set("interrupted"),
            _ = tokio::time::sleep(max) => why.set("max_duration"),
        }
        stop_all.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
}
