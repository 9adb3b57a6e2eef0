//! "Does IFP help here?": one submission fine-tunes the same network from IFP
//! pre-training and from scratch (optionally also from a given checkpoint) with identical
//! config, budget, seeds, crops, noise and head initialisation, then scores each arm's best
//! checkpoint (by validation PSNR) on the same test images and reports means with standard
//! errors, the paired per-image differences against scratch, and validation PSNR vs step.
//!
//! Folder layout under `out`: `pretrain/` (when pre-training runs here), `<arm>/` (one
//! fine-tuning run each), `report.json`, `per_image.csv`, `val_curve.csv`,
//! `showcase-<image>.png` (degraded | each arm | target). Every phase resumes, so re-running
//! the same command after an interruption continues where it stopped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde::Serialize;

pub use super::test_set::{MeanSe, MetricSummary};
use super::{test_set, train_run, Event, FinetuneConfig, ValPoint};
use crate::checkpoint;
use crate::config::Config;
use crate::error::{Result, TrainerError};
use crate::eval::metrics::Scores;
use crate::eval::{self, ImageScore};
use crate::train::{self, Control, TrainOptions};

/// Where the IFP arm's encoder comes from.
pub enum Pretrain {
    /// Run IFP pre-training with this config into `out/pretrain` (its MODEL must equal the
    /// fine-tuning MODEL).
    Run(Box<Config>),
    /// An existing pre-training model file.
    Weights(PathBuf),
}

pub struct CompareSpec {
    /// The shared fine-tuning config (`INIT` is set per arm).
    pub finetune: FinetuneConfig,
    pub pretrain: Pretrain,
    /// An optional third arm initialised from this model file.
    pub extra_arm: Option<PathBuf>,
    pub tile: Option<usize>,
    /// How many test images get a side-by-side PNG.
    pub showcase: usize,
}

/// What `compare` reports while it runs.
pub enum CompareEvent<'a> {
    Pretrain(train::Event<'a>),
    Finetune { arm: &'a str, event: Event<'a> },
    Evaluated { arm: &'a str, mean: &'a Scores },
}

#[derive(Debug, Clone, Serialize)]
pub struct ArmReport {
    pub name: String,
    /// The encoder's initial weights (none: from scratch).
    pub init: Option<PathBuf>,
    pub best_step: usize,
    pub best_val: Scores,
    pub test: MetricSummary,
    pub val_curve: Vec<ValPoint>,
    pub finetune_seconds: f64,
}

