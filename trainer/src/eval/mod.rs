//! Evaluation of fine-tuned networks on whole test images: restoration (whole image, any size,
//! since the encoder reflect-pads to a multiple of 8; optionally in overlapping tiles to bound
//! memory), per-image PSNR/SSIM on RGB and Y (`metrics`), means with standard errors, and the
//! `ifp eval` entry point that rebuilds a network from a fine-tuning model file.

pub mod metrics;

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::image::{Image, CHANNELS};
use crate::error::{Result, TrainerError};
use crate::finetune::data::{self, EvalItem};
use crate::finetune::net::{load_all, FinetuneNet, Init};
use crate::finetune::FinetuneConfig;
use metrics::Scores;

/// Overlap between tiles; wide enough that the blended seams sit away from tile borders.
const TILE_OVERLAP: usize = 32;

/// The scores of one test image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageScore {
    pub name: String,
    #[serde(flatten)]
    pub scores: Scores,
}

/// (3, H, W) or (1, 3, H, W) tensor -> planar image (values kept as they are).
pub fn tensor_to_image(t: &Tensor) -> Result<Image> {
    let t = if t.rank() == 4 { t.get(0)? } else { t.clone() };
    let (_, h, w) = t.dims3()?;
    let data = t
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(Image::new(w, h, data)?)
}

fn image_to_tensor(img: &Image, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_slice(
        &img.data,
        (1, CHANNELS, img.height, img.width),
        device,
    )?)
}

/// Restores one image. `tile = Some(t)`: t x t tiles overlapping by 32 pixels, averaged where
/// they overlap (for images too large for memory; the channel attention then sees one tile).
pub fn restore(
    net: &FinetuneNet,
    img: &Image,
    tile: Option<usize>,
    device: &Device,
) -> Result<Image> {
    let (w, h) = (img.width, img.height);
    let t = match tile {
        Some(t) if t < w.max(h) => t.max(TILE_OVERLAP + 8),
        _ => {
            let x = image_to_tensor(img, device)?;
            let y = crate::threads::on_workers(|| net.forward(&x))?;
            return tensor_to_image(&y);
        }
    };
    let starts = |n: usize| -> Vec<usize> {
        if n <= t {
            return vec![0];
        }
        let stride = t - TILE_OVERLAP;
        let mut v: Vec<usize> = (0..)
            .map(|i| i * stride)
            .take_while(|&s| s + t < n)
            .collect();
        v.push(n - t);
        v
    };
    let mut acc = vec![0.0f32; CHANNELS * w * h];
    let mut weight = vec![0.0f32; w * h];
    for &y0 in &starts(h) {
        for &x0 in &starts(w) {
            let b = crate::data::crop::CropBox {
                top: y0,
                left: x0,
                height: t.min(h),
                width: t.min(w),
            };
            let piece = crate::data::crop::crop(img, &b);
            let x = image_to_tensor(&piece, device)?;
            let out = tensor_to_image(&crate::threads::on_workers(|| net.forward(&x))?)?;
            for c in 0..CHANNELS {
                for yy in 0..b.height {
                    for xx in 0..b.width {
                        let src = c * b.width * b.height + yy * b.width + xx;
                        acc[c * w * h + (y0 + yy) * w + x0 + xx] += out.data[src];
                    }
                }
            }
            for yy in 0..b.height {
                for xx in 0..b.width {
                    weight[(y0 + yy) * w + x0 + xx] += 1.0;
                }
            }
        }
    }
    for c in 0..CHANNELS {
        for i in 0..w * h {
            acc[c * w * h + i] /= weight[i];
        }
    }
    Ok(Image::new(w, h, acc)?)
}

/// Restores and scores every item.
pub fn evaluate(
    net: &FinetuneNet,
    items: &[EvalItem],
    tile: Option<usize>,
) -> Result<Vec<ImageScore>> {
    Ok(evaluate_keeping(net, items, tile, 0)?.0)
}

/// Restores and scores every item, also returning the restorations of the first `keep`.
pub fn evaluate_keeping(
    net: &FinetuneNet,
    items: &[EvalItem],
    tile: Option<usize>,
    keep: usize,
) -> Result<(Vec<ImageScore>, Vec<Image>)> {
    let device = net_device(net)?;
    let mut kept = Vec::new();
    let mut scores = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let out = restore(net, &it.input, tile, &device)?;
        scores.push(ImageScore {
            name: it.name.clone(),
            scores: metrics::score(&out, &it.target)?,
        });
        if i < keep {
            kept.push(out);
        }
    }
    Ok((scores, kept))
}

