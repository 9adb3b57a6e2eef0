//! The PostgreSQL job queue: enqueue, claim, fenced heartbeat / finish, rescue of
//! expired leases, and cancel.
//!
//! Every statement here is one short autocommit statement: no transaction is held open while a
//! job trains. A worker's right to touch a running job is its *fence* (job id, attempt number,
//! worker id, status `running`); once the rescuer has requeued the job or another worker has
//! claimed it, the fence matches no row and whatever the old worker writes is dropped.

pub mod record;

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use ifp_trainer::config::DeviceClass;

use crate::db::rows::{Job, JOB_COLUMNS};
use crate::db::values::{AttemptOutcome, JobKind, JobStatus};
use crate::error::Result;

/// NOTIFY channel: a job became claimable (payload: job id).
pub const CHANNEL_QUEUED: &str = "ifp_job_queued";
/// NOTIFY channel: cancel was requested for a running job (payload: job id).
pub const CHANNEL_CANCEL: &str = "ifp_job_cancel";
/// NOTIFY channel: a job's progress, status or checkpoints changed (payload: job id).
pub const CHANNEL_EVENT: &str = "ifp_job_event";

pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;

/// A job to insert.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: JobKind,
    pub name: String,
    pub owner: String,
    pub priority: i32,
    pub config: serde_json::Value,
    pub total_steps: i64,
    pub max_attempts: i32,
    /// `TRAIN.DEVICE` of the config: who may claim it.
    pub device_class: DeviceClass,
    /// The job it was derived from, if any.
    pub parent_id: Option<Uuid>,
    /// The run's estimated peak memory in bytes: only workers it fits in claim it.
    pub memory_need: Option<i64>,
}

/// Share of a worker's memory a run may plan to use: the rest is the operating system's and,
/// for the in-process workers of `ifp serve`, the server's and its database's.
pub const MEMORY_HEADROOM: f64 = 0.9;

/// What a worker trains on: decides which jobs it may claim and is recorded on each attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerDevice {
    /// `cpu` or `cuda`: a worker claims jobs of its class and `any`.
    pub class: DeviceClass,
    /// e.g. `NVIDIA H100 80GB HBM3`, or the CPU model.
    pub name: Option<String>,
    /// Device memory in bytes (RAM for a CPU worker).
    pub memory: Option<i64>,
}

impl WorkerDevice {
    /// A CPU worker that does not say more about itself.
    pub fn cpu() -> Self {
        WorkerDevice {
            class: DeviceClass::Cpu,
            name: None,
            memory: None,
        }
    }
}

/// What a worker holds while it runs a job: the fence of every write it makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub job_id: Uuid,
    pub attempt: i32,
    pub worker_id: String,
}

/// Binds a [`Fence`] as the next three parameters (job, attempt, worker): every fenced write
/// starts with them, in that order.
pub(crate) trait BindFence<'q> {
    fn bind_fence(self, fence: &'q Fence) -> Self;
}

impl<'q> BindFence<'q> for sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    fn bind_fence(self, fence: &'q Fence) -> Self {
        self.bind(fence.job_id)
            .bind(fence.attempt)
            .bind(&fence.worker_id)
    }
}

impl<'q, O> BindFence<'q>
    for sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>
{
    fn bind_fence(self, fence: &'q Fence) -> Self {
        self.bind(fence.job_id)
            .bind(fence.attempt)
            .bind(&fence.worker_id)
    }
}

/// A job just claimed by a worker.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub fence: Fence,
    /// The kind stored with the job: how its config is read and run.
    pub kind: JobKind,
    pub config: serde_json::Value,
    pub total_steps: i64,
    pub max_attempts: i32,
}

/// How an attempt ended, as its worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded,
    Failed(String),
    Cancelled,
}

