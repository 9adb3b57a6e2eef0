//! Training batches: crops of the noise image, their spectrum masks and corruptions, turned into
//! the network input (normalised corrupted crop), the target (normalised clean crop) and the
//! mask tensor the loss needs (ARCHITECTURE.md, "The method"). All randomness comes from seeded
//! ChaCha streams whose positions are saved in the training state, so a resumed run draws the
//! same crops.

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::data::corrupt::{normalize_imagenet, CorruptionKind, Corruptor};
use crate::data::crop::{sample_crop, CropParams};
use crate::data::image::{load_image, Image};
use crate::data::mask::{FilterType, MaskGenerator, MaskMode, MaskRngState};
use crate::data::noise::{generate_noise, NoiseSpec};
use crate::error::Result;
use crate::loss::RecoverTarget;

/// Distinct seeds for the independent random streams of one run.
const CROP_STREAM: u64 = 0x1F9_C80F;
const MASK_STREAM: u64 = 0x1F9_3A5C;

/// One training batch.
pub struct Batch {
    /// ImageNet-normalised corrupted crops, (N, 3, S, S).
    pub input: Tensor,
    /// ImageNet-normalised clean crops, (N, 3, S, S).
    pub target: Tensor,
    /// Spectrum masks, (N, 1, S, S), 1 = kept frequency.
    pub mask: Tensor,
    /// The first sample's clean and corrupted crops in [0, 1], for the PNG strip.
    pub first_clean: Image,
    pub first_corrupted: Image,
}

/// Where the sampler's random streams stand (saved with each checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    pub crop: MaskRngState,
    pub mask: MaskRngState,
}

/// Draws batches for one run.
pub struct Sampler {
    noise: Image,
    crop: CropParams,
    masks: MaskGenerator,
    corruptor: Corruptor,
    kind: CorruptionKind,
    crop_seed: u64,
    rng: ChaCha8Rng,
}

/// The noise image of a config: the user's image, or the generated one.
pub fn noise_image(cfg: &Config) -> Result<Image> {
    if let Some(path) = &cfg.data.noise_image {
        return Ok(load_image(path)?);
    }
    let n = &cfg.data.noise;
    Ok(generate_noise(&NoiseSpec {
        width: n.width,
        height: n.height,
        mean: n.mean,
        std: n.std,
        seed: n.seed,
    })?)
}

impl Sampler {
    pub fn from_config(cfg: &Config) -> Result<Self> {
        let d = &cfg.data;
        let filter = if d.filter_type == "MFM" {
            FilterType::Mfm
        } else {
            FilterType::Ifp
        };
        let mode = if d.mask_mode == "per_sample" {
            MaskMode::PerSample
        } else {
            MaskMode::Fixed
        };
        let kind = match cfg.model.recover_target_type {
            RecoverTarget::Normal | RecoverTarget::Masked => CorruptionKind::Real,
            RecoverTarget::MMasked | RecoverTarget::MMMasked => CorruptionKind::Modulus,
        };
        let crop_seed = cfg.seed ^ CROP_STREAM;
        Ok(Sampler {
            noise: noise_image(cfg)?,
            crop: CropParams {
                size: d.img_size,
                min_scale: d.min_crop_scale,
            },
            masks: MaskGenerator::new(
                filter,
                d.img_size,
                d.sample_ratio,
                d.mask_radius1 as usize,
                d.mask_radius2.min(1e9) as usize,
                mode,
                cfg.seed ^ MASK_STREAM,
            )?,
            corruptor: Corruptor::new(d.img_size)?,
            kind,
            crop_seed,
            rng: ChaCha8Rng::seed_from_u64(crop_seed),
        })
    }

    /// The mask generator (its fixed radii are recorded in checkpoints).
    pub fn masks(&self) -> &MaskGenerator {
        &self.masks
    }

    pub fn state(&self) -> SamplerState {
        SamplerState {
            crop: MaskRngState {
                seed: self.crop_seed,
                word_pos: self.rng.get_word_pos(),
            },
            mask: self.masks.rng_state(),
        }
    }

    pub fn restore(&mut self, state: SamplerState) {
        self.crop_seed = state.crop.seed;
        self.rng = ChaCha8Rng::seed_from_u64(state.crop.seed);
        self.rng.set_word_pos(state.crop.word_pos);
        self.masks.set_rng_state(state.mask);
    }

    /// Draws `n` samples onto `device`.
    pub fn next_batch(&mut self, n: usize, device: &Device) -> Result<Batch> {
        let s = self.crop.size;
        let plane = 3 * s * s;
        let mut input = Vec::with_capacity(n * plane);
        let mut target = Vec::with_capacity(n * plane);
        let mut masks = Vec::with_capacity(n * s * s);
        let mut first = None;
        for _ in 0..n {
            let clean = sample_crop(&self.noise, &self.crop, &mut self.rng)?;
            let mask = self.masks.next();
            let corrupted = self.corruptor.apply_image(self.kind, &clean, &mask)?;
            if first.is_none() {
                first = Some((clean.clone(), corrupted.clone()));
            }
            let mut x = corrupted.data;
            normalize_imagenet(&mut x, 3, s * s)?;
            let mut t = clean.data;
            normalize_imagenet(&mut t, 3, s * s)?;
            input.extend_from_slice(&x);
            target.extend_from_slice(&t);
            masks.extend_from_slice(&mask.data);
        }
        let (first_clean, first_corrupted) =
            first.ok_or_else(|| crate::error::TrainerError::Unsupported("empty batch".into()))?;
        Ok(Batch {
            input: Tensor::from_vec(input, (n, 3, s, s), device)?,
            target: Tensor::from_vec(target, (n, 3, s, s), device)?,
            mask: Tensor::from_vec(masks, (n, 1, s, s), device)?,
            first_clean,
            first_corrupted,
        })
    }
}
