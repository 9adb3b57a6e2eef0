//! One attempt at a claimed job: prepare it (read its spec by the stored kind, seed the attempt
//! folder from earlier attempts), run the trainer in its own process (`process`) or on a blocking
//! thread, keep the database up to
//! date from the async side (heartbeats every lease/3, batched metrics, checkpoints), stop the
//! trainer between steps on cancel, lease loss or shutdown, and record how it ended.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ifp_trainer::checkpoint::Checkpoint;
use ifp_trainer::TrainOptions;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{attempt_dir, seed, wait_notification, WorkerConfig};
use crate::db::rows::Metric;
use crate::error::{Error, Result};
use crate::jobs::spec::{JobSpec, Report};
use crate::queue::record;
use crate::queue::{self, Claimed, Fence, Outcome};

/// What the trainer (thread or process) tells the async side.
pub(super) enum Msg {
    Step(Metric),
    Checkpoint(Box<Checkpoint>),
    /// What the training process uses: CPU, resident memory, its GPU.
    Usage(record::Usage),
}

/// Why the trainer was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Cancelled,
    LeaseLost,
    Shutdown,
}

/// The trainer thread's answer: `Ok(true)` when it stopped early on request.
type TrainerResult = std::result::Result<ifp_trainer::Result<bool>, tokio::task::JoinError>;

/// Runs one claimed job to the end of this attempt.
pub(super) async fn run_job(
    pool: &PgPool,
    wcfg: &WorkerConfig,
    job: Claimed,
    listener: Option<&mut PgListener>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<()> {
    let fence = job.fence.clone();
    tracing::info!(job = %fence.job_id, attempt = fence.attempt, kind = %job.kind, "running job");
    let Some((spec, resumed_from)) = prepare(pool, wcfg, &job).await? else {
        return Ok(());
    };
    let dir = attempt_dir(&wcfg.artifacts, fence.job_id, fence.attempt);
    let writes_results = spec.writes_results();
    let mut attempt = Attempt {
        pool,
        wcfg,
        keep: spec.keep_checkpoints(),
        fence: fence.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        pending: Vec::new(),
        metric_every: metric_stride(job.total_steps),
        last_step: job.total_steps,
        progress: (resumed_from.map_or(0, |s| s as i64), None),
        reason: None,
    };
    let (tx, rx) = mpsc::unbounded_channel::<Msg>();
    let opts = TrainOptions {
        out_dir: dir.clone(),
        device: wcfg.device.clone(),
        resume: true,
    };
    let stop = attempt.stop.clone();
    let trainer = match &wcfg.train_process {
        Some(process) => {
            let req = super::process::Request {
                kind: job.kind,
                config: job.config.clone(),
                artifacts: wcfg.artifacts.clone(),
                datasets: wcfg.datasets.clone(),
                out_dir: dir.clone(),
                device: super::process::device_name(&wcfg.device),
                attempt: fence.attempt,
                memory_limit: process.memory_limit,
            };
            super::process::spawn(&process.exe, req, wcfg.usage_every, stop, tx)
        }
        None => spawn_trainer(spec, opts, fence.attempt, stop, tx),
    };
    let result = attempt.supervise(trainer, rx, listener, shutdown).await;
    attempt.conclude(result, writes_results, &dir).await
}

/// Reads the claimed job's spec and seeds its attempt folder. `None`: the attempt has already
/// been recorded as failed (a config that no longer reads, an unusable folder).
async fn prepare(
    pool: &PgPool,
    wcfg: &WorkerConfig,
    job: &Claimed,
) -> Result<Option<(JobSpec, Option<usize>)>> {
    let fence = &job.fence;
    let spec = JobSpec::from_stored(job.kind, &job.config).and_then(|mut s| {
        s.resolve(&wcfg.artifacts, wcfg.datasets.as_deref())
            .map(|()| s)
    });
    let spec = match spec {
        Ok(s) => s,
        Err(e) => {
            let outcome = Outcome::Failed(format!("invalid config: {e}"));
            queue::finish(pool, fence, &outcome).await?;
            return Ok(None);
        }
    };
    let (artifacts, f, dir) = (
        wcfg.artifacts.clone(),
        fence.clone(),
        attempt_dir(&wcfg.artifacts, fence.job_id, fence.attempt),
    );
    let seeded = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
        seed::seed_from_previous(&artifacts, &f, &dir)
    })
    .await
    .map_err(|e| Error::Internal(format!("preparing the attempt folder: {e}")))?;
    let resumed_from = match seeded {
        Ok(r) => r,
        Err(e) => {
            queue::finish(pool, fence, &Outcome::Failed(e.to_string())).await?;
            return Ok(None);
        }
    };
    if let Some(step) = resumed_from {
        tracing::info!(job = %fence.job_id, step, "resuming from checkpoint");
        record::resumed_from(pool, fence, step as i64).await?;
    }
    Ok(Some((spec, resumed_from)))
}

