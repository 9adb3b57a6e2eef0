//! The new-job form's model: which config keys it shows as fields, how a config fills them,
//! and how submitted values land back in a config. Pure functions, so the rules are tested
//! without a server.
//!
//! The form starts from a base (a preset or YAML text); its fields show the base's values and
//! are what gets submitted. `loaded_from` records which base the fields were filled from: when
//! the user picks another base, the server refills the fields from it instead of silently
//! mixing the two, so what the form shows is always what runs.

use std::collections::BTreeMap;

use ifp_trainer::Config;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// How a field is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Float,
    Choice(&'static [&'static str]),
}

/// One form field and the config key it edits.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The form field's name.
    pub name: &'static str,
    /// The config key, as the reference writes it.
    pub key: &'static str,
    pub label: &'static str,
    pub kind: Kind,
    pub hint: &'static str,
}

/// The fields, in display order.
#[rustfmt::skip]
pub const FIELDS: &[Field] = &[
    Field { name: "backbone", key: "MODEL.TYPE", label: "Backbone", kind: Kind::Choice(&["restormer", "uformer"]), hint: "Restormer or Uformer (the reference's two encoders)" },
    Field { name: "img_size", key: "DATA.IMG_SIZE", label: "Image size", kind: Kind::Int, hint: "side of the square training crop, in pixels" },
    Field { name: "batch_size", key: "DATA.BATCH_SIZE", label: "Batch size", kind: Kind::Int, hint: "crops per optimiser step" },
    Field { name: "steps", key: "TRAIN.STEPS", label: "Steps", kind: Kind::Int, hint: "optimiser steps in the run" },
    Field { name: "filter_type", key: "DATA.FILTER_TYPE", label: "Mask type", kind: Kind::Choice(&["IFP", "MFM"]), hint: "IFP: removes random square rings of the spectrum (the paper); MFM: a low- or high-pass circle (its predecessor)" },
    Field { name: "sample_ratio", key: "DATA.SAMPLE_RATIO", label: "Mask ratio", kind: Kind::Float, hint: "IFP: rings removed = this x half the crop side (drawn with repeats); MFM: the chance a sample is low-pass; 0 to 1" },
    Field { name: "recover_target", key: "MODEL.RECOVER_TARGET_TYPE", label: "Loss", kind: Kind::Choice(&["normal", "masked", "m_masked", "m_m_masked"]), hint: "what the loss compares, see below (m_masked: the reference's choice)" },
    Field { name: "base_lr", key: "TRAIN.BASE_LR", label: "Learning rate", kind: Kind::Float, hint: "TRAIN.BASE_LR; as in the reference it is scaled by batch size / 512" },
    Field { name: "save_freq", key: "SAVE_FREQ", label: "Save every", kind: Kind::Int, hint: "steps between checkpoints (and sample strips)" },
    Field { name: "seed", key: "SEED", label: "Seed", kind: Kind::Int, hint: "seeds crops, masks and initial weights" },
    Field { name: "noise_width", key: "DATA.NOISE.WIDTH", label: "Noise width", kind: Kind::Int, hint: "pixels" },
    Field { name: "noise_height", key: "DATA.NOISE.HEIGHT", label: "Noise height", kind: Kind::Int, hint: "pixels" },
    Field { name: "noise_mean", key: "DATA.NOISE.MEAN", label: "Noise mean", kind: Kind::Float, hint: "0 to 1" },
    Field { name: "noise_std", key: "DATA.NOISE.STD", label: "Noise std", kind: Kind::Float, hint: "standard deviation per pixel" },
    Field { name: "noise_seed", key: "DATA.NOISE.SEED", label: "Noise seed", kind: Kind::Int, hint: "which noise image" },
];

/// Field values by field name.
pub type Values = BTreeMap<&'static str, String>;

/// The config's values of every field.
pub fn values_of(cfg: &Config) -> Values {
    let v = serde_json::to_value(cfg).unwrap_or(Value::Null);
    FIELDS
        .iter()
        .map(|f| {
            let s = if f.key == "TRAIN.STEPS" {
                cfg.total_steps().to_string()
            } else {
                match v.pointer(&pointer(f.key)) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::Bool(b)) => b.to_string(),
                    _ => String::new(),
                }
            };
            (f.name, s)
        })
        .collect()
}

/// Errors by field name (or `config_yaml`, `preset`, `noise_file`, `name`, `form` for the rest).
pub type Errors = BTreeMap<String, String>;

