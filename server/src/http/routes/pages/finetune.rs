//! `/jobs/new/finetune`: the form of a `finetune` job: the initial encoder (one of the user's
//! succeeded pre-training jobs, or from scratch) and a fine-tuning config in YAML.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde::Deserialize;

use super::examples;
use super::form::Errors;
use super::submission::{self, InitChoice, ShowParams, REFUSED};
use super::{render, Layout, PageResult, Viewer};
use crate::db::values::JobKind;
use crate::error::Error;
use crate::http::state::AppState;
use crate::jobs::finetune::FinetuneJob;
use crate::jobs::service;
use crate::jobs::spec::JobSpec;

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
    /// Peak memory and duration, after *Estimate*.
    estimate: Option<String>,
    errors: Errors,
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
    /// `estimate`: check the job and show its estimate instead of submitting it.
    #[serde(default)]
    action: String,
}

/// `GET /jobs/new/finetune[?init=JOB | ?from=JOB]`.
pub async fn show(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<ShowParams>,
) -> PageResult<Response> {
    let choices = submission::choices(&state, &viewer).await?;
    let mut f = FinetuneForm {
        name: "fine-tune: denoising".into(),
        init_job: choices.first().map(|c| c.id.clone()).unwrap_or_default(),
        finetune_yaml: examples::FINETUNE_DENOISE.into(),
        priority: "0".into(),
        ..Default::default()
    };
    if let Some(init) = q.init {
        (f.name, f.init_job) =
            submission::started_from(&state, &viewer, &init, "fine-tune").await?;
    } else if let Some(from) = q.from {
        let job = service::visible_job(&state.pool, &viewer.caller, &from).await?;
        if let Some(elsewhere) = submission::to_own_form(&job, JobKind::Finetune) {
            return Ok(elsewhere);
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
        f.name = submission::clone_name(&job.name);
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
        None,
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
    let choices = submission::choices(&state, &viewer).await?;
    let mut errors = Errors::new();
    let priority = submission::whole_number("priority", &f.priority, &mut errors);
    let (ft, stated) =
        submission::finetune_of_form(&f.finetune_yaml, &f.train_dir, &mut errors).await?;
    let again =
        |f, errors, status, estimate| page(&state, &viewer, f, choices, errors, status, estimate);
    let (Some(ft), Some(priority), true) = (ft, priority, errors.is_empty()) else {
        return Ok(again(f, errors, REFUSED, None));
    };
    let priority = i32::try_from(priority).unwrap_or(i32::MAX);
    let built = async {
        let init = submission::chosen(&state, &viewer, "init_job", &f.init_job)
            .await?
            .map(|(path, cfg)| (path, cfg.model));
        let job = FinetuneJob::new(ft, stated, init, state.datasets.as_deref())?;
        let parent = submission::parent_or_start(&f.parent, &f.init_job)?;
        Ok((JobSpec::Finetune(Box::new(job)), parent))
    }
    .await;
    let result = match built {
        Ok((spec, _)) if f.action == "estimate" => {
            let estimate = submission::estimate_text(&state, &spec).await;
            return Ok(again(f, Errors::new(), StatusCode::OK, estimate));
        }
        Ok((spec, parent)) => viewer.submit(&state, &f.name, priority, parent, spec).await,
        Err(e) => Err(e),
    };
    let field = |key: Option<&str>| {
        let in_yaml = |k: &str| submission::finetune_key(k) || k == "MODEL.TYPE";
        submission::field_of_picked(key, &["name", "priority", "init_job"], in_yaml)
    };
    submission::outcome(result, errors, field, |errors| {
        again(f, errors, REFUSED, None)
    })
}

fn page(
    state: &AppState,
    viewer: &Viewer,
    f: FinetuneForm,
    choices: Vec<InitChoice>,
    errors: Errors,
    status: StatusCode,
    estimate: Option<String>,
) -> Response {
    let p = FinetunePage {
        estimate,
        layout: Layout::new("New fine-tuning job", Some(viewer)),
        name: f.name,
        init_job: f.init_job,
        choices,
        finetune_yaml: f.finetune_yaml,
        priority: f.priority,
        parent: f.parent,
        datasets: state.datasets.as_ref().map(|d| d.display().to_string()),
        // A few directory listings of a local folder: cheap enough to do here.
        known: submission::known_datasets(state),
        train_dir: f.train_dir,
        examples: [
            ("Denoising (CBSD68, sigma 25)", examples::FINETUNE_DENOISE),
            ("Deraining (Rain100H pairs)", examples::DERAIN),
            (
                "Deblurring (synthetic blur on CBSD68)",
                examples::FINETUNE_DEBLUR,
            ),
        ],
        errors,
    };
    (status, render(&p)).into_response()
}