/// Runs the spec on a blocking thread; its reports come back through `tx`, and it stops after
/// the step during which `stop` turns true.
fn spawn_trainer(
    spec: JobSpec,
    opts: TrainOptions,
    attempt: i32,
    stop: Arc<AtomicBool>,
    tx: mpsc::UnboundedSender<Msg>,
) -> JoinHandle<ifp_trainer::Result<bool>> {
    tokio::task::spawn_blocking(move || {
        spec.run(
            &opts,
            // A send fails only once the async side has gone; training stops then anyway.
            |r| {
                let _ = tx.send(message(r, attempt));
            },
            || stop.load(Ordering::SeqCst),
        )
    })
}

/// The most metric rows a job writes. A long run (`TRAIN.STEPS` may be ten million) would
/// otherwise write a row per step: gigabytes in the database, and millions of rows for its
/// page and its charts to read. Its steps are thinned to every n-th, the last always kept.
pub const MAX_METRIC_ROWS: i64 = 20_000;

/// The stride that keeps a run of `total_steps` under [`MAX_METRIC_ROWS`] rows: 1 up to that
/// many steps.
pub fn metric_stride(total_steps: i64) -> i64 {
    (total_steps.max(1) + MAX_METRIC_ROWS - 1) / MAX_METRIC_ROWS
}

/// The async side of a running attempt.
struct Attempt<'a> {
    pool: &'a PgPool,
    wcfg: &'a WorkerConfig,
    /// Model checkpoints to keep.
    keep: i64,
    fence: Fence,
    stop: Arc<AtomicBool>,
    /// Steps not yet written to the database.
    pending: Vec<Metric>,
    /// Which steps get a metric row: multiples of this, and the last (see `MAX_METRIC_ROWS`).
    metric_every: i64,
    last_step: i64,
    /// The latest step and loss, for heartbeats.
    progress: (i64, Option<f64>),
    reason: Option<StopReason>,
}

