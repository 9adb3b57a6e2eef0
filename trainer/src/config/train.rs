//! `TRAIN`: the optimiser, schedule, clipping and length of a run, and the platform's
//! extensions (checkpoint retention, the device class a job asks for, mixed precision).

use serde::{Deserialize, Deserializer, Serialize};

use super::de_f64;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE", default)]
pub struct TrainConfig {
    /// Reference key: one epoch is one step over the single image.
    pub epochs: usize,
    /// Total optimiser steps (extension); `EPOCHS` when absent.
    pub steps: Option<usize>,
    pub warmup_epochs: usize,
    #[serde(deserialize_with = "de_f64")]
    pub base_lr: f64,
    #[serde(deserialize_with = "de_f64")]
    pub warmup_lr: f64,
    #[serde(deserialize_with = "de_f64")]
    pub min_lr: f64,
    #[serde(deserialize_with = "de_f64")]
    pub weight_decay: f64,
    #[serde(deserialize_with = "de_f64")]
    pub clip_grad: f64,
    pub optimizer: OptimizerConfig,
    /// Model checkpoints the platform keeps per job, newest first (extension; the final one and
    /// the newest training state are always kept).
    pub keep_checkpoints: usize,
    /// Which workers may run the job (extension): `any` (default), `cpu` or `cuda`.
    pub device: DeviceClass,
    /// Mixed precision (extension): `off` (default) or `bf16` (matrix products and convolutions
    /// in bfloat16; parameters, loss and optimiser state stay float32).
    pub amp: Amp,
}

/// The kind of worker a job asks for (`TRAIN.DEVICE`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    /// Any worker: a GPU worker takes it as readily as a CPU one.
    #[default]
    Any,
    Cpu,
    Cuda,
}

impl DeviceClass {
    /// The name used in the config and in the job table's `device_class` column.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Any => "any",
            DeviceClass::Cpu => "cpu",
            DeviceClass::Cuda => "cuda",
        }
    }

    pub const ALL: [DeviceClass; 3] = [DeviceClass::Any, DeviceClass::Cpu, DeviceClass::Cuda];
}

impl std::fmt::Display for DeviceClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeviceClass {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        DeviceClass::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown device class `{s}` (expected any, cpu or cuda)"))
    }
}

/// Reads the platform's `device_class` column.
impl TryFrom<String> for DeviceClass {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

/// Mixed precision (`TRAIN.AMP`), the reference's `AMP` switch with an explicit dtype.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Amp {
    #[default]
    Off,
    Bf16,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 60000,
            steps: None,
            warmup_epochs: 20,
            base_lr: 3e-4,
            warmup_lr: 2.5e-7,
            min_lr: 2.5e-6,
            weight_decay: 0.05,
            clip_grad: 3.0,
            optimizer: OptimizerConfig::default(),
            keep_checkpoints: 5,
            device: DeviceClass::Any,
            amp: Amp::Off,
        }
    }
}

impl TrainConfig {
    /// Total optimiser steps of the run.
    pub fn total_steps(&self) -> usize {
        self.steps.unwrap_or(self.epochs)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "SCREAMING_SNAKE_CASE", default)]
pub struct OptimizerConfig {
    /// Only `adamw` exists.
    pub name: String,
    #[serde(deserialize_with = "de_betas", serialize_with = "ser_betas")]
    pub betas: (f64, f64),
    #[serde(deserialize_with = "de_f64")]
    pub eps: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            name: "adamw".into(),
            betas: (0.9, 0.95),
            eps: 1e-8,
        }
    }
}

fn de_betas<'de, D: Deserializer<'de>>(d: D) -> Result<(f64, f64), D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Betas {
        Seq(Vec<f64>),
        S(String),
    }
    let err = |s: &str| {
        serde::de::Error::custom(format!(
            "expected two numbers like `(0.9, 0.95)`, got `{s}`"
        ))
    };
    let v: Vec<f64> = match Betas::deserialize(d)? {
        Betas::Seq(v) => v,
        Betas::S(s) => {
            let inner = s
                .trim()
                .trim_start_matches(['(', '['])
                .trim_end_matches([')', ']']);
            inner
                .split(',')
                .map(|p| p.trim().parse::<f64>())
                .collect::<Result<_, _>>()
                .map_err(|_| err(&s))?
        }
    };
    match v.as_slice() {
        [a, b] => Ok((*a, *b)),
        _ => Err(err(&format!("{v:?}"))),
    }
}

fn ser_betas<S: serde::Serializer>(b: &(f64, f64), s: S) -> Result<S::Ok, S::Error> {
    [b.0, b.1].serialize(s)
}
