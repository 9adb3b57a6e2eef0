//! `/jobs/{id}`: one job: status, attempts, progress with ETA, loss and learning-rate charts,
//! sample strips, checkpoints, config and error, and a cancel button. `/jobs/{id}/live` renders
//! the changing part alone; the page's script re-fetches it when the job's event stream says
//! something changed.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use chrono::Utc;
use serde::Deserialize;

use super::{render, Layout, PageResult, Viewer};
use crate::db::rows::{CheckpointFile, Job};
use crate::db::values::{CheckpointKind, JobKind, JobStatus};
use crate::http::state::AppState;
use crate::http::views::{chart, config, fmt};
use crate::jobs::compare::CompareJob;
use crate::jobs::service::{self, visible_job};
use crate::queue;

use super::results::{read_history, read_report, ReportView, ValidationView};

/// Sample strips shown, newest first.
const SAMPLES: usize = 3;

pub struct AttemptRow {
    pub attempt: i32,
    pub worker: String,
    /// The device it trained on, with its memory (`NVIDIA H100 80GB HBM3, 79.1 GiB`).
    pub device: String,
    pub started: String,
    pub finished: String,
    pub outcome: String,
    pub resumed_from: String,
    pub error: String,
}

pub struct FileRow {
    pub name: String,
    pub kind: String,
    pub step: i64,
    pub size: String,
    pub sha256: String,
    pub url: String,
}

pub struct SampleRow {
    pub step: i64,
    pub url: String,
}

/// Everything the live part of the page shows.
pub struct JobView {
    pub job: Job,
    pub percent: String,
    pub loss: String,
    pub eta: String,
    pub images_per_sec: String,
    pub elapsed: String,
    pub log_scale: bool,
    pub loss_chart: String,
    pub lr_chart: String,
    /// A comparison's pre-training loss alone (when it pre-trains).
    pub pretrain_loss_chart: Option<String>,
    /// A comparison's arms' L1 on one fine-tuning step axis.
    pub arms_loss_chart: Option<String>,
    /// The training process's CPU, memory and GPU charts (attempts run in their own process).
    pub usage_charts: Option<super::curves::UsageCharts>,
    pub attempts: Vec<AttemptRow>,
    pub files: Vec<FileRow>,
    pub samples: Vec<SampleRow>,
    /// What the sample strips' tiles are, left to right (they differ by job kind).
    pub sample_tiles: &'static str,
    /// What the Samples card says while it has no strip (comparisons never get one).
    pub samples_note: &'static str,
    pub active: bool,
    /// For a comparison: which steps belong to which phase.
    pub phases: Option<String>,
    /// What a requested cancel does or did (a run can finish before the request reaches it).
    pub cancel_note: Option<&'static str>,
    /// The model files the "load it in PyTorch" snippet loads: the newest of a run, or every
    /// model a comparison made.
    pub snippet_models: Vec<SnippetModel>,
    /// The snippet's variable holding a fine-tuned model, which restores images (the snippet
    /// shows how); `None` for pre-training.
    pub restorer: Option<String>,
    pub report: Option<ReportView>,
    /// A comparison over several seeds: what the seeds say together.
    pub seeds: Option<super::seeds_view::SeedsView>,
    pub validation: Option<ValidationView>,
    pub lineage: Lineage,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    layout: Layout,
    v: JobView,
    config_yaml: String,
}

/// One model file in the "load it in PyTorch" snippet.
pub struct SnippetModel {
    /// The Python variable it is loaded into.
    pub var: String,
    pub name: String,
    /// What it is, as the snippet's comment says.
    pub note: String,
    /// Fine-tuned: it restores images (a pre-training network reconstructs corrupted ones).
    pub restores: bool,
}

/// The models the snippet loads: a run's newest model file, or every model a comparison made
/// (its pre-training's and each arm's best checkpoint, per seed), each into its own variable.
fn snippet_models(kind: JobKind, files: &[CheckpointFile]) -> Vec<SnippetModel> {
    let models = files.iter().filter(|f| f.kind == CheckpointKind::Model);
    if kind != JobKind::Compare {
        return models
            .max_by_key(|f| f.step)
            .map(|f| SnippetModel {
                var: "net".into(),
                name: f.name.clone(),
                note: "rebuilt from the file's config, strict=True, eval mode".into(),
                restores: kind == JobKind::Finetune,
            })
            .into_iter()
            .collect();
    }
    // Listed as `[seed-S-]pretrain-model-…` and `[seed-S-]ARM-best-model-…`
    // (`jobs::compare::model_files`); shown per seed in the order the comparison runs them, so
    // the restoring example uses the IFP arm.
    let order = |f: &&CheckpointFile| {
        let run = f.name.split_once("-model-").map_or("", |(r, _)| r);
        let run = run.strip_suffix("-best").unwrap_or(run);
        let (seed, arm) = match run.strip_prefix("seed-").and_then(|r| r.split_once('-')) {
            Some((s, arm)) => (s.parse::<u64>().ok(), arm),
            None => (None, run),
        };
        let rank = ["pretrain", "ifp", "scratch"]
            .iter()
            .position(|a| *a == arm);
        (seed, rank.unwrap_or(3), arm.to_string())
    };
    let mut models: Vec<_> = models.collect();
    models.sort_by_key(order);
    models
        .into_iter()
        .filter_map(|f| {
            let (run, _) = f.name.split_once("-model-")?;
            let (run, restores, note) = match run.strip_suffix("-best") {
                Some(arm) => (
                    arm,
                    true,
                    format!("{arm}: the arm's best checkpoint by validation PSNR"),
                ),
                None => (run, false, "the IFP pre-training network".to_string()),
            };
            let var = run
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            Some(SnippetModel {
                var,
                name: f.name.clone(),
                note,
                restores,
            })
        })
        .collect()
}