impl Attempt<'_> {
    /// Follows the trainer until it ends: its messages, heartbeats (which also bring cancels),
    /// metric flushes, cancel notifications and shutdown. Returns the trainer's result once
    /// everything it reported is recorded.
    async fn supervise(
        &mut self,
        trainer: JoinHandle<ifp_trainer::Result<bool>>,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        mut listener: Option<&mut PgListener>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> TrainerResult {
        tokio::pin!(trainer);
        let beat_every = self.wcfg.lease / 3;
        let mut beat = tokio::time::interval(beat_every);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush = tokio::time::interval(Duration::from_secs(1));
        let mut last_ok = Instant::now();
        let mut beat_step = -1i64;
        let result = loop {
            tokio::select! {
                res = &mut trainer => break res,
                Some(msg) = rx.recv() => self.receive(msg).await,
                _ = beat.tick() => {
                    if self.heartbeat(beat_every, &mut last_ok).await {
                        beat_step = self.progress.0;
                    }
                }
                _ = flush.tick() => {
                    let _ = bounded(beat_every, async {
                        self.flush().await;
                        Ok(())
                    })
                    .await;
                    // Progress readers (GET /jobs/{id}, events) should not wait a whole
                    // heartbeat period: beat now when the step moved.
                    if self.progress.0 != beat_step {
                        beat.reset_immediately();
                    }
                }
                Some(n) = wait_notification(listener.as_deref_mut(), Duration::from_secs(1)) => {
                    let me = self.fence.job_id.to_string();
                    if n.channel() == queue::CHANNEL_CANCEL && n.payload() == me {
                        self.request_stop(StopReason::Cancelled);
                    }
                }
                Ok(()) = shutdown.changed() => {
                    if *shutdown.borrow() {
                        self.request_stop(StopReason::Shutdown);
                    }
                }
            }
        };
        // The trainer is done and its callback (the sender) dropped: drain what it reported.
        while let Some(msg) = rx.recv().await {
            self.receive(msg).await;
        }
        self.flush().await;
        result
    }

    /// Renews the lease and stores progress; `true` when the database answered. Bounded, so a
    /// hung connection (a network split) cannot keep the loop from noticing that the lease
    /// deadline has passed.
    async fn heartbeat(&mut self, beat_every: Duration, last_ok: &mut Instant) -> bool {
        let (step, loss) = self.progress;
        let hb = queue::heartbeat(self.pool, &self.fence, self.wcfg.lease, step, loss);
        match bounded(beat_every, hb).await {
            Ok(Some(cancel)) => {
                *last_ok = Instant::now();
                if cancel {
                    self.request_stop(StopReason::Cancelled);
                }
                true
            }
            Ok(None) => {
                self.request_stop(StopReason::LeaseLost);
                false
            }
            Err(e) => {
                tracing::warn!(job = %self.fence.job_id, error = %e, "heartbeat failed");
                // Past our own deadline the rescuer may have given the job to someone else:
                // stop rather than run twice.
                if last_ok.elapsed() + beat_every / 2 >= self.wcfg.lease {
                    self.request_stop(StopReason::LeaseLost);
                }
                false
            }
        }
    }

    fn request_stop(&mut self, why: StopReason) {
        self.stop.store(true, Ordering::SeqCst);
        if self.reason.is_none() {
            tracing::info!(job = %self.fence.job_id, ?why, "stopping the trainer");
            self.reason = Some(why);
        }
    }

    /// Takes one message of the trainer: a step is queued for the next metrics flush, a
    /// checkpoint flushes the steps before it and is listed (then retention applies).
    async fn receive(&mut self, msg: Msg) {
        match msg {
            Msg::Step(m) => {
                self.progress = (m.step, Some(m.loss));
                if m.step % self.metric_every == 0 || m.step >= self.last_step {
                    self.pending.push(m);
                }
            }
            Msg::Usage(u) => {
                if let Err(e) = record::usage(self.pool, &self.fence, u).await {
                    tracing::warn!(job = %self.fence.job_id, error = %e, "recording usage");
                }
            }
            Msg::Checkpoint(c) => {
                self.flush().await;
                let (pool, artifacts, fence) = (self.pool, &self.wcfg.artifacts, &self.fence);
                if let Err(e) = record::checkpoint(pool, artifacts, fence, &c).await {
                    tracing::warn!(job = %fence.job_id, error = %e, "recording a checkpoint");
                    return;
                }
                if let Err(e) = record::apply_retention(pool, artifacts, fence, self.keep).await {
                    tracing::warn!(job = %fence.job_id, error = %e, "checkpoint retention");
                }
            }
        }
    }

    /// Writes the pending steps; on failure they are kept for the next flush, within a bound
    /// so a long outage cannot eat memory.
    async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        match record::metrics(self.pool, &self.fence, &self.pending).await {
            Ok(()) => self.pending.clear(),
            Err(e) => {
                tracing::warn!(job = %self.fence.job_id, error = %e, "recording metrics");
                if self.pending.len() > 100_000 {
                    self.pending.drain(..self.pending.len() - 100_000);
                }
            }
        }
    }

    /// Records how the attempt ended: succeeded (with its result files listed), failed with a
    /// reason its owner can act on, cancelled, or given back to the queue at shutdown. A lost
    /// lease records nothing: the job is someone else's now.
    async fn conclude(self, result: TrainerResult, writes_results: bool, dir: &Path) -> Result<()> {
        let (pool, fence) = (self.pool, &self.fence);
        if self.reason == Some(StopReason::LeaseLost) {
            tracing::warn!(job = %fence.job_id, "lease lost: dropping this attempt's result");
            return Ok(());
        }
        // Store the final progress before the status changes.
        let (step, loss) = self.progress;
        queue::heartbeat(pool, fence, self.wcfg.lease, step, loss).await?;
        let outcome = match result {
            Err(join) => {
                tracing::error!(job = %fence.job_id, error = %join, "trainer thread panicked");
                Outcome::Failed("internal error: the trainer crashed".into())
            }
            Ok(Err(e)) => Outcome::Failed(describe(&e)),
            Ok(Ok(false)) if writes_results => {
                match record_results(pool, &self.wcfg.artifacts, fence, dir).await {
                    Ok(()) => Outcome::Succeeded,
                    Err(e) => Outcome::Failed(e.to_string()),
                }
            }
            Ok(Ok(false)) => Outcome::Succeeded,
            Ok(Ok(true)) if self.reason == Some(StopReason::Shutdown) => {
                if !queue::release(pool, fence).await? {
                    tracing::warn!(job = %fence.job_id, "the job was taken from this worker");
                }
                return Ok(());
            }
            Ok(Ok(true)) => Outcome::Cancelled,
        };
        if !queue::finish(pool, fence, &outcome).await? {
            tracing::warn!(job = %fence.job_id, "the job was taken from this worker; result dropped");
        }
        Ok(())
    }
}

