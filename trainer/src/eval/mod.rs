//! Evaluation of fine-tuned networks on whole test images: restoration (whole image, any size,
//! since the encoder reflect-pads to a multiple of 8; optionally in overlapping tiles to bound
//! memory), per-image PSNR/SSIM on RGB and Y (`metrics`), and means with standard errors. Any
//! [`Restorer`] can be scored; `finetune::evaluate` rebuilds one from a model file.

pub mod metrics;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::image::{Image, CHANNELS};
use crate::error::Result;
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

/// A loaded evaluation image: degraded input and clean target, same size.
#[derive(Debug, Clone)]
pub struct EvalItem {
    pub name: String,
    pub input: Image,
    pub target: Image,
}

/// A network that restores images: (1, 3, H, W) in [0, 1] to the same shape.
pub trait Restorer: Sync {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;
    /// Where its parameters live (inputs are put there).
    fn device(&self) -> Result<Device>;
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
    net: &impl Restorer,
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
    net: &impl Restorer,
    items: &[EvalItem],
    tile: Option<usize>,
) -> Result<Vec<ImageScore>> {
    Ok(evaluate_keeping(net, items, tile, 0)?.0)
}

/// Restores and scores every item, also returning the restorations of the first `keep`.
pub fn evaluate_keeping(
    net: &impl Restorer,
    items: &[EvalItem],
    tile: Option<usize>,
    keep: usize,
) -> Result<(Vec<ImageScore>, Vec<Image>)> {
    let mut kept = Vec::new();
    let scores = evaluate_each(net, items, tile, |i, _, out| {
        if i < keep {
            kept.push(out.clone());
        }
        Ok(())
    })?;
    Ok((scores, kept))
}

/// Restores and scores every item, handing each restoration to `each` (its index, the item,
/// the restored image) as it is made, so callers can save them without holding them all.
pub fn evaluate_each(
    net: &impl Restorer,
    items: &[EvalItem],
    tile: Option<usize>,
    mut each: impl FnMut(usize, &EvalItem, &Image) -> Result<()>,
) -> Result<Vec<ImageScore>> {
    let device = net.device()?;
    let mut scores = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let out = restore(net, &it.input, tile, &device)?;
        scores.push(ImageScore {
            name: it.name.clone(),
            scores: metrics::score(&out, &it.target)?,
        });
        each(i, it, &out)?;
    }
    Ok(scores)
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