/// What the rescuer did to one expired job.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Rescued {
    pub id: Uuid,
    /// The new status: `queued`, `failed` or `cancelled`.
    pub status: JobStatus,
    pub attempt: i32,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub async fn notify(pool: &PgPool, channel: &str, payload: &str) -> Result<()> {
    sqlx::query("select pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(pool)
        .await?;
    Ok(())
}

/// Inserts a queued job and wakes idle workers.
pub async fn enqueue(pool: &PgPool, job: &NewJob) -> Result<Job> {
    let sql = format!(
        "insert into job
             (id, name, owner, priority, config, total_steps, max_attempts, device_class, kind,
              parent_id, memory_need)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) returning {JOB_COLUMNS}"
    );
    let row: Job = sqlx::query_as(&sql)
        .bind(Uuid::new_v4())
        .bind(&job.name)
        .bind(&job.owner)
        .bind(job.priority)
        .bind(&job.config)
        .bind(job.total_steps)
        .bind(job.max_attempts)
        .bind(job.device_class.as_str())
        .bind(job.kind)
        .bind(job.parent_id)
        .bind(job.memory_need)
        .fetch_one(pool)
        .await?;
    notify(pool, CHANNEL_QUEUED, &row.id.to_string()).await?;
    Ok(row)
}

/// [`claim_on`] for a CPU worker that records no device details.
pub async fn claim(pool: &PgPool, worker_id: &str, lease: Duration) -> Result<Option<Claimed>> {
    claim_on(pool, worker_id, lease, &WorkerDevice::cpu()).await
}

/// How long a worker counts as live after it last registered.
pub const WORKER_SEEN_WITHIN_SECS: i64 = 600;

/// Records (or refreshes) a worker's device class, name and memory: admission control checks
/// submissions against the live workers' memory.
pub async fn register_worker(pool: &PgPool, worker_id: &str, device: &WorkerDevice) -> Result<()> {
    sqlx::query(
        "insert into worker (id, device_class, device_name, memory_bytes) values ($1, $2, $3, $4)
         on conflict (id) do update
         set device_class = excluded.device_class, device_name = excluded.device_name,
             memory_bytes = excluded.memory_bytes, updated_at = now()",
    )
    .bind(worker_id)
    .bind(device.class.as_str())
    .bind(&device.name)
    .bind(device.memory)
    .execute(pool)
    .await?;
    Ok(())
}

/// The most memory of a live worker that may run a job of `class` (`any`: every worker), or
/// `None` when no such worker has registered within [`WORKER_SEEN_WITHIN_SECS`] or none knows
/// its memory.
pub async fn largest_worker_memory(pool: &PgPool, class: DeviceClass) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(
        "select max(memory_bytes) from worker
         where ($1 = 'any' or device_class = $1)
           and updated_at > now() - make_interval(secs => $2)",
    )
    .bind(class.as_str())
    .bind(WORKER_SEEN_WITHIN_SECS as f64)
    .fetch_one(pool)
    .await?)
}

/// Claims the next queued job that `device` may run (device class `any` or its own class) for
/// `worker_id`, or `None`, and records the device on the new attempt: the highest priority,
/// then the job of the owner with the fewest running jobs (so one user's many queued jobs do
/// not starve everyone else's), then the oldest. Concurrent claimers skip each other's locked
/// row instead of waiting on it.
pub async fn claim_on(
    pool: &PgPool,
    worker_id: &str,
    lease: Duration,
    device: &WorkerDevice,
) -> Result<Option<Claimed>> {
    let row: Option<(Uuid, i32, JobKind, serde_json::Value, i64, i32)> = sqlx::query_as(
        "with next as (
             select id from job
             where status = 'queued' and device_class in ('any', $3)
               -- Only what fits: a job too big for this worker waits for one it fits.
               and (memory_need is null or $5::bigint is null or memory_need <= $6 * $5)
             order by priority desc,
                      (select count(*) from job r
                       where r.owner = job.owner and r.status = 'running'),
                      created_at, id
             for update skip locked
             limit 1
         ), claimed as (
             update job j
             set status = 'running', attempt = j.attempt + 1, worker_id = $1,
                 lease_expires_at = now() + make_interval(secs => $2),
                 started_at = coalesce(j.started_at, now()), updated_at = now()
             from next where j.id = next.id
             returning j.id, j.attempt, j.kind, j.config, j.total_steps, j.max_attempts
         ), att as (
             insert into attempt (job_id, attempt, worker_id, device_name, device_memory)
             select id, attempt, $1, $4, $5 from claimed
         )
         select id, attempt, kind, config, total_steps, max_attempts from claimed",
    )
    .bind(worker_id)
    .bind(secs(lease))
    .bind(device.class.as_str())
    .bind(&device.name)
    .bind(device.memory)
    .bind(MEMORY_HEADROOM)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(
        |(job_id, attempt, kind, config, total_steps, max_attempts)| Claimed {
            fence: Fence {
                job_id,
                attempt,
                worker_id: worker_id.to_string(),
            },
            kind,
            config,
            total_steps,
            max_attempts,
        },
    ))
}

