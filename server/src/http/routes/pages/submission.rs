//! What the three new-job forms (pre-training, fine-tuning, comparison) share: a clone's name
//! and parent, whole-number fields, the fine-tuning YAML and data set of a form, the choice of
//! one of the user's finished pre-training jobs,
//! sending a clone to the form of its kind, which field a refused submission's error belongs
//! to, and the estimate of a run's memory and duration in words. Each form keeps only what is
//! its own.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use uuid::Uuid;

use super::form::Errors;
use super::{PageResult, Viewer};
use crate::db::rows::Job;
use crate::db::values::JobKind;
use crate::error::Error;
use crate::http::state::AppState;
use crate::jobs::compare::Pretrained;
use crate::jobs::service;
use crate::jobs::spec::JobSpec;

/// The status of a form sent back with the errors that refused it.
pub const REFUSED: StatusCode = StatusCode::UNPROCESSABLE_ENTITY;

/// The query of the fine-tuning and comparison forms.
#[derive(Deserialize)]
pub struct ShowParams {
    /// Start from this finished pre-training job ("Fine-tune this", "Compare from this").
    pub init: Option<String>,
    /// Clone this job (of the form's kind).
    pub from: Option<String>,
}

/// One of the user's succeeded pre-training jobs, as a `<select>` offers it.
pub struct InitChoice {
    pub id: String,
    pub label: String,
}

/// The user's succeeded pre-training jobs, newest first.
pub async fn choices(state: &AppState, viewer: &Viewer) -> Result<Vec<InitChoice>, Error> {
    let rows = service::pretrained_of(&state.pool, &viewer.caller.name, 50).await?;
    Ok(rows
        .into_iter()
        .map(|(id, name, steps)| InitChoice {
            id: id.to_string(),
            label: format!("{name} ({steps} steps, {})", &id.to_string()[..8]),
        })
        .collect())
}

/// A form's job choice (`init_job`, `extra_arm_job`): none, or a finished pre-training job of
/// the viewer's, with its model file and config. An error names `field`.
pub async fn chosen(
    state: &AppState,
    viewer: &Viewer,
    field: &str,
    raw: &str,
) -> Result<Option<Pretrained>, Error> {
    match raw.trim() {
        "" => Ok(None),
        id => {
            let id: Uuid = id
                .parse()
                .map_err(|_| Error::invalid(Some(field), "choose a job from the list"))?;
            service::pretrained_job(&state.pool, &viewer.caller.name, &id.to_string(), field)
                .await
                .map(Some)
        }
    }
}

/// The form a job of `kind` is submitted (and cloned) with.
pub fn form_of(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Pretrain => "/jobs/new",
        JobKind::Finetune => "/jobs/new/finetune",
        JobKind::Compare => "/jobs/new/compare",
    }
}

/// A clone asked of the form for `kind` but naming a job of another kind goes to that kind's
/// form; `None` when the job is of this form's kind.
pub fn to_own_form(job: &Job, kind: JobKind) -> Option<Response> {
    (job.kind != kind)
        .then(|| Redirect::to(&format!("{}?from={}", form_of(job.kind), job.id)).into_response())
}

/// `NAME (clone)`, kept within the 200 characters a name may have.
pub fn clone_name(name: &str) -> String {
    let base: String = name.chars().take(192).collect();
    format!("{base} (clone)")
}

/// `PREFIX: NAME` for a job started from the finished job `name` ("Fine-tune this"), kept
/// within the 200 characters a name may have.
pub fn started_from_name(prefix: &str, name: &str) -> String {
    format!("{prefix}: {}", name.chars().take(180).collect::<String>())
}

/// The `parent` a form carries: empty for none, else a job id.
pub fn parent_of(raw: &str) -> Result<Option<Uuid>, String> {
    match raw.trim() {
        "" => Ok(None),
        id => id
            .parse()
            .map(Some)
            .map_err(|_| format!("`{id}` is not a job id; open Clone from the job's page again")),
    }
}

/// The new job's parent: the job it clones, else the pre-training job it starts from.
pub fn parent_or_start(parent: &str, init_job: &str) -> Result<Option<Uuid>, Error> {
    Ok(parent_of(parent)
        .map_err(|e| Error::invalid(Some("form"), e))?
        .or(init_job.trim().parse().ok()))
}

