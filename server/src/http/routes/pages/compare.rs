//! `/jobs/new/compare`: the form of a `compare` job ("does IFP help here?"): a pre-training
//! preset and its length, or one of the user's finished pre-training jobs to start from; an
//! optional extra arm from another; a fine-tuning config in YAML (data folders relative to the
//! server's datasets folder); how many test images to show side by side.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::finetune::InitChoice;
use super::form::Errors;
use super::{render, Layout, PageResult, Viewer};
use crate::error::Error;
use crate::http::state::AppState;
use crate::jobs::compare::{CompareJob, MAX_SEEDS, MAX_SHOWCASE};
use crate::jobs::service;
use crate::jobs::spec::JobSpec;

/// The training settings the examples share, after their `DATA` folders. The first line keeps
/// its indentation (it continues the `DATA` block), so it starts on the quote's line: a `\`
/// line continuation would strip it.
macro_rules! example_tail {
    () => {
        "  CROP: 40  # a Uformer takes sides its windows tile: 32 or 64 for tiny-uformer
  BATCH_SIZE: 8
  VAL_IMAGES: 4
TRAIN:
  STEPS: 500
  WARMUP_EPOCHS: 50
  BASE_LR: 1.0e-3
SAVE_FREQ: 100
SEED: 0
"
    };
}

/// The fine-tuning config the form starts with: sigma-25 denoising, CBSD68 crops, Kodak24 test.
pub(super) const DENOISE: &str = concat!(
    "\
# Denoising, sigma 25: train on CBSD68 crops, test on Kodak24.
# Folders are relative to the server's datasets folder.
DATA:
  TRAIN_DIR: clean/CBSD68
  TEST_DIR: clean/Kodak24
  NOISE_SIGMA: 25
",
    example_tail!()
);

/// The fine-tune form's example: the same denoising task without a test set (a finetune job
/// picks its best checkpoint on validation images and scores no test set).
pub(super) const FINETUNE_DENOISE: &str = concat!(
    "\
# Denoising, sigma 25, on CBSD68 crops (every 5th image is held out, as in a comparison).
# Folders are relative to the server's datasets folder. Without a pre-training job to start
# from, add the network's MODEL tree.
DATA:
  TRAIN_DIR: clean/CBSD68
  NOISE_SIGMA: 25
",
    example_tail!()
);

/// Deraining on Rain100H, every 5th pair held out for testing.
pub(super) const DERAIN: &str = concat!(
    "\
# Deraining: Rain100H pairs (input/ and target/), every 5th pair (name order) is a test pair.
DATA:
  TRAIN_DIR: rain/Rain100H
  SPLIT_EVERY: 5
",
    example_tail!()
);

/// The fine-tune form's deblurring example: the comparison's, without its test set.
pub(super) const FINETUNE_DEBLUR: &str = concat!(
    "\
# Deblurring: Gaussian blur of 1.6 pixels, then light noise (sigma 2), on CBSD68 crops (every
# 5th image is held out). Synthetic, because the datasets folder holds only two GoPro pairs.
DATA:
  TRAIN_DIR: clean/CBSD68
  BLUR_SIGMA: 1.6
  NOISE_SIGMA: 2
",
    example_tail!()
);

pub(super) const DEBLUR: &str = concat!(
    "\
# Deblurring: Gaussian blur of 1.6 pixels, then light noise (sigma 2), on CBSD68 crops; test on
# Kodak24. Synthetic, because the datasets folder holds only two GoPro pairs (blur/).
DATA:
  TRAIN_DIR: clean/CBSD68
  TEST_DIR: clean/Kodak24
  BLUR_SIGMA: 1.6
  NOISE_SIGMA: 2
",
    example_tail!()
);

/// Pre-training presets a comparison can start from (both backbones fine-tune).
const PRESETS: [&str; 4] = ["tiny", "tiny-uformer", "restormer-paper", "uformer-paper"];

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
    priority: String,
    /// The user's succeeded pre-training jobs, for *Start from* and *Extra arm*.
    choices: Vec<InitChoice>,
    init_job: String,
    extra_arm_job: String,
    parent: String,
    examples: [(&'static str, &'static str); 3],
    datasets: Option<String>,
    errors: Errors,
}

