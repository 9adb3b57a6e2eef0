//! The fine-tuning run configuration: the pre-training schema's `MODEL` tree (the network to
//! build) and `TRAIN` tree (optimiser and schedule), plus the task's data and head. Same
//! conventions as `config`: upper-case keys, unknown keys are errors naming the key path.
//!
//! One difference from pre-training: `TRAIN.BASE_LR`, `WARMUP_LR` and `MIN_LR` are the actual
//! learning rates (not scaled by `DATA.BATCH_SIZE / 512`), since fine-tuning recipes quote
//! unscaled rates.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::data::Degradation;
use crate::config::{ConfigError, ModelConfig, OptimizerConfig, TrainConfig};

/// The whole fine-tuning configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE", default)]
pub struct FinetuneConfig {
    /// The network (`MODEL.TYPE` and its `RESTORMER` or `UFORMER` tree); must match the weights.
    pub model: ModelConfig,
    /// Initial weights (a pre-training or fine-tuning model file, or reference-named PyTorch
    /// weights): Restormer keeps only `encoder.*`, Uformer `encoder.*` and `decoder.*`; absent =
    /// from scratch, seeded by `SEED`.
    pub init: Option<PathBuf>,
    pub head: HeadConfig,
    pub data: TaskData,
    pub train: TrainConfig,
    pub print_freq: usize,
    /// Checkpoint and validate every N steps (and at the end).
    pub save_freq: usize,
    /// Seed of crops, flips, noise, the head's and (from scratch) the encoder's weights.
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE", default)]
pub struct HeadConfig {
    /// Add the degraded input to the head's output (residual learning).
    pub residual: bool,
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig { residual: true }
    }
}

/// Where the images come from and how training crops are made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE", default)]
pub struct TaskData {
    /// Paired (`input/` + `target/`) or clean images.
    pub train_dir: PathBuf,
    /// Test images; absent = every `SPLIT_EVERY`-th image of `TRAIN_DIR` (natural name order).
    pub test_dir: Option<PathBuf>,
    pub split_every: usize,
    /// Training images held out for validation (best-checkpoint selection).
    pub val_images: usize,
    /// Centre crop of validation images (0 = whole images).
    pub val_crop: usize,
    /// Use only the first N test images (0 = all).
    pub max_test_images: usize,
    /// Synthetic degradation of clean images: noise sigma on [0, 255], blur sigma in pixels.
    pub noise_sigma: f64,
    pub blur_sigma: f64,
    /// Side of the square training crops.
    pub crop: usize,
    pub batch_size: usize,
}

impl Default for TaskData {
    fn default() -> Self {
        TaskData {
            train_dir: PathBuf::new(),
            test_dir: None,
            split_every: 5,
            val_images: 4,
            val_crop: 128,
            max_test_images: 0,
            noise_sigma: 0.0,
            blur_sigma: 0.0,
            crop: 48,
            batch_size: 4,
        }
    }
}

impl TaskData {
    pub fn degradation(&self) -> Degradation {
        Degradation {
            noise_sigma: self.noise_sigma,
            blur_sigma: self.blur_sigma,
        }
    }
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            model: ModelConfig::default(),
            init: None,
            head: HeadConfig::default(),
            data: TaskData::default(),
            train: TrainConfig {
                epochs: 1000,
                steps: None,
                warmup_epochs: 50,
                base_lr: 3e-4,
                warmup_lr: 1e-6,
                min_lr: 1e-6,
                weight_decay: 1e-4,
                clip_grad: 3.0,
                optimizer: OptimizerConfig {
                    name: "adamw".into(),
                    betas: (0.9, 0.999),
                    eps: 1e-8,
                },
                ..TrainConfig::default()
            },
            print_freq: 10,
            save_freq: 100,
            seed: 0,
        }
    }
}

