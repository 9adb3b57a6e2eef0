//! Uformer's window attention as one op: per window and head, `softmax(q k^T + bias) v`, from
//! q, k and v packed in one `(B', 3 * heads, N, d)` tensor (the single product of the packed
//! projection weights, `linear` with a head layout). Composed, it was two batched products, a
//! transpose of k and the biased softmax: five graph nodes whose backward candle zero-fills and
//! adds, two of them of the attention matrix's size, and that matrix kept twice for the
//! backward pass. The op keeps nothing but its inputs: its backward recomputes each window's
//! probabilities (N x N, one buffer per window) before the gradients. Windows run in parallel;
//! each head's five small products are gemm calls on the thread that runs the window
//! (hand-written dot-product loops measured 24% slower per step on the paper Uformer). On
//! CUDA (`cuda/attention.cu`) one thread runs each query's row forward and each query's and
//! each key's row backward, recomputing the probabilities from the logits the same way.
//!
//! Per window and head, with `P = softmax(S)`, `S = q k^T + bias`:
//! `dv = P^T do`, `dP = do v^T`, `dS = P * (dP - rowsum(dP * P))`, `dq = dS k`, `dk = dS^T q`,
//! and the bias's gradient is `dS` summed over the images (fixed blocks, in order).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::bias::column_sums;
use super::softmax::{biased_softmax_in_place, softmax_backward_in_place};
use gemm::Parallelism;

use crate::kernels::product::{matmul, Mat};
use crate::kernels::{f32_slice, fused_applies, pack_after, unpack, zeros_with_room, CudaKernel};

/// The sizes: `windows` (B') of `heads` heads, `n` tokens of `d` features; the bias holds
/// `k` values, repeated over the (B', heads, N, N) logits.
#[derive(Clone, Copy)]
pub(in crate::kernels) struct AttentionGeom {
    pub windows: usize,
    pub heads: usize,
    pub n: usize,
    pub d: usize,
    pub k: usize,
}

impl AttentionGeom {
    fn new(qkv: &[usize], bias: usize, heads: usize) -> Result<Self> {
        let bad = |why: String| candle_core::Error::Msg(format!("window attention: {why}"));
        let &[windows, h3, n, d] = qkv else {
            return Err(bad(format!("qkv {qkv:?} is not (B', 3 * heads, N, d)")));
        };
        if heads == 0 || h3 != 3 * heads {
            return Err(bad(format!(
                "qkv {qkv:?} does not hold q, k, v of {heads} heads"
            )));
        }
        let logits = windows * heads * n * n;
        if bias == 0 || !bias.is_multiple_of(n * n) || !logits.is_multiple_of(bias) {
            return Err(bad(format!(
                "a bias of {bias} values does not repeat over logits ({windows}, {heads}, {n}, {n})"
            )));
        }
        Ok(AttentionGeom {
            windows,
            heads,
            n,
            d,
            k: bias,
        })
    }

    /// One window's q, k, v: `3 * heads * n * d` values.
    fn window(&self) -> usize {
        3 * self.heads * self.n * self.d
    }

    /// The bias of window `w`, head `h`: `n * n` values.
    fn bias<'a>(&self, bias: &'a [f32], w: usize, h: usize) -> &'a [f32] {
        let nn = self.n * self.n;
        let at = ((w * self.heads + h) * nn) % self.k;
        &bias[at..at + nn]
    }
}

/// A row-major operand of [`product`].
fn mat(data: &[f32], transposed: bool) -> Mat<'_> {
    Mat { data, transposed }
}

/// `dst (m x n) = a b` on the calling thread (the windows are already spread over the threads).
fn product(dst: &mut [f32], a: Mat, b: Mat, m: usize, n: usize, k: usize) {
    matmul(dst, a, b, m, n, k, false, Parallelism::None);
}

