//! The worker loop: claim a job, run the trainer on a blocking thread, and keep the database up
//! to date from the async side (heartbeats every lease/3, batched metrics, checkpoints), stopping
//! the trainer between steps when the job is cancelled, the lease is lost or the worker shuts
//! down. `ifp serve` runs this in-process; `ifp worker` runs it alone against a shared database
//! and artifact directory.

pub mod device;
mod seed;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ifp_trainer::checkpoint::Checkpoint;
use ifp_trainer::TrainOptions;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Result};
use crate::jobs::spec::{JobSpec, Report};
use crate::queue::record::{self, MetricRow};
use crate::queue::{self, Claimed, Fence, Outcome};

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
    let me = crate::worker::device::describe(&cfg.device);
    tracing::info!(worker = %cfg.worker_id, device = %me.class, name = ?me.name, "worker started");
    while !*shutdown.borrow() {
        match queue::claim_on(&pool, &cfg.worker_id, cfg.lease, &me).await {
            Ok(Some(job)) => {
                let id = job.fence.job_id;
                if let Err(e) = run_job(&pool, &cfg, job, listener.as_mut(), &mut shutdown).await {
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

/// What the trainer thread tells the async side.
enum Msg {
    Step(MetricRow),
    Checkpoint(Box<Checkpoint>),
}

/// Why the trainer was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Cancelled,
    LeaseLost,
    Shutdown,
}

async fn run_job(
    pool: &PgPool,
    wcfg: &WorkerConfig,
    job: Claimed,
    mut listener: Option<&mut PgListener>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<()> {
    let fence = job.fence.clone();
    tracing::info!(job = %fence.job_id, attempt = fence.attempt, kind = %job.kind, "running job");
    let spec = JobSpec::from_stored(job.kind, &job.config).and_then(|mut s| {
        s.resolve(&wcfg.artifacts, wcfg.datasets.as_deref())
            .map(|()| s)
    });
    let spec = match spec {
        Ok(s) => s,
        Err(e) => {
            let outcome = Outcome::Failed(format!("invalid config: {e}"));
            queue::finish(pool, &fence, &outcome).await?;
            return Ok(());
        }
    };
    let keep = spec.keep_checkpoints();
    let writes_results = spec.writes_results();
    let dir = attempt_dir(&wcfg.artifacts, fence.job_id, fence.attempt);
    let prepared = {
        let (artifacts, fence, dir) = (wcfg.artifacts.clone(), fence.clone(), dir.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)
                .map_err(Error::io(format!("create {}", dir.display())))?;
            seed::seed_from_previous(&artifacts, &fence, &dir)
        })
        .await
        .map_err(|e| Error::Internal(format!("preparing the attempt folder: {e}")))?
    };
    let resumed_from = match prepared {
        Ok(r) => r,
        Err(e) => {
            queue::finish(pool, &fence, &Outcome::Failed(e.to_string())).await?;
            return Ok(());
        }
    };
    if let Some(step) = resumed_from {
        tracing::info!(job = %fence.job_id, step, "resuming from checkpoint");
        record::resumed_from(pool, &fence, step as i64).await?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let dir_of_results = dir.clone();
    let opts = TrainOptions {
        out_dir: dir,
        device: wcfg.device.clone(),
        resume: true,
    };
    let trainer = {
        let stop = stop.clone();
        let attempt = fence.attempt;
        // Ok(true): stopped early on request.
        tokio::task::spawn_blocking(move || -> ifp_trainer::error::Result<bool> {
            spec.run(
                &opts,
                // A send fails only once the async side has gone; training stops then anyway.
                |r| {
                    let _ = tx.send(match r {
                        Report::Step(step, p) => {
                            let mut row = MetricRow::from_progress(p, attempt);
                            row.step = step as i64;
                            Msg::Step(row)
                        }
                        Report::Checkpoint(c) => Msg::Checkpoint(Box::new(c.clone())),
                    });
                },
                || stop.load(Ordering::SeqCst),
            )
        })
    };
    tokio::pin!(trainer);

    let beat_every = wcfg.lease / 3;
    let mut beat = tokio::time::interval(beat_every);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    let mut last_ok = Instant::now();
    let mut beat_step = -1i64;
    let mut pending: Vec<MetricRow> = Vec::new();
    let mut progress: (i64, Option<f64>) = (resumed_from.unwrap_or(0) as i64, None);
    let mut reason: Option<StopReason> = None;
    let request_stop = |why: StopReason, reason: &mut Option<StopReason>| {
        stop.store(true, Ordering::SeqCst);
        if reason.is_none() {
            tracing::info!(job = %fence.job_id, ?why, "stopping the trainer");
            *reason = Some(why);
        }
    };

    let result = loop {
        tokio::select! {
            res = &mut trainer => break res,
            Some(msg) = rx.recv() => {
                receive(pool, wcfg, keep, &fence, msg, &mut progress, &mut pending).await;
            }
            _ = beat.tick() => {
                // Bounded, so a hung connection (a network split) cannot keep this loop from
                // noticing that the lease deadline has passed.
                let hb = queue::heartbeat(pool, &fence, wcfg.lease, progress.0, progress.1);
                match bounded(beat_every, hb).await {
                    Ok(Some(cancel)) => {
                        last_ok = Instant::now();
                        beat_step = progress.0;
                        if cancel {
                            request_stop(StopReason::Cancelled, &mut reason);
                        }
                    }
                    Ok(None) => request_stop(StopReason::LeaseLost, &mut reason),
                    Err(e) => {
                        tracing::warn!(job = %fence.job_id, error = %e, "heartbeat failed");
                        // Past our own deadline the rescuer may have given the job to someone
                        // else: stop rather than run twice.
                        if last_ok.elapsed() + beat_every / 2 >= wcfg.lease {
                            request_stop(StopReason::LeaseLost, &mut reason);
                        }
                    }
                }
            }
            _ = flush.tick() => {
                let _ = bounded(beat_every, async {
                    flush_metrics(pool, &fence, &mut pending).await;
                    Ok(())
                })
                .await;
                // Progress readers (GET /jobs/{id}, events) should not wait a whole heartbeat
                // period: beat now when the step moved.
                if progress.0 != beat_step {
                    beat.reset_immediately();
                }
            }
            Some(n) = wait_notification(listener.as_deref_mut(), Duration::from_secs(1)) => {
                if n.channel() == queue::CHANNEL_CANCEL && n.payload() == fence.job_id.to_string() {
                    request_stop(StopReason::Cancelled, &mut reason);
                }
            }
            Ok(()) = shutdown.changed() => {
                if *shutdown.borrow() {
                    request_stop(StopReason::Shutdown, &mut reason);
                }
            }
        }
    };

    // The trainer is done and its callback (the sender) dropped: drain what it reported.
    while let Some(msg) = rx.recv().await {
        receive(pool, wcfg, keep, &fence, msg, &mut progress, &mut pending).await;
    }
    flush_metrics(pool, &fence, &mut pending).await;
    if reason == Some(StopReason::LeaseLost) {
        tracing::warn!(job = %fence.job_id, "lease lost: dropping this attempt's result");
        return Ok(());
    }
    // Store the final progress before the status changes.
    queue::heartbeat(pool, &fence, wcfg.lease, progress.0, progress.1).await?;
    let finished = match result {
        Err(join) => {
            tracing::error!(job = %fence.job_id, error = %join, "trainer thread panicked");
            let outcome = Outcome::Failed("internal error: the trainer crashed".into());
            queue::finish(pool, &fence, &outcome).await?
        }
        Ok(Err(e)) => queue::finish(pool, &fence, &Outcome::Failed(describe(&e))).await?,
        Ok(Ok(false)) if writes_results => {
            match record_report(pool, wcfg, &fence, &dir_of_results).await {
                Ok(()) => queue::finish(pool, &fence, &Outcome::Succeeded).await?,
                Err(e) => queue::finish(pool, &fence, &Outcome::Failed(e.to_string())).await?,
            }
        }
        Ok(Ok(false)) => queue::finish(pool, &fence, &Outcome::Succeeded).await?,
        Ok(Ok(_)) => match reason {
            Some(StopReason::Shutdown) => queue::release(pool, &fence).await?,
            _ => queue::finish(pool, &fence, &Outcome::Cancelled).await?,
        },
    };
    if !finished {
        tracing::warn!(job = %fence.job_id, "the job was taken from this worker; result dropped");
    }
    Ok(())
}

/// Lists a finished comparison's result files.
async fn record_report(
    pool: &PgPool,
    wcfg: &WorkerConfig,
    fence: &Fence,
    dir: &Path,
) -> Result<()> {
    let d = dir.to_path_buf();
    let files = tokio::task::spawn_blocking(move || crate::jobs::compare::report_files(&d))
        .await
        .map_err(|e| Error::Internal(format!("listing results: {e}")))??;
    record::report_files(pool, &wcfg.artifacts, fence, &files).await
}

/// A trainer error as the job's owner should read it.
fn describe(e: &ifp_trainer::TrainerError) -> String {
    match e {
        ifp_trainer::TrainerError::Io { source, .. }
            if source.raw_os_error() == Some(libc::ENOSPC) =>
        {
            // The trainer writes atomically, so the half-written file was never listed.
            "the artifact store is full (no space left on device) while writing a checkpoint; \
             free space and resubmit, or lower the checkpoint frequency"
                .into()
        }
        e => e.to_string(),
    }
}

/// `fut`, or an error once `limit` has passed.
async fn bounded<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(Error::Internal(
            "the database did not answer in time".into(),
        ))
    })
}

