//! What the new-job form posted, and the config it describes: the multipart fields read
//! into [`Submitted`], a new noise upload stored, the base (preset or YAML) chosen, the fields
//! and noise choice applied, and which field a config key's error belongs to.

use axum::body::Bytes;
use axum::extract::Multipart;
use ifp_trainer::Config;

use super::super::form::{self, Errors, Values, FIELDS};
use super::super::Viewer;
use crate::error::Error;
use crate::http::state::AppState;

/// What the form posted.
#[derive(Default)]
pub(super) struct Submitted {
    pub(super) csrf: String,
    /// `submit`, `load` (refill the fields from the base) or `preview`.
    pub(super) action: String,
    pub(super) name: String,
    /// `preset` or `yaml`.
    pub(super) source: String,
    pub(super) preset: String,
    pub(super) config_yaml: String,
    pub(super) config_file: Option<String>,
    pub(super) loaded_from: String,
    pub(super) values: Values,
    pub(super) priority: String,
    /// `generate` or `upload`.
    pub(super) noise_source: String,
    /// The stored upload the form already refers to (`uploads/<sha256>.<ext>`).
    pub(super) noise_upload: String,
    pub(super) noise_file: Option<Bytes>,
    /// The job this one is cloned from (its id), recorded as the new job's parent.
    pub(super) parent: String,
}

pub(super) async fn read_form(mut mp: Multipart) -> Result<Submitted, Error> {
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
pub(super) async fn store_noise_upload(
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
pub(super) async fn base_config(sub: &mut Submitted) -> Result<Config, Errors> {
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
        let parsed = super::super::submission::off_thread(&sub.config_yaml, Config::from_yaml);
        match parsed.await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => {
                errors.insert("config_yaml".into(), e.to_string());
                Err(errors)
            }
            Err(e) => {
                tracing::error!("{e}");
                errors.insert("config_yaml".into(), "the config could not be read".into());
                Err(errors)
            }
        }
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

pub(super) fn fingerprint(sub: &Submitted) -> String {
    if sub.source == "yaml" {
        form::fingerprint_yaml(&sub.config_yaml)
    } else {
        form::fingerprint_preset(&sub.preset)
    }
}

/// The base with the form's fields and noise choice applied.
pub(super) fn build(base: &Config, sub: &Submitted) -> Result<Config, Errors> {
    let cfg = form::apply(base, &sub.values)?;
    if sub.noise_source == "upload" && sub.noise_upload.is_empty() {
        let mut e = Errors::new();
        e.insert("noise_file".into(), "choose a PNG or JPEG file".into());
        return Err(e);
    }
    Ok(with_noise(&cfg, sub))
}

pub(super) fn with_noise(cfg: &Config, sub: &Submitted) -> Config {
    let mut cfg = cfg.clone();
    cfg.data.noise_image = (sub.noise_source == "upload" && !sub.noise_upload.is_empty())
        .then(|| sub.noise_upload.clone().into());
    cfg
}

/// The form field a config key belongs to (`form` for keys without one).
pub(super) fn field_for_key(key: Option<&str>) -> String {
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
