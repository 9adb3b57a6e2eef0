//! The job service: what the API routes and the web pages both do with jobs (submit a spec,
//! find a job the caller may see, list a job's files, pick a fine-tuning job's initial
//! encoder). Handlers parse their own request shapes and call these; nothing here knows HTTP.

use std::path::Path;

use ifp_trainer::config::DeviceClass;
use sqlx::PgPool;
use uuid::Uuid;

use super::estimate::MemoryFit;
use super::spec::JobSpec;
use crate::db::rows::{CheckpointFile, Job, JOB_COLUMNS};
use crate::db::values::{CheckpointKind, JobKind, JobStatus};
use crate::error::{Error, Result};
use crate::queue::{self, NewJob};
use crate::tokens::Caller;

/// The columns selected into [`CheckpointFile`].
const CHECKPOINT_COLUMNS: &str = "name, kind, attempt, step, bytes, sha256, path, created_at";

/// Who submits a job and how it is queued, besides its spec (the API and the forms alike).
#[derive(Debug, Clone)]
pub struct Submission {
    pub name: String,
    pub owner: String,
    /// Admins may queue with a wider priority range and more attempts.
    pub is_admin: bool,
    pub priority: i32,
    pub max_attempts: i32,
    /// The job it is derived from (a clone's original, a fine-tuning's pre-training); it must
    /// be visible to the submitter.
    pub parent: Option<Uuid>,
}

/// How far a submitter may move a job in the queue: users only down from the default (to let
/// their other jobs go first), admins both ways (a user cannot push everyone else's jobs back,
/// nor retry a crashing job without end).
struct QueueLimits {
    priority: std::ops::RangeInclusive<i32>,
    max_attempts: std::ops::RangeInclusive<i32>,
    note: &'static str,
}

impl QueueLimits {
    fn of(is_admin: bool) -> Self {
        if is_admin {
            QueueLimits {
                priority: -1000..=1000,
                max_attempts: 1..=20,
                note: "",
            }
        } else {
            QueueLimits {
                priority: -100..=0,
                max_attempts: 1..=5,
                note: " (an admin may go further)",
            }
        }
    }
}

/// The key path of the first string in a stored config that holds a NUL.
fn string_with_nul(v: &serde_json::Value, path: &str) -> Option<String> {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        serde_json::Value::String(s) => s.contains('\0').then(|| path.to_string()),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, x)| string_with_nul(x, &format!("{path}[{i}]"))),
        serde_json::Value::Object(m) => m.iter().find_map(|(k, x)| string_with_nul(x, &join(k))),
        _ => None,
    }
}

/// Checks a submission and queues its spec. Errors name the field or config key at fault.
pub async fn submit(pool: &PgPool, artifacts: &Path, s: Submission, spec: &JobSpec) -> Result<Job> {
    let caller = Caller {
        name: s.owner.clone(),
        is_admin: s.is_admin,
    };
    spec.check_uploads(pool, artifacts, &caller).await?;
    if s.name.trim().is_empty() || s.name.chars().count() > 200 {
        return Err(Error::invalid(Some("name"), "must be 1 to 200 characters"));
    }
    if s.name.chars().any(char::is_control) {
        return Err(Error::invalid(
            Some("name"),
            "must not contain control characters (NUL, tab, newline, ...)",
        ));
    }
    let limits = QueueLimits::of(s.is_admin);
    if !limits.priority.contains(&s.priority) {
        return Err(Error::invalid(
            Some("priority"),
            format!(
                "{} is outside {} to {}{}",
                s.priority,
                limits.priority.start(),
                limits.priority.end(),
                limits.note
            ),
        ));
    }
    if !limits.max_attempts.contains(&s.max_attempts) {
        return Err(Error::invalid(
            Some("max_attempts"),
            format!(
                "{} is outside {} to {}{}",
                s.max_attempts,
                limits.max_attempts.start(),
                limits.max_attempts.end(),
                limits.note
            ),
        ));
    }
    if let Some(parent) = s.parent {
        visible_job(pool, &caller, &parent.to_string())
            .await
            .map_err(|_| Error::invalid(Some("parent"), format!("no job {parent} of yours")))?;
    }
    let memory_need = check_memory(pool, spec).await?;
    let total_steps = i64::try_from(spec.total_steps()).unwrap_or(0);
    if total_steps == 0 {
        return Err(Error::invalid(
            Some("TRAIN.STEPS"),
            "the run must have at least one step",
        ));
    }
    let config = spec.stored()?;
    if let Some(path) = string_with_nul(&config, "") {
        // PostgreSQL cannot store a NUL in text or jsonb.
        return Err(Error::invalid(
            Some(&path),
            "must not contain a NUL character",
        ));
    }
    queue::enqueue(
        pool,
        &NewJob {
            kind: spec.kind(),
            name: s.name,
            owner: s.owner,
            priority: s.priority,
            config,
            total_steps,
            max_attempts: s.max_attempts,
            device_class: spec.device_class(),
            parent_id: s.parent,
            memory_need: i64::try_from(memory_need).ok(),
        },
    )
    .await
}

