//! `/api/v1/jobs`: submit, list, show and cancel jobs, and read their metrics. A job is visible
//! to its owner and to admins; to anyone else it does not exist (404).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use ifp_trainer::finetune::FinetuneConfig;

use crate::db::rows::{Attempt, Job, Metric};
use crate::db::values::{self, JobKind, JobStatus};
use crate::error::{Error, ErrorBody, Result};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::http::state::AppState;
use crate::jobs::compare::CompareJob;
use crate::jobs::finetune::FinetuneJob;
use crate::jobs::service::{self, visible_job, Submission};
use crate::jobs::spec::JobSpec;
use crate::queue::{self, DEFAULT_MAX_ATTEMPTS};
use crate::tokens::Caller;

/// `POST /jobs` body: the config as JSON (`config`) or as YAML text (`config_yaml`).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// Default `job`; 1 to 200 characters, no control characters.
    pub name: Option<String>,
    /// The config in the reference schema (`{"MODEL": {...}, "DATA": {...}, "TRAIN": {...}}`).
    #[schema(value_type = Option<Object>)]
    pub config: Option<serde_json::Value>,
    /// The same config as YAML text (e.g. a reference config file).
    pub config_yaml: Option<String>,
    /// A built-in preset by name (`tiny`, `restormer-paper`, ...), instead of a config.
    pub preset: Option<String>,
    /// Higher runs first (default 0): -100 to 0, or -1000 to 1000 for admins.
    #[serde(default)]
    pub priority: i32,
    /// Attempts before a job whose workers keep dying fails (default 3): 1 to 5, or 1 to 20
    /// for admins.
    pub max_attempts: Option<i32>,
    /// `pretrain` (default), `finetune` (one fine-tuning run of `finetune`) or `compare`:
    /// pre-train with the config above (or take `init_job`'s weights), then fine-tune from the
    /// IFP weights and from scratch with `finetune`, and score both on its test set.
    pub kind: Option<String>,
    /// For `compare`: the fine-tuning config (`ifp finetune --ft-config` schema; data folders
    /// relative to the server's datasets folder; `MODEL` is taken from the pre-training, and a
    /// different one is refused).
    #[schema(value_type = Option<Object>)]
    pub finetune: Option<serde_json::Value>,
    /// For `compare`: the same as YAML text.
    pub finetune_yaml: Option<String>,
    /// For `compare`: test images rendered side by side with every arm (default 3, at most 10).
    pub showcase: Option<usize>,
    /// For `compare`: fine-tuning seeds (`FINETUNE.SEED`, +1, ...; default 1, at most 10). With
    /// more than one, each seed runs both arms and `seeds.json` reports means over seeds with
    /// 95% confidence intervals and how many seeds favour IFP.
    pub seeds: Option<usize>,
    /// For `compare` with 2 or more `seeds`: each seed also runs its own IFP pre-training with
    /// that seed (default false: all seeds share one), so the intervals cover pre-training noise
    /// too. Not with `init_job`.
    pub vary_pretrain_seed: Option<bool>,
    /// For `finetune`: a succeeded pre-training job of yours whose newest model file gives the
    /// initial weights (its network is used); absent = from scratch. For `compare`: start the
    /// IFP arm from that job's model file instead of pre-training again (no `config`/`preset`:
    /// its config and network are used).
    pub init_job: Option<Uuid>,
    /// For `compare`: a third fine-tuning arm (`checkpoint`) starting from another succeeded
    /// pre-training job of yours with the same network.
    pub extra_arm_job: Option<Uuid>,
    /// The job this one is derived from (e.g. the one it was cloned from), shown as its
    /// parent; it must be yours. A `finetune` job's `init_job` is its parent by default.
    pub parent: Option<Uuid>,
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
        (status = 408, description = "The body did not arrive within 30 s of the request getting a place", body = ErrorBody),
        (status = 503, description = "Too many submissions or uploads at once; `Retry-After` says when to try again", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateJob>,
) -> Result<(StatusCode, Json<Job>)> {
    let kind = match body.kind.as_deref() {
        None => JobKind::Pretrain,
        Some(k) => k.parse().map_err(|_| {
            Error::invalid(
                Some("kind"),
                format!(
                    "unknown job kind `{k}` (expected {})",
                    values::names::<JobKind>()
                ),
            )
        })?,
    };
    if kind == JobKind::Finetune {
        for (key, given) in [
            ("seeds", body.seeds.is_some()),
            ("showcase", body.showcase.is_some()),
            ("vary_pretrain_seed", body.vary_pretrain_seed.is_some()),
        ] {
            if given {
                return Err(Error::invalid(
                    Some(key),
                    format!("`{key}` belongs to `\"kind\": \"compare\"` jobs"),
                ));
            }
        }
    }
    if kind == JobKind::Pretrain && body.init_job.is_some() {
        return Err(Error::invalid(
            Some("init_job"),
            "`init_job` belongs to `\"kind\": \"finetune\"` and `\"compare\"` jobs",
        ));
    }
    if kind != JobKind::Compare && body.extra_arm_job.is_some() {
        return Err(Error::invalid(
            Some("extra_arm_job"),
            "`extra_arm_job` belongs to `\"kind\": \"compare\"` jobs",
        ));
    }
    let submission = Submission {
        name: body.name.clone().unwrap_or_else(|| "job".into()),
        owner: caller.name,
        is_admin: caller.is_admin,
        priority: body.priority,
        max_attempts: body.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
        parent: body.parent.or(body.init_job),
    };
    let finetune_given = body.finetune.is_some() || body.finetune_yaml.is_some();
    let spec = match kind {
        JobKind::Finetune => {
            if body.config.is_some() || body.config_yaml.is_some() || body.preset.is_some() {
                return Err(Error::invalid(
                    Some("config"),
                    "a finetune job takes no pre-training config: the network comes from \
                     `init_job` or the fine-tuning config's MODEL",
                ));
            }
            let (ft, model_stated) = off_thread(&body, parse_finetune).await?;
            let init = match body.init_job {
                Some(id) => {
                    let (path, cfg) = service::pretrained_job(
                        &state.pool,
                        &submission.owner,
                        &id.to_string(),
                        "init_job",
                    )
                    .await?;
                    Some((path, cfg.model))
                }
                None => None,
            };
            JobSpec::Finetune(Box::new(FinetuneJob::new(
                ft,
                model_stated,
                init,
                state.datasets.as_deref(),
            )?))
        }
        JobKind::Pretrain
            if finetune_given
                || body.showcase.is_some()
                || body.seeds.is_some()
                || body.vary_pretrain_seed.is_some() =>
        {
            return Err(Error::invalid(
                Some("kind"),
                "`finetune`, `finetune_yaml`, `showcase`, `seeds` and `vary_pretrain_seed` belong \
                 to `\"kind\": \"compare\"` jobs",
            ))
        }
        JobKind::Pretrain => JobSpec::Pretrain(Box::new(off_thread(&body, parse_config).await?)),
        JobKind::Compare => {
            let (ft, model_stated) = off_thread(&body, parse_finetune).await?;
            let showcase = body.showcase.unwrap_or(3);
            let datasets = state.datasets.as_deref();
            let owner = &submission.owner;
            let job = match body.init_job {
                Some(id) => {
                    if body.config.is_some() || body.config_yaml.is_some() || body.preset.is_some()
                    {
                        return Err(Error::invalid(
                            Some("config"),
                            "a comparison that starts from `init_job` runs no pre-training: \
                             leave out `config`, `config_yaml` and `preset` (the job's network \
                             is used)",
                        ));
                    }
                    let pre =
                        service::pretrained_job(&state.pool, owner, &id.to_string(), "init_job")
                            .await?;
                    CompareJob::from_pretrained(pre, ft, model_stated, showcase, datasets)?
                }
                None => {
                    let cfg = off_thread(&body, parse_config).await?;
                    CompareJob::new(cfg, ft, model_stated, showcase, datasets)?
                }
            };
            let job = match body.extra_arm_job {
                Some(id) => job.with_extra_arm(
                    service::pretrained_job(&state.pool, owner, &id.to_string(), "extra_arm_job")
                        .await?,
                )?,
                None => job,
            };
            let job = job
                .with_seeds(body.seeds.unwrap_or(1))?
                .with_vary_pretrain_seed(body.vary_pretrain_seed.unwrap_or(false))?;
            JobSpec::Compare(Box::new(job))
        }
    };
    let job = service::submit(&state.pool, &state.artifacts, submission, &spec).await?;
    Ok((StatusCode::CREATED, Json(job)))
}