/// Takes one message of the trainer: a step is queued for the next metrics flush, a checkpoint
/// flushes the steps before it and is listed.
async fn receive(
    pool: &PgPool,
    wcfg: &WorkerConfig,
    keep: i64,
    fence: &Fence,
    msg: Msg,
    progress: &mut (i64, Option<f64>),
    pending: &mut Vec<MetricRow>,
) {
    match msg {
        Msg::Step(m) => {
            *progress = (m.step, Some(m.loss));
            pending.push(m);
        }
        Msg::Checkpoint(c) => {
            flush_metrics(pool, fence, pending).await;
            record_checkpoint(pool, wcfg, keep, fence, &c).await;
        }
    }
}

/// Lists a new checkpoint, then applies retention.
async fn record_checkpoint(
    pool: &PgPool,
    wcfg: &WorkerConfig,
    keep: i64,
    fence: &Fence,
    c: &Checkpoint,
) {
    if let Err(e) = record::checkpoint(pool, &wcfg.artifacts, fence, c).await {
        tracing::warn!(job = %fence.job_id, error = %e, "recording a checkpoint");
        return;
    }
    if let Err(e) = record::apply_retention(pool, &wcfg.artifacts, fence, keep).await {
        tracing::warn!(job = %fence.job_id, error = %e, "checkpoint retention");
    }
}

async fn flush_metrics(pool: &PgPool, fence: &Fence, pending: &mut Vec<MetricRow>) {
    if pending.is_empty() {
        return;
    }
    match record::metrics(pool, fence, pending).await {
        Ok(()) => pending.clear(),
        // Kept for the next flush; a bounded backlog so a long outage cannot eat memory.
        Err(e) => {
            tracing::warn!(job = %fence.job_id, error = %e, "recording metrics");
            if pending.len() > 100_000 {
                pending.drain(..pending.len() - 100_000);
            }
        }
    }
}