/// Writes `top` over `base`, object by object; anything else in `top` replaces `base`.
fn overlay(base: &mut serde_json::Value, top: serde_json::Value) {
    match (base, top) {
        (serde_json::Value::Object(b), serde_json::Value::Object(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(slot) => overlay(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, top) => *slot = top,
    }
}

impl FinetuneConfig {
    /// Parses and validates YAML (or JSON) in this schema.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let value = crate::config::parse_yaml(text)?;
        // Keys the text leaves out take the fine-tuning defaults, also inside a partly given
        // tree: `TRAIN: {STEPS: 500}` alone would otherwise fill the rest of TRAIN with the
        // pre-training defaults of `TrainConfig` (weight decay 0.05, betas (0.9, 0.95), ...).
        let mut merged = serde_json::to_value(FinetuneConfig::default())
            .map_err(|e| ConfigError::Yaml(e.to_string()))?;
        if !value.is_null() {
            overlay(&mut merged, value);
        }
        let value = merged;
        let cfg: FinetuneConfig =
            serde_path_to_error::deserialize(value).map_err(|e| ConfigError::Invalid {
                path: e.path().to_string(),
                message: e.into_inner().to_string(),
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Whether `text` (YAML or JSON in this schema) states the network: a `MODEL` tree. A
    /// fine-tuning run must state it or inherit it from its initial weights; the schema's
    /// default (the 26.5M-parameter paper Restormer) is never picked silently.
    pub fn names_model(text: &str) -> bool {
        crate::config::parse_yaml(text).is_ok_and(|v| v.get("MODEL").is_some())
    }

    /// Refuses settings of the shared `TRAIN` tree that fine-tuning never reads, so a run
    /// cannot look as if it honoured them: `TRAIN.AMP` (fine-tuning trains in float32) and
    /// `TRAIN.KEEP_CHECKPOINTS` (fine-tuning keeps every checkpoint, since the best one is
    /// chosen by validation at the end). Only a value other than the default is refused. Not
    /// part of [`FinetuneConfig::validate`], so configs stored before this check still read
    /// back; submissions and the CLI call it.
    pub fn refuse_unread(&self) -> Result<(), ConfigError> {
        let default = FinetuneConfig::default().train;
        let t = &self.train;
        let bad = |path: &str, message: String| {
            Err(ConfigError::Invalid {
                path: path.into(),
                message,
            })
        };
        if t.amp != default.amp {
            return bad(
                "TRAIN.AMP",
                // `off` is the default, so only `bf16` reaches here.
                "`bf16`: fine-tuning trains in float32 and never reads it; leave it out".into(),
            );
        }
        if t.keep_checkpoints != default.keep_checkpoints {
            return bad(
                "TRAIN.KEEP_CHECKPOINTS",
                format!(
                    "{}: fine-tuning keeps every checkpoint (the best one is chosen by \
                     validation at the end) and never reads it; leave it out",
                    t.keep_checkpoints
                ),
            );
        }
        Ok(())
    }

    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).unwrap_or_default()
    }

    pub fn total_steps(&self) -> usize {
        self.train.total_steps()
    }

    /// Range checks, reported with the key path at fault. The MODEL tree is checked by
    /// running the pre-training validator on a config that carries it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::config::validate::check_finite(self)?;
        crate::config::limits::check_limits(self)?;
        let bad = |path: &str, message: String| {
            Err(ConfigError::Invalid {
                path: path.into(),
                message,
            })
        };
        let mut pre = crate::Config {
            model: self.model.clone(),
            ..Default::default()
        };
        pre.model.decoder.in_nc = pre.model.restormer.out_channels;
        // A fine-tuning config has no DATA.IMG_SIZE: Uformer's size is its IMAGE_SIZE alone.
        pre.data.img_size = pre.model.uformer.image_size;
        pre.validate().map_err(|e| match e {
            ConfigError::Invalid { path, message } if path == "DATA.IMG_SIZE" => {
                ConfigError::Invalid {
                    path: "MODEL.UFORMER.IMAGE_SIZE".into(),
                    message,
                }
            }
            e => e,
        })?;
        let d = &self.data;
        if d.crop < 8 {
            return bad("DATA.CROP", format!("{} is below 8", d.crop));
        }
        if self.model.kind == crate::config::ModelType::Uformer
            && !crate::models::uformer::fits(&self.model.uformer, d.crop)
        {
            let u = &self.model.uformer;
            let hint = crate::models::uformer::padded_side(u, d.crop, d.crop)
                .map(|s| format!("; {s} does"))
                .unwrap_or_default();
            return bad(
                "DATA.CROP",
                format!(
                    "{} does not fit the Uformer (IMAGE_SIZE {}, WIN_SIZE {}): the network's \
                     windows must tile every level of a training crop{hint}",
                    d.crop, u.image_size, u.win_size
                ),
            );
        }
        if d.batch_size == 0 {
            return bad("DATA.BATCH_SIZE", "must be at least 1, got 0".into());
        }
        if d.test_dir.is_none() && d.split_every < 2 {
            return bad(
                "DATA.SPLIT_EVERY",
                format!(
                    "{} is below 2 (every image would be a test image)",
                    d.split_every
                ),
            );
        }
        for (k, v) in [
            ("DATA.NOISE_SIGMA", d.noise_sigma),
            ("DATA.BLUR_SIGMA", d.blur_sigma),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(k, format!("{v} is not a finite number >= 0"));
            }
        }
        if d.val_crop != 0 && d.val_crop < super::super::eval::metrics::ssim_window() {
            return bad(
                "DATA.VAL_CROP",
                format!("{} is below 11 (SSIM's window)", d.val_crop),
            );
        }
        let t = &self.train;
        if t.total_steps() == 0 {
            return bad("TRAIN.STEPS", "must be at least 1".into());
        }
        for (k, v) in [
            ("TRAIN.BASE_LR", t.base_lr),
            ("TRAIN.WARMUP_LR", t.warmup_lr),
            ("TRAIN.MIN_LR", t.min_lr),
            ("TRAIN.WEIGHT_DECAY", t.weight_decay),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(k, format!("{v} is not a finite number >= 0"));
            }
        }
        if self.print_freq == 0 {
            return bad("PRINT_FREQ", "must be at least 1, got 0".into());
        }
        if self.save_freq == 0 {
            return bad("SAVE_FREQ", "must be at least 1, got 0".into());
        }
        crate::config::validate::check_checkpoint_count(self.save_freq, self.total_steps())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_have_upper_bounds() {
        for (yaml, key) in [
            ("DATA: {TRAIN_DIR: x, CROP: 100000}", "DATA.CROP"),
            (
                "DATA: {TRAIN_DIR: x, BATCH_SIZE: 1000000}",
                "DATA.BATCH_SIZE",
            ),
            (
                "DATA: {TRAIN_DIR: x, NOISE_SIGMA: 1000}",
                "DATA.NOISE_SIGMA",
            ),
            (
                "DATA: {TRAIN_DIR: x}\nTRAIN: {STEPS: 100000000}",
                "TRAIN.STEPS",
            ),
        ] {
            let e = FinetuneConfig::from_yaml(yaml).expect_err(yaml);
            assert_eq!(e.key_path(), Some(key), "{yaml}: {e}");
            assert!(e.to_string().contains("above the limit"), "{yaml}: {e}");
        }
    }

    #[test]
    fn settings_fine_tuning_never_reads_are_refused_naming_the_key() {
        for (yaml, key, value) in [
            ("TRAIN: {AMP: bf16}", "TRAIN.AMP", "`bf16`"),
            (
                "TRAIN: {KEEP_CHECKPOINTS: 2}",
                "TRAIN.KEEP_CHECKPOINTS",
                "2:",
            ),
        ] {
            let cfg = FinetuneConfig::from_yaml(yaml).expect("parses: stored configs read back");
            let e = cfg.refuse_unread().expect_err(yaml);
            assert_eq!(e.key_path(), Some(key), "{yaml}: {e}");
            assert!(e.to_string().contains(value), "{yaml}: {e}");
        }
        // The defaults, stated or not, are accepted.
        for yaml in ["", "TRAIN: {AMP: \"off\", KEEP_CHECKPOINTS: 5}"] {
            let cfg = FinetuneConfig::from_yaml(yaml).expect(yaml);
            cfg.refuse_unread().expect(yaml);
        }
    }

    #[test]
    fn a_partly_given_tree_keeps_the_fine_tuning_defaults() {
        let cfg = FinetuneConfig::from_yaml(
            "DATA: {TRAIN_DIR: x, CROP: 40}\nTRAIN: {STEPS: 500, BASE_LR: 1.0e-3}\n",
        )
        .expect("valid");
        let d = FinetuneConfig::default();
        assert_eq!(cfg.train.steps, Some(500));
        assert_eq!(cfg.train.base_lr, 1e-3);
        assert_eq!(cfg.train.weight_decay, d.train.weight_decay);
        assert_eq!(cfg.train.optimizer.betas, (0.9, 0.999));
        assert_eq!(cfg.train.min_lr, d.train.min_lr);
        assert_eq!(cfg.data.crop, 40);
        assert_eq!(cfg.data.val_images, d.data.val_images);
        // Unknown keys are still refused, naming the key.
        let e = FinetuneConfig::from_yaml("TRAIN: {STEPZ: 3}").expect_err("unknown key");
        assert!(e.to_string().contains("STEPZ"), "{e}");
        assert_eq!(FinetuneConfig::from_yaml("").expect("empty"), d);
    }
}
