//! `/jobs/new/finetune`: the form of a `finetune` job: the initial encoder (one of the user's
//! succeeded pre-training jobs, or from scratch) and a fine-tuning config in YAML.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use uuid::Uuid;

use super::form::Errors;
use super::{render, Layout, PageResult, Viewer};
use crate::error::Error;
use crate::http::state::AppState;
use crate::jobs::finetune::FinetuneJob;
use crate::jobs::service::{self};
use crate::jobs::spec::JobSpec;

pub struct InitChoice {
    pub id: String,
    pub label: String,
}

#[derive(Template)]
#[template(path = "new_finetune.html")]
struct FinetunePage {
    layout: Layout,
    name: String,
    init_job: String,
    choices: Vec<InitChoice>,
    finetune_yaml: String,
    priority: String,
    parent: String,
    datasets: Option<String>,
    /// The data sets in the datasets folder, for the *Training data* picker.
    known: Vec<crate::jobs::datasets::Known>,
    train_dir: String,
    examples: [(&'static str, &'static str); 3],
    errors: Errors,
}

impl FinetunePage {
    fn is_train_dir(&self, path: &str) -> bool {
        self.train_dir == path
    }

    fn is_init(&self, id: &str) -> bool {
        self.init_job == id
    }
}

#[derive(Deserialize, Default)]
pub struct FinetuneForm {
    csrf: String,
    name: String,
    init_job: String,
    finetune_yaml: String,
    priority: String,
    /// The job this one is cloned from (its id), recorded as the new job's parent.
    #[serde(default)]
    parent: String,
    /// A data set of the datasets folder; replaces the YAML's `DATA.TRAIN_DIR` (empty: keep it).
    #[serde(default)]
    train_dir: String,
}

/// The query of the fine-tuning and comparison forms.
#[derive(Deserialize)]
pub struct ShowParams {
    /// Start from this finished pre-training job ("Fine-tune this", "Compare from this").
    pub(super) init: Option<String>,
    /// Clone this job (of the form's kind).
    pub(super) from: Option<String>,
}

/// `GET /jobs/new/finetune[?init=JOB | ?from=JOB]`.
pub async fn show(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<ShowParams>,
) -> PageResult<Response> {
    let choices = choices(&state, &viewer).await?;
    let mut f = FinetuneForm {
        name: "fine-tune: denoising".into(),
        init_job: choices.first().map(|c| c.id.clone()).unwrap_or_default(),
        finetune_yaml: super::compare::FINETUNE_DENOISE.into(),
        priority: "0".into(),
        ..Default::default()
    };
    if let Some(init) = q.init {
        let job = service::visible_job(&state.pool, &viewer.caller, &init).await?;
        f.name = format!(
            "fine-tune: {}",
            job.name.chars().take(180).collect::<String>()
        );
        f.init_job = job.id.to_string();
    } else if let Some(from) = q.from {
        let job = service::visible_job(&state.pool, &viewer.caller, &from).await?;
        if job.kind != crate::db::values::JobKind::Finetune {
            // Each kind's clone has its own form; the new-job page sends it there.
            return Ok(Redirect::to(&format!("/jobs/new?from={}", job.id)).into_response());
        }
        let mut ft = crate::jobs::finetune::stored_finetune(&job.config)
            .map_err(|e| Error::Internal(format!("job {}: stored config: {e}", job.id)))?;
        // The stored INIT is the initial job's model file; the form names that job instead
        // (the original's parent), and the network it inherits stays in the YAML.
        let from_encoder = ft.init.take().is_some();
        f.init_job = match (from_encoder, job.parent_id) {
            (true, Some(p)) => p.to_string(),
            _ => String::new(),
        };
        f.finetune_yaml = serde_norway::to_string(&ft)
            .map_err(|e| Error::Internal(format!("job {}: config to YAML: {e}", job.id)))?;
        f.name = super::new_job::clone_name(&job.name);
        f.priority = job.priority.to_string();
        f.parent = job.id.to_string();
    }
    Ok(page(
        &state,
        &viewer,
        f,
        choices,
        Errors::new(),
        StatusCode::OK,
    ))
}

