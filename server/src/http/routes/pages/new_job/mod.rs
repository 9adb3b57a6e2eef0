//! `/jobs/new`: the submission form. Start from a preset or YAML (pasted or uploaded), edit the
//! common fields, pick a generated or uploaded noise image, see a preview of what the network
//! will learn from, submit. Without JavaScript every button is a plain form submit; with it,
//! the preview follows the fields as they change (`POST /jobs/new/preview`).

use askama::Template;
use axum::extract::{Multipart, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ifp_trainer::Config;
use serde::Deserialize;

mod posted;
mod shown;

use posted::{
    base_config, build, field_for_key, fingerprint, read_form, store_noise_upload, with_noise,
    Submitted,
};
use shown::{preview_data_uri, preview_png, Shown};

use super::form::{self, Errors, Kind, FIELDS};
use super::submission;
use super::{render, Layout, PageResult, Viewer};
use crate::db::values::JobKind;
use crate::error::Error;
use crate::http::state::AppState;
use crate::jobs::spec::JobSpec;

pub struct FieldView {
    pub name: &'static str,
    pub label: &'static str,
    pub hint: String,
    pub options: &'static [&'static str],
    pub step: &'static str,
    pub value: String,
    pub error: Option<String>,
}

pub struct PresetView {
    pub name: &'static str,
    pub description: &'static str,
}

