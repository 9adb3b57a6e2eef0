//! The gate of Restormer's GDFN as one fused op: `y = gelu(x1) * x2` where x1 and x2 are the
//! two channel halves of x (B, 2h, H, W). Composed, it is two narrows (whose backward pads and
//! concatenates), an erf GELU (whose candle backward is about ten full-size ops) and a product.
//! Backward: `dx1 = dy * x2 * (Phi(x1) + x1 phi(x1))`, `dx2 = dy * gelu(x1)`, written straight
//! into one (B, 2h, H, W) buffer.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::f32_slice;

/// `0.5 * x * (1 + erf(x / sqrt 2))`, candle's `gelu_erf` for float32 (same erf).
#[inline]
fn cdf(x: f32) -> f32 {
    0.5 * (1.0 + candle_core::cpu::erf::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Pixels per parallel task.
const CHUNK: usize = 8 * 1024;

pub(super) struct GeluGate;

/// Splits (B, 2h, H, W) into per-image halves: `(b, h, plane)`.
fn dims(l: &Layout) -> Result<(usize, usize, usize)> {
    let (b, c2, hh, ww) = l.shape().dims4()?;
    if c2 % 2 != 0 {
        return Err(candle_core::Error::Msg(format!(
            "gelu gate: {c2} channels are not two halves"
        )));
    }
    Ok((b, c2 / 2, hh * ww))
}

impl CustomOp1 for GeluGate {
    fn name(&self) -> &'static str {
        "ifp-gelu-gate"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, h, hw) = dims(l)?;
        let x = f32_slice(s, l, self.name())?;
        let half = h * hw;
        let mut out = vec![0f32; b * half];
        out.par_chunks_mut(half).enumerate().for_each(|(bi, o)| {
            let (x1, x2) = x[bi * 2 * half..][..2 * half].split_at(half);
            o.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, oc)| {
                let off = ci * CHUNK;
                for ((ov, &a), &g) in oc.iter_mut().zip(&x1[off..]).zip(&x2[off..]) {
                    *ov = a * cdf(a) * g;
                }
            });
        });
        let (_, _, hh, ww) = l.shape().dims4()?;
        Ok((CpuStorage::F32(out), Shape::from((b, h, hh, ww))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(
            &grad.contiguous()?,
            &GeluGateBackward,
        )?))
    }
}

struct GeluGateBackward;

impl CustomOp2 for GeluGateBackward {
    fn name(&self) -> &'static str {
        "ifp-gelu-gate-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        let (b, h, hw) = dims(l1)?;
        let x = f32_slice(s1, l1, self.name())?;
        let dy = f32_slice(s2, l2, self.name())?;
        let half = h * hw;
        let mut out = vec![0f32; b * 2 * half];
        out.par_chunks_mut(2 * half)
            .enumerate()
            .for_each(|(bi, o)| {
                let (x1, x2) = x[bi * 2 * half..][..2 * half].split_at(half);
                let g = &dy[bi * half..][..half];
                let (d1, d2) = o.split_at_mut(half);
                d1.par_chunks_mut(CHUNK)
                    .zip(d2.par_chunks_mut(CHUNK))
                    .enumerate()
                    .for_each(|(ci, (c1, c2))| {
                        let off = ci * CHUNK;
                        for (k, (o1, o2)) in c1.iter_mut().zip(c2.iter_mut()).enumerate() {
                            let (a, v, gv) = (x1[off + k], x2[off + k], g[off + k]);
                            let phi = cdf(a);
                            let pdf = INV_SQRT_2PI * (-0.5 * a * a).exp();
                            *o1 = gv * v * (phi + a * pdf);
                            *o2 = gv * a * phi;
                        }
                    });
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
