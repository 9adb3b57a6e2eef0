//! The `compare` job kind, "does IFP help here?" on the platform: IFP pre-training (or the
//! weights of a finished pre-training job), then the same fine-tuning from the IFP weights and
//! from scratch (and optionally from another finished pre-training job's weights), all scored
//! on the same test images (`ifp_trainer::finetune::compare`), once per fine-tuning seed
//! (`finetune::seeds`) when `SEEDS` > 1. The job's stored config is `{"PRETRAIN": <pre-training
//! config>, "FINETUNE": <fine-tuning config>, "SHOWCASE": n, "SEEDS": n}`, plus `"PRETRAINED"`
//! and `"EXTRA_ARM"` (model files relative to the artifact store) when it starts from jobs.
//!
//! Fine-tuning data lives on the server: `FINETUNE.DATA.TRAIN_DIR` and `TEST_DIR` are folders
//! relative to the server's datasets folder (`IFP_DATASETS_DIR`), never arbitrary paths.
//! Progress counts one step axis across the phases: pre-training steps (if it runs), then each
//! arm's (for each seed in turn; one pre-training is shared). A finished comparison lists the
//! models it made (`model_files`).

use std::path::{Path, PathBuf};

use ifp_trainer::checkpoint::WrittenFile;
use ifp_trainer::config::DeviceClass;
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
/// The fine-tuning arms in the order they run; the third runs only with an extra arm.
pub const ARMS: [&str; 3] = ["ifp", "scratch", "checkpoint"];

/// A validated comparison.
#[derive(Debug, Clone)]
pub struct CompareJob {
    /// The pre-training config: run first, or (with `pretrained`) the config of the finished
    /// pre-training job whose weights the IFP arm starts from.
    pub pretrain: Config,
    pub finetune: FinetuneConfig,
    pub showcase: usize,
    /// Fine-tuning seeds `FINETUNE.SEED`, `+1`, ...: 1 runs one comparison.
    pub seeds: usize,
    /// Each seed also pre-trains, with its seed as the pre-training's `SEED`, instead of all
    /// seeds sharing one pre-training: the intervals then cover pre-training noise too.
    pub vary_pretrain: bool,
    /// The IFP arm's weights from a finished pre-training job (relative to the artifact store;
    /// absolute once resolved on a worker) instead of pre-training here.
    pub pretrained: Option<PathBuf>,
    /// A third arm's initial weights, another finished pre-training job's model file.
    pub extra_arm: Option<PathBuf>,
}

/// A finished pre-training job's model file (relative to the artifact store) and its config:
/// where a comparison's IFP arm, or its extra arm, starts from.
pub type Pretrained = (String, Config);

impl CompareJob {
    /// Checks a submission. The network is the pre-training's (`MODEL` of `pretrain` replaces
    /// the fine-tuning one); `model_stated` says the submitted fine-tuning config has a `MODEL`
    /// tree, which must then describe that network. Data folders must exist under `datasets`.
    pub fn new(
        pretrain: Config,
        mut finetune: FinetuneConfig,
        model_stated: bool,
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
        // Every arm fine-tunes the pre-training's network: another MODEL could only be ignored.
        if model_stated && !finetune.model.same_backbone(&pretrain.model) {
            return Err(Error::invalid(
                Some("FINETUNE.MODEL"),
                "differs from the pre-training's network, which every arm fine-tunes: leave \
                 MODEL out to inherit it",
            ));
        }
        finetune.model = pretrain.model.clone();
        // The whole comparison runs on one worker, claimed by the pre-training's TRAIN.DEVICE
        // (`JobSpec::device_class`): another class here could only be ignored.
        let (ft_device, device) = (finetune.train.device, pretrain.train.device);
        if ft_device != DeviceClass::default() && ft_device != device {
            return Err(Error::invalid(
                Some("FINETUNE.TRAIN.DEVICE"),
                format!(
                    "`{ft_device}` differs from the pre-training's TRAIN.DEVICE (`{device}`), \
                     which chooses the worker for the whole comparison: leave it out, or set \
                     the pre-training's"
                ),
            ));
        }
        datasets::check_task(&finetune, root)?;
        Ok(CompareJob {
            pretrain,
            finetune,
            showcase,
            seeds: 1,
            vary_pretrain: false,
            pretrained: None,
            extra_arm: None,
        })
    }

