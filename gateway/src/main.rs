//! The `gateway` binary: `gateway [flags]` runs the gateway; `gateway worker [flags]` runs a
//! worker (how `--local-workers` starts its children without a second binary).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // With transparent huge pages in madvise mode mimalloc's heap grows RSS in 2 MiB steps.
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "worker") {
        // `gateway worker --gateway ... --listen ...`: argv[0] stays the program name.
        let mut worker_args = vec![args[0].clone()];
        worker_args.extend(args[2..].iter().cloned());
        return run_worker_subcommand(worker_args);
    }
    gateway::main_with_args(args)
}

/// Runs the worker built into this binary (same flags as the `worker` binary).
fn run_worker_subcommand(args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    worker::main_with_args(args)
}