/// Lists a finished run's result files (a comparison's report, a fine-tuning history) and the
/// models a comparison made.
async fn record_results(pool: &PgPool, artifacts: &Path, fence: &Fence, dir: &Path) -> Result<()> {
    let d: PathBuf = dir.to_path_buf();
    let (files, models, key) = tokio::task::spawn_blocking(move || {
        use crate::jobs::compare;
        Ok::<_, Error>((
            compare::report_files(&d)?,
            compare::model_files(&d)?,
            compare::key_metric(&d),
        ))
    })
    .await
    .map_err(|e| Error::Internal(format!("listing results: {e}")))??;
    record::report_files(pool, artifacts, fence, &files).await?;
    record::named_models(pool, artifacts, fence, &models).await?;
    match key {
        Some(v) => record::key_metric(pool, fence, v).await,
        None => Ok(()),
    }
}

/// A trainer report as the async side takes it.
pub(super) fn message(r: Report<'_>, attempt: i32) -> Msg {
    match r {
        Report::Step(step, p) => {
            let mut row = Metric::from_progress(p, attempt);
            row.step = step as i64;
            Msg::Step(row)
        }
        Report::Checkpoint(c) => Msg::Checkpoint(Box::new(c.clone())),
    }
}

/// A trainer error as the job's owner should read it.
pub(super) fn describe(e: &ifp_trainer::TrainerError) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every step has a row up to `MAX_METRIC_ROWS` steps; past that, a stride keeps the rows
    /// (its multiples, plus the last step) at or under the cap.
    #[test]
    fn the_metric_stride_keeps_a_run_under_the_row_cap() {
        for (steps, stride) in [
            (0, 1),
            (1, 1),
            (MAX_METRIC_ROWS, 1),
            (MAX_METRIC_ROWS + 1, 2),
            (10_000_000, 500),
            (7 * MAX_METRIC_ROWS + 3, 8),
        ] {
            assert_eq!(metric_stride(steps), stride, "{steps} steps");
            // The multiples of the stride, and the last step when it is not one of them.
            let rows = steps / stride + i64::from(steps % stride != 0);
            assert!(rows <= MAX_METRIC_ROWS, "{steps} steps: {rows} rows");
        }
    }
}
