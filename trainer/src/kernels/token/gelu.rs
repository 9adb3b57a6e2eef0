//! Exact (erf) GELU, as `nn.GELU()`, with its fused backward.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;

use super::CHUNK;
use crate::kernels::math::{erf, erf_given_exp, exp};
use crate::kernels::{f32_slice, fused_applies, CudaKernel};

struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "ifp-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        Ok((CpuStorage::F32(gelu_of(x)), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::kernels::cuda::token::gelu((s, l))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(gelu_grad(arg, grad)?))
    }
}

/// (x, dy) -> `dy * (Phi(x) + x * phi(x))`, the exact derivative of `x * Phi(x)`.
struct GeluBackward;

impl CustomOp2 for GeluBackward {
    fn name(&self) -> &'static str {
        "ifp-gelu-erf-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let dy = f32_slice(s2, l2, self.name())?;
        if dy.len() != x.len() {
            return Err(candle_core::Error::Msg(format!(
                "{}: {} values and {} gradients",
                self.name(),
                x.len(),
                dy.len()
            )));
        }
        // Written straight into fresh memory, as in `gelu_of`.
        let mut out = Vec::with_capacity(x.len());
        out.spare_capacity_mut()[..x.len()]
            .par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
            .for_each(|(o, (xs, dys))| gelu_backward_chunk(o, xs, dys));
        // SAFETY: the chunks of the first `x.len()` slots pair up with those of `x` and `dy`
        // (the same lengths, checked above), and `gelu_backward_chunk` writes every slot of its
        // chunk.
        unsafe { out.set_len(x.len()) };
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
        crate::kernels::cuda::token::gelu_backward((s1, l1), (s2, l2))
    }
}

/// `x Phi(x)`.
#[inline(always)]
fn value(v: f32) -> f32 {
    0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2))
}

/// `Phi(x) + x phi(x)`, the derivative of `x Phi(x)`.
#[inline(always)]
fn slope(v: f32) -> f32 {
    // 1 / sqrt(2 pi)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    // exp(-u^2) with u = x / sqrt(2) serves both the erf and the density.
    let u = v * std::f32::consts::FRAC_1_SQRT_2;
    let e = exp(-(u * u));
    let cdf = 0.5 * (1.0 + erf_given_exp(u, e));
    cdf + v * (INV_SQRT_2PI * e)
}

/// The GELU of every value of `x`, into a new buffer, in parallel (the GELU op, and ops that
/// start with a GELU). The values go straight into fresh memory: a copy of `x` transformed in
/// place, or a zero-filled buffer, would be one more pass over the whole tensor.
pub(super) fn gelu_of(x: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    out.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, xs)| gelu_into(o, xs));
    // SAFETY: the chunks of the first `x.len()` slots pair up with those of `x`, the same
    // lengths, and `gelu_into` writes every slot of its chunk.
    unsafe { out.set_len(x.len()) };
    out
}

/// `o = x Phi(x)` for the values of `xs`, one for one.
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn gelu_into(o: &mut [MaybeUninit<f32>], xs: &[f32]) {
    for (a, &v) in o.iter_mut().zip(xs) {
        a.write(value(v));
    }
}

/// `x Phi(x)` in place (the GELU op, and ops that end in a GELU).
#[multiversion(targets("x86_64+avx+avx2+fma"))]
pub(super) fn gelu_in_place(x: &mut [f32]) {
    x.iter_mut().for_each(|a| *a = value(*a));
}

/// `dy (Phi(x) + x phi(x))` over one chunk.
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn gelu_backward_chunk(o: &mut [MaybeUninit<f32>], xs: &[f32], dys: &[f32]) {
    for ((a, &v), &g) in o.iter_mut().zip(xs).zip(dys) {
        a.write(g * slope(v));
    }
}

/// The GELU of `x` (no graph): what a fused op that starts with a GELU recomputes in its
/// backward pass instead of keeping.
pub(super) fn gelu_values(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&GeluOp)
}

/// The input's gradient of a GELU of `x` from the output's gradient `dy` (no graph).
pub(super) fn gelu_grad(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&dy.contiguous()?, &GeluBackward)
}

/// Exact (erf) GELU, as `nn.GELU()`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if fused_applies(x, CudaKernel::Token) {
        return x.contiguous()?.apply_op1(GeluOp);
    }
    x.gelu_erf()
}
