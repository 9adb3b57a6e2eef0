//! The run configuration: the reference's upper-case YAML schema (MODEL / DATA / TRAIN) as typed
//! structs with the reference defaults, plus the platform's extension keys (e.g. `TRAIN.STEPS`,
//! `DATA.NOISE.*`); unknown keys are errors that name the key.
//!
//! Parsing goes YAML -> `serde_json::Value` -> structs, so a YAML file, a JSON request body and a
//! web form share one code path and one set of error messages. Every struct denies unknown keys,
//! and errors carry the full key path (`TRAIN.BASE_LR`) through `serde_path_to_error`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::loss::RecoverTarget;

pub(crate) mod limits;
mod train;
pub(crate) mod validate;
mod yaml;

pub use train::{Amp, DeviceClass, OptimizerConfig, TrainConfig};
pub(crate) use yaml::parse_yaml;

/// A config that could not be read or is not usable, with the key path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config is not valid YAML: {0}")]
    Yaml(String),
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("unknown preset `{0}` (known: {known})", known = PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", "))]
    UnknownPreset(String),
}

impl ConfigError {
    fn invalid(path: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            path: path.to_string(),
            message: message.into(),
        }
    }

    /// The key path the error concerns (`TRAIN.BASE_LR`), when there is one.
    pub fn key_path(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// A built-in preset, shipped as a YAML file in `presets/`.
pub struct Preset {
    pub name: &'static str,
    pub description: &'static str,
    pub yaml: &'static str,
}

/// The presets listed by `ifp train --help`.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "tiny",
        description: "a tiny Restormer at 32x32: trains in about a minute on 2 CPU cores",
        yaml: include_str!("../../../presets/tiny.yaml"),
    },
    Preset {
        name: "tiny-uformer",
        description: "a tiny Uformer at 32x32 (the golden test network's size)",
        yaml: include_str!("../../../presets/tiny-uformer.yaml"),
    },
    Preset {
        name: "restormer-paper",
        description: "the reference Restormer config (224x224, 60000 steps)",
        yaml: include_str!("../../../presets/restormer-paper.yaml"),
    },
    Preset {
        name: "uformer-paper",
        description: "the reference Uformer config (256x256, 60000 steps)",
        yaml: include_str!("../../../presets/uformer-paper.yaml"),
    },
];

/// The built-in preset called `name`, parsed.
pub fn preset(name: &str) -> Option<Config> {
    PRESETS
        .iter()
        .find(|p| p.name == name)
        .and_then(|p| Config::from_yaml(p.yaml).ok())
}

// ---------------------------------------------------------------------------------------------
// Lenient scalar readers: the reference YAML writes `3e-4` (a string to YAML 1.1 readers) and
// `BETAS: (0.9, 0.95)` (a Python tuple as a string).

fn de_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        F(f64),
        S(String),
    }
    match Num::deserialize(d)? {
        Num::F(v) => Ok(v),
        Num::S(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| serde::de::Error::custom(format!("expected a number, got `{s}`"))),
    }
}

// ---------------------------------------------------------------------------------------------