/// Re-runs and lineage: part of the live fragment, so *Fine-tune this* appears when the run
/// succeeds and new children appear as they are submitted.
pub struct Lineage {
    pub parent: Option<service::JobLink>,
    pub children: Vec<service::JobLink>,
    /// A succeeded pre-training job offers its encoder to a fine-tuning job.
    pub can_finetune: bool,
}

#[derive(Template)]
#[template(path = "job_live.html")]
struct LiveFragment {
    layout: Layout,
    v: JobView,
}

#[derive(Deserialize)]
pub struct Scale {
    scale: Option<String>,
}

/// `GET /jobs/{id}`.
pub async fn show(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(s): Query<Scale>,
) -> PageResult<Response> {
    let v = view(&state, &viewer, &id, &s).await?;
    let config_yaml =
        serde_norway::to_string(&config::applicable(&v.job.config)).unwrap_or_default();
    Ok(render(&JobPage {
        layout: Layout::new(format!("{} · job", v.job.name), Some(&viewer)),
        v,
        config_yaml,
    }))
}

/// `GET /jobs/{id}/live`: the changing part of the job page.
pub async fn live(
    State(state): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(s): Query<Scale>,
) -> PageResult<Response> {
    let v = view(&state, &viewer, &id, &s).await?;
    Ok(render(&LiveFragment {
        layout: Layout::new("", Some(&viewer)),
        v,
    }))
}

#[derive(Deserialize)]
pub struct CancelForm {
    csrf: String,
}

/// `POST /jobs/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CancelForm>,
) -> PageResult<Response> {
    viewer.check_form(&headers, &f.csrf)?;
    let job = visible_job(&state.pool, &viewer.caller, &id).await?;
    queue::cancel(&state.pool, job.id).await?;
    Ok(Redirect::to(&format!("/jobs/{}", job.id)).into_response())
}