/// Renews the lease and stores progress. `Ok(None)`: the lease is lost (stop at once);
/// `Ok(Some(cancel))`: still ours, and whether cancel was requested.
pub async fn heartbeat(
    pool: &PgPool,
    fence: &Fence,
    lease: Duration,
    step: i64,
    loss: Option<f64>,
) -> Result<Option<bool>> {
    let cancel: Option<bool> = sqlx::query_scalar(
        "update job
         set lease_expires_at = now() + make_interval(secs => $4),
             step = $5, loss = coalesce($6, loss), updated_at = now()
         where id = $1 and attempt = $2 and worker_id = $3 and status = 'running'
         returning cancel_requested",
    )
    .bind_fence(fence)
    .bind(secs(lease))
    .bind(step)
    .bind(loss)
    .fetch_optional(pool)
    .await?;
    Ok(cancel)
}

/// Records the end of an attempt. `false`: the fence no longer holds (a zombie), nothing changed.
pub async fn finish(pool: &PgPool, fence: &Fence, outcome: &Outcome) -> Result<bool> {
    let (status, ended, error) = match outcome {
        Outcome::Succeeded => (JobStatus::Succeeded, AttemptOutcome::Succeeded, None),
        Outcome::Failed(e) => (JobStatus::Failed, AttemptOutcome::Failed, Some(e.as_str())),
        Outcome::Cancelled => (JobStatus::Cancelled, AttemptOutcome::Cancelled, None),
    };
    let done: Option<Uuid> = sqlx::query_scalar(
        "with done as (
             update job
             set status = $4, error = $5, worker_id = null, lease_expires_at = null,
                 finished_at = now(), updated_at = now()
             where id = $1 and attempt = $2 and worker_id = $3 and status = 'running'
             returning id, attempt
         ), att as (
             update attempt a set finished_at = now(), outcome = $6, error = $5,
                 updated_at = now()
             from done where a.job_id = done.id and a.attempt = done.attempt
         )
         select id from done",
    )
    .bind_fence(fence)
    .bind(status)
    .bind(error)
    .bind(ended)
    .fetch_optional(pool)
    .await?;
    if done.is_some() {
        notify(pool, CHANNEL_EVENT, &fence.job_id.to_string()).await?;
    }
    Ok(done.is_some())
}

/// Gives a running job back to the queue (the worker is shutting down): the next attempt
/// resumes from its checkpoint and the interrupted one does not count against `max_attempts`. A pending cancel wins: the job ends `cancelled` instead.
pub async fn release(pool: &PgPool, fence: &Fence) -> Result<bool> {
    let status: Option<JobStatus> = sqlx::query_scalar(
        "with done as (
             update job
             set status = case when cancel_requested then 'cancelled' else 'queued' end,
                 -- An attempt interrupted on purpose is not a failure: it must not use up
                 -- the job's attempts.
                 max_attempts = max_attempts + 1,
                 worker_id = null, lease_expires_at = null, updated_at = now(),
                 finished_at = case when cancel_requested then now() end
             where id = $1 and attempt = $2 and worker_id = $3 and status = 'running'
             returning id, attempt, status
         ), att as (
             update attempt a set finished_at = now(), outcome = 'interrupted',
                 error = 'the worker shut down', updated_at = now()
             from done where a.job_id = done.id and a.attempt = done.attempt
         )
         select status from done",
    )
    .bind_fence(fence)
    .fetch_optional(pool)
    .await?;
    if status == Some(JobStatus::Queued) {
        notify(pool, CHANNEL_QUEUED, &fence.job_id.to_string()).await?;
    }
    Ok(status.is_some())
}