    /// A comparison whose IFP arm starts from a finished pre-training job (`init_job`) instead
    /// of pre-training here: its network and config are that job's.
    pub fn from_pretrained(
        (path, pretrain): Pretrained,
        finetune: FinetuneConfig,
        model_stated: bool,
        showcase: usize,
        datasets: Option<&Path>,
    ) -> Result<Self> {
        let mut job = Self::new(pretrain, finetune, model_stated, showcase, datasets)?;
        job.pretrained = Some(path.into());
        Ok(job)
    }

    /// Adds a third arm starting from another finished pre-training job (`extra_arm_job`),
    /// which must have the same network.
    pub fn with_extra_arm(mut self, (path, cfg): Pretrained) -> Result<Self> {
        if !cfg.model.same_backbone(&self.finetune.model) {
            return Err(Error::invalid(
                Some("extra_arm_job"),
                "its network differs from the comparison's (MODEL.TYPE and its RESTORMER or \
                 UFORMER tree must match)",
            ));
        }
        self.extra_arm = Some(path.into());
        Ok(self)
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

    /// Pre-trains once per seed (with that seed) when `on`; needs 2 or more seeds and a
    /// pre-training to run. Call after [`CompareJob::with_seeds`].
    pub fn with_vary_pretrain_seed(mut self, on: bool) -> Result<Self> {
        if on && (self.seeds < 2 || self.pretrained.is_some()) {
            return Err(Error::invalid(
                Some("vary_pretrain_seed"),
                format!(
                    "needs 2 or more seeds and a pre-training to run here (this job has {} \
                     seed{}{})",
                    self.seeds,
                    if self.seeds == 1 { "" } else { "s" },
                    if self.pretrained.is_some() {
                        " and starts from a finished pre-training job"
                    } else {
                        ""
                    }
                ),
            ));
        }
        self.vary_pretrain = on;
        Ok(self)
    }

    /// The config stored with the job.
    pub fn to_value(&self) -> Value {
        let mut v = json!({"PRETRAIN": self.pretrain, "FINETUNE": self.finetune,
                           "SHOWCASE": self.showcase, "SEEDS": self.seeds});
        if self.vary_pretrain {
            v["VARY_PRETRAIN_SEED"] = json!(true);
        }
        if let Some(p) = &self.pretrained {
            v["PRETRAINED"] = json!(p);
        }
        if let Some(p) = &self.extra_arm {
            v["EXTRA_ARM"] = json!(p);
        }
        v
    }

    /// Reads a stored config back.
    pub fn from_value(v: &Value) -> std::result::Result<Self, String> {
        let pretrain = Config::from_value(v.get("PRETRAIN").cloned().unwrap_or(Value::Null))
            .map_err(|e| format!("PRETRAIN: {e}"))?;
        let finetune = super::finetune::stored_finetune(v)?;
        let showcase = v.get("SHOWCASE").and_then(Value::as_u64).unwrap_or(3) as usize;
        // Jobs stored before seeds existed ran one.
        let seeds = v.get("SEEDS").and_then(Value::as_u64).unwrap_or(1) as usize;
        let vary_pretrain = v.get("VARY_PRETRAIN_SEED").and_then(Value::as_bool) == Some(true);
        let path = |k: &str| v.get(k).and_then(Value::as_str).map(PathBuf::from);
        Ok(CompareJob {
            pretrain,
            finetune,
            showcase,
            seeds,
            vary_pretrain,
            pretrained: path("PRETRAINED"),
            extra_arm: path("EXTRA_ARM"),
        })
    }

    /// Pre-training steps run by this job (none when it starts from a finished one).
    pub fn pretrain_steps(&self) -> usize {
        if self.pretrained.is_some() {
            0
        } else {
            self.pretrain.total_steps()
        }
    }

    /// The fine-tuning arms, in the order each seed runs them.
    pub fn arms(&self) -> &'static [&'static str] {
        if self.extra_arm.is_some() {
            &ARMS
        } else {
            &ARMS[..2]
        }
    }

    pub fn total_steps(&self) -> usize {
        self.step_phases().iter().map(|ph| ph.steps).sum()
    }

