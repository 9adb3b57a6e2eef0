//! A tensor added over the leading dimensions of another (biases, the relative position bias,
//! the modulator), with its gradient summed over rows in one pass.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;

use super::{map_rows, rows_per_task};
use crate::kernels::{f32_slice, fused_applies, CudaKernel};

/// `x + b` where `b` matches the trailing dimensions of `x`: x viewed as (R, K), b as (K).
struct AddBias {
    k: usize,
}

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "ifp-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let b = f32_slice(s2, l2, self.name())?;
        let k = self.k;
        let out = map_rows(x, k, |o, xs| add_rows(o, xs, b));
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
        crate::kernels::cuda::token::add_rows((s1, l1), (s2, l2), self.k)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = grad
            .contiguous()?
            .apply_op1_no_bwd(&ColumnSum { k: self.k })?
            .reshape(b.shape())?;
        Ok((Some(grad.clone()), Some(db)))
    }
}

/// `x + b` for whole rows of `b.len()` values.
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn add_rows(o: &mut [f32], xs: &[f32], b: &[f32]) {
    for (orow, xrow) in o.chunks_mut(b.len()).zip(xs.chunks(b.len())) {
        for ((a, v), c) in orow.iter_mut().zip(xrow).zip(b) {
            *a = v + c;
        }
    }
}

/// (R, K) flattened -> (K): the sum over rows.
struct ColumnSum {
    k: usize,
}

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "ifp-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        Ok((CpuStorage::F32(column_sums(x, self.k)), Shape::from(self.k)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::kernels::cuda::token::column_sum((s, l), self.k)
    }
}

/// The sums over the rows of `x` viewed as (R, k): partial sums over fixed blocks of rows in
/// parallel, added in block order (the result does not depend on the thread count).
pub(super) fn column_sums(x: &[f32], k: usize) -> Vec<f32> {
    let task = rows_per_task(k) * k;
    let partials: Vec<Vec<f32>> = x
        .par_chunks(task)
        .map(|xs| {
            let mut acc = vec![0f32; k];
            for row in xs.chunks(k) {
                acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
            acc
        })
        .collect();
    let mut out = vec![0f32; k];
    for p in partials {
        out.iter_mut().zip(&p).for_each(|(a, v)| *a += v);
    }
    out
}

/// `x + b`, `b` repeated over the leading dimensions of `x` (its shape is a suffix of x's).
pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (xd, bd) = (x.dims(), b.dims());
    let suffix = bd.len() <= xd.len() && xd[xd.len() - bd.len()..] == *bd;
    if fused_applies(x, CudaKernel::Token) && b.dtype() == x.dtype() && suffix && b.elem_count() > 0
    {
        let k = b.elem_count();
        return x.contiguous()?.apply_op2(&b.contiguous()?, AddBias { k });
    }
    x.broadcast_add(b)
}