/// Requeues running jobs whose lease expired (their worker died or was cut off), or ends them:
/// `cancelled` when cancel was requested, `failed` after `max_attempts`. Idempotent and safe to
/// run from every process at once.
pub async fn rescue(pool: &PgPool) -> Result<Vec<Rescued>> {
    let rescued: Vec<Rescued> = sqlx::query_as(
        "with expired as (
             select id from job
             where status = 'running' and lease_expires_at < now()
             for update skip locked
         ), upd as (
             update job j
             set status = case
                     when j.cancel_requested then 'cancelled'
                     when j.attempt >= j.max_attempts then 'failed'
                     else 'queued' end,
                 error = case
                     when j.cancel_requested then j.error
                     when j.attempt >= j.max_attempts then
                         format('attempt %s of %s lost its worker (lease expired); '
                                'no attempts left', j.attempt, j.max_attempts)
                     else j.error end,
                 finished_at = case
                     when j.cancel_requested or j.attempt >= j.max_attempts then now() end,
                 worker_id = null, lease_expires_at = null, updated_at = now()
             from expired where j.id = expired.id
             returning j.id, j.status, j.attempt
         ), att as (
             update attempt a set finished_at = now(), outcome = 'lost',
                 error = 'lease expired: the worker stopped heartbeating', updated_at = now()
             from upd where a.job_id = upd.id and a.attempt = upd.attempt
                 and a.finished_at is null
         )
         select id, status, attempt from upd",
    )
    .fetch_all(pool)
    .await?;
    for r in &rescued {
        let channel = if r.status == JobStatus::Queued {
            CHANNEL_QUEUED
        } else {
            CHANNEL_EVENT
        };
        notify(pool, channel, &r.id.to_string()).await?;
    }
    if !rescued.is_empty() {
        tracing::warn!(count = rescued.len(), "rescued jobs with expired leases");
    }
    Ok(rescued)
}

/// Cancels a job: a queued one at once, a running one by flagging it (its worker stops at its
/// next step). Returns the status after the call, or `None` when the job does not exist.
pub async fn cancel(pool: &PgPool, id: Uuid) -> Result<Option<JobStatus>> {
    let status: Option<JobStatus> = sqlx::query_scalar(
        "update job
         set cancel_requested = cancel_requested or status in ('queued', 'running'),
             status = case when status = 'queued' then 'cancelled' else status end,
             finished_at = case when status = 'queued' then now() else finished_at end,
             updated_at = now()
         where id = $1
         returning status",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    match status {
        Some(JobStatus::Running) => notify(pool, CHANNEL_CANCEL, &id.to_string()).await?,
        Some(JobStatus::Cancelled) => notify(pool, CHANNEL_EVENT, &id.to_string()).await?,
        _ => {}
    }
    Ok(status)
}

/// Fetches one job.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Job>> {
    let sql = format!("select {JOB_COLUMNS} from job where id = $1");
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?)
}

/// Every attempt of a job so far, oldest first.
pub async fn attempts(pool: &PgPool, id: Uuid) -> Result<Vec<crate::db::rows::Attempt>> {
    Ok(sqlx::query_as(&format!(
        "select {} from attempt where job_id = $1 order by attempt",
        crate::db::rows::ATTEMPT_COLUMNS
    ))
    .bind(id)
    .fetch_all(pool)
    .await?)
}
