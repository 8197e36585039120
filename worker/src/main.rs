//! The `worker` binary: allocator, THP off, then the library's `main_with_args`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // SAFETY: prctl with PR_SET_THP_DISABLE only changes this process's THP policy.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    worker::main_with_args(std::env::args_os())
}
