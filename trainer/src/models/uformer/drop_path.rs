//! Stochastic depth (timm's `DropPath`) as the reference Uformer applies it while pre-training:
//! in training mode, each sample's residual branch is kept with probability `1 - p` and then
//! scaled by `1 / (1 - p)`, so its expectation is unchanged; in eval mode it is the identity.
//!
//! IFP builds `Uformer_Encoder`/`Uformer_Decoder` without a `drop_path_rate`, so the
//! constructors' default 0.1 is what the reference trains with (its config's
//! `MODEL.DROP_PATH_RATE` never reaches the Uformer). The per-block rates are computed as the
//! reference does: `linspace(0, rate, sum(depths[0..4]))` for the encoder levels, `rate` for
//! every bottleneck block, and the reversed encoder list, sliced level by level, for the
//! decoder.
//!
//! The masks come from a ChaCha stream derived from the run's seed and the optimiser step, so a
//! run (and a resumed run) draws the same masks every time without saving any RNG state.

use candle_core::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::err;

/// The reference's drop-path rate for each block of the nine levels (encoder 0-3, bottleneck,
/// decoder 0-3). `torch.linspace` in float32 is reproduced bit for bit (float32 step, then
/// `start + step * i` for the first half and `end - step * (n - 1 - i)` for the second, each
/// rounded once, as its vectorised kernel does); the bottleneck keeps the Python float `rate`.
pub fn drop_path_rates(depths: &[usize], rate: f64) -> Result<Vec<Vec<f64>>> {
    if depths.len() != 9 {
        return Err(err(format!("Uformer needs 9 depths, got {depths:?}")));
    }
    let n: usize = depths[..4].iter().sum();
    let end = rate as f32;
    let enc: Vec<f64> = match n {
        0 => Vec::new(),
        1 => vec![0.0],
        _ => {
            let step = end / (n - 1) as f32;
            (0..n)
                .map(|i| {
                    let v = if i < n / 2 {
                        f64::from(step) * i as f64
                    } else {
                        f64::from(end) - f64::from(step) * (n - 1 - i) as f64
                    };
                    f64::from(v as f32)
                })
                .collect()
        }
    };
    let dec: Vec<f64> = enc.iter().rev().copied().collect();
    let mut out = Vec::with_capacity(9);
    let mut start = 0;
    for &d in &depths[..4] {
        out.push(enc[start..start + d].to_vec());
        start += d;
    }
    out.push(vec![rate; depths[4]]);
    let mut start = 0;
    for (k, &d) in depths[5..].iter().enumerate() {
        // The reference indexes `dec_dpr[a:b][i]`, which fails past the encoder's list.
        let rates = dec.get(start..start + d).ok_or_else(|| {
            err(format!(
                "Uformer decoder level {k}: the reference's stochastic-depth list has {} entries \
                 (sum of the encoder depths), too few for decoder depths {:?}",
                dec.len(),
                &depths[5..]
            ))
        })?;
        out.push(rates.to_vec());
        start += d;
    }
    Ok(out)
}

/// The random source of one training step's drop-path masks.
pub struct DropPathRng {
    rng: ChaCha8Rng,
}

impl DropPathRng {
    /// The stream of optimiser step `step` of the run seeded `seed`.
    pub fn for_step(seed: u64, step: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(step);
        DropPathRng { rng }
    }

    /// The multiplier of each of `batch` samples' branch: 0 with probability `p`, else
    /// `1 / (1 - p)` (computed in float32, as timm's `div_(keep_prob)` on a float32 tensor).
    pub(super) fn draw(&mut self, batch: usize, p: f64) -> Vec<f32> {
        let keep = 1.0 - p;
        let scale = if keep > 0.0 { 1.0 / keep as f32 } else { 0.0 };
        (0..batch)
            .map(|_| {
                if self.rng.random::<f64>() < keep {
                    scale
                } else {
                    0.0
                }
            })
            .collect()
    }
}

