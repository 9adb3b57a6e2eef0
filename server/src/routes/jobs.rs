//! `/api/v1/jobs`: submit, list, show and cancel jobs, and read their metrics. A job is visible
//! to its owner and to admins; to anyone else it does not exist (404).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use ifp_trainer::finetune::FinetuneConfig;

use crate::compare_job::CompareJob;
use crate::error::{Error, ErrorBody, Result};
use crate::extract::{ApiJson, ApiQuery};
use crate::finetune_job::FinetuneJob;
use crate::model::{Attempt, Job, Metric, JOB_COLUMNS};
use crate::queue::{self, NewJob, DEFAULT_MAX_ATTEMPTS};
use crate::state::AppState;
use crate::tokens::Caller;

pub const STATUSES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];

/// `POST /jobs` body: the config as JSON (`config`) or as YAML text (`config_yaml`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// Default `job`; 1 to 200 characters.
    pub name: Option<String>,
    /// The config in the reference schema (`{"MODEL": {...}, "DATA": {...}, "TRAIN": {...}}`).
    #[schema(value_type = Option<Object>)]
    pub config: Option<serde_json::Value>,
    /// The same config as YAML text (e.g. a reference config file).
    pub config_yaml: Option<String>,
    /// A built-in preset by name (`tiny`, `restormer-paper`, ...), instead of a config.
    pub preset: Option<String>,
    /// Higher runs first (-1000 to 1000, default 0).
    #[serde(default)]
    pub priority: i32,
    /// Attempts before a job whose workers keep dying fails (1 to 20, default 3).
    pub max_attempts: Option<i32>,
    /// `pretrain` (default) or `compare`: pre-train with the config above, then fine-tune
    /// from the IFP encoder and from scratch with `finetune`, and score both on its test set.
    pub kind: Option<String>,
    /// For `compare`: the fine-tuning config (`ifp finetune --ft-config` schema; data folders
    /// relative to the server's datasets folder; `MODEL` is taken from the pre-training).
    #[schema(value_type = Option<Object>)]
    pub finetune: Option<serde_json::Value>,
    /// For `compare`: the same as YAML text.
    pub finetune_yaml: Option<String>,
    /// For `compare`: test images rendered side by side with every arm (default 3, at most 10).
    pub showcase: Option<usize>,
    /// For `finetune`: a succeeded pre-training job of yours whose newest model file is the
    /// initial encoder (its network is used); absent = from scratch.
    pub init_job: Option<Uuid>,
}

/// The job a caller may see, or 404 (also for ids that are not UUIDs).
pub async fn visible_job(state: &AppState, caller: &Caller, id: &str) -> Result<Job> {
    let id: Uuid = id.parse().map_err(|_| Error::NotFound)?;
    match queue::get(&state.pool, id).await? {
        Some(j) if caller.is_admin || j.owner == caller.name => Ok(j),
        _ => Err(Error::NotFound),
    }
}

fn parse_config(body: &CreateJob) -> Result<ifp_trainer::Config> {
    let given = [
        body.config.is_some(),
        body.config_yaml.is_some(),
        body.preset.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(Error::invalid(
            Some("config"),
            "give the training config as exactly one of `config` (JSON), `config_yaml` \
             (YAML text) or `preset` (a preset name)",
        ));
    }
    let parsed = if let Some(v) = &body.config {
        ifp_trainer::Config::from_value(v.clone())
    } else if let Some(y) = &body.config_yaml {
        ifp_trainer::Config::from_yaml(y)
    } else {
        let name = body.preset.as_deref().unwrap_or_default();
        match ifp_trainer::config::PRESETS.iter().find(|p| p.name == name) {
            Some(p) => ifp_trainer::Config::from_yaml(p.yaml),
            None => {
                let known: Vec<&str> = ifp_trainer::config::PRESETS
                    .iter()
                    .map(|p| p.name)
                    .collect();
                return Err(Error::invalid(
                    Some("preset"),
                    format!("unknown preset `{name}` (known: {})", known.join(", ")),
                ));
            }
        }
    };
    parsed.map_err(|e| {
        let key = e
            .key_path()
            .map(str::to_string)
            .or_else(|| body.config_yaml.as_ref().map(|_| "config_yaml".to_string()));
        Error::Invalid {
            key_path: key,
            message: e.to_string(),
        }
    })
}