/// `POST /jobs/new/finetune`.
pub async fn submit_form(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(f): Form<FinetuneForm>,
) -> PageResult<Response> {
    viewer.check_form(&headers, &f.csrf)?;
    let choices = choices(&state, &viewer).await?;
    let mut errors = Errors::new();
    let priority = f.priority.trim().parse::<i32>().ok();
    if priority.is_none() {
        errors.insert(
            "priority".into(),
            format!("`{}` is not a whole number", f.priority),
        );
    }
    let ft = match ifp_trainer::finetune::FinetuneConfig::from_yaml(&f.finetune_yaml) {
        Ok(mut c) => {
            if !f.train_dir.trim().is_empty() {
                c.data.train_dir = f.train_dir.trim().into();
            }
            Some(c)
        }
        Err(e) => {
            errors.insert("finetune_yaml".into(), e.to_string());
            None
        }
    };
    let (Some(ft), Some(priority), true) = (ft, priority, errors.is_empty()) else {
        return Ok(page(
            &state,
            &viewer,
            f,
            choices,
            errors,
            StatusCode::UNPROCESSABLE_ENTITY,
        ));
    };
    let result = async {
        let init = match f.init_job.trim() {
            "" => None,
            id => {
                let id: Uuid = id
                    .parse()
                    .map_err(|_| Error::invalid(Some("init_job"), "choose a job from the list"))?;
                let (path, cfg) = service::pretrained_job(
                    &state.pool,
                    &viewer.caller.name,
                    &id.to_string(),
                    "init_job",
                )
                .await?;
                Some((path, cfg.model))
            }
        };
        let stated = ifp_trainer::finetune::FinetuneConfig::names_model(&f.finetune_yaml);
        let job = FinetuneJob::new(ft, stated, init, state.datasets.as_deref())?;
        let spec = JobSpec::Finetune(Box::new(job));
        let parent = super::new_job::parent_of(&f.parent)
            .map_err(|e| Error::invalid(Some("form"), e))?
            .or(f.init_job.trim().parse().ok());
        viewer.submit(&state, &f.name, priority, parent, spec).await
    }
    .await;
    match result {
        Ok(job) => Ok(Redirect::to(&format!("/jobs/{}", job.id)).into_response()),
        Err(Error::Invalid { key_path, message }) => {
            let field = match key_path.as_deref() {
                Some(k) if k.starts_with("FINETUNE") || k == "finetune" || k == "MODEL.TYPE" => {
                    "finetune_yaml"
                }
                Some(k @ ("name" | "priority" | "init_job")) => k,
                _ => "form",
            };
            errors.insert(field.into(), message);
            Ok(page(
                &state,
                &viewer,
                f,
                choices,
                errors,
                StatusCode::UNPROCESSABLE_ENTITY,
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// The user's succeeded pre-training jobs, newest first.
pub(super) async fn choices(state: &AppState, viewer: &Viewer) -> Result<Vec<InitChoice>, Error> {
    let rows = service::pretrained_of(&state.pool, &viewer.caller.name, 50).await?;
    Ok(rows
        .into_iter()
        .map(|(id, name, steps)| InitChoice {
            id: id.to_string(),
            label: format!("{name} ({steps} steps, {})", &id.to_string()[..8]),
        })
        .collect())
}

fn page(
    state: &AppState,
    viewer: &Viewer,
    f: FinetuneForm,
    choices: Vec<InitChoice>,
    errors: Errors,
    status: StatusCode,
) -> Response {
    let p = FinetunePage {
        layout: Layout::new("New fine-tuning job", Some(viewer)),
        name: f.name,
        init_job: f.init_job,
        choices,
        finetune_yaml: f.finetune_yaml,
        priority: f.priority,
        parent: f.parent,
        datasets: state.datasets.as_ref().map(|d| d.display().to_string()),
        // A few directory listings of a local folder: cheap enough to do here.
        known: state
            .datasets
            .as_deref()
            .map(crate::jobs::datasets::known)
            .unwrap_or_default(),
        train_dir: f.train_dir,
        examples: [
            (
                "Denoising (CBSD68, sigma 25)",
                super::compare::FINETUNE_DENOISE,
            ),
            ("Deraining (Rain100H pairs)", super::compare::DERAIN),
            (
                "Deblurring (synthetic blur on CBSD68)",
                super::compare::FINETUNE_DEBLUR,
            ),
        ],
        errors,
    };
    (status, render(&p)).into_response()
}