/// Paired per-image differences `arm - baseline`.
#[derive(Debug, Clone, Serialize)]
pub struct Delta {
    pub arm: String,
    pub baseline: String,
    pub diff: MetricSummary,
    /// Images on which the arm's PSNR is higher.
    pub psnr_wins: usize,
    pub images: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PerImage {
    pub name: String,
    pub scores: BTreeMap<String, Scores>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PretrainReport {
    pub weights: PathBuf,
    pub steps: Option<usize>,
    pub final_loss: Option<f64>,
    pub seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub config: FinetuneConfig,
    pub test_images: usize,
    pub pretrain: PretrainReport,
    pub arms: Vec<ArmReport>,
    pub deltas: Vec<Delta>,
    pub per_image: Vec<PerImage>,
}

const SCRATCH: &str = "scratch";

/// Runs every arm and writes the report files into `out`.
pub fn compare(
    spec: &CompareSpec,
    out: &Path,
    device: &Device,
    mut on_event: impl FnMut(CompareEvent<'_>) -> Control,
) -> Result<CompareReport> {
    std::fs::create_dir_all(out).map_err(TrainerError::io(out))?;
    let pretrain = match &spec.pretrain {
        Pretrain::Weights(p) => PretrainReport {
            weights: p.clone(),
            steps: None,
            final_loss: None,
            seconds: None,
        },
        Pretrain::Run(cfg) => {
            if !cfg.model.same_backbone(&spec.finetune.model) {
                return Err(TrainerError::Unsupported(
                    "the pre-training MODEL (TYPE and its RESTORMER or UFORMER tree) differs \
                     from the fine-tuning one"
                        .into(),
                ));
            }
            let dir = out.join("pretrain");
            let t0 = Instant::now();
            let opts = TrainOptions {
                out_dir: dir.clone(),
                device: device.clone(),
                resume: true,
            };
            let s = train::train(cfg, &opts, |e| on_event(CompareEvent::Pretrain(e)))?;
            if s.stopped {
                return Err(TrainerError::Resume("stopped during pre-training".into()));
            }
            PretrainReport {
                weights: checkpoint::model_path(&dir, cfg.total_steps()),
                steps: Some(s.steps_done),
                final_loss: s.final_loss,
                seconds: Some(t0.elapsed().as_secs_f64()),
            }
        }
    };
    let mut arms: Vec<(String, Option<PathBuf>)> = vec![
        ("ifp".into(), Some(pretrain.weights.clone())),
        (SCRATCH.into(), None),
    ];
    if let Some(p) = &spec.extra_arm {
        arms.push(("checkpoint".into(), Some(p.clone())));
    }
    let test = test_set::load_test(&spec.finetune)?;
    let mut reports = Vec::new();
    let mut scores: Vec<Vec<ImageScore>> = Vec::new();
    let mut shows: Vec<Vec<crate::data::image::Image>> = Vec::new();
    for (name, init) in &arms {
        let mut cfg = spec.finetune.clone();
        cfg.init = init.clone();
        let dir = out.join(name);
        let opts = TrainOptions {
            out_dir: dir.clone(),
            device: device.clone(),
            resume: true,
        };
        let t0 = Instant::now();
        let s = train_run(&cfg, &opts, |event| {
            on_event(CompareEvent::Finetune { arm: name, event })
        })?;
        if s.run.stopped {
            return Err(TrainerError::Resume(format!(
                "stopped while fine-tuning `{name}`"
            )));
        }
        let secs = t0.elapsed().as_secs_f64();
        // A comparison checks for a stop between its phases, not between test images.
        let scored =
            test_set::score_best(&dir, &test, device, spec.tile, spec.showcase, |_, _| true)?;
        let test_set::Scored {
            best,
            per_image: per,
            kept,
        } = scored
            .ok_or_else(|| TrainerError::Resume(format!("stopped while testing `{name}`")))?;
        let mean = eval::mean_scores(&per);
        on_event(CompareEvent::Evaluated {
            arm: name,
            mean: &mean,
        });
        shows.push(kept);
        reports.push(ArmReport {
            name: name.clone(),
            init: init.clone(),
            best_step: best.step,
            best_val: best.scores,
            test: MetricSummary::of_images(&per),
            val_curve: s.history,
            finetune_seconds: secs,
        });
        scores.push(per);
    }
    let base = arms
        .iter()
        .position(|(n, _)| n == SCRATCH)
        .unwrap_or_default();
    let deltas = (0..arms.len())
        .filter(|&i| i != base)
        .map(|i| {
            let d = |f: fn(&Scores) -> f64| -> Vec<f64> {
                scores[i]
                    .iter()
                    .zip(&scores[base])
                    .map(|(a, b)| f(&a.scores) - f(&b.scores))
                    .collect()
            };
            let wins = d(|s| s.psnr).iter().filter(|&&x| x > 0.0).count();
            Delta {
                arm: arms[i].0.clone(),
                baseline: SCRATCH.into(),
                diff: MetricSummary::of(d),
                psnr_wins: wins,
                images: test.len(),
            }
        })
        .collect();
    let per_image = test
        .iter()
        .enumerate()
        .map(|(k, it)| PerImage {
            name: it.name.clone(),
            scores: arms
                .iter()
                .zip(&scores)
                .map(|((n, _), s)| (n.clone(), s[k].scores))
                .collect(),
        })
        .collect();
    let report = CompareReport {
        config: spec.finetune.clone(),
        test_images: test.len(),
        pretrain,
        arms: reports,
        deltas,
        per_image,
    };
    write_outputs(&report, out)?;
    for (k, it) in test.iter().take(spec.showcase).enumerate() {
        let mut panels = vec![&it.input];
        panels.extend(shows.iter().map(|s| &s[k]));
        panels.push(&it.target);
        let strip = crate::data::panels::row(&panels, 2);
        let stem = it
            .name
            .rsplit_once('.')
            .map_or(it.name.as_str(), |(s, _)| s);
        checkpoint::write_atomic(
            &out.join(format!("showcase-{stem}.png")),
            &checkpoint::png_bytes(&strip)?,
        )?;
    }
    Ok(report)
}

/// `report.json`, `per_image.csv` and `val_curve.csv`.
pub fn write_outputs(report: &CompareReport, out: &Path) -> Result<()> {
    let json = serde_json::to_vec_pretty(report)
        .map_err(|e| TrainerError::Unsupported(format!("cannot encode report: {e}")))?;
    checkpoint::write_atomic(&out.join("report.json"), &json)?;
    checkpoint::write_atomic(&out.join("per_image.csv"), per_image_csv(report).as_bytes())?;
    checkpoint::write_atomic(&out.join("val_curve.csv"), val_curve_csv(report).as_bytes())?;
    Ok(())
}

/// One row per test image: every arm's four scores, then each arm's PSNR minus scratch's.
pub fn per_image_csv(r: &CompareReport) -> String {
    let names: Vec<&str> = r.arms.iter().map(|a| a.name.as_str()).collect();
    let mut s = String::from("image");
    for n in &names {
        let _ = write!(s, ",{n}_psnr,{n}_ssim,{n}_psnr_y,{n}_ssim_y");
    }
    for d in &r.deltas {
        let _ = write!(s, ",{}_minus_{}_psnr", d.arm, d.baseline);
    }
    s.push('\n');
    for p in &r.per_image {
        s.push_str(&p.name);
        for n in &names {
            if let Some(x) = p.scores.get(*n) {
                let _ = write!(
                    s,
                    ",{:.4},{:.6},{:.4},{:.6}",
                    x.psnr, x.ssim, x.psnr_y, x.ssim_y
                );
            }
        }
        for d in &r.deltas {
            if let (Some(a), Some(b)) = (p.scores.get(&d.arm), p.scores.get(&d.baseline)) {
                let _ = write!(s, ",{:.4}", a.psnr - b.psnr);
            }
        }
        s.push('\n');
    }
    s
}

/// One row per arm and validation point.
pub fn val_curve_csv(r: &CompareReport) -> String {
    let mut s = String::from("arm,step,train_loss,val_psnr,val_ssim,val_psnr_y,val_ssim_y\n");
    for a in &r.arms {
        for p in &a.val_curve {
            let _ = writeln!(
                s,
                "{},{},{:.6},{:.4},{:.6},{:.4},{:.6}",
                a.name,
                p.step,
                p.train_loss,
                p.scores.psnr,
                p.scores.ssim,
                p.scores.psnr_y,
                p.scores.ssim_y
            );
        }
    }
    s
}

/// A plain-text table of the report (what `ifp compare` prints).
pub fn table(r: &CompareReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<11} {:>5} {:>16} {:>16} {:>16} {:>16}",
        "arm", "best", "PSNR", "SSIM", "PSNR-Y", "SSIM-Y"
    );
    let cell = |m: &MeanSe, p: usize| format!("{:.p$} ± {:.p$}", m.mean, m.se, p = p);
    for a in &r.arms {
        let _ = writeln!(
            s,
            "{:<11} {:>5} {:>16} {:>16} {:>16} {:>16}",
            a.name,
            a.best_step,
            cell(&a.test.psnr, 2),
            cell(&a.test.ssim, 4),
            cell(&a.test.psnr_y, 2),
            cell(&a.test.ssim_y, 4)
        );
    }
    for d in &r.deltas {
        let _ = writeln!(
            s,
            "{:<11} {:>5} {:>16} {:>16} {:>16} {:>16}  (PSNR higher on {}/{} images)",
            format!("{}-{}", d.arm, d.baseline),
            "",
            cell(&d.diff.psnr, 2),
            cell(&d.diff.ssim, 4),
            cell(&d.diff.psnr_y, 2),
            cell(&d.diff.ssim_y, 4),
            d.psnr_wins,
            d.images
        );
    }
    s
}
