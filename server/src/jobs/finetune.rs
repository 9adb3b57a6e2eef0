//! The `finetune` job kind: one fine-tuning run (`ifp_trainer::finetune`), its encoder taken
//! from a finished pre-training job of the same user (its newest model file) or drawn from the
//! seed. The stored config is `{"FINETUNE": <fine-tuning config>}` with `INIT`, when set,
//! relative to the artifact store; data folders are relative to the datasets folder, as for
//! `compare` jobs. The job lists its checkpoints and, at the end, `history.json` (validation
//! PSNR/SSIM by step; the best checkpoint is the one with the highest validation PSNR).

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
    pub fn new(
        mut finetune: FinetuneConfig,
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
        if let Some((path, model)) = init {
            finetune.model = model;
            finetune.init = Some(path.into());
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
    pub fn resolve(&mut self, artifacts: &Path, datasets: &Path) {
        if let Some(init) = &self.finetune.init {
            self.finetune.init = Some(artifacts.join(init));
        }
        datasets::resolve(&mut self.finetune, datasets);
    }
}

/// The fine-tuning config under `FINETUNE` of a stored job config (`finetune` and `compare`).
pub fn stored_finetune(v: &Value) -> std::result::Result<FinetuneConfig, String> {
    // JSON is YAML: the fine-tuning config's own parser gives its key-naming errors.
    let text = v.get("FINETUNE").unwrap_or(&Value::Null).to_string();
    FinetuneConfig::from_yaml(&text).map_err(|e| format!("FINETUNE: {e}"))
}