#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", request_body = CreateJob,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Queued", body = Job),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid field or config (names the key path)", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateJob>,
) -> Result<(StatusCode, Json<Job>)> {
    let kind = body.kind.as_deref().unwrap_or("pretrain");
    if kind != "finetune" && body.init_job.is_some() {
        return Err(Error::invalid(
            Some("init_job"),
            "`init_job` belongs to `\"kind\": \"finetune\"` jobs",
        ));
    }
    let submission = Submission {
        name: body.name.clone().unwrap_or_else(|| "job".into()),
        owner: caller.name,
        priority: body.priority,
        max_attempts: body.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
    };
    let finetune_given = body.finetune.is_some() || body.finetune_yaml.is_some();
    if kind == "finetune" {
        if body.config.is_some() || body.config_yaml.is_some() || body.preset.is_some() {
            return Err(Error::invalid(
                Some("config"),
                "a finetune job takes no pre-training config: the network comes from \
                 `init_job` or the fine-tuning config's MODEL",
            ));
        }
        let ft = parse_finetune(&body)?;
        let init = match body.init_job {
            Some(id) => {
                Some(init_from_job(&state, &caller_name(&submission), &id.to_string()).await?)
            }
            None => None,
        };
        let job = FinetuneJob::new(ft, init, state.datasets.as_deref())?;
        let job = submit(&state, submission, Work::Finetune(&job)).await?;
        return Ok((StatusCode::CREATED, Json(job)));
    }
    let cfg = parse_config(&body)?;
    let job =
        match kind {
            "pretrain" if finetune_given || body.showcase.is_some() => return Err(Error::invalid(
                Some("kind"),
                "`finetune`, `finetune_yaml` and `showcase` belong to `\"kind\": \"compare\"` jobs",
            )),
            "pretrain" => submit(&state, submission, Work::Pretrain(&cfg)).await?,
            "compare" => {
                let ft = parse_finetune(&body)?;
                let job = CompareJob::new(
                    cfg,
                    ft,
                    body.showcase.unwrap_or(3),
                    state.datasets.as_deref(),
                )?;
                submit(&state, submission, Work::Compare(&job)).await?
            }
            other => {
                return Err(Error::invalid(
                    Some("kind"),
                    format!("unknown job kind `{other}` (expected pretrain, compare or finetune)"),
                ))
            }
        };
    Ok((StatusCode::CREATED, Json(job)))
}

/// Who submits what, besides the config (shared by the API and the web form).
pub struct Submission {
    pub name: String,
    pub owner: String,
    pub priority: i32,
    pub max_attempts: i32,
}

