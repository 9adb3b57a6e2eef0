//! `/jobs/new`: the submission form. Start from a preset or YAML (pasted or uploaded), edit the
//! common fields, pick a generated or uploaded noise image, see a preview of what the network
//! will learn from, submit. Without JavaScript every button is a plain form submit; with it,
//! the preview follows the fields as they change (`POST /jobs/new/preview`).

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Multipart, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use ifp_trainer::Config;
use serde::Deserialize;

use super::form::{self, Errors, Kind, Values, FIELDS};
use super::{render, Layout, PageResult, Viewer};
use crate::error::Error;
use crate::http::state::AppState;
use crate::jobs::spec::JobSpec;

/// What the form posted.
#[derive(Default)]
struct Submitted {
    csrf: String,
    /// `submit`, `load` (refill the fields from the base) or `preview`.
    action: String,
    name: String,
    /// `preset` or `yaml`.
    source: String,
    preset: String,
    config_yaml: String,
    config_file: Option<String>,
    loaded_from: String,
    values: Values,
    priority: String,
    /// `generate` or `upload`.
    noise_source: String,
    /// The stored upload the form already refers to (`uploads/<sha256>.<ext>`).
    noise_upload: String,
    noise_file: Option<Bytes>,
    /// The job this one is cloned from (its id), recorded as the new job's parent.
    parent: String,
}

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
    match job.kind {
        crate::db::values::JobKind::Pretrain => {}
        crate::db::values::JobKind::Finetune => {
            return Ok(Redirect::to(&format!("/jobs/new/finetune?from={}", job.id)).into_response())
        }
        crate::db::values::JobKind::Compare => {
            return Ok(Redirect::to(&format!("/jobs/new/compare?from={}", job.id)).into_response())
        }
    }
    let cfg = Config::from_value(job.config.clone())
        .map_err(|e| Error::Internal(format!("job {}: stored config: {e}", job.id)))?;
    let yaml = cfg.to_yaml();
    let mut sub = Submitted {
        name: clone_name(&job.name),
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

/// `NAME (clone)`, kept within the 200 characters a name may have.
pub(super) fn clone_name(name: &str) -> String {
    let base: String = name.chars().take(192).collect();
    format!("{base} (clone)")
}

/// The `parent` a form carries: empty for none, else a job id.
pub(super) fn parent_of(raw: &str) -> Result<Option<uuid::Uuid>, String> {
    match raw.trim() {
        "" => Ok(None),
        id => id
            .parse()
            .map(Some)
            .map_err(|_| format!("`{id}` is not a job id; open Clone from the job's page again")),
    }
}

/// `POST /jobs/new`.
pub async fn submit(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    multipart: Multipart,
) -> PageResult<Response> {
    let (mut sub, mut errors) = receive(&state, &viewer, &headers, multipart).await?;
    let base = match base_config(&mut sub) {
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
            estimate: estimate_text(&state, &cfg).await,
        };
        return Ok(page(&viewer, sub, errors, None, shown, StatusCode::OK));
    }
    let priority = match sub.priority.trim().parse::<i32>() {
        Ok(p) => p,
        Err(_) => {
            errors.insert(
                "priority".into(),
                format!("`{}` is not a whole number", sub.priority),
            );
            return Ok(invalid(&viewer, sub, errors));
        }
    };
    let parent = match parent_of(&sub.parent) {
        Ok(p) => p,
        Err(e) => {
            errors.insert("form".into(), e);
            return Ok(invalid(&viewer, sub, errors));
        }
    };
    let spec = JobSpec::Pretrain(Box::new(cfg));
    match viewer
        .submit(&state, &sub.name, priority, parent, spec)
        .await
    {
        Ok(job) => Ok(Redirect::to(&format!("/jobs/{}", job.id)).into_response()),
        Err(Error::Invalid { key_path, message }) => {
            errors.insert(field_for_key(key_path.as_deref()), message);
            Ok(invalid(&viewer, sub, errors))
        }
        Err(e) => Err(e.into()),
    }
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
    let cfg = base_config(&mut sub).and_then(|base| {
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
        StatusCode::UNPROCESSABLE_ENTITY,
    )
}

async fn read_form(mut mp: Multipart) -> Result<Submitted, Error> {
    let mut s = Submitted::default();
    let bad = |e: axum::extract::multipart::MultipartError| Error::Status {
        status: e.status(),
        message: e.body_text(),
    };
    while let Some(field) = mp.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "config_file" => {
                let bytes = field.bytes().await.map_err(bad)?;
                if !bytes.is_empty() {
                    let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                        Error::invalid(Some("config_yaml"), "the config file is not UTF-8 text")
                    })?;
                    s.config_file = Some(text);
                }
            }
            "noise_file" => {
                let bytes = field.bytes().await.map_err(bad)?;
                if !bytes.is_empty() {
                    s.noise_file = Some(bytes);
                }
            }
            _ => {
                let text = field.text().await.map_err(bad)?;
                match name.as_str() {
                    "csrf" => s.csrf = text,
                    "action" => s.action = text,
                    "name" => s.name = text,
                    "source" => s.source = text,
                    "preset" => s.preset = text,
                    "config_yaml" => s.config_yaml = text,
                    "loaded_from" => s.loaded_from = text,
                    "priority" => s.priority = text,
                    "noise_source" => s.noise_source = text,
                    "noise_upload" => s.noise_upload = text,
                    "parent" => s.parent = text,
                    other => {
                        if let Some(f) = FIELDS.iter().find(|f| f.name == other) {
                            s.values.insert(f.name, text);
                        }
                    }
                }
            }
        }
    }
    if s.source != "yaml" {
        s.source = "preset".into();
    }
    if s.noise_source != "upload" {
        s.noise_source = "generate".into();
    }
    Ok(s)
}

