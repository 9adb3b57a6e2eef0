//! A comparison over several seeds: the same "does IFP help here?" experiment with different
//! fine-tuning seeds (crops, head initialisation, synthetic noise), optionally also different
//! pre-training seeds, and what the seeds say together. One seed's difference between arms can
//! be noise; across seeds the report gives each arm's mean with a 95% confidence interval, the
//! paired difference IFP - scratch per seed (its mean, interval, and whether that interval
//! excludes zero), how many seeds favour IFP, and the per-image differences averaged over seeds.
//!
//! Folder layout under `out`: `seed-<S>/` (one comparison each, as `compare` writes it; the
//! pre-training runs in the first seed's folder and later seeds reuse its weights unless the
//! pre-training seed varies too), `seeds.json`, `seeds.csv`. Every seed resumes like a single
//! comparison.

use std::fmt::Write as _;
use std::path::Path;

use candle_core::Device;
use serde::Serialize;

use super::compare::{compare, CompareEvent, CompareReport, CompareSpec, Pretrain};
use crate::checkpoint;
use crate::error::{Result, TrainerError};
use crate::train::Control;

/// Two-sided 95% critical values of Student's t distribution for 1 to 30 degrees of freedom
/// (the standard table). Past 30 the normal value 1.96 stands in (4% under t at 31, so a
/// little narrow); no run gets there, since a comparison takes at most 20 seeds.
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// A mean over seeds with its 95% confidence interval (t distribution; none from one seed).
#[derive(Debug, Clone, Serialize)]
pub struct Interval {
    pub mean: f64,
    /// `[low, high]`.
    pub ci95: Option<[f64; 2]>,
    pub per_seed: Vec<f64>,
}

impl Interval {
    pub fn of(values: &[f64]) -> Interval {
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n.max(1) as f64;
        let ci95 = (n >= 2).then(|| {
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let t = T975.get(n - 2).copied().unwrap_or(1.96);
            let half = t * (var / n as f64).sqrt();
            [mean - half, mean + half]
        });
        Interval {
            mean,
            ci95,
            per_seed: values.to_vec(),
        }
    }

    /// The interval lies wholly above or below zero.
    pub fn excludes_zero(&self) -> bool {
        self.ci95.is_some_and(|[lo, hi]| lo > 0.0 || hi < 0.0)
    }
}

/// One arm's test scores across seeds (each seed's mean over the test images).
#[derive(Debug, Clone, Serialize)]
pub struct ArmSeeds {
    pub name: String,
    pub psnr: Interval,
    pub ssim: Interval,
}

