//! Rows of the platform's tables as the API returns them.

use chrono::{DateTime, Utc};
use ifp_trainer::config::DeviceClass;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::values::{AttemptOutcome, CheckpointKind, JobKind, JobStatus};

/// The `job` columns selected into [`Job`], in one place so every query returns the same shape.
pub const JOB_COLUMNS: &str =
    "id, kind, name, owner, status, priority, config, attempt, max_attempts, \
     worker_id, lease_expires_at, cancel_requested, step, total_steps, loss, error, started_at, \
     finished_at, created_at, updated_at, device_class, parent_id, key_metric";

/// A job of any kind.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Job {
    pub id: Uuid,
    pub kind: JobKind,
    pub name: String,
    pub owner: String,
    pub status: JobStatus,
    pub priority: i32,
    /// The normalised training config (reference schema, defaults filled in).
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    /// Attempts started so far (1 while the first attempt runs).
    pub attempt: i32,
    pub max_attempts: i32,
    pub worker_id: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    /// Steps completed, as of the last heartbeat.
    pub step: i64,
    pub total_steps: i64,
    /// The latest logged loss.
    pub loss: Option<f64>,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The workers that may run it (`TRAIN.DEVICE`): `any`, `cpu` or `cuda`.
    #[sqlx(try_from = "String")]
    #[schema(value_type = String)]
    pub device_class: DeviceClass,
    /// The job this one was derived from (cloned, or fine-tuned from its encoder).
    pub parent_id: Option<Uuid>,
    /// The finished run's key result: best validation PSNR (dB) of a fine-tuning job, the
    /// paired test-PSNR difference IFP - scratch (dB) of a comparison; null for pre-training
    /// (its `loss` is the final loss) and until the result files are listed.
    pub key_metric: Option<f64>,
}

/// One logged training step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Metric {
    pub step: i64,
    pub attempt: i32,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub images_per_sec: f64,
}

/// One checkpoint file of a job.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct CheckpointFile {
    pub name: String,
    pub kind: CheckpointKind,
    pub attempt: i32,
    pub step: i64,
    pub bytes: i64,
    pub sha256: String,
    /// Relative to the artifact root; not shown to API clients.
    #[serde(skip)]
    pub path: String,
    pub created_at: DateTime<Utc>,
}

/// One attempt at a job.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Attempt {
    pub attempt: i32,
    pub worker_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: Option<AttemptOutcome>,
    pub error: Option<String>,
    pub resumed_from_step: Option<i64>,
    /// What the worker ran on, e.g. `NVIDIA H100 80GB HBM3` (null if it did not say).
    pub device_name: Option<String>,
    /// That device's memory in bytes.
    pub device_memory: Option<i64>,
}

/// The `attempt` columns selected into [`Attempt`].
pub const ATTEMPT_COLUMNS: &str = "attempt, worker_id, started_at, finished_at, outcome, error, \
     resumed_from_step, device_name, device_memory";