#[derive(Template)]
#[template(path = "new_job.html")]
struct NewJobPage {
    layout: Layout,
    name: String,
    source: String,
    preset: String,
    presets: Vec<PresetView>,
    config_yaml: String,
    loaded_from: String,
    priority: String,
    noise_source: String,
    noise_upload: String,
    parent: String,
    fields: Vec<FieldView>,
    errors: Errors,
    notice: Option<String>,
    preview: Option<String>,
    /// Peak memory and expected duration, in words.
    estimate: Option<String>,
    captions: [&'static str; 4],
}

#[derive(Deserialize)]
pub struct NewParams {
    preset: Option<String>,
    /// Clone this job: the form filled with its config, name and priority.
    from: Option<String>,
}

/// `GET /jobs/new[?preset=NAME | ?from=JOB]`: the form filled from a preset (`tiny` by
/// default), or from a job to clone (fine-tuning and comparison jobs go to their own forms).
pub async fn show(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<NewParams>,
) -> PageResult<Response> {
    if let Some(from) = q.from {
        return clone_of(&state, &viewer, &from).await;
    }
    let preset = q
        .preset
        .filter(|p| ifp_trainer::config::PRESETS.iter().any(|x| x.name == p))
        .unwrap_or_else(|| "tiny".into());
    let base = ifp_trainer::config::preset(&preset)
        .ok_or_else(|| Error::Internal(format!("preset {preset} does not parse")))?;
    let mut sub = Submitted {
        name: format!("{preset} pre-training"),
        source: "preset".into(),
        loaded_from: form::fingerprint_preset(&preset),
        values: form::values_of(&base),
        preset,
        priority: "0".into(),
        noise_source: "generate".into(),
        ..Default::default()
    };
    let shown = Shown::of(&state, &viewer, &base).await;
    sub.action = "load".into();
    Ok(page(
        &viewer,
        sub,
        Errors::new(),
        None,
        shown,
        StatusCode::OK,
    ))
}

/// The form filled with a pre-training job's stored config (as YAML, so every setting is
/// kept), its name marked as a clone, and the job as the new one's parent.
async fn clone_of(state: &AppState, viewer: &Viewer, from: &str) -> PageResult<Response> {
    let job = crate::jobs::service::visible_job(&state.pool, &viewer.caller, from).await?;
    if let Some(elsewhere) = submission::to_own_form(&job, JobKind::Pretrain) {
        return Ok(elsewhere);
    }
    let cfg = Config::from_value(job.config.clone())
        .map_err(|e| Error::Internal(format!("job {}: stored config: {e}", job.id)))?;
    let yaml = cfg.to_yaml();
    let mut sub = Submitted {
        name: submission::clone_name(&job.name),
        source: "yaml".into(),
        loaded_from: form::fingerprint_yaml(&yaml),
        values: form::values_of(&cfg),
        config_yaml: yaml,
        preset: "tiny".into(),
        priority: job.priority.to_string(),
        noise_source: "generate".into(),
        parent: job.id.to_string(),
        action: "load".into(),
        ..Default::default()
    };
    if let Some(img) = cfg.data.noise_image.as_ref().and_then(|p| p.to_str()) {
        sub.noise_source = "upload".into();
        sub.noise_upload = img.to_string();
    }
    let notice = format!(
        "A clone of “{}”: every setting is the original's. Change what you want to vary, then \
         submit; the new job links back to it.",
        job.name
    );
    let shown = Shown::of(state, viewer, &cfg).await;
    Ok(page(
        viewer,
        sub,
        Errors::new(),
        Some(notice),
        shown,
        StatusCode::OK,
    ))
}

/// `POST /jobs/new`.
pub async fn submit(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    multipart: Multipart,
) -> PageResult<Response> {
    let (mut sub, mut errors) = receive(&state, &viewer, &headers, multipart).await?;
    let base = match base_config(&mut sub).await {
        Ok(b) => b,
        Err(e) => {
            errors.extend(e);
            return Ok(invalid(&viewer, sub, errors));
        }
    };
    let fingerprint = fingerprint(&sub);
    if sub.action == "load" || fingerprint != sub.loaded_from {
        // Another base was chosen: show its values rather than mixing them with the old ones.
        sub.values = form::values_of(&base);
        if let Some(img) = base.data.noise_image.as_ref().and_then(|p| p.to_str()) {
            sub.noise_source = "upload".into();
            sub.noise_upload = img.to_string();
        }
        sub.loaded_from = fingerprint;
        let notice = format!(
            "The fields now show the values of {}. Review them, then submit.",
            if sub.source == "yaml" {
                "your YAML".to_string()
            } else {
                format!("the `{}` preset", sub.preset)
            }
        );
        let shown = Shown::of(&state, &viewer, &with_noise(&base, &sub)).await;
        return Ok(page(
            &viewer,
            sub,
            errors,
            Some(notice),
            shown,
            StatusCode::OK,
        ));
    }
    let cfg = match build(&base, &sub) {
        Ok(c) if errors.is_empty() => c,
        Ok(_) => return Ok(invalid(&viewer, sub, errors)),
        Err(e) => {
            errors.extend(e);
            return Ok(invalid(&viewer, sub, errors));
        }
    };
    if sub.action == "preview" {
        let preview = match preview_data_uri(&state, &viewer, &cfg).await {
            Ok(p) => Some(p),
            Err(e) => {
                errors.insert("form".into(), e);
                None
            }
        };
        let shown = Shown {
            preview,
            estimate: submission::estimate_text(&state, &JobSpec::Pretrain(Box::new(cfg.clone())))
                .await,
        };
        return Ok(page(&viewer, sub, errors, None, shown, StatusCode::OK));
    }
    let Some(priority) = submission::whole_number("priority", &sub.priority, &mut errors) else {
        return Ok(invalid(&viewer, sub, errors));
    };
    let priority = i32::try_from(priority).unwrap_or(i32::MAX);
    let parent = match submission::parent_of(&sub.parent) {
        Ok(p) => p,
        Err(e) => {
            errors.insert("form".into(), e);
            return Ok(invalid(&viewer, sub, errors));
        }
    };
    let spec = JobSpec::Pretrain(Box::new(cfg));
    let result = viewer
        .submit(&state, &sub.name, priority, parent, spec)
        .await;
    submission::outcome(result, errors, field_for_key, |errors| {
        invalid(&viewer, sub, errors)
    })
}

/// `POST /jobs/new/preview`: the preview PNG of the form as it stands (for the page's script),
/// or 422 with the reason as text.
pub async fn preview(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    multipart: Multipart,
) -> PageResult<Response> {
    let (mut sub, errors) = receive(&state, &viewer, &headers, multipart).await?;
    let cfg = base_config(&mut sub).await.and_then(|base| {
        if fingerprint(&sub) == sub.loaded_from {
            build(&base, &sub)
        } else {
            Ok(with_noise(&base, &sub))
        }
    });
    let cfg = match cfg {
        Ok(c) if errors.is_empty() => c,
        Ok(_) | Err(_) => {
            let all: Errors = errors
                .into_iter()
                .chain(cfg.err().unwrap_or_default())
                .collect();
            let text: Vec<String> = all.into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, text.join("\n")).into_response());
        }
    };
    match preview_png(&state, &viewer, &cfg).await {
        Ok(png) => Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response()),
        Err(e) => Ok((StatusCode::UNPROCESSABLE_ENTITY, e).into_response()),
    }
}

