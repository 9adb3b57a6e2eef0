//! `/jobs/new/compare`: the form of a `compare` job ("does IFP help here?"): a pre-training
//! preset and its length, or one of the user's finished pre-training jobs to start from; an
//! optional extra arm from another; the training data set (a picker over the server's datasets
//! folder) and a fine-tuning config in YAML (data folders relative to that folder); how many
//! test images to show side by side.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde::Deserialize;

use super::examples::{DEBLUR, DENOISE, DERAIN};
use super::form::Errors;
use super::submission::{self, InitChoice, ShowParams, REFUSED};
use super::{render, Layout, PageResult, Viewer};
use crate::db::values::JobKind;
use crate::error::Error;
use crate::http::state::AppState;
use crate::jobs::compare::{CompareJob, MAX_SEEDS, MAX_SHOWCASE};
use crate::jobs::service;
use crate::jobs::spec::JobSpec;

/// Pre-training presets a comparison can start from (both backbones fine-tune).
const PRESETS: [&str; 4] = ["tiny", "tiny-uformer", "restormer-paper", "uformer-paper"];
/// What a new comparison form pre-trains with.
const DEFAULT_PRESET: &str = "tiny";
const DEFAULT_PRETRAIN_STEPS: &str = "400";

#[derive(Template)]
#[template(path = "new_compare.html")]
struct ComparePage {
    layout: Layout,
    name: String,
    preset: String,
    presets: &'static [&'static str],
    pretrain_steps: String,
    finetune_yaml: String,
    showcase: String,
    max_showcase: usize,
    seeds: String,
    max_seeds: usize,
    /// Each seed runs its own pre-training.
    vary_pretrain_seed: bool,
    priority: String,
    /// The user's succeeded pre-training jobs, for *Start from* and *Extra arm*.
    choices: Vec<InitChoice>,
    init_job: String,
    extra_arm_job: String,
    parent: String,
    examples: [(&'static str, &'static str); 3],
    datasets: Option<String>,
    /// The data sets in the datasets folder, for the *Training data* picker.
    known: Vec<crate::jobs::datasets::Known>,
    train_dir: String,
    /// Peak memory and duration, after *Estimate*.
    estimate: Option<String>,
    errors: Errors,
}

#[derive(Deserialize, Default)]
pub struct CompareForm {
    csrf: String,
    name: String,
    /// The preset and steps to pre-train with; absent while the form starts from a job (the
    /// page's script disables them then, as they do not apply).
    #[serde(default)]
    preset: String,
    #[serde(default)]
    pretrain_steps: String,
    finetune_yaml: String,
    showcase: String,
    /// Fine-tuning seeds; absent in forms saved before it existed.
    #[serde(default)]
    seeds: String,
    /// The checkbox: present (any value) when ticked.
    #[serde(default)]
    vary_pretrain_seed: Option<String>,
    priority: String,
    /// A succeeded pre-training job of the user's to start the IFP arm from (empty: pre-train
    /// with the preset); absent in forms saved before it existed.
    #[serde(default)]
    init_job: String,
    /// Another such job, the start of a third arm (empty: none).
    #[serde(default)]
    extra_arm_job: String,
    /// The comparison this one clones (its id), recorded as the new job's parent.
    #[serde(default)]
    parent: String,
    /// A data set of the datasets folder; replaces the YAML's `DATA.TRAIN_DIR` (empty: keep it).
    #[serde(default)]
    train_dir: String,
    /// `estimate`: check the job and show its estimate instead of submitting it.
    #[serde(default)]
    action: String,
}

/// `GET /jobs/new/compare[?init=JOB | ?from=JOB]`.
pub async fn show(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<ShowParams>,
) -> PageResult<Response> {
    let mut f = CompareForm {
        name: "does IFP help: denoising".into(),
        preset: DEFAULT_PRESET.into(),
        pretrain_steps: DEFAULT_PRETRAIN_STEPS.into(),
        finetune_yaml: DENOISE.into(),
        showcase: "3".into(),
        priority: "0".into(),
        ..Default::default()
    };
    if let Some(init) = q.init {
        (f.name, f.init_job) =
            submission::started_from(&state, &viewer, &init, "does IFP help").await?;
    }
    let mut errors = Errors::new();
    if let Some(from) = q.from {
        let job = service::visible_job(&state.pool, &viewer.caller, &from).await?;
        if let Some(elsewhere) = submission::to_own_form(&job, JobKind::Compare) {
            return Ok(elsewhere);
        }
        if let Some(e) = clone_into(&mut f, &job)? {
            errors.insert("preset".into(), e);
        }
    }
    let choices = submission::choices(&state, &viewer).await?;
    Ok(page(
        &state,
        &viewer,
        f,
        choices,
        errors,
        StatusCode::OK,
        None,
    ))
}