    /// The job's step axis with each phase's seed (its index from `FINETUNE.SEED`): the
    /// pre-training once at the start, or, with `vary_pretrain`, at the start of each seed;
    /// then each seed's arms in turn.
    fn axis(&self) -> Vec<(usize, super::spec::StepPhase)> {
        use super::spec::StepPhase;
        let (p, f) = (self.pretrain_steps(), self.finetune.total_steps());
        let mut out = Vec::new();
        let mut at = 0;
        for k in 0..self.seeds {
            if p > 0 && (k == 0 || self.vary_pretrain) {
                let batch = self.pretrain.data.batch_size;
                out.push((
                    k,
                    StepPhase {
                        start: at,
                        steps: p,
                        batch,
                        arm: None,
                    },
                ));
                at += p;
            }
            for a in 0..self.arms().len() {
                let batch = self.finetune.data.batch_size;
                out.push((
                    k,
                    StepPhase {
                        start: at,
                        steps: f,
                        batch,
                        arm: Some(a),
                    },
                ));
                at += f;
            }
        }
        out
    }

    /// The phases of the job's step axis in order: pre-training (if it runs here; once, or per
    /// seed), then each seed's arms (`arm`: index into [`CompareJob::arms`]).
    pub fn step_phases(&self) -> Vec<super::spec::StepPhase> {
        self.axis().into_iter().map(|(_, ph)| ph).collect()
    }

    /// Where a phase starts on the job's step axis: seed `k`'s pre-training (`arm` None) or
    /// arm. A seed that reuses the first seed's pre-training has none of its own.
    fn phase_start(&self, k: usize, arm: Option<usize>) -> usize {
        self.axis()
            .into_iter()
            .find(|(s, ph)| *s == k && ph.arm == arm)
            .map_or(0, |(_, ph)| ph.start)
    }

    /// Which steps of the job's step axis are which phase, for the job page.
    pub fn phases(&self) -> String {
        let arm_label = |a: &str| match a {
            "ifp" => "fine-tuning from the IFP weights",
            "scratch" => "fine-tuning from scratch",
            _ => "fine-tuning from the extra arm's weights",
        };
        let parts: Vec<String> = self
            .axis()
            .into_iter()
            .map(|(k, ph)| {
                let what = match ph.arm {
                    None => "IFP pre-training",
                    Some(a) => arm_label(self.arms()[a]),
                };
                let seed = match (self.seeds > 1, ph.arm.is_some() || self.vary_pretrain) {
                    (true, true) => format!(" (seed {})", self.finetune.seed + k as u64),
                    _ => String::new(),
                };
                let steps = if ph.start == 0 && ph.arm.is_none() {
                    "steps "
                } else {
                    ""
                };
                format!(
                    "{steps}{}–{}: {what}{seed}",
                    ph.start + 1,
                    ph.start + ph.steps
                )
            })
            .collect();
        let mut s = parts.join(" · ");
        if let Some(first) = s.get(..1) {
            s = first.to_uppercase() + &s[1..];
        }
        if self.pretrain_steps() > 0 {
            s.push_str(". The loss is the pre-training loss, then L1.");
        } else {
            s.push_str(". The IFP weights come from a finished pre-training job; the loss is L1.");
        }
        s
    }