/// What a job runs.
pub enum Work<'a> {
    Pretrain(&'a ifp_trainer::Config),
    Compare(&'a CompareJob),
    Finetune(&'a FinetuneJob),
}

/// The submitter as a caller who sees only their own jobs: fine-tuning starts from one's own
/// pre-training, admins included.
fn caller_name(s: &Submission) -> Caller {
    Caller {
        name: s.owner.clone(),
        is_admin: false,
    }
}

/// The initial encoder of a fine-tuning job: the newest model file of a succeeded pre-training
/// job the caller owns (relative to the artifact store), and that job's network.
pub async fn init_from_job(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(String, ifp_trainer::config::ModelConfig)> {
    let not_usable = |why: &str| Error::invalid(Some("init_job"), format!("job {id}: {why}"));
    let job = visible_job(state, caller, id)
        .await
        .map_err(|_| not_usable("no such job of yours"))?;
    if job.kind != "pretrain" || job.status != "succeeded" {
        return Err(not_usable("not a succeeded pre-training job"));
    }
    let path: Option<String> = sqlx::query_scalar(
        "select path from checkpoint where job_id = $1 and kind = 'model'
         order by step desc limit 1",
    )
    .bind(job.id)
    .fetch_optional(&state.pool)
    .await?;
    let path = path.ok_or_else(|| not_usable("it has no model file"))?;
    let cfg = ifp_trainer::Config::from_value(job.config)
        .map_err(|e| not_usable(&format!("its config no longer parses: {e}")))?;
    Ok((path, cfg.model))
}

/// The fine-tuning config of a `compare` submission; errors name `FINETUNE.<key>`.
pub fn parse_finetune(body: &CreateJob) -> Result<FinetuneConfig> {
    let text = match (&body.finetune, &body.finetune_yaml) {
        (Some(v), None) => v.to_string(),
        (None, Some(y)) => y.clone(),
        _ => {
            return Err(Error::invalid(
                Some("finetune"),
                "a compare job needs exactly one of `finetune` (JSON) or `finetune_yaml`",
            ))
        }
    };
    FinetuneConfig::from_yaml(&text).map_err(|e| Error::Invalid {
        key_path: Some(match e.key_path() {
            Some(k) => format!("FINETUNE.{k}"),
            None => "finetune".into(),
        }),
        message: format!("fine-tuning config: {e}"),
    })
}

/// Checks a submission and queues it. Errors name the field or config key at fault.
pub async fn submit(state: &AppState, s: Submission, work: Work<'_>) -> Result<Job> {
    let (kind, total_steps, config, device_class) = match work {
        Work::Pretrain(c) => {
            crate::uploads::check(&state.artifacts, c)?;
            let v = serde_json::to_value(c);
            ("pretrain", c.total_steps(), v, c.train.device.as_str())
        }
        Work::Compare(j) => {
            crate::uploads::check(&state.artifacts, &j.pretrain)?;
            let d = j.pretrain.train.device.as_str();
            ("compare", j.total_steps(), Ok(j.to_value()), d)
        }
        Work::Finetune(j) => {
            let d = j.finetune.train.device.as_str();
            ("finetune", j.total_steps(), Ok(j.to_value()), d)
        }
    };
    if s.name.trim().is_empty() || s.name.chars().count() > 200 {
        return Err(Error::invalid(Some("name"), "must be 1 to 200 characters"));
    }
    if !(-1000..=1000).contains(&s.priority) {
        return Err(Error::invalid(
            Some("priority"),
            "must be between -1000 and 1000",
        ));
    }
    if !(1..=20).contains(&s.max_attempts) {
        return Err(Error::invalid(
            Some("max_attempts"),
            "must be between 1 and 20",
        ));
    }
    if total_steps == 0 || total_steps > i64::MAX as usize {
        return Err(Error::invalid(
            Some("TRAIN.STEPS"),
            "the run must have at least one step",
        ));
    }
    // The normalised config (defaults filled in) is stored, so a later change of defaults does
    // not change a queued job.
    let config = config.map_err(|e| Error::Internal(format!("serialising a config: {e}")))?;
    queue::enqueue(
        &state.pool,
        &NewJob {
            kind: kind.into(),
            name: s.name,
            owner: s.owner,
            priority: s.priority,
            config,
            total_steps: total_steps as i64,
            max_attempts: s.max_attempts,
            device_class: device_class.into(),
        },
    )
    .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only jobs with this status.
    pub status: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// The `offset` of the next page, when there may be one.
    pub next_offset: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's jobs (all jobs for admins), newest first", body = JobList),
        (status = 401, body = ErrorBody), (status = 422, body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<JobList>> {
    if let Some(s) = &p.status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(Error::invalid(
                Some("status"),
                format!("must be one of {}", STATUSES.join(", ")),
            ));
        }
    }
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(Error::invalid(Some("limit"), "must be between 1 and 500"));
    }
    let offset = p.offset.unwrap_or(0);
    if offset < 0 {
        return Err(Error::invalid(Some("offset"), "must not be negative"));
    }
    let owner = (!caller.is_admin).then_some(caller.name);
    let sql = format!(
        "select {JOB_COLUMNS} from job
         where ($1::text is null or status = $1) and ($2::text is null or owner = $2)
         order by created_at desc, id desc limit $3 offset $4"
    );
    let jobs: Vec<Job> = sqlx::query_as(&sql)
        .bind(&p.status)
        .bind(owner)
        .bind(limit)
        .bind(offset)
        .fetch_all(&state.pool)
        .await?;
    let next_offset = (jobs.len() as i64 == limit).then_some(offset + limit);
    Ok(Json(JobList { jobs, next_offset }))
}

/// A job with its attempts (`GET /jobs/{id}`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: Job,
    /// Every attempt so far: worker, start, end, outcome, error, resumed-from step.
    pub attempts: Vec<Attempt>,
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id")), security(("bearer" = [])),
    responses((status = 200, body = JobDetail), (status = 401, body = ErrorBody),
        (status = 404, description = "No such job, or another user's", body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<JobDetail>> {
    let job = visible_job(&state, &caller, &id).await?;
    let attempts = queue::attempts(&state.pool, job.id).await?;
    Ok(Json(JobDetail { job, attempts }))
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "A queued job is cancelled at once; a running one is flagged and stops at its next step", body = Job),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Job>> {
    let job = visible_job(&state, &caller, &id).await?;
    queue::cancel(&state.pool, job.id).await?;
    let job = queue::get(&state.pool, job.id)
        .await?
        .ok_or(Error::NotFound)?;
    Ok(Json(job))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricParams {
    /// Only steps after this one (for incremental polling).
    pub after: Option<i64>,
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/metrics", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id"), MetricParams), security(("bearer" = [])),
    responses((status = 200, description = "One row per logged step", body = Vec<Metric>),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn metrics(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<MetricParams>,
) -> Result<Json<Vec<Metric>>> {
    let job = visible_job(&state, &caller, &id).await?;
    let limit = p.limit.unwrap_or(10_000);
    if !(1..=100_000).contains(&limit) {
        return Err(Error::invalid(
            Some("limit"),
            "must be between 1 and 100000",
        ));
    }
    let rows: Vec<Metric> = sqlx::query_as(
        "select step, attempt, loss, lr, grad_norm, images_per_sec from metric
         where job_id = $1 and step > $2 order by step limit $3",
    )
    .bind(job.id)
    .bind(p.after.unwrap_or(0))
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(rows))
}