/// Fills the form from a comparison to clone: its name marked as a clone, the same start (the
/// pre-training job it started from, or the preset its pre-training was, with its steps),
/// extra arm, fine-tuning YAML, showcase, seeds and priority, and the job as the parent.
/// Returns what the form cannot carry over (a pre-training config that is no preset).
fn clone_into(f: &mut CompareForm, job: &crate::db::rows::Job) -> Result<Option<String>, Error> {
    let c = CompareJob::from_value(&job.config)
        .map_err(|e| Error::Internal(format!("job {}: stored config: {e}", job.id)))?;
    // A model file's path starts with the id of the job that wrote it.
    let job_of = |p: &std::path::Path| {
        p.components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .filter(|s| s.parse::<uuid::Uuid>().is_ok())
            .unwrap_or_default()
    };
    f.name = submission::clone_name(&job.name);
    f.parent = job.id.to_string();
    f.priority = job.priority.to_string();
    f.showcase = c.showcase.to_string();
    f.seeds = c.seeds.to_string();
    f.vary_pretrain_seed = c.vary_pretrain.then(|| "on".to_string());
    f.init_job = c.pretrained.as_deref().map(job_of).unwrap_or_default();
    f.extra_arm_job = c.extra_arm.as_deref().map(job_of).unwrap_or_default();
    let mut ft = c.finetune.clone();
    ft.init = None;
    f.finetune_yaml = ft.to_yaml();
    f.pretrain_steps = c.pretrain.total_steps().to_string();
    let preset = PRESETS.iter().find(|p| {
        ifp_trainer::config::preset(p).is_some_and(|mut cfg| {
            cfg.train.steps = c.pretrain.train.steps;
            cfg.train.epochs = c.pretrain.train.epochs;
            cfg == c.pretrain
        })
    });
    match preset {
        Some(p) => f.preset = (*p).to_string(),
        None if c.pretrained.is_none() => {
            return Ok(Some(format!(
                "the cloned comparison pre-trained with a config that is none of these presets \
                 (network {:?}); choose one, or submit the clone over the API with its config",
                c.pretrain.model.kind
            )))
        }
        None => {}
    }
    Ok(None)
}