/// What the job page and its live part show of the job `id` (404 unless the viewer may see it).
async fn view(state: &AppState, viewer: &Viewer, id: &str, s: &Scale) -> PageResult<JobView> {
    let job = visible_job(&state.pool, &viewer.caller, id).await?;
    let log_scale = s.scale.as_deref() == Some("log");
    let (parent, children) = service::lineage(&state.pool, &viewer.caller, &job).await?;
    let lineage = Lineage {
        parent,
        children,
        can_finetune: job.kind == JobKind::Pretrain && job.status == JobStatus::Succeeded,
    };
    let attempts = queue::attempts(&state.pool, job.id).await?;
    let mut files = service::checkpoints(&state.pool, job.id).await?;
    // Newest first.
    files.sort_by(|a, b| b.step.cmp(&a.step).then_with(|| a.name.cmp(&b.name)));
    let metrics = service::metric_rows(&state.pool, job.id).await?;

    let usage: Vec<super::curves::UsageRow> = sqlx::query_as(
        "select attempt, extract(epoch from created_at)::float8, cpu_percent, rss_bytes,
                gpu_percent, gpu_memory_bytes
         from usage_sample where job_id = $1 order by created_at",
    )
    .bind(job.id)
    .fetch_all(&state.pool)
    .await?;
    let usage_charts = super::curves::usage_charts(&usage);
    let active = job.status.is_active();
    let step_phases = super::curves::phases(&job);
    let eta = super::curves::eta(&job, &step_phases, &metrics);
    let images_per_sec = super::curves::throughput(&job, &metrics);
    let (pretrain_loss_chart, arms_loss_chart) = if job.kind == JobKind::Compare {
        let (pre, arms) = super::curves::compare_losses(&step_phases, &metrics, log_scale);
        (pre, Some(arms))
    } else {
        (None, None)
    };
    let elapsed = match (job.started_at, job.finished_at) {
        (Some(s), Some(f)) => fmt::duration((f - s).num_milliseconds() as f64 / 1e3),
        (Some(s), None) if active => {
            fmt::duration((Utc::now() - s).num_milliseconds() as f64 / 1e3)
        }
        _ => "—".into(),
    };
    let x_max = job.total_steps as f64;
    let loss_pts: Vec<(f64, f64)> = metrics.iter().map(|m| (m.0 as f64, m.1)).collect();
    let lr_pts: Vec<(f64, f64)> = metrics.iter().map(|m| (m.0 as f64, m.2)).collect();
    let base = format!("/api/v1/jobs/{}", job.id);
    let samples = files
        .iter()
        .filter(|f| f.kind == CheckpointKind::Sample)
        .take(SAMPLES)
        .map(|f| SampleRow {
            step: f.step,
            url: format!("{base}/samples/{}", f.step),
        })
        .collect();
    let snippet_models = snippet_models(job.kind, &files);
    let restorer = snippet_models
        .iter()
        .find(|m| m.restores)
        .map(|m| m.var.clone());
    let file_rows = files
        .iter()
        .filter(|f| matches!(f.kind, CheckpointKind::Model | CheckpointKind::State))
        .map(|f| FileRow {
            name: f.name.clone(),
            kind: f.kind.to_string(),
            step: f.step,
            size: fmt::bytes(f.bytes),
            sha256: f.sha256.clone(),
            url: format!("{base}/checkpoints/{}", f.name),
        })
        .collect();
    let attempts = attempts
        .into_iter()
        .map(|a| AttemptRow {
            attempt: a.attempt,
            worker: a.worker_id,
            device: match (a.device_name, a.device_memory) {
                (Some(n), Some(m)) => format!("{n}, {}", fmt::bytes(m)),
                (Some(n), None) => n,
                _ => "—".into(),
            },
            started: fmt::timestamp(a.started_at),
            finished: a
                .finished_at
                .map(fmt::timestamp)
                .unwrap_or_else(|| "—".into()),
            outcome: a
                .outcome
                .map_or_else(|| "running".into(), |o| o.to_string()),
            resumed_from: a
                .resumed_from_step
                .map(|s| format!("step {s}"))
                .unwrap_or_else(|| "start".into()),
            error: a.error.unwrap_or_default(),
        })
        .collect();
    let phases = (job.kind == JobKind::Compare)
        .then(|| CompareJob::from_value(&job.config).ok())
        .flatten()
        .map(|c| c.phases());
    let report = match files
        .iter()
        .find(|f| f.kind == CheckpointKind::Report && f.name == "report.json")
    {
        Some(f) => read_report(state, f, &files, &base).await,
        None => None,
    };
    let seeds = match files
        .iter()
        .find(|f| f.kind == CheckpointKind::Report && f.name == "seeds.json")
    {
        Some(f) => super::seeds_view::read_seeds(state, f, &files, &base).await,
        None => None,
    };
    let validation = match files
        .iter()
        .find(|f| f.kind == CheckpointKind::Report && f.name == "history.json")
    {
        Some(f) => {
            let test = files
                .iter()
                .find(|f| f.kind == CheckpointKind::Report && f.name == "test.json");
            read_history(state, f, test, &base).await
        }
        None => None,
    };
    let cancel_note = match (job.cancel_requested, job.status) {
        (true, JobStatus::Running) => Some(
            "Cancel requested: the run stops within a few seconds and keeps its checkpoints. \
             A run that finishes before the request reaches it ends succeeded.",
        ),
        (true, JobStatus::Succeeded) => Some(
            "Cancel was requested, but the run finished before the cancel request took effect; \
             its results are kept.",
        ),
        _ => None,
    };
    Ok(JobView {
        lineage,
        seeds,
        snippet_models,
        restorer,
        validation,
        phases,
        cancel_note,
        report,
        percent: format!(
            "{:.1}",
            100.0 * job.step as f64 / job.total_steps.max(1) as f64
        ),
        loss: job.loss.map(fmt::sig4).unwrap_or_else(|| "—".into()),
        eta,
        images_per_sec,
        pretrain_loss_chart,
        arms_loss_chart,
        usage_charts,
        elapsed,
        log_scale,
        loss_chart: chart::line_chart(&loss_pts, x_max, log_scale, "training loss by step"),
        lr_chart: chart::line_chart(&lr_pts, x_max, log_scale, "learning rate by step"),
        attempts,
        files: file_rows,
        samples,
        samples_note: match job.kind {
            JobKind::Pretrain | JobKind::Finetune => {
                "Sample strips appear with each checkpoint (every SAVE_FREQ steps)."
            }
            // Its runs' checkpoints are not reported; the showcase restores test images.
            JobKind::Compare => {
                "A comparison reports no checkpoints, so no strips here: when it finishes, its \
                 showcase test images (degraded | each arm | target) appear with its results \
                 under Does IFP help here?"
            }
        },
        sample_tiles: match job.kind {
            JobKind::Pretrain => {
                "input | corrupted | reconstruction | target (each tile contrast-stretched to \
                 its own range) | error |reconstruction - target| (black: none, white: the \
                 largest); below, their log-magnitude spectra (zero frequency at the centre) \
                 with the frequencies the mask removed tinted red"
            }
            JobKind::Finetune | JobKind::Compare => "degraded | restored | target",
        },
        active,
        job,
    })
}
