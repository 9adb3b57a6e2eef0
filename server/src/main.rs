//! `ifp`: the command-line entry point of the IFP platform (pre-training, inference, benchmarks).

mod cli;

// Training allocates and frees many large tensors per step; glibc's malloc returns them to the
// kernel each time (mmap/munmap and page faults), mimalloc keeps and reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::IsTerminal;
use std::process::ExitCode;

/// Process-wide settings for the CPU trainer, before any allocation or tensor op of ours.
fn tune_runtime() {
    // mimalloc returns freed memory to the kernel 1 s after it was freed by default; a training
    // step frees and re-allocates the same large buffers, and re-faulting them (2 MB pages zeroed
    // by the kernel) cost ~10% of a tiny-preset step. 10 s keeps them across steps and still
    // gives them back when the worker is idle. MIMALLOC_PURGE_DELAY overrides.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // `mi_option_purge_delay` in mimalloc's v2 and v3 headers (libmimalloc-sys 0.1.49 does
        // not export the name).
        const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        // SAFETY: sets an option value, which mimalloc reads at each purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10_000) };
    }
    // candle's elementwise worker threads spin 25,000 rounds after each op before sleeping; with
    // rayon's workers (our kernels, the matrix products) on the same few cores that spinning
    // only burns CPU (a third of the process's CPU time on 2 cores, no faster steps).
    // CANDLE_BARRIER_POOL_SPIN_LIMIT overrides.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY: single-threaded here (no runtime, pool or worker started yet).
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "2000") };
    }
    // That pool has a helper thread per core but one, beside rayon's workers. With two cores,
    // its one helper and rayon's second worker take turns on one core, and the gradient sums
    // it runs gain little: without it (CANDLE_NUM_THREADS=1, the ops run on the thread that
    // calls them) the process used 5-19% less CPU time in 13 of 14 benchmark runs, its steps no
    // slower (README, "Speed"). With more cores its helpers share work that would otherwise be
    // serial; that is not measured, so candle's default stays there. CANDLE_NUM_THREADS
    // overrides.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none()
        && candle_core::utils::get_num_threads() <= 2
    {
        // SAFETY: as above.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

fn main() -> ExitCode {
    tune_runtime();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,ifp_server=info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal: not in log files, pipes or journals.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
    cli::run()
}