/// The job a caller may see (their own; every job for admins), or 404, also for ids that are
/// not UUIDs: another user's job does not exist for them.
pub async fn visible_job(pool: &PgPool, caller: &Caller, id: &str) -> Result<Job> {
    let id: Uuid = id.parse().map_err(|_| Error::NotFound)?;
    match queue::get(pool, id).await? {
        Some(j) if caller.is_admin || j.owner == caller.name => Ok(j),
        _ => Err(Error::NotFound),
    }
}

/// Every file listed for a job, oldest step first.
pub async fn checkpoints(pool: &PgPool, job: Uuid) -> Result<Vec<CheckpointFile>> {
    let sql = format!(
        "select {CHECKPOINT_COLUMNS} from checkpoint where job_id = $1 order by step, name"
    );
    Ok(sqlx::query_as(&sql).bind(job).fetch_all(pool).await?)
}

/// One listed file of a job by name.
pub async fn checkpoint(pool: &PgPool, job: Uuid, name: &str) -> Result<Option<CheckpointFile>> {
    // PostgreSQL text cannot hold a NUL, so no listed file has one (and binding it would fail).
    if name.contains('\0') {
        return Ok(None);
    }
    let sql =
        format!("select {CHECKPOINT_COLUMNS} from checkpoint where job_id = $1 and name = $2");
    Ok(sqlx::query_as(&sql)
        .bind(job)
        .bind(name)
        .fetch_optional(pool)
        .await?)
}

/// The sample strip a job wrote at `step`.
pub async fn sample(pool: &PgPool, job: Uuid, step: i64) -> Result<Option<CheckpointFile>> {
    let sql = format!(
        "select {CHECKPOINT_COLUMNS} from checkpoint where job_id = $1 and kind = $2 and step = $3"
    );
    Ok(sqlx::query_as(&sql)
        .bind(job)
        .bind(CheckpointKind::Sample)
        .bind(step)
        .fetch_optional(pool)
        .await?)
}

/// A job's logged steps, oldest first: (step, loss, learning rate, images/s), what its charts
/// and timings are drawn from.
pub async fn metric_rows(pool: &PgPool, job: Uuid) -> Result<Vec<(i64, f64, f64, f64)>> {
    Ok(sqlx::query_as(
        "select step, loss, lr, images_per_sec from metric where job_id = $1 order by step",
    )
    .bind(job)
    .fetch_all(pool)
    .await?)
}

/// Weights to start from: the newest model file of a succeeded pre-training job the caller
/// owns (relative to the artifact store), and that job's config (its network). Fine-tuning and
/// comparisons start from one's own pre-training, admins included. `key` names the field in
/// errors (`init_job`, `extra_arm_job`).
pub async fn pretrained_job(
    pool: &PgPool,
    owner: &str,
    id: &str,
    key: &str,
) -> Result<(String, ifp_trainer::Config)> {
    let not_usable = |why: &str| Error::invalid(Some(key), format!("job {id}: {why}"));
    let me = Caller {
        name: owner.to_string(),
        is_admin: false,
    };
    let job = visible_job(pool, &me, id)
        .await
        .map_err(|_| not_usable("no such job of yours"))?;
    if job.kind != JobKind::Pretrain || job.status != JobStatus::Succeeded {
        return Err(not_usable("not a succeeded pre-training job"));
    }
    let path: Option<String> = sqlx::query_scalar(
        "select path from checkpoint where job_id = $1 and kind = $2
         order by step desc limit 1",
    )
    .bind(job.id)
    .bind(CheckpointKind::Model)
    .fetch_optional(pool)
    .await?;
    let path = path.ok_or_else(|| not_usable("it has no model file"))?;
    let cfg = ifp_trainer::Config::from_value(job.config)
        .map_err(|e| not_usable(&format!("its config no longer parses: {e}")))?;
    Ok((path, cfg))
}