    /// Points the data folders at this machine's datasets folder and the weights files at its
    /// artifact store.
    pub fn resolve(
        &mut self,
        artifacts: &Path,
        datasets: &Path,
    ) -> std::result::Result<(), String> {
        datasets::resolve(&mut self.finetune, datasets)?;
        for p in [&mut self.pretrained, &mut self.extra_arm]
            .into_iter()
            .flatten()
        {
            *p = artifacts.join(&*p);
        }
        Ok(())
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
        let arms = self.arms();
        let spec = CompareSpec {
            finetune: self.finetune.clone(),
            pretrain: match &self.pretrained {
                Some(p) => Pretrain::Weights(p.clone()),
                None => Pretrain::Run(Box::new(self.pretrain.clone())),
            },
            extra_arm: self.extra_arm.clone(),
            tile: None,
            showcase: self.showcase,
        };
        // The step axis (`axis`; `k`: the seed's index).
        let mut on_event = |k: usize, ev: CompareEvent<'_>| {
            match ev {
                CompareEvent::Pretrain(ifp_trainer::Event::Step(p)) => {
                    on_step(self.phase_start(k, None) + p.step, p)
                }
                CompareEvent::Finetune {
                    arm,
                    event: ifp_trainer::finetune::Event::Step(p),
                } => {
                    let a = arms.iter().position(|x| *x == arm).unwrap_or(0);
                    on_step(self.phase_start(k, Some(a)) + p.step, p);
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
            seeds::compare_seeds(
                &spec,
                &seeds,
                self.vary_pretrain,
                dir,
                device,
                |seed, ev| on_event((seed - first) as usize, ev),
            )
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
/// the CSVs and the showcase PNGs; `history.json` and `test.json`), each with the name it is
/// listed under, its size and SHA-256. Over several seeds, each seed's own files (`seed-S/report.json`, its
/// CSVs and showcases) are listed too, as `seed-S-<name>`, beside the summary
/// (`seeds.json`, `seeds.csv`).
pub fn report_files(dir: &Path) -> Result<Vec<(String, WrittenFile)>> {
    let mut out = result_files_in(dir, "")?;
    let entries = std::fs::read_dir(dir).map_err(Error::io(format!("read {}", dir.display())))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let seed_folder = name
            .strip_prefix("seed-")
            .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
        if seed_folder && e.path().is_dir() {
            out.extend(result_files_in(&e.path(), &format!("{name}-"))?);
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The result files directly in `dir`, listed as `prefix` + their file name.
fn result_files_in(dir: &Path, prefix: &str) -> Result<Vec<(String, WrittenFile)>> {
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
                | "test.json"
                | "seeds.json"
                | "seeds.csv"
        ) || (name.starts_with("showcase-") && name.ends_with(".png"));
        if wanted && path.is_file() {
            let bytes =
                std::fs::read(&path).map_err(Error::io(format!("read {}", path.display())))?;
            out.push((
                format!("{prefix}{name}"),
                WrittenFile {
                    bytes: bytes.len() as u64,
                    sha256: hex::encode(Sha256::digest(&bytes)),
                    path,
                },
            ));
        }
    }
    Ok(out)
}

/// The models a finished comparison in `dir` made, each with the name it is listed under: the
/// IFP pre-training it ran (`pretrain-model-SSSSSS.safetensors`) and every arm's best
/// checkpoint (`<arm>-best-model-SSSSSS.safetensors`; `seed-S-` in front over several seeds).
/// The files stay where the run wrote them; weights a comparison started from (a finished
/// pre-training job's) belong to that job and are not listed again.
pub fn model_files(dir: &Path) -> Result<Vec<(String, WrittenFile)>> {
    let read = |p: &Path| -> Result<Value> {
        let bytes = std::fs::read(p).map_err(Error::io(format!("read {}", p.display())))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Internal(format!("{}: {e}", p.display())))
    };
    // One report, or one per seed folder (`seed-S/report.json`).
    let mut reports = Vec::new();
    if dir.join("report.json").is_file() {
        reports.push((String::new(), dir.to_path_buf()));
    } else {
        let entries =
            std::fs::read_dir(dir).map_err(Error::io(format!("read {}", dir.display())))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("seed-") && e.path().join("report.json").is_file() {
                reports.push((format!("{name}-"), e.path()));
            }
        }
        reports.sort();
    }
    let mut out: Vec<(String, WrittenFile)> = Vec::new();
    let mut add = |name: String, path: PathBuf| -> Result<()> {
        if out.iter().any(|(_, f)| f.path == path) || !path.is_file() {
            return Ok(());
        }
        let bytes = std::fs::metadata(&path)
            .map_err(Error::io(format!("stat {}", path.display())))?
            .len();
        let id = ifp_trainer::checkpoint::content_id(&path);
        let sha256 = id.strip_prefix("sha256:").unwrap_or(&id).to_string();
        out.push((
            name,
            WrittenFile {
                bytes,
                sha256,
                path,
            },
        ));
        Ok(())
    };
    let reports = reports
        .into_iter()
        .map(|(prefix, rdir)| Ok((prefix, read(&rdir.join("report.json"))?, rdir)))
        .collect::<Result<Vec<_>>>()?;
    // Pre-training ran in a seed's folder when its report counts the steps: in the first only,
    // or in every one with a pre-training per seed, whose models then carry their seed.
    let ran_pretrain = |r: &Value| r["pretrain"]["steps"].is_u64();
    let per_seed_pretrain = reports.iter().filter(|(_, r, _)| ran_pretrain(r)).count() > 1;
    for (prefix, r, rdir) in &reports {
        if ran_pretrain(r) {
            if let Some(w) = r["pretrain"]["weights"].as_str().map(PathBuf::from) {
                let file = w.file_name().map(|n| n.to_string_lossy().into_owned());
                if let Some(file) = file {
                    let seed = if per_seed_pretrain {
                        prefix.as_str()
                    } else {
                        ""
                    };
                    add(format!("{seed}pretrain-{file}"), w)?;
                }
            }
        }
        for arm in r["arms"].as_array().into_iter().flatten() {
            let (Some(name), Some(step)) = (arm["name"].as_str(), arm["best_step"].as_u64()) else {
                continue;
            };
            let path = ifp_trainer::checkpoint::model_path(&rdir.join(name), step as usize);
            let file = format!("model-{step:06}.safetensors");
            add(format!("{prefix}{name}-best-{file}"), path)?;
        }
    }
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
        let ok = CompareJob::new(tiny.clone(), ft("clean/set"), false, 2, Some(root.path()))
            .expect("valid");
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
            let e =
                CompareJob::new(tiny.clone(), ft(bad), false, 2, Some(root.path())).expect_err(bad);
            assert!(e.to_string().contains('`') || bad.is_empty(), "{bad}: {e}");
        }
        assert!(CompareJob::new(tiny, ft("clean/set"), false, 2, None).is_err());
    }

