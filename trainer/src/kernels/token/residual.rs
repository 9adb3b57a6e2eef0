//! A residual connection whose branch is scaled per sample, `x + branch * s[sample]`: how the
//! LeWin block adds its LeFF branch under stochastic depth (each sample's `s` is 0 or
//! `1 / (1 - p)`; its attention branch is added by the window reverse, `window_reverse_add`,
//! whose composed version ends with this op).
//!
//! Composed, it is a broadcast product by a `(B, 1, ..)` tensor and an addition. Candle's
//! backward of the product also computes the gradient of that constant factor, a full-size
//! product and a zero-filled full-size buffer added into, and keeps it until the step ends. As
//! one op the scales are a parameter, not an input: the forward pass writes one tensor, the
//! backward pass returns the output's gradient for `x` and one scaled copy for the branch.
//! Each value is computed as the composed version rounds it (the product, then the sum), so
//! the two agree bit for bit. float32, on the CPU and on CUDA (`cuda/token.cu`, where
//! `IFP_CUDA_FUSED` turns on `token`).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::CHUNK;
use crate::kernels::{f32_slice, fused_applies, CudaKernel};

/// `x + branch * scales[i]` for sample `i` of the leading dimension.
struct ScaledResidual {
    scales: Vec<f32>,
}

impl CustomOp2 for ScaledResidual {
    fn name(&self) -> &'static str {
        "ifp-scaled-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let branch = f32_slice(s2, l2, self.name())?;
        let out = per_sample(branch, &self.scales, |o, b, s, at| {
            for ((o, b), x) in o.iter_mut().zip(b).zip(&x[at..]) {
                *o = x + b * s;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::kernels::cuda::token::scaled_residual((s1, l1), (s2, l2), &self.scales)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _branch: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let scaled = grad.contiguous()?.apply_op1_no_bwd(&ScaleSamples {
            scales: self.scales.clone(),
        })?;
        Ok((Some(grad.clone()), Some(scaled)))
    }
}

/// `g * scales[i]` for sample `i`: the branch's gradient.
struct ScaleSamples {
    scales: Vec<f32>,
}

impl CustomOp1 for ScaleSamples {
    fn name(&self) -> &'static str {
        "ifp-scale-samples"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(s, l, self.name())?;
        let out = per_sample(g, &self.scales, |o, g, s, _| {
            for (o, g) in o.iter_mut().zip(g) {
                *o = g * s;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::kernels::cuda::token::scale_samples((s, l), &self.scales)
    }
}

/// A new buffer of `ys.len()` values, one equal part of `ys` per scale, filled by
/// `f(out, ys, scale, at)` over runs that lie in one part (`at`: the run's offset in `ys`), in
/// parallel over blocks of [`CHUNK`] values.
fn per_sample(
    ys: &[f32],
    scales: &[f32],
    f: impl Fn(&mut [f32], &[f32], f32, usize) + Sync,
) -> Vec<f32> {
    let n = ys.len();
    let per = n / scales.len().max(1);
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
        let start = c * CHUNK;
        let mut at = start;
        while at < start + o.len() {
            let sample = at / per;
            let end = ((sample + 1) * per).min(start + o.len());
            f(
                &mut o[at - start..end - start],
                &ys[at..end],
                scales[sample],
                at,
            );
            at = end;
        }
    });
    out
}

/// `x + branch * scales[i]` for each sample `i` of the leading dimension (x and branch of one
/// shape, one scale per sample), or `x + branch` without scales: one op in float32 on the CPU
/// and on CUDA where `IFP_CUDA_FUSED` turns on `token` (`cuda/token.cu`), else
/// [`scaled_residual_composed`].
pub fn scaled_residual(x: &Tensor, branch: &Tensor, scales: Option<&[f32]>) -> Result<Tensor> {
    let Some(scales) = scales else {
        return x + branch;
    };
    check(x, branch, scales)?;
    if fused_applies(x, CudaKernel::Token) && branch.dtype() == x.dtype() && x.elem_count() > 0 {
        return x.contiguous()?.apply_op2(
            &branch.contiguous()?,
            ScaledResidual {
                scales: scales.to_vec(),
            },
        );
    }
    scaled_residual_composed(x, branch, Some(scales))
}

/// [`scaled_residual`] from tensor ops (any device and dtype): the scales as a `(B, 1, ..)`
/// tensor of x's dtype, a broadcast product, an addition.
pub fn scaled_residual_composed(
    x: &Tensor,
    branch: &Tensor,
    scales: Option<&[f32]>,
) -> Result<Tensor> {
    let Some(scales) = scales else {
        return x + branch;
    };
    check(x, branch, scales)?;
    let mut dims = vec![1; x.rank()];
    dims[0] = scales.len();
    let s = Tensor::from_vec(scales.to_vec(), dims, x.device())?.to_dtype(x.dtype())?;
    x + branch.broadcast_mul(&s)?
}

fn check(x: &Tensor, branch: &Tensor, scales: &[f32]) -> Result<()> {
    let samples = x.dims().first().copied();
    if x.shape() != branch.shape() || samples != Some(scales.len()) {
        return Err(candle_core::Error::Msg(format!(
            "scaled residual: x {:?}, branch {:?} and {} scales do not fit (one scale per \
             sample, x and branch of one shape)",
            x.dims(),
            branch.dims(),
            scales.len()
        )));
    }
    Ok(())
}
