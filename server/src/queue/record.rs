//! What a worker writes about its running attempt besides heartbeats: metrics, checkpoints and
//! the step it resumed from. Every write is fenced like a heartbeat, so a zombie worker's rows
//! never land.

use std::path::Path;

use ifp_trainer::checkpoint::{Checkpoint, WrittenFile};
use ifp_trainer::Progress;
use sqlx::PgPool;

use crate::db::rows::Metric;
use crate::db::values::CheckpointKind;
use crate::error::{Error, Result};
use crate::queue::{self, BindFence, Fence};

/// The SQL condition that the fence still holds (`$1` job, `$2` attempt, `$3` worker).
const FENCE: &str = "exists (select 1 from job where id = $1 and attempt = $2 \
                     and worker_id = $3 and status = 'running')";

impl Metric {
    /// The row of one reported step of `attempt`.
    pub fn from_progress(p: &Progress, attempt: i32) -> Self {
        Metric {
            step: p.step as i64,
            attempt,
            loss: p.loss,
            lr: p.lr,
            grad_norm: p.grad_norm,
            images_per_sec: p.images_per_sec,
        }
    }
}

/// Inserts a batch of metrics in one statement. A resumed attempt repeats steps after its
/// checkpoint; its values replace the lost attempt's.
pub async fn metrics(pool: &PgPool, fence: &Fence, rows: &[Metric]) -> Result<()> {
    let col = |f: fn(&Metric) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
    let steps: Vec<i64> = rows.iter().map(|r| r.step).collect();
    let sql = format!(
        "insert into metric (job_id, step, attempt, loss, lr, grad_norm, images_per_sec)
         select $1, u.step, $2, u.loss, u.lr, u.grad_norm, u.ips
         from unnest($4::bigint[], $5::float8[], $6::float8[], $7::float8[], $8::float8[])
             as u(step, loss, lr, grad_norm, ips)
         where {FENCE}
         on conflict (job_id, step) do update
         set attempt = excluded.attempt, loss = excluded.loss, lr = excluded.lr,
             grad_norm = excluded.grad_norm, images_per_sec = excluded.images_per_sec,
             created_at = now()"
    );
    sqlx::query(&sql)
        .bind_fence(fence)
        .bind(steps)
        .bind(col(|r| r.loss))
        .bind(col(|r| r.lr))
        .bind(col(|r| r.grad_norm))
        .bind(col(|r| r.images_per_sec))
        .execute(pool)
        .await?;
    queue::notify(pool, queue::CHANNEL_EVENT, &fence.job_id.to_string()).await
}

/// Lists the files of a checkpoint (written atomically by the trainer) in one statement, so a
/// checkpoint is either fully listed or not at all.
pub async fn checkpoint(
    pool: &PgPool,
    artifacts: &Path,
    fence: &Fence,
    ck: &Checkpoint,
) -> Result<()> {
    let mut files = vec![
        (CheckpointKind::Model, file_name(&ck.model)?, &ck.model),
        (CheckpointKind::State, file_name(&ck.state)?, &ck.state),
    ];
    if let Some(s) = &ck.sample {
        files.push((CheckpointKind::Sample, file_name(s)?, s));
    }
    let step = Some(ck.step as i64);
    let files: Vec<_> = files.into_iter().map(|(k, n, f)| (k, n, f, step)).collect();
    list_files(pool, artifacts, fence, &files).await
}

/// Lists a finished run's result files (kind `report`, at the job's last step).
pub async fn report_files(
    pool: &PgPool,
    artifacts: &Path,
    fence: &Fence,
    files: &[(String, WrittenFile)],
) -> Result<()> {
    let files: Vec<_> = files
        .iter()
        .map(|(n, f)| (CheckpointKind::Report, n.clone(), f, None))
        .collect();
    list_files(pool, artifacts, fence, &files).await
}

/// Lists the models a finished comparison made (kind `model`), each under the name given with
/// it: several of its runs wrote a `model-000500.safetensors`. Each is listed at the step of
/// the run that wrote it (its pre-training's, or its arm's fine-tuning step, as in its file
/// name), not at the job's last step, which counts every phase and names no model's step.
pub async fn named_models(
    pool: &PgPool,
    artifacts: &Path,
    fence: &Fence,
    files: &[(String, WrittenFile)],
) -> Result<()> {
    let files: Vec<_> = files
        .iter()
        .map(|(n, f)| (CheckpointKind::Model, n.clone(), f, step_in_name(&f.path)))
        .collect();
    list_files(pool, artifacts, fence, &files).await
}

/// The step of a `model-SSSSSS.safetensors` file (`checkpoint::model_path`), if `path` is one.
fn step_in_name(path: &Path) -> Option<i64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("model-")?
        .strip_suffix(".safetensors")?
        .parse()
        .ok()
}

fn file_name(f: &WrittenFile) -> Result<String> {
    f.path
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| Error::Internal(format!("bad file path {}", f.path.display())))
}