    /// With a pre-training per seed, the step axis runs each seed's pre-training before its
    /// arms; the phases say which seed each is; the setting is stored and read back; it needs
    /// two seeds and a pre-training to run.
    #[test]
    fn a_pre_training_per_seed_puts_one_before_each_seed_s_arms() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("clean/set")).expect("mkdir");
        let mut tiny = ifp_trainer::config::preset("tiny").expect("tiny");
        tiny.train.steps = Some(6);
        let mut f = ft("clean/set");
        f.train.steps = Some(4);
        let job = CompareJob::new(tiny, f, false, 0, Some(root.path())).expect("valid");
        let shared = job.clone().with_seeds(2).expect("2 seeds");
        assert_eq!(shared.total_steps(), 6 + 2 * 2 * 4);
        let vary = shared
            .clone()
            .with_vary_pretrain_seed(true)
            .expect("2 seeds and a pre-training");
        assert_eq!(vary.total_steps(), 2 * (6 + 2 * 4));
        let starts: Vec<(usize, Option<usize>)> = vary
            .step_phases()
            .iter()
            .map(|ph| (ph.start, ph.arm))
            .collect();
        assert_eq!(
            starts,
            [
                (0, None),
                (6, Some(0)),
                (10, Some(1)),
                (14, None),
                (20, Some(0)),
                (24, Some(1))
            ]
        );
        assert_eq!(
            (vary.phase_start(1, None), vary.phase_start(1, Some(1))),
            (14, 24)
        );
        assert!(
            vary.phases().contains("15–20: IFP pre-training (seed 1)"),
            "{}",
            vary.phases()
        );
        let back = CompareJob::from_value(&vary.to_value()).expect("round trip");
        assert!(back.vary_pretrain && back.total_steps() == vary.total_steps());
        assert!(
            !CompareJob::from_value(&shared.to_value())
                .expect("back")
                .vary_pretrain
        );
        let e = job
            .clone()
            .with_vary_pretrain_seed(true)
            .expect_err("one seed");
        assert!(
            matches!(&e, Error::Invalid { key_path: Some(k), .. } if k == "vary_pretrain_seed"),
            "{e}"
        );
        let mut from_job = shared;
        from_job.pretrained = Some("x/model-000006.safetensors".into());
        let e = from_job
            .with_vary_pretrain_seed(true)
            .expect_err("a finished job's weights");
        assert!(e.to_string().contains("finished pre-training job"), "{e}");
    }
}