/// `POST /jobs/new/compare`.
pub async fn submit_form(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(f): Form<CompareForm>,
) -> PageResult<Response> {
    viewer.check_form(&headers, &f.csrf)?;
    let choices = submission::choices(&state, &viewer).await?;
    let again =
        |f, errors, status, estimate| page(&state, &viewer, f, choices, errors, status, estimate);
    let mut errors = Errors::new();
    let number = submission::whole_number;
    let from_job = !f.init_job.trim().is_empty();
    // Starting from a job, the preset and its steps do not apply (and are not sent).
    let steps = (!from_job).then(|| number("pretrain_steps", &f.pretrain_steps, &mut errors));
    let showcase = number("showcase", &f.showcase, &mut errors);
    let seeds = if f.seeds.trim().is_empty() {
        Some(1)
    } else {
        number("seeds", &f.seeds, &mut errors)
    };
    let priority = number("priority", &f.priority, &mut errors);
    let mut pretrain =
        ifp_trainer::config::preset(&f.preset).filter(|_| PRESETS.contains(&f.preset.as_str()));
    if pretrain.is_none() && !from_job {
        errors.insert(
            "preset".into(),
            format!("choose one of {}", PRESETS.join(", ")),
        );
    }
    match (steps.flatten(), pretrain.as_mut()) {
        (Some(s), _) if s < 1 => {
            errors.insert("pretrain_steps".into(), "at least 1".into());
        }
        (Some(s), Some(p)) => p.train.steps = Some(s as usize),
        _ => {}
    }
    let (finetune, model_stated) =
        submission::finetune_of_form(&f.finetune_yaml, &f.train_dir, &mut errors).await?;
    let (Some(pretrain), Some(finetune), Some(showcase), Some(seeds), Some(priority), true) = (
        pretrain.or_else(|| from_job.then(ifp_trainer::Config::default)),
        finetune,
        showcase,
        seeds,
        priority,
        errors.is_empty(),
    ) else {
        return Ok(again(f, errors, REFUSED, None));
    };
    let showcase = usize::try_from(showcase).unwrap_or(usize::MAX);
    let datasets = state.datasets.as_deref();
    let built = async {
        let job = match submission::chosen(&state, &viewer, "init_job", &f.init_job).await? {
            Some(pre) => {
                CompareJob::from_pretrained(pre, finetune, model_stated, showcase, datasets)?
            }
            None => CompareJob::new(pretrain, finetune, model_stated, showcase, datasets)?,
        };
        let job =
            match submission::chosen(&state, &viewer, "extra_arm_job", &f.extra_arm_job).await? {
                Some(extra) => job.with_extra_arm(extra)?,
                None => job,
            };
        let job = job
            .with_seeds(usize::try_from(seeds).unwrap_or(0))?
            .with_vary_pretrain_seed(f.vary_pretrain_seed.is_some())?;
        let parent = submission::parent_or_start(&f.parent, &f.init_job)?;
        Ok((JobSpec::Compare(Box::new(job)), parent))
    }
    .await;
    let result = match built {
        Ok((spec, _)) if f.action == "estimate" => {
            let estimate = submission::estimate_text(&state, &spec).await;
            return Ok(again(f, Errors::new(), StatusCode::OK, estimate));
        }
        Ok((spec, parent)) => {
            let priority = i32::try_from(priority).unwrap_or(i32::MAX);
            viewer.submit(&state, &f.name, priority, parent, spec).await
        }
        Err(e) => Err(e),
    };
    let field = |key: Option<&str>| {
        let fields = [
            "name",
            "priority",
            "showcase",
            "seeds",
            "vary_pretrain_seed",
            "init_job",
            "extra_arm_job",
        ];
        submission::field_of_picked(key, &fields, submission::finetune_key)
    };
    submission::outcome(result, errors, field, |errors| {
        again(f, errors, REFUSED, None)
    })
}

fn page(
    state: &AppState,
    viewer: &Viewer,
    f: CompareForm,
    choices: Vec<InitChoice>,
    errors: Errors,
    status: StatusCode,
    estimate: Option<String>,
) -> Response {
    let p = ComparePage {
        estimate,
        layout: Layout::new("New comparison", Some(viewer)),
        name: f.name,
        preset: or_default(f.preset, DEFAULT_PRESET),
        presets: &PRESETS,
        pretrain_steps: or_default(f.pretrain_steps, DEFAULT_PRETRAIN_STEPS),
        finetune_yaml: f.finetune_yaml,
        showcase: f.showcase,
        max_showcase: MAX_SHOWCASE,
        seeds: or_default(f.seeds, "1"),
        max_seeds: MAX_SEEDS,
        vary_pretrain_seed: f.vary_pretrain_seed.is_some(),
        priority: f.priority,
        choices,
        init_job: f.init_job,
        extra_arm_job: f.extra_arm_job,
        parent: f.parent,
        examples: [
            ("Denoising (CBSD68 → Kodak24)", DENOISE),
            ("Deraining (Rain100H)", DERAIN),
            ("Deblurring (synthetic blur, CBSD68 → Kodak24)", DEBLUR),
        ],
        datasets: state.datasets.as_ref().map(|d| d.display().to_string()),
        known: submission::known_datasets(state),
        train_dir: f.train_dir,
        errors,
    };
    (status, render(&p)).into_response()
}

/// `value`, or `default` where the form left it empty (a field added later, or one that did not
/// apply), so the page shows something to start from.
fn or_default(value: String, default: &str) -> String {
    if value.is_empty() {
        default.into()
    } else {
        value
    }
}