/// The whole run configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE", default)]
pub struct Config {
    pub model: ModelConfig,
    pub data: DataConfig,
    pub train: TrainConfig,
    /// Log a progress line every N steps.
    pub print_freq: usize,
    /// Write a checkpoint every N steps (and always at the end).
    pub save_freq: usize,
    /// Free-form run tag (reference key; informational).
    pub tag: Option<String>,
    /// Seed of every random draw of the run (crops, flips, masks, weight init).
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: ModelConfig::default(),
            data: DataConfig::default(),
            train: TrainConfig::default(),
            print_freq: 10,
            save_freq: 300,
            tag: None,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelType {
    Restormer,
    Uformer,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE", default)]
pub struct ModelConfig {
    #[serde(rename = "TYPE")]
    pub kind: ModelType,
    pub name: String,
    #[serde(deserialize_with = "de_f64")]
    pub drop_path_rate: f64,
    /// `normal`, `masked`, `m_masked` or `m_m_masked`: which Fourier loss the run minimises.
    pub recover_target_type: RecoverTarget,
    /// Present in the reference Restormer config; the reference training loop batches by
    /// `DATA.BATCH_SIZE`, so this key is accepted and ignored.
    pub batch_size: Option<usize>,
    pub restormer: RestormerConfig,
    pub decoder: DecoderConfig,
    pub uformer: UformerConfig,
}

impl ModelConfig {
    /// Whether the two configs build the same backbone, so weights pre-trained with one
    /// initialise fine-tuning with the other: same `TYPE` and the same `RESTORMER` (encoder) or
    /// `UFORMER` tree (encoder and decoder, which Uformer fine-tunes too). Training-only settings
    /// such as the loss target do not matter.
    pub fn same_backbone(&self, other: &ModelConfig) -> bool {
        self.kind == other.kind
            && match self.kind {
                ModelType::Restormer => self.restormer == other.restormer,
                ModelType::Uformer => self.uformer == other.uformer,
            }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            kind: ModelType::Restormer,
            name: "pretrain".into(),
            drop_path_rate: 0.0,
            recover_target_type: RecoverTarget::MMasked,
            batch_size: None,
            restormer: RestormerConfig::default(),
            decoder: DecoderConfig::default(),
            uformer: UformerConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE", default)]
pub struct RestormerConfig {
    pub inp_channels: usize,
    pub out_channels: usize,
    pub dim: usize,
    pub num_blocks: Vec<usize>,
    pub num_refinement_blocks: usize,
    pub heads: Vec<usize>,
    #[serde(deserialize_with = "de_f64")]
    pub ffn_expansion_factor: f64,
    pub bias: bool,
    /// `WithBias` or `BiasFree`.
    pub layernorm_type: String,
    pub dual_pixel_task: bool,
    pub global_residual: bool,
    pub patch_size: usize,
}

impl Default for RestormerConfig {
    fn default() -> Self {
        RestormerConfig {
            inp_channels: 3,
            out_channels: 64,
            dim: 48,
            num_blocks: vec![4, 6, 6, 8],
            num_refinement_blocks: 4,
            heads: vec![1, 2, 4, 8],
            ffn_expansion_factor: 2.66,
            bias: false,
            layernorm_type: "WithBias".into(),
            dual_pixel_task: false,
            global_residual: false,
            patch_size: 1,
        }
    }
}

/// The SRResNet-style reconstruction head (`MSRResNet_Head`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE", default)]
pub struct DecoderConfig {
    pub in_nc: usize,
    pub out_nc: usize,
    pub upscale: usize,
    /// Head width (extension; the reference fixes 64).
    pub nf: usize,
    /// Reference keys of the modulated heads; stored only (the head takes no embedding).
    pub modul_channels: usize,
    pub require_modulation: bool,
    pub modulation_mode: String,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            in_nc: 64,
            out_nc: 3,
            upscale: 1,
            nf: 64,
            modul_channels: 512,
            require_modulation: false,
            modulation_mode: "GFM".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE", default)]
pub struct UformerConfig {
    pub inp_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depths: Vec<usize>,
    pub win_size: usize,
    /// Stochastic depth of the LeWin blocks while training (extension). IFP builds its Uformer
    /// without one, so the reference trains with the constructors' default 0.1 whatever
    /// `MODEL.DROP_PATH_RATE` says; 0 turns it off.
    #[serde(deserialize_with = "de_f64")]
    pub drop_path_rate: f64,
}

impl Default for UformerConfig {
    fn default() -> Self {
        UformerConfig {
            inp_channels: 3,
            image_size: 256,
            patch_size: 1,
            embed_dim: 32,
            depths: vec![1, 2, 8, 8, 2, 8, 8, 2, 1],
            win_size: 8,
            drop_path_rate: 0.1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE", default)]
pub struct DataConfig {
    /// Side of the square training crop.
    pub img_size: usize,
    /// `IFP` (square-ring spectrum mask) or `MFM` (circular low/high-pass).
    pub filter_type: String,
    #[serde(deserialize_with = "de_f64")]
    pub sample_ratio: f64,
    #[serde(deserialize_with = "de_f64")]
    pub mask_radius1: f64,
    #[serde(deserialize_with = "de_f64")]
    pub mask_radius2: f64,
    /// Lower bound of RandomResizedCrop's area scale.
    #[serde(deserialize_with = "de_f64")]
    pub min_crop_scale: f64,
    /// Crops per optimiser step (extension).
    pub batch_size: usize,
    /// `fixed` (one mask for the whole run, as the reference) or `per_sample`.
    pub mask_mode: String,
    /// The generated noise image (extension).
    pub noise: NoiseConfig,
    /// A PNG/JPEG to use instead of the generated noise (extension).
    pub noise_image: Option<PathBuf>,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            img_size: 224,
            filter_type: "IFP".into(),
            sample_ratio: 0.5,
            mask_radius1: 16.0,
            mask_radius2: 999.0,
            min_crop_scale: 0.2,
            batch_size: 1,
            mask_mode: "fixed".into(),
            noise: NoiseConfig::default(),
            noise_image: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE", default)]
pub struct NoiseConfig {
    pub width: usize,
    pub height: usize,
    #[serde(deserialize_with = "de_f64")]
    pub mean: f64,
    #[serde(deserialize_with = "de_f64")]
    pub std: f64,
    pub seed: u64,
}

impl Default for NoiseConfig {
    /// The statistics of the reference's `noise-0.jpg`.
    fn default() -> Self {
        NoiseConfig {
            width: 640,
            height: 480,
            mean: 0.467,
            std: 0.075,
            seed: 0,
        }
    }
}

// ---------------------------------------------------------------------------------------------

impl Config {
    /// Parses and validates a YAML document.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Self::from_value(parse_yaml(text)?)
    }

    /// Parses and validates a JSON value in the same schema.
    pub fn from_value(value: serde_json::Value) -> Result<Config, ConfigError> {
        // An empty YAML document is an all-defaults config.
        let value = if value.is_null() {
            serde_json::Value::Object(Default::default())
        } else {
            value
        };
        let cfg: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." {
                "<root>".to_string()
            } else {
                path
            };
            ConfigError::Invalid {
                path,
                message: e.into_inner().to_string(),
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a config file, or a built-in preset when `name_or_path` names one and no such
    /// file exists.
    pub fn load(name_or_path: &str) -> Result<Config, ConfigError> {
        let path = Path::new(name_or_path);
        if !path.exists() {
            if let Some(p) = PRESETS.iter().find(|p| p.name == name_or_path) {
                return Self::from_yaml(p.yaml);
            }
            if !name_or_path.contains(['/', '.']) {
                return Err(ConfigError::UnknownPreset(name_or_path.to_string()));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::from_yaml(&text)?;
        // A relative noise image path is relative to the config file, not the working dir.
        if let (Some(img), Some(dir)) = (&cfg.data.noise_image, path.parent()) {
            if img.is_relative() {
                cfg.data.noise_image = Some(dir.join(img));
            }
        }
        Ok(cfg)
    }

    /// The config as YAML (stored in checkpoints and training states).
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).unwrap_or_default()
    }

    /// Total optimiser steps of the run.
    pub fn total_steps(&self) -> usize {
        self.train.total_steps()
    }
}

#[cfg(test)]
mod tests;
