//! The arguments `ifp serve` and `ifp worker` share: where artifacts live and how this
//! process's worker slots run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use ifp_server::platform;
use ifp_server::worker::TrainProcess;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Args)]
pub struct SlotArgs {
    /// Data directory: artifacts (checkpoints) go to DATA_DIR/artifacts, shared by every
    /// worker of the platform; `serve` without DATABASE_URL also keeps its database in
    /// DATA_DIR/pg.
    #[arg(long, env = "IFP_DATA_DIR", default_value = "./ifp-data")]
    pub data_dir: PathBuf,
    /// Worker slots in this process (0 with `serve`: API only).
    #[arg(long, env = "IFP_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Job lease in seconds: a worker heartbeats every third of it, and a dead worker's job is
    /// requeued once it expires.
    #[arg(long, env = "IFP_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub lease_secs: u64,
    /// Where workers train: cpu, cuda or cuda:N.
    #[arg(long, env = "IFP_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Where fine-tuning data of `compare` and `finetune` jobs lives (their TRAIN_DIR/TEST_DIR
    /// are relative to it); without it, those jobs are refused.
    #[arg(long, env = "IFP_DATASETS_DIR", value_name = "DIR")]
    pub datasets_dir: Option<PathBuf>,
    /// Run each training attempt on a thread of this process instead of in a process of its
    /// own (`ifp attempt`). By default a CPU worker isolates attempts, so one that runs out of
    /// memory or crashes fails alone; CUDA workers train in-process until the isolated path has
    /// been checked on a GPU.
    #[arg(long, env = "IFP_ATTEMPTS_IN_PROCESS")]
    pub attempts_in_process: bool,
    /// On a CUDA worker, run each attempt in a process of its own as a CPU worker does (so
    /// its CPU, memory and GPU use are sampled and a crash fails it alone). Off by default
    /// until a GPU run of `bench/gpu-check.sh` (stage 4) shows it works; this is how to try it.
    #[arg(
        long,
        env = "IFP_ISOLATE_CUDA_ATTEMPTS",
        conflicts_with = "attempts_in_process"
    )]
    pub isolate_cuda_attempts: bool,
    /// The most memory one training process may allocate, in MiB; past it the attempt fails
    /// with "ran out of memory", and admission control refuses jobs estimated above it
    /// [default: this machine's memory divided by --workers]. 0: no limit. Attempts that run
    /// in-process (CUDA, --attempts-in-process) are not limited.
    #[arg(long, env = "IFP_ATTEMPT_MEMORY_MIB", value_name = "MIB", value_parser = attempt_memory_mib)]
    pub attempt_memory_mib: Option<u64>,
}

/// The smallest limit a training process can start under (the tiny preset needs about 110 MB).
const MIN_ATTEMPT_MEMORY_MIB: u64 = 256;

/// `--attempt-memory-mib`: 0 (no limit) or at least [`MIN_ATTEMPT_MEMORY_MIB`].
fn attempt_memory_mib(s: &str) -> Result<u64, String> {
    let mib: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of MiB"))?;
    if mib != 0 && mib < MIN_ATTEMPT_MEMORY_MIB {
        return Err(format!(
            "{mib} MiB is too little for any training run: give at least \
             {MIN_ATTEMPT_MEMORY_MIB}, or 0 for no limit"
        ));
    }
    Ok(mib)
}

impl SlotArgs {
    /// Starts this process's worker slots on `device`; they stop when `shutdown` turns true.
    pub fn spawn_workers(
        &self,
        pool: &PgPool,
        artifacts: &Path,
        device: &candle_core::Device,
        datasets: Option<&Path>,
        shutdown: &watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let lease = Duration::from_secs(self.lease_secs);
        let exe = if !own_process(self.attempts_in_process, self.isolate_cuda_attempts, device) {
            None
        } else {
            match std::env::current_exe() {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot find this executable; attempts run in-process");
                    None
                }
            }
        };
        let process = exe.map(|exe| match self.attempt_memory_mib {
            None => TrainProcess::sharing_memory(exe, self.workers),
            Some(0) => TrainProcess {
                exe,
                memory_limit: None,
            },
            Some(mib) => TrainProcess {
                exe,
                memory_limit: Some(mib.saturating_mul(1 << 20)),
            },
        });
        platform::spawn_workers(
            pool,
            self.workers,
            artifacts,
            lease,
            device,
            datasets,
            process.as_ref(),
            shutdown,
        )
    }
}

/// Whether attempts on `device` run in processes of their own: on the CPU unless
/// `--attempts-in-process`; on CUDA only with `--isolate-cuda-attempts`.
fn own_process(in_process: bool, isolate_cuda: bool, device: &candle_core::Device) -> bool {
    !in_process && (device.is_cpu() || isolate_cuda)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        slots: SlotArgs,
    }

    /// CPU workers isolate attempts unless told not to; CUDA workers only when asked, and the
    /// two flags cannot both be given.
    #[test]
    fn attempts_run_in_their_own_process_where_checked_or_asked() {
        let cpu = candle_core::Device::Cpu;
        assert!(own_process(false, false, &cpu));
        assert!(!own_process(true, false, &cpu));
        let parse = |args: &[&str]| Cli::try_parse_from([&["ifp"], args].concat());
        let s = parse(&["--isolate-cuda-attempts"]).expect("flag").slots;
        assert!(s.isolate_cuda_attempts && !s.attempts_in_process);
        assert!(parse(&["--isolate-cuda-attempts", "--attempts-in-process"]).is_err());
    }
}