/// `p = softmax(q k^T + bias)` of one head (rows of `n`).
fn probabilities(p: &mut [f32], q: &[f32], k: &[f32], bias: &[f32], n: usize, d: usize) {
    product(p, mat(q, false), mat(k, true), n, n, d);
    biased_softmax_in_place(p, bias, n);
}

/// One head's gradients from its probabilities `p` and output gradient `dout`: writes `dq`,
/// `dk`, `dv` (each n x d) and `ds` (n x n, the logits' gradient).
fn head_backward(
    dqkv: (&mut [f32], &mut [f32], &mut [f32]),
    ds: &mut [f32],
    qkv: (&[f32], &[f32], &[f32]),
    p: &[f32],
    dout: &[f32],
    (n, d): (usize, usize),
) {
    let (dq, dk, dv) = dqkv;
    let (q, k, v) = qkv;
    // dv = p^T do; dp = do v^T, then ds in place; dq = ds k; dk = ds^T q.
    product(dv, mat(p, true), mat(dout, false), n, d, n);
    product(ds, mat(dout, false), mat(v, true), n, n, d);
    softmax_backward_in_place(ds, p, n);
    product(dq, mat(ds, false), mat(k, false), n, d, n);
    product(dk, mat(ds, true), mat(q, false), n, d, n);
}

/// `(qkv, bias)` -> the attention's output `(B', heads, N, d)`.
struct WindowAttention {
    heads: usize,
}

