//! Softmax over the last dimension (window attention) with its fused backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};
use multiversion::multiversion;
use rayon::prelude::*;

use super::{map_rows, rows_per_task};
use crate::kernels::math::exp;
use crate::kernels::{f32_slice, fused_applies, CudaKernel};

struct SoftmaxOp {
    n: usize,
}

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "ifp-softmax-last"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let n = self.n;
        let out = map_rows(x, n, |o, xs| softmax_rows(o, xs, n));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::kernels::cuda::token::softmax((s, l), self.n)
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = res
            .contiguous()?
            .apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBackward { n: self.n })?;
        Ok(Some(dx))
    }
}

/// Softmax of whole rows of `n` values.
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn softmax_rows(o: &mut [f32], xs: &[f32], n: usize) {
    for (orow, xrow) in o.chunks_mut(n).zip(xs.chunks(n)) {
        let max = xrow.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for (a, v) in orow.iter_mut().zip(xrow) {
            *a = exp(v - max);
            sum += *a;
        }
        let inv = 1.0 / sum;
        orow.iter_mut().for_each(|a| *a *= inv);
    }
}

/// `dx = y * (dy - sum(dy * y))` of whole rows of `n` values.
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn softmax_backward_rows(o: &mut [f32], ys: &[f32], dys: &[f32], n: usize) {
    for ((orow, yrow), dyrow) in o.chunks_mut(n).zip(ys.chunks(n)).zip(dys.chunks(n)) {
        let dot: f32 = yrow.iter().zip(dyrow).map(|(a, b)| a * b).sum();
        for i in 0..n {
            orow[i] = yrow[i] * (dyrow[i] - dot);
        }
    }
}

/// (y, dy) -> `dx = y * (dy - sum(dy * y))` per row.
struct SoftmaxBackward {
    n: usize,
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "ifp-softmax-last-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, self.name())?;
        let dy = f32_slice(s2, l2, self.name())?;
        let n = self.n;
        let mut out = vec![0f32; y.len()];
        let task = rows_per_task(n) * n;
        out.par_chunks_mut(task)
            .zip(y.par_chunks(task).zip(dy.par_chunks(task)))
            .for_each(|(o, (ys, dys))| softmax_backward_rows(o, ys, dys, n));
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
        crate::kernels::cuda::token::softmax_backward((s1, l1), (s2, l2), self.n)
    }
}

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    if fused_applies(x, CudaKernel::Token) {
        let n = x.dim(D::Minus1)?;
        return x.contiguous()?.apply_op1(SoftmaxOp { n });
    }
    softmax_last(x)
}

/// Softmax over the last dimension from elementary ops (so it has a backward); the max is
/// detached since subtracting it does not change the result.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}