/// An arm's paired difference against the baseline across seeds.
#[derive(Debug, Clone, Serialize)]
pub struct DeltaSeeds {
    pub arm: String,
    pub baseline: String,
    /// Per seed: the mean over test images of the arm's PSNR minus the baseline's.
    pub psnr: Interval,
    pub ssim: Interval,
    /// Seeds whose mean PSNR difference is positive.
    pub seeds_favouring: usize,
    /// The PSNR interval excludes zero (a paired t test across seeds at the 5% level).
    pub significant: bool,
    /// Per test image: the PSNR difference averaged over seeds.
    pub per_image: Vec<(String, f64)>,
    /// Images whose seed-averaged difference is positive.
    pub images_favouring: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeedsReport {
    pub seeds: Vec<u64>,
    /// Each seed also pre-trained with its own seed (otherwise one pre-training is shared).
    pub vary_pretrain: bool,
    pub test_images: usize,
    pub arms: Vec<ArmSeeds>,
    pub deltas: Vec<DeltaSeeds>,
}

/// Runs `spec` once per seed (its fine-tuning `SEED` replaced; with `vary_pretrain` and a
/// pre-training to run, its `SEED` too) into `out/seed-<S>/`, then writes the summary.
/// `on_event` hears every seed's events with the seed.
pub fn compare_seeds(
    spec: &CompareSpec,
    seeds: &[u64],
    vary_pretrain: bool,
    out: &Path,
    device: &Device,
    mut on_event: impl FnMut(u64, CompareEvent<'_>) -> Control,
) -> Result<(Vec<CompareReport>, SeedsReport)> {
    if seeds.is_empty() {
        return Err(TrainerError::Unsupported(
            "a comparison needs at least one seed".into(),
        ));
    }
    std::fs::create_dir_all(out).map_err(TrainerError::io(out))?;
    let mut reports: Vec<CompareReport> = Vec::new();
    for &seed in seeds {
        let mut finetune = spec.finetune.clone();
        finetune.seed = seed;
        let pretrain = match (&spec.pretrain, reports.first()) {
            (Pretrain::Weights(w), _) => Pretrain::Weights(w.clone()),
            (Pretrain::Run(cfg), _) if vary_pretrain => {
                let mut cfg = cfg.clone();
                cfg.seed = seed;
                Pretrain::Run(cfg)
            }
            (Pretrain::Run(_), Some(first)) => Pretrain::Weights(first.pretrain.weights.clone()),
            (Pretrain::Run(cfg), None) => Pretrain::Run(cfg.clone()),
        };
        let one = CompareSpec {
            finetune,
            pretrain,
            extra_arm: spec.extra_arm.clone(),
            tile: spec.tile,
            showcase: spec.showcase,
        };
        let r = compare(&one, &out.join(format!("seed-{seed}")), device, |ev| {
            on_event(seed, ev)
        })?;
        reports.push(r);
    }
    let summary = summarise(&reports, seeds, vary_pretrain);
    let json = serde_json::to_vec_pretty(&summary)
        .map_err(|e| TrainerError::Unsupported(format!("cannot encode the summary: {e}")))?;
    checkpoint::write_atomic(&out.join("seeds.json"), &json)?;
    checkpoint::write_atomic(&out.join("seeds.csv"), seeds_csv(&summary).as_bytes())?;
    Ok((reports, summary))
}

/// What the seeds' reports say together.
pub fn summarise(reports: &[CompareReport], seeds: &[u64], vary_pretrain: bool) -> SeedsReport {
    let first = &reports[0];
    let arms = first
        .arms
        .iter()
        .enumerate()
        .map(|(i, a)| ArmSeeds {
            name: a.name.clone(),
            psnr: Interval::of(
                &reports
                    .iter()
                    .map(|r| r.arms[i].test.psnr.mean)
                    .collect::<Vec<_>>(),
            ),
            ssim: Interval::of(
                &reports
                    .iter()
                    .map(|r| r.arms[i].test.ssim.mean)
                    .collect::<Vec<_>>(),
            ),
        })
        .collect();
    let deltas = first
        .deltas
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let psnr = Interval::of(
                &reports
                    .iter()
                    .map(|r| r.deltas[i].diff.psnr.mean)
                    .collect::<Vec<_>>(),
            );
            let ssim = Interval::of(
                &reports
                    .iter()
                    .map(|r| r.deltas[i].diff.ssim.mean)
                    .collect::<Vec<_>>(),
            );
            let per_image: Vec<(String, f64)> = first
                .per_image
                .iter()
                .enumerate()
                .map(|(k, img)| {
                    let diffs: Vec<f64> = reports
                        .iter()
                        .filter_map(|r| {
                            let s = &r.per_image.get(k)?.scores;
                            Some(s.get(&d.arm)?.psnr - s.get(&d.baseline)?.psnr)
                        })
                        .collect();
                    let mean = diffs.iter().sum::<f64>() / diffs.len().max(1) as f64;
                    (img.name.clone(), mean)
                })
                .collect();
            DeltaSeeds {
                arm: d.arm.clone(),
                baseline: d.baseline.clone(),
                seeds_favouring: psnr.per_seed.iter().filter(|&&x| x > 0.0).count(),
                significant: psnr.excludes_zero(),
                images_favouring: per_image.iter().filter(|(_, x)| *x > 0.0).count(),
                per_image,
                psnr,
                ssim,
            }
        })
        .collect();
    SeedsReport {
        seeds: seeds.to_vec(),
        vary_pretrain,
        test_images: first.test_images,
        arms,
        deltas,
    }
}