impl ComparePage {
    fn is_preset(&self, p: &str) -> bool {
        self.preset == p
    }

    fn is_init(&self, id: &str) -> bool {
        self.init_job == id
    }

    fn is_extra(&self, id: &str) -> bool {
        self.extra_arm_job == id
    }
}

#[derive(Deserialize, Default)]
pub struct CompareForm {
    csrf: String,
    name: String,
    preset: String,
    pretrain_steps: String,
    finetune_yaml: String,
    showcase: String,
    /// Fine-tuning seeds; absent in forms saved before it existed.
    #[serde(default)]
    seeds: String,
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
}

/// `GET /jobs/new/compare[?init=JOB | ?from=JOB]`.
pub async fn show(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<super::finetune::ShowParams>,
) -> PageResult<Response> {
    let mut f = CompareForm {
        name: "does IFP help: denoising".into(),
        preset: "tiny".into(),
        pretrain_steps: "400".into(),
        finetune_yaml: DENOISE.into(),
        showcase: "3".into(),
        priority: "0".into(),
        ..Default::default()
    };
    if let Some(init) = q.init {
        let job = service::visible_job(&state.pool, &viewer.caller, &init).await?;
        f.name = format!(
            "does IFP help: {}",
            job.name.chars().take(180).collect::<String>()
        );
        f.init_job = job.id.to_string();
    }
    let mut errors = Errors::new();
    if let Some(from) = q.from {
        let job = service::visible_job(&state.pool, &viewer.caller, &from).await?;
        if job.kind != crate::db::values::JobKind::Compare {
            // Each kind's clone has its own form; the new-job page sends it there.
            return Ok(Redirect::to(&format!("/jobs/new?from={}", job.id)).into_response());
        }
        if let Some(e) = clone_into(&mut f, &job)? {
            errors.insert("preset".into(), e);
        }
    }
    let choices = super::finetune::choices(&state, &viewer).await?;
    Ok(page(&state, &viewer, f, choices, errors, StatusCode::OK))
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
    f.name = super::new_job::clone_name(&job.name);
    f.parent = job.id.to_string();
    f.priority = job.priority.to_string();
    f.showcase = c.showcase.to_string();
    f.seeds = c.seeds.to_string();
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

/// A form's job choice (`init_job`, `extra_arm_job`): none, or a finished pre-training job of
/// the viewer's, with its model file and config.
async fn chosen(
    state: &AppState,
    viewer: &Viewer,
    field: &str,
    raw: &str,
) -> Result<Option<crate::jobs::compare::Pretrained>, Error> {
    match raw.trim() {
        "" => Ok(None),
        id => {
            let id: uuid::Uuid = id
                .parse()
                .map_err(|_| Error::invalid(Some(field), "choose a job from the list"))?;
            service::pretrained_job(&state.pool, &viewer.caller.name, &id.to_string(), field)
                .await
                .map(Some)
        }
    }
}

/// `POST /jobs/new/compare`.
pub async fn submit_form(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(f): Form<CompareForm>,
) -> PageResult<Response> {
    viewer.check_form(&headers, &f.csrf)?;
    let mut errors = Errors::new();
    let number = |field: &str, raw: &str, errors: &mut Errors| -> Option<i64> {
        raw.trim().parse::<i64>().map_or_else(
            |_| {
                errors.insert(field.into(), format!("`{raw}` is not a whole number"));
                None
            },
            Some,
        )
    };
    let steps = number("pretrain_steps", &f.pretrain_steps, &mut errors);
    let showcase = number("showcase", &f.showcase, &mut errors);
    let seeds = if f.seeds.trim().is_empty() {
        Some(1)
    } else {
        number("seeds", &f.seeds, &mut errors)
    };
    let priority = number("priority", &f.priority, &mut errors);
    let from_job = !f.init_job.trim().is_empty();
    let mut pretrain =
        ifp_trainer::config::preset(&f.preset).filter(|_| PRESETS.contains(&f.preset.as_str()));
    if pretrain.is_none() && !from_job {
        errors.insert(
            "preset".into(),
            format!("choose one of {}", PRESETS.join(", ")),
        );
    }
    match (steps, pretrain.as_mut()) {
        (Some(s), Some(p)) if s >= 1 => p.train.steps = Some(s as usize),
        (Some(_), _) if !from_job => {
            errors.insert("pretrain_steps".into(), "at least 1".into());
        }
        _ => {}
    }
    let finetune = match ifp_trainer::finetune::FinetuneConfig::from_yaml(&f.finetune_yaml) {
        Ok(c) => Some(c),
        Err(e) => {
            errors.insert("finetune_yaml".into(), e.to_string());
            None
        }
    };
    let (Some(pretrain), Some(finetune), Some(showcase), Some(seeds), Some(priority), true) = (
        pretrain.or_else(|| from_job.then(ifp_trainer::Config::default)),
        finetune,
        showcase,
        seeds,
        priority,
        errors.is_empty(),
    ) else {
        let choices = super::finetune::choices(&state, &viewer).await?;
        return Ok(page(
            &state,
            &viewer,
            f,
            choices,
            errors,
            StatusCode::UNPROCESSABLE_ENTITY,
        ));
    };
    let showcase = usize::try_from(showcase).unwrap_or(usize::MAX);
    let datasets = state.datasets.as_deref();
    let result = async {
        let job = match chosen(&state, &viewer, "init_job", &f.init_job).await? {
            Some(pre) => CompareJob::from_pretrained(pre, finetune, showcase, datasets)?,
            None => CompareJob::new(pretrain, finetune, showcase, datasets)?,
        };
        let job = match chosen(&state, &viewer, "extra_arm_job", &f.extra_arm_job).await? {
            Some(extra) => job.with_extra_arm(extra)?,
            None => job,
        };
        let job = job.with_seeds(usize::try_from(seeds).unwrap_or(0))?;
        let parent = super::new_job::parent_of(&f.parent)
            .map_err(|e| Error::invalid(Some("form"), e))?
            .or(f.init_job.trim().parse().ok());
        let priority = i32::try_from(priority).unwrap_or(i32::MAX);
        let spec = JobSpec::Compare(Box::new(job));
        viewer.submit(&state, &f.name, priority, parent, spec).await
    }
    .await;
    match result {
        Ok(job) => Ok(Redirect::to(&format!("/jobs/{}", job.id)).into_response()),
        Err(Error::Invalid { key_path, message }) => {
            let field = match key_path.as_deref() {
                Some(k) if k.starts_with("FINETUNE") || k == "finetune" => "finetune_yaml",
                Some(
                    k @ ("name" | "priority" | "showcase" | "seeds" | "init_job" | "extra_arm_job"),
                ) => k,
                _ => "form",
            };
            errors.insert(field.into(), message);
            let choices = super::finetune::choices(&state, &viewer).await?;
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

fn page(
    state: &AppState,
    viewer: &Viewer,
    f: CompareForm,
    choices: Vec<InitChoice>,
    errors: Errors,
    status: StatusCode,
) -> Response {
    let p = ComparePage {
        layout: Layout::new("New comparison", Some(viewer)),
        name: f.name,
        preset: f.preset,
        presets: &PRESETS,
        pretrain_steps: f.pretrain_steps,
        finetune_yaml: f.finetune_yaml,
        showcase: f.showcase,
        max_showcase: MAX_SHOWCASE,
        seeds: if f.seeds.is_empty() {
            "1".into()
        } else {
            f.seeds
        },
        max_seeds: MAX_SEEDS,
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
        errors,
    };
    (status, render(&p)).into_response()
}

#[cfg(test)]
mod tests {
    use ifp_trainer::finetune::FinetuneConfig;

    #[test]
    fn every_example_is_a_valid_config_with_the_shared_settings() {
        for (name, text) in [
            ("denoise", super::DENOISE),
            ("derain", super::DERAIN),
            ("deblur", super::DEBLUR),
            ("finetune denoise", super::FINETUNE_DENOISE),
            ("finetune deblur", super::FINETUNE_DEBLUR),
        ] {
            let c = FinetuneConfig::from_yaml(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                (c.data.crop, c.data.batch_size, c.train.steps),
                (40, 8, Some(500)),
                "{name}"
            );
        }
    }
}