/// Stores a newly uploaded noise image and makes the form refer to it.
async fn store_noise_upload(
    state: &AppState,
    viewer: &Viewer,
    sub: &mut Submitted,
    errors: &mut Errors,
) {
    let Some(bytes) = sub.noise_file.take() else {
        return;
    };
    match crate::jobs::uploads::save(&state.pool, &state.artifacts, &viewer.caller.name, bytes)
        .await
    {
        Ok(r) => {
            sub.noise_upload = r;
            sub.noise_source = "upload".into();
        }
        Err(e) => {
            errors.insert("noise_file".into(), e.public().2);
        }
    }
}

/// The chosen base config: a preset, or the YAML (an uploaded file replaces the text box).
fn base_config(sub: &mut Submitted) -> Result<Config, Errors> {
    let mut errors = Errors::new();
    if sub.source == "yaml" {
        if let Some(text) = sub.config_file.take() {
            sub.config_yaml = text;
        }
        if sub.config_yaml.trim().is_empty() {
            errors.insert(
                "config_yaml".into(),
                "paste a config or choose a YAML file".into(),
            );
            return Err(errors);
        }
        Config::from_yaml(&sub.config_yaml).map_err(|e| {
            errors.insert("config_yaml".into(), e.to_string());
            errors
        })
    } else {
        match ifp_trainer::config::preset(&sub.preset) {
            Some(c) => Ok(c),
            None => {
                errors.insert("preset".into(), format!("unknown preset `{}`", sub.preset));
                Err(errors)
            }
        }
    }
}

fn fingerprint(sub: &Submitted) -> String {
    if sub.source == "yaml" {
        form::fingerprint_yaml(&sub.config_yaml)
    } else {
        form::fingerprint_preset(&sub.preset)
    }
}

/// The base with the form's fields and noise choice applied.
fn build(base: &Config, sub: &Submitted) -> Result<Config, Errors> {
    let cfg = form::apply(base, &sub.values)?;
    if sub.noise_source == "upload" && sub.noise_upload.is_empty() {
        let mut e = Errors::new();
        e.insert("noise_file".into(), "choose a PNG or JPEG file".into());
        return Err(e);
    }
    Ok(with_noise(&cfg, sub))
}

fn with_noise(cfg: &Config, sub: &Submitted) -> Config {
    let mut cfg = cfg.clone();
    cfg.data.noise_image = (sub.noise_source == "upload" && !sub.noise_upload.is_empty())
        .then(|| sub.noise_upload.clone().into());
    cfg
}

/// The form field a config key belongs to (`form` for keys without one).
fn field_for_key(key: Option<&str>) -> String {
    match key {
        Some("DATA.NOISE_IMAGE") => "noise_file".into(),
        Some(k @ ("name" | "priority")) => k.into(),
        Some(k) => FIELDS
            .iter()
            .find(|f| f.key == k)
            .map_or("form".to_string(), |f| f.name.to_string()),
        None => "form".into(),
    }
}

async fn preview_png(state: &AppState, viewer: &Viewer, cfg: &Config) -> Result<Vec<u8>, String> {
    crate::jobs::uploads::check(&state.pool, &state.artifacts, &viewer.caller, cfg)
        .await
        .map_err(|e| e.public().2)?;
    let mut cfg = cfg.clone();
    crate::jobs::uploads::resolve(&state.artifacts, &mut cfg);
    tokio::task::spawn_blocking(move || {
        let img = ifp_trainer::preview::render(&cfg)?;
        ifp_trainer::checkpoint::png_bytes(&img)
    })
    .await
    .map_err(|e| format!("preview: {e}"))?
    .map_err(|e| e.to_string())
}

async fn preview_data_uri(
    state: &AppState,
    viewer: &Viewer,
    cfg: &Config,
) -> Result<String, String> {
    let png = preview_png(state, viewer, cfg).await?;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    ))
}

/// What the form shows about a config besides its fields: the preview image and the estimate
/// of the run's peak memory and duration.
#[derive(Default)]
struct Shown {
    preview: Option<String>,
    estimate: Option<String>,
}

impl Shown {
    async fn of(state: &AppState, viewer: &Viewer, cfg: &Config) -> Shown {
        Shown {
            preview: preview_data_uri(state, viewer, cfg).await.ok(),
            estimate: estimate_text(state, cfg).await,
        }
    }
}

/// The estimate in words, or `None` if the database cannot say.
async fn estimate_text(state: &AppState, cfg: &Config) -> Option<String> {
    use ifp_trainer::memory::human;
    let e = match crate::jobs::service::estimate(&state.pool, cfg).await {
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
    let duration = match e.seconds {
        Some(s) => format!(
            " Training takes about {} at the median speed of {} finished run{} with this \
             network, crop size and batch size.",
            crate::http::views::fmt::duration(s),
            e.runs,
            if e.runs == 1 { "" } else { "s" }
        ),
        None => " No expected duration yet: no finished run has this network, crop size and \
                  batch size."
            .to_string(),
    };
    Some(memory + &duration)
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