/// One row per seed: every arm's mean test PSNR and SSIM, then each difference's PSNR.
pub fn seeds_csv(r: &SeedsReport) -> String {
    let mut s = String::from("seed");
    for a in &r.arms {
        let _ = write!(s, ",{0}_psnr,{0}_ssim", a.name);
    }
    for d in &r.deltas {
        let _ = write!(s, ",{}_minus_{}_psnr", d.arm, d.baseline);
    }
    s.push('\n');
    for (k, seed) in r.seeds.iter().enumerate() {
        let _ = write!(s, "{seed}");
        for a in &r.arms {
            let _ = write!(s, ",{:.4},{:.6}", a.psnr.per_seed[k], a.ssim.per_seed[k]);
        }
        for d in &r.deltas {
            let _ = write!(s, ",{:.4}", d.psnr.per_seed[k]);
        }
        s.push('\n');
    }
    s
}

/// A plain-text summary (what `ifp compare --seeds N` prints).
pub fn seeds_table(r: &SeedsReport) -> String {
    let ci = |i: &Interval, p: usize| match i.ci95 {
        Some([lo, hi]) => format!("{:.p$} [{lo:.p$}, {hi:.p$}]", i.mean, p = p),
        None => format!("{:.p$}", i.mean, p = p),
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} seeds ({}), {} test images; means over seeds with 95% confidence intervals",
        r.seeds.len(),
        r.seeds
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        r.test_images
    );
    let _ = writeln!(s, "{:<16} {:>28} {:>30}", "arm", "PSNR (dB)", "SSIM");
    for a in &r.arms {
        let _ = writeln!(
            s,
            "{:<16} {:>28} {:>30}",
            a.name,
            ci(&a.psnr, 2),
            ci(&a.ssim, 4)
        );
    }
    for d in &r.deltas {
        let _ = writeln!(
            s,
            "{:<16} {:>28} {:>30}  {} of {} seeds and {} of {} images favour {}; {}",
            format!("{}-{}", d.arm, d.baseline),
            ci(&d.psnr, 2),
            ci(&d.ssim, 4),
            d.seeds_favouring,
            r.seeds.len(),
            d.images_favouring,
            d.per_image.len(),
            d.arm,
            if d.significant {
                "significant at 5% (the interval excludes 0)"
            } else if r.seeds.len() < 2 {
                "one seed: no interval"
            } else {
                "not significant at 5% (the interval includes 0)"
            }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::Interval;

    #[test]
    fn intervals_use_students_t() {
        // mean 2, sample sd 1, n 3: half-width t(0.975, 2) / sqrt(3) = 4.303 / 1.732.
        let i = Interval::of(&[1.0, 2.0, 3.0]);
        let [lo, hi] = i.ci95.expect("an interval from three seeds");
        assert!((i.mean - 2.0).abs() < 1e-12);
        assert!((hi - 2.0 - 4.303 / 3f64.sqrt()).abs() < 1e-9, "{hi}");
        assert!((2.0 - lo - 4.303 / 3f64.sqrt()).abs() < 1e-9, "{lo}");
        assert!(!i.excludes_zero());
        assert!(Interval::of(&[0.3, 0.35, 0.4]).excludes_zero());
        assert!(Interval::of(&[-0.3, -0.35, -0.4]).excludes_zero());
        let one = Interval::of(&[0.5]);
        assert!(one.ci95.is_none() && !one.excludes_zero());
        // Past the table the normal value applies.
        let many: Vec<f64> = (0..40).map(f64::from).collect();
        let [lo, _] = Interval::of(&many).ci95.expect("interval");
        let se = (many.iter().map(|v| (v - 19.5).powi(2)).sum::<f64>() / 39.0 / 40.0).sqrt();
        assert!((19.5 - lo - 1.96 * se).abs() < 1e-9);
    }
}