/// The caller's succeeded pre-training jobs, newest first: what a fine-tuning job may start
/// from (id, name, steps).
pub async fn pretrained_of(
    pool: &PgPool,
    owner: &str,
    limit: i64,
) -> Result<Vec<(Uuid, String, i64)>> {
    Ok(sqlx::query_as(
        "select id, name, total_steps from job
         where owner = $1 and kind = $2 and status = $3
         order by created_at desc limit $4",
    )
    .bind(owner)
    .bind(JobKind::Pretrain)
    .bind(JobStatus::Succeeded)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// A page of the jobs a caller may see (their own; all for admins), newest first, narrowed by
/// `filter`.
pub async fn list(
    pool: &PgPool,
    caller: &Caller,
    filter: &JobFilter,
    limit: i64,
    offset: i64,
) -> Result<Vec<Job>> {
    let owner = (!caller.is_admin).then_some(caller.name.as_str());
    let pattern = filter.name.as_deref().map(like_pattern);
    let sql = format!(
        "select {JOB_COLUMNS} from job
         where ($1::text is null or status = $1) and ($2::text is null or owner = $2)
           and ($5::text is null or name ilike $5 escape '\\')
         order by created_at desc, id desc limit $3 offset $4"
    );
    Ok(sqlx::query_as(&sql)
        .bind(filter.status)
        .bind(owner)
        .bind(limit)
        .bind(offset)
        .bind(pattern)
        .fetch_all(pool)
        .await?)
}

/// Refuses a run whose estimated peak memory exceeds what any live worker of its device class
/// has, or returns the estimate, which is stored with the job. Without a registered worker
/// there is nothing to check against: the job waits for a worker it fits (`queue::claim_on`).
async fn check_memory(pool: &PgPool, spec: &JobSpec) -> Result<u64> {
    let fit = MemoryFit::of(pool, spec).await?;
    if let (true, Some(have)) = (fit.refused(), fit.have) {
        let (need, key) = (fit.need, fit.key);
        let human = ifp_trainer::memory::human;
        let which = match fit.class {
            DeviceClass::Any => String::new(),
            c => format!("{} ", c.as_str()),
        };
        return Err(Error::invalid(
            Some(key),
            format!(
                "the run needs about {} at its peak (estimated from the network, the batch size \
                 and the crop size), more than 90% of the {} of the largest live {which}worker: \
                 lower the batch size or the crop size, or use a smaller network",
                human(need),
                human(have)
            ),
        ));
    }
    Ok(fit.need)
}

/// Which jobs a list shows: by status, and by a part of the name (any case).
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub name: Option<String>,
}

/// An ILIKE pattern matching names that contain `text` literally (`%`, `_` and `\` in it
/// match themselves).
fn like_pattern(text: &str) -> String {
    let mut p = String::from("%");
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// A job as a lineage link shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobLink {
    pub id: Uuid,
    pub name: String,
    pub status: JobStatus,
}

/// A job's parent and children that `caller` may see (children oldest first, at most 100).
pub async fn lineage(
    pool: &PgPool,
    caller: &Caller,
    job: &Job,
) -> Result<(Option<JobLink>, Vec<JobLink>)> {
    let parent: Option<JobLink> = match job.parent_id {
        Some(p) => {
            sqlx::query_as("select id, name, status from job where id = $1 and ($2 or owner = $3)")
                .bind(p)
                .bind(caller.is_admin)
                .bind(&caller.name)
                .fetch_optional(pool)
                .await?
        }
        None => None,
    };
    let children: Vec<JobLink> = sqlx::query_as(
        "select id, name, status from job where parent_id = $1 and ($2 or owner = $3)
         order by created_at, id limit 100",
    )
    .bind(job.id)
    .bind(caller.is_admin)
    .bind(&caller.name)
    .fetch_all(pool)
    .await?;
    Ok((parent, children))
}