/// Runs a config parser on a blocking thread: a submission's YAML or JSON (up to the 1 MiB body
/// limit) is parsed and validated there, so a burst of large configs cannot stall the async
/// threads that answer every other request.
async fn off_thread<T: Send + 'static>(
    body: &CreateJob,
    parse: fn(&CreateJob) -> Result<T>,
) -> Result<T> {
    let body = body.clone();
    tokio::task::spawn_blocking(move || parse(&body))
        .await
        .map_err(|e| Error::Internal(format!("parsing a config: {e}")))?
}

/// The fine-tuning config of a `finetune` or `compare` submission, and whether it states the
/// network (a `MODEL` tree); errors name `FINETUNE.<key>`.
pub fn parse_finetune(body: &CreateJob) -> Result<(FinetuneConfig, bool)> {
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
    let cfg = FinetuneConfig::from_yaml(&text).map_err(|e| Error::Invalid {
        key_path: Some(match e.key_path() {
            Some(k) => format!("FINETUNE.{k}"),
            None => "finetune".into(),
        }),
        message: format!("fine-tuning config: {e}"),
    })?;
    Ok((cfg, FinetuneConfig::names_model(&text)))
}

/// The list's query parameters; any other parameter is refused (422) rather than ignored, so a
/// misspelt filter does not silently list everything.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only jobs with this status.
    pub status: Option<String>,
    /// Only jobs whose name contains this text (any case; at most 200 characters).
    pub name: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Jobs to skip (default 0).
    #[param(minimum = 0)]
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
    let status = match &p.status {
        None => None,
        Some(s) => Some(s.parse::<JobStatus>().map_err(|_| {
            Error::invalid(
                Some("status"),
                format!("must be one of {}", values::names::<JobStatus>()),
            )
        })?),
    };
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(Error::invalid(Some("limit"), "must be between 1 and 500"));
    }
    let offset = p.offset.unwrap_or(0);
    if offset < 0 {
        return Err(Error::invalid(Some("offset"), "must not be negative"));
    }
    if let Some(n) = &p.name {
        if n.chars().count() > 200 || n.chars().any(char::is_control) {
            return Err(Error::invalid(
                Some("name"),
                "must be at most 200 characters, without control characters",
            ));
        }
    }
    let filter = service::JobFilter {
        status,
        name: p.name.filter(|n| !n.is_empty()),
    };
    let jobs = service::list(&state.pool, &caller, &filter, limit, offset).await?;
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
    let job = visible_job(&state.pool, &caller, &id).await?;
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
    let job = visible_job(&state.pool, &caller, &id).await?;
    queue::cancel(&state.pool, job.id).await?;
    let job = queue::get(&state.pool, job.id)
        .await?
        .ok_or(Error::NotFound)?;
    Ok(Json(job))
}

/// The metrics' query parameters; any other is refused (422), so a misspelt `after` does not
/// silently return every row.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct MetricParams {
    /// Only steps after this one (for incremental polling).
    pub after: Option<i64>,
    /// The most steps returned, 1 to 100000 (default 10000).
    #[param(minimum = 1, maximum = 100000)]
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/metrics", tag = "jobs",
    params(("id" = Uuid, Path, description = "Job id"), MetricParams), security(("bearer" = [])),
    responses((status = 200, description = "One row per logged step", body = Vec<Metric>),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, description = "`limit` outside 1 to 100000, an unknown parameter, or a malformed query", body = ErrorBody)))]
pub async fn metrics(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<MetricParams>,
) -> Result<Json<Vec<Metric>>> {
    let job = visible_job(&state.pool, &caller, &id).await?;
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
