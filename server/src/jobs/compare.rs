//! The `compare` job kind, "does IFP help here?" on the platform: IFP pre-training, then the
//! same fine-tuning from the IFP encoder and from scratch, both scored on the same test images
//! (`ifp_trainer::finetune::compare`), once per fine-tuning seed (`finetune::seeds`) when
//! `SEEDS` > 1. The job's stored config is `{"PRETRAIN": <pre-training config>, "FINETUNE":
//! <fine-tuning config>, "SHOWCASE": n, "SEEDS": n}`.
//!
//! Fine-tuning data lives on the server: `FINETUNE.DATA.TRAIN_DIR` and `TEST_DIR` are folders
//! relative to the server's datasets folder (`IFP_DATASETS_DIR`), never arbitrary paths.
//! Progress counts one step axis across the phases: pre-training steps, then the IFP arm's,
//! then the scratch arm's (for each seed in turn; one pre-training is shared).

use std::path::Path;

use ifp_trainer::checkpoint::WrittenFile;
use ifp_trainer::finetune::compare::{self, CompareEvent, CompareSpec, Pretrain};
use ifp_trainer::finetune::seeds;
use ifp_trainer::finetune::FinetuneConfig;
use ifp_trainer::{Config, Control, Progress};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::jobs::datasets;

/// Showcase images at most.
pub const MAX_SHOWCASE: usize = 10;
/// Fine-tuning seeds at most: each seed runs both arms again.
pub const MAX_SEEDS: usize = 10;
/// The fine-tuning arms in the order they run.
pub const ARMS: [&str; 2] = ["ifp", "scratch"];

/// A validated comparison.
#[derive(Debug, Clone)]
pub struct CompareJob {
    pub pretrain: Config,
    pub finetune: FinetuneConfig,
    pub showcase: usize,
    /// Fine-tuning seeds `FINETUNE.SEED`, `+1`, ...: 1 runs one comparison.
    pub seeds: usize,
}

impl CompareJob {
    /// Checks a submission. The network is the pre-training's (`MODEL` of `pretrain` replaces
    /// the fine-tuning one); data folders must exist under `datasets`.
    pub fn new(
        pretrain: Config,
        mut finetune: FinetuneConfig,
        showcase: usize,
        datasets: Option<&Path>,
    ) -> Result<Self> {
        let root = datasets::root(datasets)?;
        if showcase > MAX_SHOWCASE {
            return Err(Error::invalid(
                Some("showcase"),
                format!("{showcase} is above {MAX_SHOWCASE}"),
            ));
        }
        if finetune.init.is_some() {
            return Err(Error::invalid(
                Some("FINETUNE.INIT"),
                "a comparison sets each arm's initial weights itself; remove INIT",
            ));
        }
        finetune.model = pretrain.model.clone();
        datasets::check_task(&finetune, root)?;
        Ok(CompareJob {
            pretrain,
            finetune,
            showcase,
            seeds: 1,
        })
    }

    /// The same comparison over `seeds` fine-tuning seeds (1 to [`MAX_SEEDS`]).
    pub fn with_seeds(mut self, seeds: usize) -> Result<Self> {
        if !(1..=MAX_SEEDS).contains(&seeds) {
            return Err(Error::invalid(
                Some("seeds"),
                format!("{seeds} is outside 1 to {MAX_SEEDS}"),
            ));
        }
        self.seeds = seeds;
        Ok(self)
    }

    /// The config stored with the job.
    pub fn to_value(&self) -> Value {
        json!({"PRETRAIN": self.pretrain, "FINETUNE": self.finetune, "SHOWCASE": self.showcase,
               "SEEDS": self.seeds})
    }

    /// Reads a stored config back.
    pub fn from_value(v: &Value) -> std::result::Result<Self, String> {
        let pretrain = Config::from_value(v.get("PRETRAIN").cloned().unwrap_or(Value::Null))
            .map_err(|e| format!("PRETRAIN: {e}"))?;
        let finetune = super::finetune::stored_finetune(v)?;
        let showcase = v.get("SHOWCASE").and_then(Value::as_u64).unwrap_or(3) as usize;
        // Jobs stored before seeds existed ran one.
        let seeds = v.get("SEEDS").and_then(Value::as_u64).unwrap_or(1) as usize;
        Ok(CompareJob {
            pretrain,
            finetune,
            showcase,
            seeds,
        })
    }

    pub fn total_steps(&self) -> usize {
        self.pretrain.total_steps() + self.seeds * ARMS.len() * self.finetune.total_steps()
    }

    /// Points the data folders at this machine's datasets folder.
    pub fn resolve(&mut self, datasets: &Path) {
        datasets::resolve(&mut self.finetune, datasets);
    }