/// Reads a posted form, refuses it unless it came from our page, and stores a new noise image.
async fn receive(
    state: &AppState,
    viewer: &Viewer,
    headers: &HeaderMap,
    multipart: Multipart,
) -> Result<(Submitted, Errors), Error> {
    let mut sub = read_form(multipart).await?;
    viewer.check_form(headers, &sub.csrf)?;
    let mut errors = Errors::new();
    store_noise_upload(state, viewer, &mut sub, &mut errors).await;
    Ok((sub, errors))
}

/// The form again, with its errors, as 422.
fn invalid(viewer: &Viewer, sub: Submitted, errors: Errors) -> Response {
    page(
        viewer,
        sub,
        errors,
        None,
        Shown::default(),
        submission::REFUSED,
    )
}

/// The learning-rate hint with the rate the run will actually use: the reference scales
/// `TRAIN.BASE_LR` by `DATA.BATCH_SIZE / 512`, so the field's value is not the step size.
fn effective_lr_hint(hint: &str, values: &super::form::Values) -> String {
    let num = |k: &str| values.get(k).and_then(|v| v.trim().parse::<f64>().ok());
    match (num("base_lr"), num("batch_size")) {
        (Some(lr), Some(b)) if lr.is_finite() && b > 0.0 => format!(
            "{hint}: with batch {b} the run steps at {:.2e} (warm-up and cosine decay from \
             there)",
            lr * b / 512.0
        ),
        _ => hint.to_string(),
    }
}

fn page(
    viewer: &Viewer,
    sub: Submitted,
    errors: Errors,
    notice: Option<String>,
    shown: Shown,
    status: StatusCode,
) -> Response {
    let fields = FIELDS
        .iter()
        .map(|f| FieldView {
            name: f.name,
            label: f.label,
            hint: if f.name == "base_lr" {
                effective_lr_hint(f.hint, &sub.values)
            } else {
                f.hint.to_string()
            },
            options: match f.kind {
                Kind::Choice(o) => o,
                _ => &[],
            },
            step: if f.kind == Kind::Float { "any" } else { "1" },
            value: sub.values.get(f.name).cloned().unwrap_or_default(),
            error: errors.get(f.name).cloned(),
        })
        .collect();
    let p = NewJobPage {
        layout: Layout::new("New job", Some(viewer)),
        name: sub.name,
        source: sub.source,
        preset: sub.preset,
        presets: ifp_trainer::config::PRESETS
            .iter()
            .map(|p| PresetView {
                name: p.name,
                description: p.description,
            })
            .collect(),
        config_yaml: sub.config_yaml,
        loaded_from: sub.loaded_from,
        priority: sub.priority,
        noise_source: sub.noise_source,
        noise_upload: sub.noise_upload,
        parent: sub.parent,
        fields,
        errors,
        notice,
        preview: shown.preview,
        estimate: shown.estimate,
        captions: ifp_trainer::preview::CAPTIONS,
    };
    (status, render(&p)).into_response()
}
