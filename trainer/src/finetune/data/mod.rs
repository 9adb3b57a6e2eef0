//! Fine-tuning data: image lists (paired `input/` + `target/` folders, or clean images with a
//! synthetic degradation made on the fly), the fixed train/validation/test split, random
//! training crops with flips, and the deterministic degraded validation and test images.
//!
//! Randomness comes from two seeded ChaCha streams (crop/flip choices, degradation noise) whose
//! positions are saved with each checkpoint, so a resumed run draws the same batches. Test and
//! validation degradations are seeded per image from the run seed only, so every arm of a
//! comparison is judged on identical inputs.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

mod files;

use super::TaskData;
use crate::data::crop::{crop, CropBox};
use crate::data::image::{load_image, Image, CHANNELS};
use crate::data::mask::MaskRngState;
use crate::data::DataError;
use crate::error::{Result, TrainerError};

const CROP_STREAM: u64 = 0xF17E_C809;
const NOISE_STREAM: u64 = 0xF17E_2015;
const EVAL_STREAM: u64 = 0xF17E_E7A1;

pub use crate::eval::EvalItem;
pub use files::{check_degradation, is_paired, list_set, natural_cmp, split, Entry};

/// The synthetic degradation of clean images: Gaussian blur then additive white Gaussian noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Degradation {
    /// Noise standard deviation on the [0, 255] scale (25 means sigma 25/255 on [0, 1]).
    pub noise_sigma: f64,
    /// Gaussian blur standard deviation in pixels (0: none).
    pub blur_sigma: f64,
}

impl Degradation {
    /// Degrades `img`. The noise is not clipped (the denoising papers' convention).
    pub fn apply(&self, img: &Image, rng: &mut impl Rng) -> Image {
        let mut out = if self.blur_sigma > 0.0 {
            gaussian_blur(img, self.blur_sigma)
        } else {
            img.clone()
        };
        if self.noise_sigma > 0.0 {
            let s = self.noise_sigma / 255.0;
            for v in &mut out.data {
                let z: f64 = StandardNormal.sample(rng);
                *v += (z * s) as f32;
            }
        }
        out
    }
}

/// Separable Gaussian blur, radius ceil(3 sigma), mirrored borders (b a | a b).
pub fn gaussian_blur(img: &Image, sigma: f64) -> Image {
    let r = (3.0 * sigma).ceil() as i64;
    let mut taps: Vec<f32> = (-r..=r)
        .map(|x| (-0.5 * (x * x) as f64 / (sigma * sigma)).exp() as f32)
        .collect();
    let s: f32 = taps.iter().sum();
    taps.iter_mut().for_each(|t| *t /= s);
    let (w, h) = (img.width as i64, img.height as i64);
    let idx = |i: i64, n: i64| -> usize {
        let p = 2 * n;
        let m = i.rem_euclid(p);
        (if m >= n { p - 1 - m } else { m }) as usize
    };
    let mut out = img.clone();
    let n = (w * h) as usize;
    for c in 0..CHANNELS {
        let plane = &img.data[c * n..(c + 1) * n];
        let mut tmp = vec![0.0f32; n];
        for y in 0..h {
            for x in 0..w {
                tmp[(y * w + x) as usize] = taps
                    .iter()
                    .enumerate()
                    .map(|(k, t)| t * plane[(y * w) as usize + idx(x + k as i64 - r, w)])
                    .sum();
            }
        }
        for y in 0..h {
            for x in 0..w {
                out.data[c * n + (y * w + x) as usize] = taps
                    .iter()
                    .enumerate()
                    .map(|(k, t)| t * tmp[idx(y + k as i64 - r, h) * w as usize + x as usize])
                    .sum();
            }
        }
    }
    out
}

fn load_pair(e: &Entry) -> Result<(Option<Image>, Image)> {
    let target = load_image(&e.target)?;
    let input = match &e.input {
        Some(p) => {
            let i = load_image(p)?;
            if (i.width, i.height) != (target.width, target.height) {
                return Err(DataError::shape(
                    "paired input",
                    format!(
                        "{}x{} like {}",
                        target.width,
                        target.height,
                        e.target.display()
                    ),
                    format!("{}x{} in {}", i.width, i.height, p.display()),
                )
                .into());
            }
            Some(i)
        }
        None => None,
    };
    Ok((input, target))
}

fn centre_box(w: usize, h: usize, size: usize) -> CropBox {
    let (cw, ch) = (size.min(w), size.min(h));
    CropBox {
        top: (h - ch) / 2,
        left: (w - cw) / 2,
        height: ch,
        width: cw,
    }
}

/// Loads evaluation images, degraded deterministically (image i uses stream `seed, i`);
/// `centre_crop > 0` keeps only a centre square of that side.
pub fn load_eval(
    entries: &[Entry],
    deg: &Degradation,
    seed: u64,
    centre_crop: usize,
) -> Result<Vec<EvalItem>> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let (input, target) = load_pair(e)?;
            let b = centre_box(target.width, target.height, centre_crop);
            let cut = |img: &Image| {
                if centre_crop > 0 {
                    crop(img, &b)
                } else {
                    img.clone()
                }
            };
            let target = cut(&target);
            let input = match input {
                Some(x) => cut(&x),
                None => {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ EVAL_STREAM);
                    rng.set_stream(i as u64);
                    deg.apply(&target, &mut rng)
                }
            };
            Ok(EvalItem {
                name: e.name.clone(),
                input,
                target,
            })
        })
        .collect()
}