impl CustomOp2 for WindowAttention {
    fn name(&self) -> &'static str {
        "ifp-window-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(s1, l1, self.name())?;
        let bias = f32_slice(s2, l2, self.name())?;
        let g = AttentionGeom::new(l1.dims(), bias.len(), self.heads)?;
        let (n, d, nd) = (g.n, g.d, g.n * g.d);
        let mut out = vec![0f32; g.windows * g.heads * nd];
        out.par_chunks_mut(g.heads * nd)
            .zip(qkv.par_chunks(g.window()))
            .enumerate()
            .for_each(|(w, (ow, win))| {
                let mut p = vec![0f32; n * n];
                for (h, oh) in ow.chunks_exact_mut(nd).enumerate() {
                    let q = &win[h * nd..][..nd];
                    let k = &win[(g.heads + h) * nd..][..nd];
                    let v = &win[(2 * g.heads + h) * nd..][..nd];
                    probabilities(&mut p, q, k, g.bias(bias, w, h), n, d);
                    product(oh, mat(&p, false), mat(v, false), n, d, n);
                }
            });
        let shape = Shape::from((g.windows, g.heads, n, d));
        Ok((CpuStorage::F32(out), shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = AttentionGeom::new(l1.dims(), l2.shape().elem_count(), self.heads)?;
        crate::kernels::cuda::attention::window_attention(&g, (s1, l1), (s2, l2))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let backward = WindowAttentionBackward { heads: self.heads };
        let packed = qkv.apply_op3_no_bwd(bias, &grad.contiguous()?, &backward)?;
        let mut parts = unpack(&packed, &[qkv.shape(), bias.shape()])?.into_iter();
        Ok((parts.next(), parts.next()))
    }
}

/// (qkv, bias, dout) -> [dqkv, dbias] flattened.
struct WindowAttentionBackward {
    heads: usize,
}

impl CustomOp3 for WindowAttentionBackward {
    fn name(&self) -> &'static str {
        "ifp-window-attention-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(s1, l1, self.name())?;
        let bias = f32_slice(s2, l2, self.name())?;
        let dout = f32_slice(s3, l3, self.name())?;
        let g = AttentionGeom::new(l1.dims(), bias.len(), self.heads)?;
        let (n, d, nd, nn) = (g.n, g.d, g.n * g.d, g.n * g.n);
        let mut dqkv = zeros_with_room(qkv.len(), g.k);
        let mut ds = vec![0f32; g.windows * g.heads * nn];
        dqkv.par_chunks_mut(g.window())
            .zip(ds.par_chunks_mut(g.heads * nn))
            .zip(
                qkv.par_chunks(g.window())
                    .zip(dout.par_chunks(g.heads * nd)),
            )
            .enumerate()
            .for_each(|(w, ((dwin, dsw), (win, dow)))| {
                let mut p = vec![0f32; nn];
                let (dq_all, rest) = dwin.split_at_mut(g.heads * nd);
                let (dk_all, dv_all) = rest.split_at_mut(g.heads * nd);
                let heads = dq_all
                    .chunks_exact_mut(nd)
                    .zip(dk_all.chunks_exact_mut(nd))
                    .zip(dv_all.chunks_exact_mut(nd))
                    .zip(dsw.chunks_exact_mut(nn))
                    .enumerate();
                for (h, (((dq, dk), dv), dsh)) in heads {
                    let q = &win[h * nd..][..nd];
                    let k = &win[(g.heads + h) * nd..][..nd];
                    let v = &win[(2 * g.heads + h) * nd..][..nd];
                    probabilities(&mut p, q, k, g.bias(bias, w, h), n, d);
                    let doh = &dow[h * nd..][..nd];
                    head_backward((dq, dk, dv), dsh, (q, k, v), &p, doh, (n, d));
                }
            });
        pack_after(&mut dqkv, &[&column_sums(&ds, g.k)]);
        let len = dqkv.len();
        Ok((CpuStorage::F32(dqkv), Shape::from(len)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = AttentionGeom::new(l1.dims(), l2.shape().elem_count(), self.heads)?;
        crate::kernels::cuda::attention::window_attention_backward(&g, (s1, l1), (s2, l2), (s3, l3))
    }
}

/// Heads wider than this take the composed path on CUDA (the kernel keeps a row's vectors in
/// registers, `cuda/attention.cu`; its widest instantiation).
pub(in crate::kernels) const CUDA_MAX_HEAD_WIDTH: usize = 64;

/// Where [`window_attention`] runs as one op: float32 without autocast (which runs the
/// products in the low dtype), on the CPU, and on CUDA where `IFP_CUDA_FUSED` turns on
/// `attention` (for heads up to 64 wide), there also under autocast where
/// [`crate::kernels::runs_uncast`] (`mixed` on). Elsewhere it is the composed version.
pub fn window_attention_applies(x: &Tensor) -> bool {
    crate::kernels::runs_uncast(x) && fused_applies(x, CudaKernel::Attention)
}

/// `softmax(q k^T + bias) v` per window and head, q, k and v packed as `(B', 3 * heads, N, d)`
/// (q already scaled), the bias repeated over the `(B', heads, N, N)` logits as in
/// [`super::biased_softmax`] -> `(B', heads, N, d)`. One op where [`window_attention_applies`],
/// else [`window_attention_composed`].
pub fn window_attention(qkv: &Tensor, bias: &Tensor, heads: usize) -> Result<Tensor> {
    let narrow_enough =
        qkv.device().is_cpu() || qkv.dims().last().is_some_and(|&d| d <= CUDA_MAX_HEAD_WIDTH);
    if !(window_attention_applies(qkv) && bias.dtype() == qkv.dtype() && narrow_enough) {
        return window_attention_composed(qkv, bias, heads);
    }
    qkv.contiguous()?
        .apply_op2(&bias.contiguous()?, WindowAttention { heads })
}

/// [`window_attention`] from tensor ops: q, k and v narrowed out of the packed tensor, two
/// products (under autocast) and [`super::biased_softmax`].
pub fn window_attention_composed(qkv: &Tensor, bias: &Tensor, heads: usize) -> Result<Tensor> {
    let q = qkv.narrow(1, 0, heads)?;
    let k = qkv.narrow(1, heads, heads)?;
    let v = qkv.narrow(1, 2 * heads, heads)?;
    let attn = crate::kernels::amp::matmul(&q.contiguous()?, &k.contiguous()?.t()?)?;
    let p = super::biased_softmax(&attn, bias)?;
    crate::kernels::amp::matmul(&p, &v.contiguous()?)
}