fn net_device(net: &FinetuneNet) -> Result<Device> {
    net.vars()?
        .first()
        .map(|(_, v)| v.device().clone())
        .ok_or_else(|| TrainerError::Unsupported("the network has no parameters".into()))
}

/// Means of each score over images.
pub fn mean_scores(s: &[ImageScore]) -> Scores {
    let m = |f: fn(&Scores) -> f64| {
        metrics::mean_se(&s.iter().map(|x| f(&x.scores)).collect::<Vec<_>>()).0
    };
    Scores {
        psnr: m(|x| x.psnr),
        ssim: m(|x| x.ssim),
        psnr_y: m(|x| x.psnr_y),
        ssim_y: m(|x| x.ssim_y),
    }
}

/// Images side by side with 2-pixel white gaps (all the same height), clamped to [0, 1].
pub fn side_by_side(panels: &[&Image]) -> Result<Image> {
    let h = panels.first().map_or(0, |p| p.height);
    if panels.iter().any(|p| p.height != h) {
        return Err(TrainerError::Unsupported(
            "panels of different heights".into(),
        ));
    }
    let gap = 2;
    let width: usize =
        panels.iter().map(|p| p.width).sum::<usize>() + gap * panels.len().saturating_sub(1);
    let mut data = vec![1.0f32; CHANNELS * width * h];
    let mut x0 = 0;
    for p in panels {
        for c in 0..CHANNELS {
            for y in 0..h {
                for x in 0..p.width {
                    data[c * width * h + y * width + x0 + x] =
                        p.data[c * p.width * h + y * p.width + x].clamp(0.0, 1.0);
                }
            }
        }
        x0 += p.width + gap;
    }
    Ok(Image::new(width, h, data)?)
}

/// A network rebuilt from a fine-tuning model file, with the config stored in its metadata.
pub fn load_finetuned(path: &Path, device: &Device) -> Result<(FinetuneConfig, FinetuneNet)> {
    let bytes = std::fs::read(path).map_err(TrainerError::io(path))?;
    let bad = |message: String| TrainerError::Weights {
        path: path.to_path_buf(),
        message,
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let yaml = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("ifp_config"))
        .ok_or_else(|| bad("no `ifp_config` metadata: not an ifp model file".into()))?;
    let cfg: FinetuneConfig = serde_norway::from_str(yaml).map_err(|_| {
        bad("its config is not a fine-tuning config (a pre-training checkpoint? fine-tune it first)".into())
    })?;
    let weights = load_all(path, device)?;
    if !weights.keys().any(|k| k.starts_with("head.")) {
        return Err(bad("no `head.*` tensors: not a fine-tuned model".into()));
    }
    let net = FinetuneNet::new(
        &cfg.model,
        Init::Tensors(weights.clone()),
        Init::Tensors(weights),
        cfg.head.residual,
        device,
    )?;
    Ok((cfg, net))
}

/// `ifp eval`: the test images of `dir` (paired, or clean with the model's own synthetic
/// degradation unless `noise_sigma`/`blur_sigma` override it), degraded with the model's seed.
pub struct EvalRequest<'a> {
    pub weights: &'a Path,
    pub dir: &'a Path,
    pub noise_sigma: Option<f64>,
    pub blur_sigma: Option<f64>,
    pub max_images: usize,
    pub tile: Option<usize>,
}

/// Loads the network and the images, and scores every image.
pub fn evaluate_weights(req: &EvalRequest<'_>, device: &Device) -> Result<Vec<ImageScore>> {
    let (cfg, net) = load_finetuned(req.weights, device)?;
    let mut entries = data::list_set(req.dir)?;
    if req.max_images > 0 {
        entries.truncate(req.max_images);
    }
    let mut deg = cfg.data.degradation();
    if let Some(s) = req.noise_sigma {
        deg.noise_sigma = s;
    }
    if let Some(s) = req.blur_sigma {
        deg.blur_sigma = s;
    }
    let items = data::load_eval(&entries, &deg, cfg.seed, 0)?;
    evaluate(&net, &items, req.tile)
}
