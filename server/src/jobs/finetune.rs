//! The `finetune` job kind: one fine-tuning run (`ifp_trainer::finetune`), its initial weights
//! taken from a finished pre-training job of the same user (its newest model file) or drawn
//! from the seed. The stored config is `{"FINETUNE": <fine-tuning config>}` with `INIT`, when set,
//! relative to the artifact store; data folders are relative to the datasets folder, as for
//! `compare` jobs. The job lists its checkpoints and, at the end, `history.json` (validation
//! PSNR/SSIM by step; the best checkpoint is the one with the highest validation PSNR) and
//! `test.json` (that checkpoint's scores on `TEST_DIR`, or on the training folder's held-out
//! `SPLIT_EVERY`-th images).

use std::path::Path;

use ifp_trainer::finetune::FinetuneConfig;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::jobs::datasets;

/// A validated fine-tuning job.
#[derive(Debug, Clone)]
pub struct FinetuneJob {
    pub finetune: FinetuneConfig,
}

impl FinetuneJob {
    /// Checks a submission. `init` is the initial encoder: a pre-training job's model file
    /// (relative to the artifact store) and that job's network, or `None` for from scratch.
    /// `model_stated`: the submitted config has a `MODEL` tree; without an initial job it must,
    /// since the network is always stated or inherited, never a silent default.
    pub fn new(
        mut finetune: FinetuneConfig,
        model_stated: bool,
        init: Option<(String, ifp_trainer::config::ModelConfig)>,
        datasets: Option<&Path>,
    ) -> Result<Self> {
        let root = datasets::root(datasets)?;
        if finetune.init.is_some() {
            return Err(Error::invalid(
                Some("FINETUNE.INIT"),
                "name the pre-training job with `init_job` instead of a path",
            ));
        }
        match init {
            Some((path, model)) => {
                if model_stated && !model.same_backbone(&finetune.model) {
                    return Err(Error::invalid(
                        Some("FINETUNE.MODEL"),
                        "differs from the initial job's network: leave MODEL out to inherit it",
                    ));
                }
                finetune.model = model;
                finetune.init = Some(path.into());
            }
            None if !model_stated => {
                return Err(Error::invalid(
                    Some("FINETUNE.MODEL"),
                    "state the network: give `init_job` (its network is inherited) or a MODEL \
                     tree (e.g. the `tiny` preset's); there is no default network",
                ));
            }
            None => {}
        }
        datasets::check_task(&finetune, root)?;
        Ok(FinetuneJob { finetune })
    }

    pub fn to_value(&self) -> Value {
        json!({ "FINETUNE": self.finetune })
    }

    pub fn from_value(v: &Value) -> std::result::Result<Self, String> {
        Ok(FinetuneJob {
            finetune: stored_finetune(v)?,
        })
    }

    pub fn total_steps(&self) -> usize {
        self.finetune.total_steps()
    }

    /// Points `INIT` at the artifact store and the data folders at the datasets folder.
    pub fn resolve(
        &mut self,
        artifacts: &Path,
        datasets: &Path,
    ) -> std::result::Result<(), String> {
        if let Some(init) = &self.finetune.init {
            self.finetune.init = Some(artifacts.join(init));
        }
        datasets::resolve(&mut self.finetune, datasets)
    }
}

/// The fine-tuning config under `FINETUNE` of a stored job config (`finetune` and `compare`).
pub fn stored_finetune(v: &Value) -> std::result::Result<FinetuneConfig, String> {
    // JSON is YAML: the fine-tuning config's own parser gives its key-naming errors.
    let text = v.get("FINETUNE").unwrap_or(&Value::Null).to_string();
    FinetuneConfig::from_yaml(&text).map_err(|e| format!("FINETUNE: {e}"))
}