/// The base config with the submitted field values written over it, validated. Errors are
/// attached to the field they concern; a problem with a key that has no field goes to `form`.
pub fn apply(base: &Config, values: &Values) -> Result<Config, Errors> {
    let mut v = serde_json::to_value(base).unwrap_or(Value::Null);
    let mut errors = Errors::new();
    for f in FIELDS {
        let raw = values.get(f.name).map(|s| s.trim()).unwrap_or_default();
        if raw.is_empty() {
            errors.insert(f.name.into(), "required".into());
            continue;
        }
        let parsed = match f.kind {
            Kind::Int => raw
                .parse::<u64>()
                .map(Value::from)
                .map_err(|_| format!("`{raw}` is not a whole number")),
            Kind::Float => match raw.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(Value::from(x)),
                _ => Err(format!("`{raw}` is not a number")),
            },
            Kind::Choice(options) if options.contains(&raw) => Ok(Value::from(raw)),
            Kind::Choice(options) => Err(format!("choose one of {}", options.join(", "))),
        };
        match parsed {
            Ok(x) => set(&mut v, f.key, x),
            Err(e) => {
                errors.insert(f.name.into(), e);
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // Uformer states its input size twice; the form has one field for both.
    if v.pointer("/MODEL/TYPE") == Some(&Value::from("uformer")) {
        if let Some(size) = v.pointer("/DATA/IMG_SIZE").cloned() {
            set(&mut v, "MODEL.UFORMER.IMAGE_SIZE", size);
        }
    }
    Config::from_value(v).map_err(|e| {
        let field = e
            .key_path()
            .and_then(|k| {
                FIELDS
                    .iter()
                    .find(|f| f.key == k || k.starts_with(&format!("{}.", f.key)))
            })
            .map_or("form".to_string(), |f| f.name.to_string());
        let mut errors = Errors::new();
        errors.insert(field, e.to_string());
        errors
    })
}

/// The fingerprint of a base, for `loaded_from`.
pub fn fingerprint_preset(name: &str) -> String {
    format!("preset:{name}")
}

/// Line endings do not count: browsers send a textarea's lines ending in CRLF whatever the page
/// held, and a clone's form must not read that as a new YAML (which would reload the fields
/// over the user's edits).
pub fn fingerprint_yaml(text: &str) -> String {
    let text = text.trim().replace("\r\n", "\n");
    format!("yaml:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

/// `A.B.C` -> `/A/B/C`.
fn pointer(key: &str) -> String {
    format!("/{}", key.replace('.', "/"))
}

fn set(root: &mut Value, key: &str, value: Value) {
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if !node.is_object() {
            *node = Value::Object(Default::default());
        }
        let Value::Object(map) = node else { return };
        if i + 1 == parts.len() {
            map.insert((*p).to_string(), value);
            return;
        }
        node = map.entry((*p).to_string()).or_insert(Value::Null);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Config {
        ifp_trainer::config::preset("tiny").expect("tiny")
    }

    #[test]
    fn a_yaml_sent_back_with_crlf_lines_is_the_same_base() {
        let yaml = "MODEL:\n  TYPE: restormer\n";
        assert_eq!(
            fingerprint_yaml(yaml),
            fingerprint_yaml("MODEL:\r\n  TYPE: restormer\r\n")
        );
        assert_ne!(
            fingerprint_yaml(yaml),
            fingerprint_yaml("MODEL:\n  TYPE: uformer\n")
        );
    }

    #[test]
    fn fields_round_trip_through_a_config() {
        let cfg = tiny();
        let values = values_of(&cfg);
        assert_eq!(values["img_size"], "32");
        assert_eq!(values["steps"], "400");
        assert_eq!(values["recover_target"], "m_masked");
        assert_eq!(apply(&cfg, &values).expect("unchanged"), cfg);
    }

    #[test]
    fn edited_fields_land_in_the_config() {
        let mut values = values_of(&tiny());
        values.insert("steps", "60".into());
        values.insert("base_lr", "0.01".into());
        values.insert("noise_seed", "7".into());
        let cfg = apply(&tiny(), &values).expect("valid");
        assert_eq!(cfg.total_steps(), 60);
        assert_eq!(cfg.train.base_lr, 0.01);
        assert_eq!(cfg.data.noise.seed, 7);
        // Keys without a field keep the base's values.
        assert_eq!(cfg.model, tiny().model);
    }

    #[test]
    fn errors_name_the_field() {
        let mut values = values_of(&tiny());
        values.insert("batch_size", "four".into());
        values.insert("filter_type", "XYZ".into());
        let e = apply(&tiny(), &values).expect_err("bad values");
        assert!(e["batch_size"].contains("`four`"), "{e:?}");
        assert!(e["filter_type"].contains("IFP"), "{e:?}");

        let mut values = values_of(&tiny());
        values.insert("sample_ratio", "1.5".into());
        let e = apply(&tiny(), &values).expect_err("out of range");
        assert!(e["sample_ratio"].contains("1.5"), "{e:?}");

        let mut values = values_of(&tiny());
        values.insert("img_size", "".into());
        assert_eq!(
            apply(&tiny(), &values).expect_err("empty")["img_size"],
            "required"
        );
    }

    #[test]
    fn fingerprints_tell_bases_apart() {
        assert_ne!(
            fingerprint_preset("tiny"),
            fingerprint_preset("restormer-paper")
        );
        assert_eq!(fingerprint_yaml("A: 1\n"), fingerprint_yaml("A: 1"));
        assert_ne!(fingerprint_yaml("A: 1"), fingerprint_yaml("A: 2"));
    }
}