/// The per-sample scales of one residual branch of `batch` samples: drawn in training mode
/// (`rng` Some) when `p` > 0; None (the branch added as it is) otherwise. The residual itself
/// is `kernels::token::scaled_residual` (or the window reverse that adds it).
pub(super) fn scales(batch: usize, p: f64, rng: Option<&mut DropPathRng>) -> Option<Vec<f32>> {
    match rng {
        Some(rng) if p > 0.0 => Some(rng.draw(batch, p)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use crate::kernels::token::scaled_residual;

    use super::*;

    /// `[x.item() for x in torch.linspace(0, 0.1, 19)]`, printed by PyTorch 2.15 (float32).
    const TORCH_LINSPACE_0_01_19: [f64; 19] = [
        0.0,
        0.0055555556900799274,
        0.011111111380159855,
        0.01666666753590107,
        0.02222222276031971,
        0.02777777798473835,
        0.03333333507180214,
        0.03888889029622078,
        0.04444444552063942,
        0.05000000074505806,
        0.0555555559694767,
        0.06111111119389534,
        0.06666667014360428,
        0.07222222536802292,
        0.07777778059244156,
        0.0833333358168602,
        0.08888889104127884,
        0.09444444626569748,
        0.10000000149011612,
    ];

    #[test]
    fn rates_match_the_reference_construction() {
        let r = drop_path_rates(&[1, 2, 8, 8, 2, 8, 8, 2, 1], 0.1).expect("rates");
        let enc: Vec<f64> = r[..4].iter().flatten().copied().collect();
        assert_eq!(enc, TORCH_LINSPACE_0_01_19);
        assert_eq!(r[4], vec![0.1, 0.1]);
        let dec: Vec<f64> = r[5..].iter().flatten().copied().collect();
        let rev: Vec<f64> = TORCH_LINSPACE_0_01_19.iter().rev().copied().collect();
        assert_eq!(dec, rev);
        assert_eq!(
            r.iter().map(Vec::len).collect::<Vec<_>>(),
            [1, 2, 8, 8, 2, 8, 8, 2, 1]
        );
    }

    #[test]
    fn decoder_depths_past_the_encoder_list_are_refused() {
        assert!(drop_path_rates(&[1, 1, 1, 1, 1, 2, 2, 2, 2], 0.1).is_err());
        assert!(drop_path_rates(&[1, 1, 1, 1, 1, 1, 1, 1, 1], 0.0).is_ok());
    }

    /// The residual over a branch of ones from a base `x`: each sample gets `x + 2` or `x`.
    #[test]
    fn the_residual_keeps_or_drops_whole_samples() {
        let (b, l, c) = (64, 5, 3);
        let dev = Device::Cpu;
        let x = Tensor::arange(1f32, (b * l * c + 1) as f32, &dev)
            .and_then(|t| t.reshape((b, l, c)))
            .expect("x");
        let ones = Tensor::ones((b, l, c), DType::F32, &dev).expect("ones");
        let values = |t: Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("t");
        let residual = |s: Option<Vec<f32>>| {
            values(scaled_residual(&x, &ones, s.as_deref()).expect("residual"))
        };
        let xv = values(x.clone());
        let mut rng = DropPathRng::for_step(1, 0);
        let yv = residual(scales(b, 0.5, Some(&mut rng)));
        let mut dropped = 0;
        for s in 0..b {
            let r = s * l * c..(s + 1) * l * c;
            if r.clone().all(|i| yv[i] == xv[i]) {
                dropped += 1;
            } else {
                assert!(r.clone().all(|i| yv[i] == xv[i] + 2.0), "sample {s}");
            }
        }
        assert!(
            (16..=48).contains(&dropped),
            "{dropped} of {b} dropped at p 0.5"
        );
        // Eval mode and p = 0 draw nothing: the branch is added as it is.
        assert_eq!(scales(b, 0.5, None), None);
        assert_eq!(scales(b, 0.0, Some(&mut rng)), None);
        let plus_one: Vec<f32> = xv.iter().map(|v| v + 1.0).collect();
        assert_eq!(residual(None), plus_one);
    }

    #[test]
    fn scales_are_reproducible_and_scaled() {
        let draw = |seed, step| DropPathRng::for_step(seed, step).draw(4000, 0.25);
        let a = draw(7, 3);
        assert_eq!(a, draw(7, 3));
        assert_ne!(a, draw(7, 4));
        let kept = a.iter().filter(|&&v| v != 0.0).count() as f64 / a.len() as f64;
        assert!((kept - 0.75).abs() < 0.03, "kept fraction {kept}");
        assert!(a.iter().all(|&v| v == 0.0 || v == 1.0 / 0.75f32));
    }
}
