//! `ifp eval`: score a fine-tuned model file on a folder of test images (PSNR/SSIM, RGB and
//! Y, per image and mean with standard error), optionally writing the numbers as JSON and the
//! restored images as PNGs.

use std::path::PathBuf;

use clap::Args;
use ifp_trainer::eval::metrics::mean_se;
use ifp_trainer::finetune::evaluate::{evaluate_weights, EvalRequest};

use super::{classify, parse_device, Failure};

#[derive(Args)]
pub struct EvalArgs {
    /// A fine-tuning model file (model-SSSSSS.safetensors of `ifp finetune`).
    #[arg(long, value_name = "W.safetensors")]
    weights: PathBuf,
    /// Test images: input/ + target/, or clean images degraded as the model was trained.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Override the noise sigma (0-255 scale) for clean images (default: the model's
    /// training value).
    #[arg(long)]
    sigma: Option<f64>,
    /// Override the blur sigma (pixels) for clean images (default: the model's training
    /// value).
    #[arg(long)]
    blur: Option<f64>,
    /// Score only the first N images (natural name order); 0 = all.
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_images: usize,
    /// Restore in overlapping tiles of this side, to bound memory on large images (default:
    /// whole images).
    #[arg(long)]
    tile: Option<usize>,
    /// Also write the per-image scores as JSON here (default: none).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also write each restored image here, as `<image name>.png` (created if missing;
    /// default: none).
    #[arg(long, value_name = "DIR")]
    save_outputs: Option<PathBuf>,
    /// Where to run: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(a: EvalArgs) -> Result<(), Failure> {
    if !a.weights.is_file() {
        return Err(Failure::usage(anyhow::anyhow!(
            "--weights {}: no such file",
            a.weights.display()
        )));
    }
    if !a.data.is_dir() {
        return Err(Failure::usage(anyhow::anyhow!(
            "--data {}: no such folder",
            a.data.display()
        )));
    }
    if let Some(d) = &a.save_outputs {
        if d.exists() && !d.is_dir() {
            return Err(Failure::usage(anyhow::anyhow!(
                "--save-outputs {}: exists and is not a folder",
                d.display()
            )));
        }
    }
    if let Some(t) = a.tile {
        if t < 48 {
            return Err(Failure::usage(anyhow::anyhow!(
                "--tile {t}: must be at least 48"
            )));
        }
    }
    let device = parse_device(&a.device)?;
    let req = EvalRequest {
        weights: &a.weights,
        dir: &a.data,
        noise_sigma: a.sigma,
        blur_sigma: a.blur,
        max_images: a.max_images,
        tile: a.tile,
        save_outputs: a.save_outputs.as_deref(),
    };
    let scores = evaluate_weights(&req, &device).map_err(classify)?;
    println!(
        "{:<24} {:>8} {:>8} {:>8} {:>8}",
        "image", "PSNR", "SSIM", "PSNR-Y", "SSIM-Y"
    );
    for s in &scores {
        let x = &s.scores;
        println!(
            "{:<24} {:>8.3} {:>8.4} {:>8.3} {:>8.4}",
            s.name, x.psnr, x.ssim, x.psnr_y, x.ssim_y
        );
    }
    let col = |f: fn(&ifp_trainer::eval::metrics::Scores) -> f64| {
        mean_se(&scores.iter().map(|s| f(&s.scores)).collect::<Vec<_>>())
    };
    let (p, ss, py, sy) = (
        col(|x| x.psnr),
        col(|x| x.ssim),
        col(|x| x.psnr_y),
        col(|x| x.ssim_y),
    );
    println!(
        "mean of {} images: PSNR {:.3} ± {:.3} dB, SSIM {:.4} ± {:.4}, PSNR-Y {:.3} ± {:.3} dB, SSIM-Y {:.4} ± {:.4}",
        scores.len(), p.0, p.1, ss.0, ss.1, py.0, py.1, sy.0, sy.1
    );
    if let Some(path) = &a.json {
        let body = serde_json::to_vec_pretty(&scores)
            .map_err(|e| Failure::runtime(anyhow::anyhow!("cannot encode scores: {e}")))?;
        ifp_trainer::checkpoint::write_atomic(path, &body).map_err(classify)?;
    }
    Ok(())
}
