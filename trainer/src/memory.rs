//! An estimate of a training run's peak memory (host RAM on the CPU), from its config alone
//! (the network, the step's pixels, and the noise image pre-training crops from):
//! what admission control compares with the memory of the workers that could run it, before a
//! job that cannot fit is queued.
//!
//! The model is linear in the pixels of a step (batch x crop side squared), with a slope that
//! grows with the network's width and depth, plus a fixed part and 16 bytes per parameter
//! (weights, gradients and AdamW's two moments, f32). Its constants were fitted to the peak
//! resident set (`/usr/bin/time -f %M`) of `ifp bench --steps 2` on the CPU: the tiny preset
//! and three variants (DIM 16; blocks [2, 2, 2, 4] with 2 refinement blocks; OUT_CHANNELS/NF
//! 32) at 64x64 x 4 and 128x128 x 8, and the tiny Uformer golden network at 64x64 x 2 and
//! 128x128 x 4. On those twelve runs, and on one held out of the fit (DIM 16 with the doubled
//! blocks at 96x96 x 6: -4%), the estimate is within 12% of the measurement; the tests keep it
//! so (`trainer/tests/trainer/memory.rs`). It says nothing precise about a network far
//! larger than those: it is a gate against runs that cannot fit, not a budget.

use crate::config::{Config, ModelConfig, ModelType};
use crate::finetune::FinetuneConfig;

/// The fixed part: the binary, its allocator and thread pools, the data pipeline.
const BASE_BYTES: f64 = 100.0 * 1024.0 * 1024.0;
/// Bytes per parameter during training: weight, gradient, two AdamW moments (f32).
const BYTES_PER_PARAMETER: f64 = 16.0;
/// Restormer: KiB per pixel of a step per channel-block (one transformer block at one channel
/// of full resolution; a block at level l counts its channels over 4^l).
const RESTORMER_KIB_PER_CHANNEL_BLOCK: f64 = 0.0714;
/// Restormer: KiB per pixel per unit of `DIM` outside the blocks (embedding, resampling,
/// skip concatenations).
const RESTORMER_KIB_PER_DIM: f64 = 0.2925;
/// The IFP decoder: KiB per pixel per channel of `NF`.
const DECODER_KIB_PER_NF: f64 = 0.0458;
/// Uformer: KiB per pixel per channel-block (window attention and a 4x MLP per block).
const UFORMER_KIB_PER_CHANNEL_BLOCK: f64 = 0.267;
/// Per pixel whatever the network: input, target, mask, the frequency-domain loss.
const KIB_PER_PIXEL: f64 = 2.22;
/// Bytes per pixel of the noise image that pre-training crops from, beyond the default
/// 640x480 one the fit above ran with. Measured: a 4096x4096 generated image raised the tiny
/// network's peak by 450 MiB over 640x480 (`ifp bench --steps 2`, DIM 8, 32x32 x 2): 28.6
/// bytes per extra pixel (the float32 image and its working copies).
const NOISE_BYTES_PER_PIXEL: f64 = 29.0;
/// The pixels assumed of a noise image given as a file, whose size the config does not say:
/// the platform accepts uploads of at most 16 MP, so this is their bound (a larger file
/// given to the CLI is not estimated, and the CLI does not check estimates).
const NOISE_IMAGE_FILE_PIXELS: f64 = (1u64 << 24) as f64;

/// Estimated peak bytes of IFP pre-training with `cfg`.
pub fn pretrain_peak_bytes(cfg: &Config) -> u64 {
    let pixels = cfg.data.batch_size as f64 * (cfg.data.img_size as f64).powi(2);
    let decoder = DECODER_KIB_PER_NF * cfg.model.decoder.nf as f64;
    let noise_pixels = match cfg.data.noise_image {
        Some(_) => NOISE_IMAGE_FILE_PIXELS,
        None => (cfg.data.noise.width * cfg.data.noise.height) as f64,
    };
    let noise = NOISE_BYTES_PER_PIXEL * (noise_pixels - 640.0 * 480.0).max(0.0);
    peak(&cfg.model, pixels, decoder).saturating_add(noise as u64)
}

