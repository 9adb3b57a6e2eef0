//! `F.normalize(x, dim=-1)` as one op with a fused backward, for MDTA's query and key rows off
//! the CPU (the CPU fuses the whole channel attention instead, `attention.rs`). Composed, it is
//! five graph nodes (square, sum, root, clamp, divide) with full-size buffers for the square and
//! for each node's gradient, on rows of H*W values.
//!
//! Per row of N values: `d = max(|x|, 1e-12)`, `y = x / d`; from `g = dy`,
//! `dx = g / d - x (g . x) / d^3` (`g / d` where the clamp is active). The row sums are added in
//! float64, so the result does not depend on how a device splits them. float32; on CUDA
//! (`cuda/normalize.cu`) where `IFP_CUDA_FUSED` turns on `normalize`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::conv::f32_slice;

/// `F.normalize`'s eps.
const EPS: f32 = 1e-12;

/// `sum(a * b)` of one row, in float64.
fn row_dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// x / max(|x|, eps) per row of `n` values.
struct L2Normalize {
    n: usize,
}

impl CustomOp1 for L2Normalize {
    fn name(&self) -> &'static str {
        "ifp-l2-normalize"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(self.n)
            .zip(x.par_chunks(self.n))
            .for_each(|(o, xr)| {
                let d = (row_dot(xr, xr) as f32).sqrt().max(EPS);
                o.iter_mut().zip(xr).for_each(|(a, v)| *a = v / d);
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::normalize::l2_normalize((s, l), self.n)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = arg
            .contiguous()?
            .apply_op2_no_bwd(&grad.contiguous()?, &L2NormalizeBackward { n: self.n })?;
        Ok(Some(dx))
    }
}

/// (x, g) -> `g / d - x (g . x) / d^3` per row (`g / d` where the clamp is active).
struct L2NormalizeBackward {
    n: usize,
}

impl CustomOp2 for L2NormalizeBackward {
    fn name(&self) -> &'static str {
        "ifp-l2-normalize-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let g = f32_slice(s2, l2, self.name())?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(self.n)
            .zip(x.par_chunks(self.n).zip(g.par_chunks(self.n)))
            .for_each(|(o, (xr, gr))| {
                let n = (row_dot(xr, xr) as f32).sqrt();
                let d = n.max(EPS);
                let along = if n > EPS {
                    (row_dot(gr, xr) / (d as f64 * d as f64 * d as f64)) as f32
                } else {
                    0.0
                };
                for ((a, xv), gv) in o.iter_mut().zip(xr).zip(gr) {
                    *a = gv / d - xv * along;
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
        super::cuda::normalize::l2_normalize_backward((s1, l1), (s2, l2), self.n)
    }
}

/// `F.normalize(x, dim=-1)`: the fused op where [`super::fused_applies`] (on CUDA with
/// [`super::CudaKernel::Normalize`]), else
/// [`l2_normalize_last_composed`].
pub fn l2_normalize_last(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    if super::fused_applies(x, super::CudaKernel::Normalize) && n > 0 {
        return x.contiguous()?.apply_op1(L2Normalize { n });
    }
    l2_normalize_last_composed(x)
}

/// `x / max(||x||_2, 1e-12)` over the last dimension from tensor ops (any device and dtype).
pub fn l2_normalize_last_composed(x: &Tensor) -> Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    x.broadcast_div(&n)
}
