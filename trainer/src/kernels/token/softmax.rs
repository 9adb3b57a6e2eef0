//! Softmax over the last dimension (window attention) with its fused backward, and the same
//! with a tensor added first (the window attention's relative position bias and shift mask):
//! composed, that addition was a pass and a graph node of the attention matrix's size, plus
//! the reshapes around it, each a node whose backward candle zero-fills and adds.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};
use multiversion::multiversion;
use rayon::prelude::*;

use super::bias::column_sums;
use super::{map_rows, rows_per_task};
use crate::kernels::math::exp;
use crate::kernels::{
    dot_inline, f32_slice, fused_applies, kernel_applies, max_inline, pack_after, sum_inline,
    unpack, CudaKernel,
};

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
        let out = map_rows(x, n, |o, xs| {
            o.copy_from_slice(xs);
            softmax_in_place(o, n)
        });
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

/// Softmax of one row in place, in separate passes with lane-wise reductions: a running max or
/// sum inside the exp loop would keep that loop (and its exp) scalar.
#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let max = max_inline(row);
    row.iter_mut().for_each(|a| *a = exp(*a - max));
    let inv = 1.0 / sum_inline(row);
    row.iter_mut().for_each(|a| *a *= inv);
}

/// Softmax of whole rows of `n` values, in place.
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn softmax_in_place(p: &mut [f32], n: usize) {
    p.chunks_exact_mut(n).for_each(softmax_row);
}

/// `p = softmax(p + bias)` over rows of `n` values, in place; `bias` holds one row per row of
/// `p`.
#[multiversion(targets("x86_64+avx+avx2+fma"))]
pub(super) fn biased_softmax_in_place(p: &mut [f32], bias: &[f32], n: usize) {
    // Uformer's windows of 4x4 and 8x8 tokens as compile-time row lengths: the loops over a
    // row then unroll with no remainder handling, which dominates rows this short. The
    // arithmetic and its order are the same as for any other `n`.
    match n {
        16 => biased_softmax_rows(p, bias, 16),
        64 => biased_softmax_rows(p, bias, 64),
        _ => biased_softmax_rows(p, bias, n),
    }
}

#[inline(always)]
fn biased_softmax_rows(p: &mut [f32], bias: &[f32], n: usize) {
    for (prow, brow) in p.chunks_exact_mut(n).zip(bias.chunks_exact(n)) {
        prow.iter_mut().zip(brow).for_each(|(a, b)| *a += b);
        softmax_row(prow);
    }
}

/// `g = y * (g - sum(g * y))` over rows of `n` values, in place: `g` holds the softmax output's
/// gradient on entry and its input's on return; `y` is the output.
#[multiversion(targets("x86_64+avx+avx2+fma"))]
pub(super) fn softmax_backward_in_place(g: &mut [f32], ys: &[f32], n: usize) {
    // As in `biased_softmax_in_place`: the windows' row lengths known at compile time.
    match n {
        16 => softmax_backward_rows(g, ys, 16),
        64 => softmax_backward_rows(g, ys, 64),
        _ => softmax_backward_rows(g, ys, n),
    }
}

#[inline(always)]
fn softmax_backward_rows(g: &mut [f32], ys: &[f32], n: usize) {
    for (grow, yrow) in g.chunks_exact_mut(n).zip(ys.chunks_exact(n)) {
        let dot = dot_inline(grow, yrow);
        for (a, &y) in grow.iter_mut().zip(yrow) {
            *a = y * (*a - dot);
        }
    }
}

/// The input's gradient of a softmax over rows of `n` values from its output and the output's
/// gradient, rows in parallel, in a buffer with room for `room` more values.
fn softmax_backward(y: &[f32], dy: &[f32], n: usize, room: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(dy.len() + room);
    out.extend_from_slice(dy);
    let task = rows_per_task(n) * n;
    out.par_chunks_mut(task)
        .zip(y.par_chunks(task))
        .for_each(|(g, ys)| softmax_backward_in_place(g, ys, n));
    out
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
        let out = softmax_backward(y, dy, self.n, 0);
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

/// `softmax(x + b)` over rows of `n`, x viewed as (R, K) and `b` as (K) repeated over R.
struct BiasedSoftmax {
    n: usize,
    k: usize,
}

impl CustomOp2 for BiasedSoftmax {
    fn name(&self) -> &'static str {
        "ifp-biased-softmax"
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
        let (n, k) = (self.n, self.k);
        if k == 0 || !k.is_multiple_of(n) || b.len() != k || !x.len().is_multiple_of(k) {
            return Err(candle_core::Error::Msg(format!(
                "biased softmax: a bias of {} values over rows of {n} of {} values",
                b.len(),
                x.len()
            )));
        }
        // Tasks of whole rows that never straddle a repeat of b.
        let task = (rows_per_task(n) * n).min(k);
        let task = (1..=task / n)
            .rev()
            .map(|r| r * n)
            .find(|t| k.is_multiple_of(*t));
        let task = task.unwrap_or(n);
        let mut out = x.to_vec();
        out.par_chunks_mut(task).enumerate().for_each(|(i, o)| {
            let at = (i * task) % k;
            biased_softmax_in_place(o, &b[at..at + task], n)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let backward = BiasedSoftmaxBackward {
            n: self.n,
            k: self.k,
        };
        let packed = res
            .contiguous()?
            .apply_op2_no_bwd(&grad.contiguous()?, &backward)?;
        let mut parts = unpack(&packed, &[res.shape(), b.shape()])?.into_iter();
        Ok((parts.next(), parts.next()))
    }
}

/// (y, dy) -> [dx, db] flattened: the softmax backward per row, and its sum over the repeats
/// of the bias.
struct BiasedSoftmaxBackward {
    n: usize,
    k: usize,
}

impl CustomOp2 for BiasedSoftmaxBackward {
    fn name(&self) -> &'static str {
        "ifp-biased-softmax-backward"
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
        let mut out = softmax_backward(y, dy, self.n, self.k);
        let db = column_sums(&out, self.k);
        pack_after(&mut out, &[&db]);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// `softmax(x + b)` over the last dimension, `b` repeated over x viewed as rows of
/// `b.elem_count()` values (as [`super::add_bias`], but `b`'s shape need not be a suffix of
/// x's: the window attention adds a `(windows, heads, N, N)` bias to `(B * windows, heads, N,
/// N)` logits). One op for float32 on the CPU, else [`biased_softmax_composed`].
pub fn biased_softmax(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let n = x.dim(D::Minus1)?;
    let k = b.elem_count();
    let fits = k > 0 && k.is_multiple_of(n) && x.elem_count().is_multiple_of(k);
    if fits && b.dtype() == x.dtype() && kernel_applies(x, None, &[]) {
        return x
            .contiguous()?
            .apply_op2(&b.contiguous()?, BiasedSoftmax { n, k });
    }
    biased_softmax_composed(x, b)
}

/// [`biased_softmax`] as [`super::add_bias`] then [`softmax`] (any device and dtype).
pub fn biased_softmax_composed(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let k = b.elem_count();
    if k == 0 || !x.elem_count().is_multiple_of(k) {
        return Err(candle_core::Error::Msg(format!(
            "biased softmax: a bias of shape {:?} does not repeat over {:?}",
            b.dims(),
            x.dims()
        )));
    }
    let rows = x.reshape((x.elem_count() / k, k))?;
    softmax(&super::add_bias(&rows, &b.flatten_all()?)?.reshape(x.shape())?)
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