/// A whole-number field's value, or `None` with the field's error recorded.
pub fn whole_number(field: &str, raw: &str, errors: &mut Errors) -> Option<i64> {
    let n = raw.trim().parse::<i64>().ok();
    if n.is_none() {
        errors.insert(field.into(), format!("`{raw}` is not a whole number"));
    }
    n
}

/// The field a refused submission's error belongs to: the field named by its key, the YAML box
/// for the keys `in_yaml` claims, else the form as a whole.
pub fn field_of(key: Option<&str>, fields: &[&str], in_yaml: fn(&str) -> bool) -> String {
    match key {
        Some(k) if fields.contains(&k) => k.into(),
        Some(k) if in_yaml(k) => "finetune_yaml".into(),
        _ => "form".into(),
    }
}

/// `field_of` for the forms with a *Training data* picker: a refused training folder shows
/// beside the picker (`train_dir`), where a data set is chosen, not under the YAML.
pub fn field_of_picked(key: Option<&str>, fields: &[&str], in_yaml: fn(&str) -> bool) -> String {
    if key == Some("FINETUNE.DATA.TRAIN_DIR") {
        return "train_dir".into();
    }
    field_of(key, fields, in_yaml)
}

/// The data sets in the datasets folder, for the *Training data* picker. A few directory
/// listings of a local folder: cheap enough to do per page.
pub fn known_datasets(state: &AppState) -> Vec<crate::jobs::datasets::Known> {
    state
        .datasets
        .as_deref()
        .map(crate::jobs::datasets::known)
        .unwrap_or_default()
}

/// The fine-tuning config of a form: its YAML parsed off the async threads, the *Training data*
/// picker's choice applied (`train_dir`; empty: keep the YAML's `DATA.TRAIN_DIR`), and whether
/// the YAML states the network. A YAML that does not parse is `None`, its error put beside the
/// `finetune_yaml` field.
pub async fn finetune_of_form(
    yaml: &str,
    train_dir: &str,
    errors: &mut Errors,
) -> Result<(Option<ifp_trainer::finetune::FinetuneConfig>, bool), Error> {
    use ifp_trainer::finetune::FinetuneConfig;
    let (parsed, stated) = off_thread(yaml, |t| {
        (FinetuneConfig::from_yaml(t), FinetuneConfig::names_model(t))
    })
    .await?;
    let ft = match parsed {
        Ok(mut c) => {
            if !train_dir.trim().is_empty() {
                c.data.train_dir = train_dir.trim().into();
            }
            Some(c)
        }
        Err(e) => {
            errors.insert("finetune_yaml".into(), e.to_string());
            None
        }
    };
    Ok((ft, stated))
}

/// Where a form's submission ends: the new job's page, or the form again (`again`, a 422) with
/// a refused value's message beside the field `field` names for its key; any other error goes
/// to the error page.
pub fn outcome(
    result: Result<Job, Error>,
    mut errors: Errors,
    field: impl FnOnce(Option<&str>) -> String,
    again: impl FnOnce(Errors) -> Response,
) -> PageResult<Response> {
    match result {
        Ok(job) => Ok(Redirect::to(&format!("/jobs/{}", job.id)).into_response()),
        Err(Error::Invalid { key_path, message }) => {
            errors.insert(field(key_path.as_deref()), message);
            Ok(again(errors))
        }
        Err(e) => Err(e.into()),
    }
}

/// The name and `init_job` of a form started from the finished job `id` ("Fine-tune this",
/// "Compare from this"), the name starting with `prefix`.
pub async fn started_from(
    state: &AppState,
    viewer: &Viewer,
    id: &str,
    prefix: &str,
) -> Result<(String, String), Error> {
    let job = service::visible_job(&state.pool, &viewer.caller, id).await?;
    Ok((started_from_name(prefix, &job.name), job.id.to_string()))
}

/// Keys of a fine-tuning config, which the forms edit as YAML.
pub fn finetune_key(k: &str) -> bool {
    k.starts_with("FINETUNE") || k == "finetune"
}