/// Lists `files` (kind, listed name, file, step; paths relative to the artifact root), each at
/// its step or, without one, at the job's last step, in one fenced statement; a file listed
/// before under the same name is replaced.
async fn list_files(
    pool: &PgPool,
    artifacts: &Path,
    fence: &Fence,
    files: &[(CheckpointKind, String, &WrittenFile, Option<i64>)],
) -> Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let mut names = vec![];
    let mut kinds = vec![];
    let mut bytes = vec![];
    let mut shas = vec![];
    let mut paths = vec![];
    let mut steps = vec![];
    for (kind, name, f, step) in files {
        let rel = f.path.strip_prefix(artifacts).unwrap_or(&f.path);
        names.push(name.clone());
        kinds.push(kind.as_str());
        bytes.push(f.bytes as i64);
        shas.push(f.sha256.clone());
        paths.push(rel.to_string_lossy().into_owned());
        steps.push(*step);
    }
    let sql = format!(
        "insert into checkpoint (job_id, name, kind, attempt, step, bytes, sha256, path)
         select $1, u.name, u.kind, $2,
                coalesce(u.step, (select total_steps from job where id = $1)),
                u.bytes, u.sha256, u.path
         from unnest($4::text[], $5::text[], $6::bigint[], $7::text[], $8::text[],
                     $9::bigint[])
             as u(name, kind, bytes, sha256, path, step)
         where {FENCE}
         on conflict (job_id, name) do update
         set kind = excluded.kind, attempt = excluded.attempt, step = excluded.step,
             bytes = excluded.bytes, sha256 = excluded.sha256, path = excluded.path,
             updated_at = now()"
    );
    sqlx::query(&sql)
        .bind_fence(fence)
        .bind(names)
        .bind(kinds)
        .bind(bytes)
        .bind(shas)
        .bind(paths)
        .bind(steps)
        .execute(pool)
        .await?;
    queue::notify(pool, queue::CHANNEL_EVENT, &fence.job_id.to_string()).await
}

/// What a GPU is doing: the share of the last sample period with a kernel running, and the
/// device memory in use (all processes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuUse {
    pub percent: f64,
    pub memory_bytes: u64,
}

/// One sample of what a training process uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// CPU use over the interval before the sample, in percent of one core.
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    /// Its GPU's, when it trains on one that can be read.
    pub gpu: Option<GpuUse>,
}

/// Stores one sample of the training process's CPU, memory and GPU use.
pub async fn usage(pool: &PgPool, fence: &Fence, u: Usage) -> Result<()> {
    let sql = format!(
        "insert into usage_sample (job_id, attempt, cpu_percent, rss_bytes, gpu_percent,
                                   gpu_memory_bytes)
         select $1, $2, $4, $5, $6, $7 where {FENCE}"
    );
    let bytes = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
    sqlx::query(&sql)
        .bind_fence(fence)
        .bind(u.cpu_percent)
        .bind(bytes(u.rss_bytes))
        .bind(u.gpu.map(|g| g.percent))
        .bind(u.gpu.map(|g| bytes(g.memory_bytes)))
        .execute(pool)
        .await?;
    Ok(())
}

/// Stores the finished run's key result (see `Job::key_metric`).
pub async fn key_metric(pool: &PgPool, fence: &Fence, value: f64) -> Result<()> {
    let sql =
        format!("update job set key_metric = $4, updated_at = now() where id = $1 and {FENCE}");
    sqlx::query(&sql)
        .bind_fence(fence)
        .bind(value)
        .execute(pool)
        .await?;
    Ok(())
}

/// Notes on the attempt which checkpoint step it resumed from.
pub async fn resumed_from(pool: &PgPool, fence: &Fence, step: i64) -> Result<()> {
    sqlx::query(
        "update attempt set resumed_from_step = $4, updated_at = now()
         where job_id = $1 and attempt = $2 and worker_id = $3",
    )
    .bind_fence(fence)
    .bind(step)
    .execute(pool)
    .await?;
    Ok(())
}

/// Retention after a checkpoint: unlists, then deletes, every model file but the newest
/// `keep_models` and every training state but the newest, so a long run does not fill the
/// disk. The newest checkpoint (the one resumption needs, and at the end the final one) is
/// always kept. Samples are small and all kept. Returns how many files were removed.
pub async fn apply_retention(
    pool: &PgPool,
    artifacts: &Path,
    fence: &Fence,
    keep_models: i64,
) -> Result<usize> {
    let sql = format!(
        "with doomed as (
             select c.name from checkpoint c
             where c.job_id = $1 and {FENCE} and (
                 (c.kind = 'state' and c.step < (
                     select max(step) from checkpoint where job_id = $1 and kind = 'state'))
                 or (c.kind = 'model' and c.step not in (
                     select step from checkpoint where job_id = $1 and kind = 'model'
                     order by step desc limit $4)))
         )
         delete from checkpoint c using doomed
         where c.job_id = $1 and c.name = doomed.name
         returning c.path"
    );
    let paths: Vec<String> = sqlx::query_scalar(&sql)
        .bind_fence(fence)
        .bind(keep_models.max(1))
        .fetch_all(pool)
        .await?;
    let n = paths.len();
    if n > 0 {
        let artifacts = artifacts.to_path_buf();
        // Unlisted first, deleted second: a reader never gets a listed file that is gone
        // mid-way, only (briefly) an unlisted file still on disk.
        tokio::task::spawn_blocking(move || {
            for p in paths {
                let full = artifacts.join(&p);
                for f in [full.clone(), sidecar(&full)] {
                    if let Err(e) = std::fs::remove_file(&f) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            tracing::warn!(path = %f.display(), error = %e, "retention");
                        }
                    }
                }
            }
        })
        .await
        .map_err(|e| Error::Internal(format!("retention: {e}")))?;
    }
    Ok(n)
}

fn sidecar(path: &Path) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256");
    s.into()
}
