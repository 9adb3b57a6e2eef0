//! `ifp`: the command-line entry point of the IFP platform (pre-training, inference, benchmarks).

mod cli;

// Training allocates and frees many large tensors per step; glibc's malloc returns them to the
// kernel each time (mmap/munmap and page faults), mimalloc keeps and reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,ifp_server=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    cli::run()
}