/// Estimated peak bytes of fine-tuning with `cfg` (the encoder and a one-convolution head).
pub fn finetune_peak_bytes(cfg: &FinetuneConfig) -> u64 {
    let pixels = cfg.data.batch_size as f64 * (cfg.data.crop as f64).powi(2);
    peak(&cfg.model, pixels, 0.0)
}

fn peak(model: &ModelConfig, pixels: f64, decoder_kib: f64) -> u64 {
    let (blocks_kib, parameters) = match model.kind {
        ModelType::Restormer => {
            let r = &model.restormer;
            let (cb, p) = restormer_shape(
                r.dim,
                &r.num_blocks,
                r.num_refinement_blocks,
                r.ffn_expansion_factor,
            );
            (
                RESTORMER_KIB_PER_CHANNEL_BLOCK * cb + RESTORMER_KIB_PER_DIM * r.dim as f64,
                p,
            )
        }
        ModelType::Uformer => {
            let u = &model.uformer;
            let (cb, p) = uformer_shape(u.embed_dim, &u.depths);
            (UFORMER_KIB_PER_CHANNEL_BLOCK * cb, p)
        }
    };
    let per_pixel = 1024.0 * (blocks_kib + decoder_kib + KIB_PER_PIXEL);
    let bytes = BASE_BYTES + BYTES_PER_PARAMETER * parameters + per_pixel * pixels;
    if bytes.is_finite() && bytes < u64::MAX as f64 {
        bytes as u64
    } else {
        u64::MAX
    }
}

/// Restormer's channel-blocks per pixel and (approximate) parameter count. Levels 1 to 4 run
/// at DIM, 2, 4 and 8 DIM on 1, 1/4, 1/16 and 1/64 of the pixels; decoder level 1 and the
/// refinement blocks run at 2 DIM on all of them. A block holds about C^2 (4 + 3 h)
/// parameters (attention: qkv and projection; gated feed-forward with expansion h).
fn restormer_shape(dim: usize, blocks: &[usize], refinement: usize, ffn: f64) -> (f64, f64) {
    let b = |i: usize| blocks.get(i).copied().unwrap_or(0) as f64;
    let d = dim as f64;
    // (blocks, channels, share of the pixels)
    let levels = [
        (b(0), d, 1.0),
        (b(1), 2.0 * d, 0.25),
        (b(2), 4.0 * d, 1.0 / 16.0),
        (b(3), 8.0 * d, 1.0 / 64.0),
        (b(2), 4.0 * d, 1.0 / 16.0),
        (b(1), 2.0 * d, 0.25),
        (b(0), 2.0 * d, 1.0),
        (refinement as f64, 2.0 * d, 1.0),
    ];
    let channel_blocks = levels.iter().map(|(n, c, s)| n * c * s).sum();
    let parameters = levels
        .iter()
        .map(|(n, c, _)| n * c * c * (4.0 + 3.0 * ffn))
        .sum();
    (channel_blocks, parameters)
}

/// Uformer's channel-blocks per pixel and (approximate) parameter count: four encoder levels
/// at EMBED_DIM x 2^l on 1/4^l of the pixels, the bottleneck at 16 EMBED_DIM on 1/256, and four
/// decoder levels at twice their encoder level's channels (the skip concatenation). A block
/// holds about 12 C^2 parameters (attention 4 C^2, MLP 8 C^2).
fn uformer_shape(embed: usize, depths: &[usize]) -> (f64, f64) {
    let depth = |i: usize| depths.get(i).copied().unwrap_or(0) as f64;
    let e = embed as f64;
    let mut levels = Vec::new();
    for l in 0..4 {
        let (c, share) = (e * 2f64.powi(l), 0.25f64.powi(l));
        levels.push((depth(l as usize), c, share));
        levels.push((depth(8 - l as usize), 2.0 * c, share));
    }
    levels.push((depth(4), 16.0 * e, 0.25f64.powi(4)));
    let channel_blocks = levels.iter().map(|(n, c, s)| n * c * s).sum();
    let parameters = levels.iter().map(|(n, c, _)| n * 12.0 * c * c).sum();
    (channel_blocks, parameters)
}

/// Bytes as a short human figure (`1.3 GiB`, `640 MiB`).
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024f64.powi(3) {
        format!("{:.1} GiB", b / 1024f64.powi(3))
    } else {
        format!("{:.0} MiB", b / 1024f64.powi(2))
    }
}
