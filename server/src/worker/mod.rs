//! The worker loop: claim a job (woken by NOTIFY, or by polling), run one attempt at it
//! (`attempt`), repeat until shutdown. `ifp serve` runs this in-process; `ifp worker` runs it
//! alone against a shared database and artifact directory.

mod attempt;
pub mod device;
pub mod gpu_usage;
pub mod process;
mod seed;
pub mod usage;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::error::Result;
use crate::queue;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Unique per worker slot (host, process, slot), recorded on each attempt.
    pub worker_id: String,
    /// Where attempt folders go: `<artifacts>/<job id>/attempt-<n>`.
    pub artifacts: PathBuf,
    pub lease: Duration,
    /// How often an idle worker looks for jobs when no notification arrives.
    pub poll_interval: Duration,
    pub device: candle_core::Device,
    /// Where `compare` jobs' fine-tuning data folders are (`IFP_DATASETS_DIR`).
    pub datasets: Option<PathBuf>,
    /// The process each attempt runs in (`ifp attempt`, see `process`), so a crash or an
    /// out-of-memory kill ends the attempt and not this process; `None`: attempts run on a
    /// thread of this process.
    pub train_process: Option<TrainProcess>,
    /// How often the training process's CPU and memory are sampled (`usage`).
    pub usage_every: Duration,
}

impl WorkerConfig {
    pub fn new(worker_id: impl Into<String>, artifacts: impl Into<PathBuf>) -> Self {
        WorkerConfig {
            worker_id: worker_id.into(),
            artifacts: artifacts.into(),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(5),
            device: candle_core::Device::Cpu,
            datasets: None,
            train_process: None,
            usage_every: Duration::from_secs(5),
        }
    }
}

/// How attempts run in a process of their own.
#[derive(Debug, Clone)]
pub struct TrainProcess {
    /// The `ifp` executable, started as `ifp attempt`.
    pub exe: PathBuf,
    /// The most memory (bytes) the process may allocate: its data limit (`RLIMIT_DATA`), so an
    /// attempt that asks for more fails at that allocation with "ran out of memory" instead of
    /// driving the machine into the kernel's out-of-memory killer, which may pick the server or
    /// the database. The worker registers this as its memory, so admission control refuses
    /// jobs whose estimate does not fit. `None`: no limit.
    pub memory_limit: Option<u64>,
}

impl TrainProcess {
    /// `exe` with each of `slots` attempts limited to an equal share of this machine's memory.
    pub fn sharing_memory(exe: PathBuf, slots: usize) -> TrainProcess {
        let total = device::ram_bytes().and_then(|b| u64::try_from(b).ok());
        TrainProcess {
            exe,
            memory_limit: total.map(|t| t / slots.max(1) as u64),
        }
    }
}

/// A worker id unique to this host, process and slot.
pub fn default_worker_id(slot: usize) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}:{}:{slot}", std::process::id())
}

/// The folder of one attempt.
pub fn attempt_dir(artifacts: &Path, job: uuid::Uuid, attempt: i32) -> PathBuf {
    artifacts
        .join(job.to_string())
        .join(format!("attempt-{attempt}"))
}

/// How often a worker refreshes its registration (well within
/// [`queue::WORKER_SEEN_WITHIN_SECS`]).
const REGISTER_EVERY: Duration = Duration::from_secs(60);

/// Claims and runs jobs until `shutdown` turns true. A job running at shutdown is stopped at its
/// next step, checkpointed and given back to the queue.
pub async fn run(pool: PgPool, cfg: WorkerConfig, mut shutdown: watch::Receiver<bool>) {
    let mut listener = match listen(&pool).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "LISTEN failed; falling back to polling");
            None
        }
    };
    let mut me = crate::worker::device::describe(&cfg.device);
    if let Some(limit) = cfg.train_process.as_ref().and_then(|p| p.memory_limit) {
        // What one attempt may use is what admission control must check against.
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        me.memory = Some(me.memory.map_or(limit, |m| m.min(limit)));
    }
    // The CUDA kernels on, as every attempt on this worker reads IFP_CUDA_FUSED.
    let cuda_kernels = cfg
        .device
        .is_cuda()
        .then(|| ifp_trainer::kernels::cuda_kernels().to_string());
    tracing::info!(
        worker = %cfg.worker_id,
        device = %me.class,
        name = ?me.name,
        cuda_kernels = ?cuda_kernels,
        "worker started"
    );
    let mut registered: Option<std::time::Instant> = None;
    while !*shutdown.borrow() {
        // Say what this worker has, now and then, for admission control.
        if registered.is_none_or(|t| t.elapsed() > REGISTER_EVERY) {
            match queue::register_worker(&pool, &cfg.worker_id, &me).await {
                Ok(()) => registered = Some(std::time::Instant::now()),
                Err(e) => tracing::warn!(error = %e, "registering the worker failed; retrying"),
            }
        }
        match queue::claim_on(&pool, &cfg.worker_id, cfg.lease, &me).await {
            Ok(Some(job)) => {
                let id = job.fence.job_id;
                if let Err(e) =
                    attempt::run_job(&pool, &cfg, job, listener.as_mut(), &mut shutdown).await
                {
                    tracing::error!(job = %id, error = %e, "job bookkeeping failed");
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "claim failed; retrying"),
        }
        tokio::select! {
            _ = wait_notification(listener.as_mut(), cfg.poll_interval) => {}
            _ = tokio::time::sleep(cfg.poll_interval) => {}
            _ = shutdown.changed() => {}
        }
    }
    tracing::info!(worker = %cfg.worker_id, "worker stopped");
}

async fn listen(pool: &PgPool) -> Result<PgListener> {
    let mut l = PgListener::connect_with(pool).await?;
    l.listen_all([queue::CHANNEL_QUEUED, queue::CHANNEL_CANCEL])
        .await?;
    Ok(l)
}

/// The next notification, or never when there is no listener (polling covers that case).
async fn wait_notification(
    listener: Option<&mut PgListener>,
    backoff: Duration,
) -> Option<sqlx::postgres::PgNotification> {
    match listener {
        Some(l) => match l.recv().await {
            Ok(n) => Some(n),
            Err(e) => {
                // The listener reconnects on the next recv; don't spin while the DB is down.
                tracing::debug!(error = %e, "LISTEN connection lost");
                tokio::time::sleep(backoff).await;
                None
            }
        },
        None => std::future::pending().await,
    }
}