/// Training crops for one run.
pub struct TrainSet {
    images: Vec<(Option<Image>, Image)>,
    deg: Degradation,
    crop: usize,
    crop_rng: ChaCha8Rng,
    noise_rng: ChaCha8Rng,
    seeds: (u64, u64),
}

/// One training batch: degraded inputs and clean targets, (N, 3, S, S) in [0, 1].
pub struct TrainBatch {
    pub input: Tensor,
    pub target: Tensor,
    pub first_input: Image,
    pub first_target: Image,
}

impl TrainSet {
    pub fn new(entries: &[Entry], d: &TaskData, seed: u64) -> Result<Self> {
        let images = entries.iter().map(load_pair).collect::<Result<Vec<_>>>()?;
        for ((_, t), e) in images.iter().zip(entries) {
            if t.width < d.crop || t.height < d.crop {
                return Err(DataError::invalid(
                    "DATA.CROP",
                    d.crop,
                    format!(
                        "at most the smallest image side ({} is {}x{})",
                        e.name, t.width, t.height
                    ),
                )
                .into());
            }
        }
        let seeds = (seed ^ CROP_STREAM, seed ^ NOISE_STREAM);
        Ok(TrainSet {
            images,
            deg: d.degradation(),
            crop: d.crop,
            crop_rng: ChaCha8Rng::seed_from_u64(seeds.0),
            noise_rng: ChaCha8Rng::seed_from_u64(seeds.1),
            seeds,
        })
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// (crop/flip stream, noise stream) positions.
    pub fn state(&self) -> (MaskRngState, MaskRngState) {
        (
            MaskRngState {
                seed: self.seeds.0,
                word_pos: self.crop_rng.get_word_pos(),
            },
            MaskRngState {
                seed: self.seeds.1,
                word_pos: self.noise_rng.get_word_pos(),
            },
        )
    }

    pub fn restore(&mut self, crop: MaskRngState, noise: MaskRngState) {
        self.seeds = (crop.seed, noise.seed);
        self.crop_rng = ChaCha8Rng::seed_from_u64(crop.seed);
        self.crop_rng.set_word_pos(crop.word_pos);
        self.noise_rng = ChaCha8Rng::seed_from_u64(noise.seed);
        self.noise_rng.set_word_pos(noise.word_pos);
    }

    /// `n` random crops (image, position, horizontal and vertical flip), degraded.
    pub fn next_batch(&mut self, n: usize, device: &Device) -> Result<TrainBatch> {
        let s = self.crop;
        let mut xs = Vec::with_capacity(n * 3 * s * s);
        let mut ys = Vec::with_capacity(n * 3 * s * s);
        let mut first = None;
        for _ in 0..n {
            let k = self.crop_rng.random_range(0..self.images.len());
            let (input, target) = &self.images[k];
            let b = CropBox {
                top: self.crop_rng.random_range(0..=target.height - s),
                left: self.crop_rng.random_range(0..=target.width - s),
                height: s,
                width: s,
            };
            let (hf, vf) = (
                self.crop_rng.random::<bool>(),
                self.crop_rng.random::<bool>(),
            );
            let flip = |mut img: Image| {
                if hf {
                    img.hflip();
                }
                if vf {
                    vflip(&mut img);
                }
                img
            };
            let t = flip(crop(target, &b));
            let x = match input {
                Some(i) => flip(crop(i, &b)),
                None => self.deg.apply(&t, &mut self.noise_rng),
            };
            if first.is_none() {
                first = Some((x.clone(), t.clone()));
            }
            xs.extend_from_slice(&x.data);
            ys.extend_from_slice(&t.data);
        }
        let (first_input, first_target) =
            first.ok_or_else(|| TrainerError::Unsupported("empty batch".into()))?;
        Ok(TrainBatch {
            input: Tensor::from_vec(xs, (n, 3, s, s), device)?,
            target: Tensor::from_vec(ys, (n, 3, s, s), device)?,
            first_input,
            first_target,
        })
    }
}

fn vflip(img: &mut Image) {
    let (w, h) = (img.width, img.height);
    for c in 0..CHANNELS {
        let plane = &mut img.data[c * w * h..(c + 1) * w * h];
        for y in 0..h / 2 {
            let (a, b) = plane.split_at_mut((h - 1 - y) * w);
            a[y * w..(y + 1) * w].swap_with_slice(&mut b[..w]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vflip_mirrors_columns() {
        let mut img = Image::new(1, 3, (0..9).map(|v| v as f32).collect()).expect("shape");
        vflip(&mut img);
        assert_eq!(img.data, vec![2., 1., 0., 5., 4., 3., 8., 7., 6.]);
    }

    #[test]
    fn blur_keeps_constants_and_noise_is_seeded() {
        let img = Image::filled(9, 7, 0.3);
        let b = gaussian_blur(&img, 1.2);
        assert!(b.data.iter().all(|v| (v - 0.3).abs() < 1e-6));
        let d = Degradation {
            noise_sigma: 25.0,
            blur_sigma: 0.0,
        };
        let a1 = d.apply(&img, &mut ChaCha8Rng::seed_from_u64(3));
        let a2 = d.apply(&img, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(a1, a2);
        let sd = a1.mean_std().1;
        assert!((sd - 25.0 / 255.0).abs() < 0.03, "{sd}");
    }
}
