//! Scoring a finished fine-tuning run on its test images: the run's best checkpoint (by
//! validation PSNR) restores every test image (`TEST_DIR`, or the training folder's held-out
//! `SPLIT_EVERY`-th images) and `test.json` keeps the mean with its standard error and the
//! per-image scores. A comparison scores each of its arms the same way (`score_best`), on one
//! loading of the test images shared by all arms.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::{best_model, data, evaluate, FinetuneConfig, ValPoint};
use crate::checkpoint;
use crate::data::image::Image;
use crate::error::{Result, TrainerError};
use crate::eval::metrics::{mean_se, Scores};
use crate::eval::{self, EvalItem, ImageScore};

/// A mean over images with its standard error.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct MeanSe {
    pub mean: f64,
    pub se: f64,
}

/// The four scores, each as a mean with its standard error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricSummary {
    pub psnr: MeanSe,
    pub ssim: MeanSe,
    pub psnr_y: MeanSe,
    pub ssim_y: MeanSe,
}

impl MetricSummary {
    /// `values(score)` lists one value per image of the score that `score` picks.
    pub fn of(values: impl Fn(fn(&Scores) -> f64) -> Vec<f64>) -> Self {
        let m = |f: fn(&Scores) -> f64| {
            let (mean, se) = mean_se(&values(f));
            MeanSe { mean, se }
        };
        MetricSummary {
            psnr: m(|s| s.psnr),
            ssim: m(|s| s.ssim),
            psnr_y: m(|s| s.psnr_y),
            ssim_y: m(|s| s.ssim_y),
        }
    }

    /// The summary of per-image scores.
    pub fn of_images(per: &[ImageScore]) -> Self {
        Self::of(|f| per.iter().map(|x| f(&x.scores)).collect())
    }
}

/// What `test.json` holds: the best checkpoint's scores on the test images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestReport {
    /// The checkpoint scored: the one with the highest validation PSNR.
    pub best_step: usize,
    pub best_val: Scores,
    pub test_images: usize,
    pub test: MetricSummary,
    pub per_image: Vec<ImageScore>,
}

/// A run folder's test scores (`test.json`).
pub fn test_path(dir: &Path) -> PathBuf {
    dir.join("test.json")
}

/// The test images of a fine-tuning config, degraded as its validation images are (whole
/// images, never cropped).
pub fn load_test(cfg: &FinetuneConfig) -> Result<Vec<EvalItem>> {
    let (_, _, entries) = data::split(&cfg.data)?;
    data::load_eval(&entries, &cfg.data.degradation(), cfg.seed, 0)
}

/// A run's best checkpoint scored on test images.
pub struct Scored {
    pub best: ValPoint,
    pub per_image: Vec<ImageScore>,
    /// The restorations of the first images, as many as asked to keep.
    pub kept: Vec<Image>,
}

/// Scores the best checkpoint of the run in `dir` on `test`, also returning the restorations
/// of the first `keep` images. `go(done, total)` is asked before each image; `None`: it said
/// stop.
pub fn score_best(
    dir: &Path,
    test: &[EvalItem],
    device: &Device,
    tile: Option<usize>,
    keep: usize,
    mut go: impl FnMut(usize, usize) -> bool,
) -> Result<Option<Scored>> {
    let (best, path) = best_model(dir)?.ok_or_else(|| {
        TrainerError::Resume(format!("{}: no validated checkpoint", dir.display()))
    })?;
    let (_, net) = evaluate::load_finetuned(&path, device)?;
    let (mut per, mut kept) = (Vec::with_capacity(test.len()), Vec::new());
    for (i, item) in test.iter().enumerate() {
        if !go(i, test.len()) {
            return Ok(None);
        }
        let keep_this = usize::from(i < keep);
        let (s, k) = eval::evaluate_keeping(&net, std::slice::from_ref(item), tile, keep_this)?;
        per.extend(s);
        kept.extend(k);
    }
    Ok(Some(Scored {
        best,
        per_image: per,
        kept,
    }))
}

/// Scores the finished run in `dir` on the test images of `cfg` and writes `test.json`;
/// `None` (and no file) if `go(done, total)`, asked before each image, said stop.
pub fn score_run(
    cfg: &FinetuneConfig,
    dir: &Path,
    device: &Device,
    go: impl FnMut(usize, usize) -> bool,
) -> Result<Option<TestReport>> {
    let test = load_test(cfg)?;
    let Some(Scored {
        best,
        per_image: per,
        ..
    }) = score_best(dir, &test, device, None, 0, go)?
    else {
        return Ok(None);
    };
    let report = TestReport {
        best_step: best.step,
        best_val: best.scores,
        test_images: per.len(),
        test: MetricSummary::of_images(&per),
        per_image: per,
    };
    let json = serde_json::to_vec_pretty(&report)
        .map_err(|e| TrainerError::Unsupported(format!("cannot encode test scores: {e}")))?;
    checkpoint::write_atomic(&test_path(dir), &json)?;
    Ok(Some(report))
}