    /// Runs the comparison into `dir`, reporting each step on the job's step axis. Returns
    /// whether `stop` ended it early.
    pub fn run(
        &self,
        dir: &Path,
        device: &candle_core::Device,
        mut on_step: impl FnMut(usize, &Progress),
        stop: impl Fn() -> bool,
    ) -> ifp_trainer::Result<bool> {
        let pre = self.pretrain.total_steps();
        let ft = self.finetune.total_steps();
        let spec = CompareSpec {
            finetune: self.finetune.clone(),
            pretrain: Pretrain::Run(Box::new(self.pretrain.clone())),
            extra_arm: None,
            tile: None,
            showcase: self.showcase,
        };
        // The step axis: pre-training, then each seed's arms in turn (`k`: the seed's index).
        let mut on_event = |k: usize, ev: CompareEvent<'_>| {
            match ev {
                CompareEvent::Pretrain(ifp_trainer::Event::Step(p)) => on_step(p.step, p),
                CompareEvent::Finetune {
                    arm,
                    event: ifp_trainer::finetune::Event::Step(p),
                } => {
                    let a = ARMS.iter().position(|x| *x == arm).unwrap_or(0);
                    on_step(pre + (k * ARMS.len() + a) * ft + p.step, p);
                }
                _ => {}
            }
            if stop() {
                Control::Stop
            } else {
                Control::Continue
            }
        };
        let result = if self.seeds > 1 {
            let first = self.finetune.seed;
            let seeds: Vec<u64> = (0..self.seeds as u64).map(|k| first + k).collect();
            seeds::compare_seeds(&spec, &seeds, false, dir, device, |seed, ev| {
                on_event((seed - first) as usize, ev)
            })
            .map(|_| ())
        } else {
            compare::compare(&spec, dir, device, |ev| on_event(0, ev)).map(|_| ())
        };
        match result {
            Ok(_) => Ok(false),
            // `compare` turns a stop into an error; the caller asked for it.
            Err(_) if stop() => Ok(true),
            Err(e) => Err(e),
        }
    }
}

/// The result files a finished comparison or fine-tuning run wrote into `dir` (`report.json`,
/// the CSVs and the showcase PNGs; `history.json`), with their sizes and SHA-256.
pub fn report_files(dir: &Path) -> Result<Vec<WrittenFile>> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(Error::io(format!("read {}", dir.display())))?;
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let wanted = matches!(
            name.as_str(),
            "report.json"
                | "per_image.csv"
                | "val_curve.csv"
                | "history.json"
                | "seeds.json"
                | "seeds.csv"
        ) || (name.starts_with("showcase-") && name.ends_with(".png"));
        if wanted && path.is_file() {
            let bytes =
                std::fs::read(&path).map_err(Error::io(format!("read {}", path.display())))?;
            out.push(WrittenFile {
                bytes: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(&bytes)),
                path,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The key result in a finished run's result folder: the best validation PSNR in
/// `history.json` (fine-tuning), or the IFP arm's mean paired test-PSNR difference against
/// scratch in `report.json` (comparison; over seeds, their mean in `seeds.json`). `None` if no
/// file has it.
pub fn key_metric(dir: &Path) -> Option<f64> {
    let json = |name: &str| -> Option<Value> {
        serde_json::from_slice(&std::fs::read(dir.join(name)).ok()?).ok()
    };
    if let Some(r) = json("seeds.json") {
        return r["deltas"].as_array()?.iter().find(|d| d["arm"] == "ifp")?["psnr"]["mean"]
            .as_f64();
    }
    if let Some(r) = json("report.json") {
        return r["deltas"].as_array()?.iter().find(|d| d["arm"] == "ifp")?["diff"]["psnr"]["mean"]
            .as_f64();
    }
    json("history.json")?
        .as_array()?
        .iter()
        .filter_map(|p| p["psnr"].as_f64())
        .filter(|v| v.is_finite())
        .reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ft(train: &str) -> FinetuneConfig {
        let mut f = FinetuneConfig::default();
        f.data.train_dir = train.into();
        f.data.noise_sigma = 25.0;
        f
    }

    #[test]
    fn data_folders_stay_inside_the_datasets_folder() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("clean/set")).expect("mkdir");
        let tiny = ifp_trainer::config::preset("tiny").expect("tiny");
        let ok =
            CompareJob::new(tiny.clone(), ft("clean/set"), 2, Some(root.path())).expect("valid");
        assert_eq!(
            ok.finetune.model, tiny.model,
            "the pre-training network is used"
        );
        assert_eq!(
            ok.total_steps(),
            tiny.total_steps() + 2 * ok.finetune.total_steps()
        );
        let back = CompareJob::from_value(&ok.to_value()).expect("round trip");
        assert_eq!(back.finetune, ok.finetune);
        for bad in ["/etc", "../x", "clean/../..", "", "clean/missing"] {
            let e = CompareJob::new(tiny.clone(), ft(bad), 2, Some(root.path())).expect_err(bad);
            assert!(e.to_string().contains('`') || bad.is_empty(), "{bad}: {e}");
        }
        assert!(CompareJob::new(tiny, ft("clean/set"), 2, None).is_err());
    }
}