/// Runs `parse` over a form's YAML on a blocking thread, as the API does with its bodies: the
/// text is capped and its expansion budgeted, but a burst of forms at those caps would still
/// hold the async threads that answer every other request.
pub async fn off_thread<T: Send + 'static>(
    text: &str,
    parse: impl FnOnce(&str) -> T + Send + 'static,
) -> Result<T, Error> {
    let text = text.to_owned();
    tokio::task::spawn_blocking(move || parse(&text))
        .await
        .map_err(|e| Error::Internal(format!("parsing a form's config: {e}")))
}

/// The estimate of a run's peak memory and training time in words, as the new-job forms show
/// it, or `None` if the database cannot say.
pub(super) async fn estimate_text(state: &AppState, spec: &JobSpec) -> Option<String> {
    use ifp_trainer::memory::human;
    let e = match crate::jobs::estimate::estimate(&state.pool, spec).await {
        Ok(e) => e,
        Err(err) => {
            tracing::warn!("estimating a run: {err}");
            return None;
        }
    };
    let memory = match e.largest_worker {
        Some(have) if e.refused => format!(
            "Peak memory about {}: more than 90% of the {} of the largest live worker, so this \
             run would be refused; lower the batch size or the crop size.",
            human(e.peak_bytes),
            human(have)
        ),
        Some(have) => format!(
            "Peak memory about {} (the largest live worker has {}).",
            human(e.peak_bytes),
            human(have)
        ),
        None => format!(
            "Peak memory about {} (no live worker has reported its memory).",
            human(e.peak_bytes)
        ),
    };
    let (what, peers) = match spec {
        JobSpec::Pretrain(_) => ("Training", "finished run"),
        JobSpec::Finetune(_) => (
            "Training (validation and testing not counted)",
            "finished fine-tuning run",
        ),
        JobSpec::Compare(_) => (
            "Training all phases (validation and testing not counted)",
            "finished run",
        ),
    };
    let duration = match e.seconds {
        Some(s) if matches!(spec, JobSpec::Compare(_)) => format!(
            " {what} takes about {} at the median speeds of finished pre-training and \
             fine-tuning runs with these networks, crop sizes and batch sizes (at least {} \
             {peers}{} each).",
            crate::http::views::fmt::duration(s),
            e.runs,
            if e.runs == 1 { "" } else { "s" }
        ),
        Some(s) => format!(
            " {what} takes about {} at the median speed of {} {peers}{} with this network, \
             crop size and batch size.",
            crate::http::views::fmt::duration(s),
            e.runs,
            if e.runs == 1 { "" } else { "s" }
        ),
        None if matches!(spec, JobSpec::Compare(_)) => " No expected duration yet: not every \
             phase has a finished run of its kind with this network, crop size and batch size."
            .to_string(),
        None => format!(
            " No expected duration yet: no {peers} has this network, crop size and batch size."
        ),
    };
    Some(memory + &duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_within_the_limit_and_errors_find_their_field() {
        let long = "é".repeat(300);
        assert_eq!(clone_name(&long).chars().count(), 200);
        assert_eq!(started_from_name("fine-tune", &long).chars().count(), 191);
        assert_eq!(clone_name("a"), "a (clone)");
        let mut errors = Errors::new();
        assert_eq!(whole_number("seeds", " 7 ", &mut errors), Some(7));
        assert_eq!(whole_number("seeds", "7.5", &mut errors), None);
        assert_eq!(errors["seeds"], "`7.5` is not a whole number");
        let fields = ["name", "priority"];
        assert_eq!(
            field_of(Some("priority"), &fields, finetune_key),
            "priority"
        );
        assert_eq!(
            field_of(Some("FINETUNE.DATA.CROP"), &fields, finetune_key),
            "finetune_yaml"
        );
        assert_eq!(field_of(Some("MODEL.TYPE"), &fields, finetune_key), "form");
        assert_eq!(field_of(None, &fields, finetune_key), "form");
        assert!(parent_of("x").is_err());
        assert_eq!(parent_of(" ").ok(), Some(None));
        let id = Uuid::new_v4();
        assert_eq!(parent_or_start("", &id.to_string()).ok(), Some(Some(id)));
        assert_eq!(form_of(JobKind::Compare), "/jobs/new/compare");
    }
}
