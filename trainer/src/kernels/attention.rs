//! Restormer's channel attention (MDTA after its depthwise convolution) as one fused op with a
//! fused backward. Composed from tensor ops it is about twenty graph nodes (three narrows whose
//! backward pads and concatenates, two L2 normalisations, a transpose copy, a softmax of five
//! ops), each with a full-size buffer in the backward pass.
//!
//! Per image `b` and head `h`, with the `ch = C / heads` rows `q_i`, `k_j`, `v_j` (length
//! N = H*W) of the head's channels in `qkv` (B, 3C, H, W):
//! `nq_i = max(|q_i|, 1e-12)`, `P_ij = (q_i . k_j) / (nq_i nk_j)` (`F.normalize` then the
//! product), `A = softmax_j(t_h P)`, `out_i = sum_j A_ij v_j`.
//! Backward from `g_i = dout_i`: `dA_ij = g_i . v_j`, `dv_j = sum_i A_ij g_i`,
//! `dS_ij = A_ij (dA_ij - sum_k A_ik dA_ik)`, `dt_h = sum_ij dS_ij P_ij`,
//! `dqhat_i = t_h sum_j dS_ij k_j / nk_j`, `dkhat_j = t_h sum_i dS_ij q_i / nq_i`, and through the
//! normalisation `dq_i = dqhat_i / nq_i - q_i (q_i . dqhat_i) / nq_i^3` (`dqhat_i / 1e-12` where
//! the clamp is active). The small ch x ch matrices are recomputed in the backward pass rather
//! than kept.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;

use super::conv::f32_slice;
use super::dot;

/// `F.normalize`'s eps.
const NORM_EPS: f32 = 1e-12;

pub(super) struct ChannelAttention {
    pub(super) heads: usize,
}

/// The dimensions of one call: batch, channels C (of q, k, v each), heads, rows per head, N.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub(super) b: usize,
    pub(super) c: usize,
    pub(super) heads: usize,
    ch: usize,
    n: usize,
}

impl Dims {
    pub(super) fn of(l: &Layout, heads: usize) -> Result<Self> {
        let (b, c3, h, w) = l.shape().dims4()?;
        if c3 % 3 != 0 || (c3 / 3) % heads != 0 {
            return Err(candle_core::Error::Msg(format!(
                "channel attention: {c3} channels are not 3 x heads ({heads}) x rows"
            )));
        }
        let c = c3 / 3;
        Ok(Dims {
            b,
            c,
            heads,
            ch: c / heads,
            n: h * w,
        })
    }

    /// The sizes the CUDA op's products are planned with.
    #[cfg(feature = "cuda")]
    pub(super) fn heads(&self) -> super::gemm_heads::Heads {
        super::gemm_heads::Heads {
            c: self.c,
            heads: self.heads,
            ch: self.ch,
            n: self.n,
        }
    }

    /// Offset of row `i` of part `part` (0 q, 1 k, 2 v) of head `h` of image `b` in qkv.
    fn row(&self, b: usize, part: usize, h: usize, i: usize) -> usize {
        ((b * 3 + part) * self.c + h * self.ch + i) * self.n
    }
}

/// `out += sum_j coef[j] rows_j` where `rows` holds `coef.len()` rows of `out.len()` values,
/// four rows per pass over `out` (a pass per row re-read and re-wrote `out` each time).
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn lincomb(out: &mut [f32], coef: &[f32], rows: &[f32]) {
    let n = out.len();
    let mut j = 0;
    while j + 4 <= coef.len() {
        let (a, b, c, d) = (coef[j], coef[j + 1], coef[j + 2], coef[j + 3]);
        let r = &rows[j * n..(j + 4) * n];
        let (r0, rest) = r.split_at(n);
        let (r1, rest) = rest.split_at(n);
        let (r2, r3) = rest.split_at(n);
        for ((o, (&v0, &v1)), (&v2, &v3)) in
            out.iter_mut().zip(r0.iter().zip(r1)).zip(r2.iter().zip(r3))
        {
            *o += a * v0 + b * v1 + c * v2 + d * v3;
        }
        j += 4;
    }
    for (&cj, r) in coef[j..].iter().zip(rows[j * n..].chunks_exact(n)) {
        for (o, &v) in out.iter_mut().zip(r) {
            *o += cj * v;
        }
    }
}

/// `out[j] = rows_j . v` for the `out.len()` rows of `v.len()` values in `rows`, four rows per
/// pass over `v`.
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn matvec(out: &mut [f32], rows: &[f32], v: &[f32]) {
    let n = v.len();
    let mut j = 0;
    while j + 4 <= out.len() {
        let mut acc = [[0f32; 8]; 4];
        let r = &rows[j * n..(j + 4) * n];
        let vc = v.chunks_exact(8);
        let tail = vc.remainder().len();
        for (k, vv) in vc.enumerate() {
            for (q, a) in acc.iter_mut().enumerate() {
                let rr = &r[q * n + k * 8..][..8];
                for l in 0..8 {
                    a[l] += rr[l] * vv[l];
                }
            }
        }
        for (q, a) in acc.iter().enumerate() {
            let row = &r[q * n..(q + 1) * n];
            let t: f32 = row[n - tail..]
                .iter()
                .zip(&v[n - tail..])
                .map(|(x, y)| x * y)
                .sum();
            out[j + q] = a.iter().sum::<f32>() + t;
        }
        j += 4;
    }
    for (o, row) in out[j..].iter_mut().zip(rows[j * n..].chunks_exact(n)) {
        *o = super::dot_inline(row, v);
    }
}

/// `max(|row|, eps)` of every q and k row: index `((b * heads + h) * 2 + part) * ch + i`.
fn norms(x: &[f32], d: Dims) -> Vec<f32> {
    let mut out = vec![0f32; d.b * d.heads * 2 * d.ch];
    out.par_iter_mut().enumerate().for_each(|(r, o)| {
        let i = r % d.ch;
        let part = (r / d.ch) % 2;
        let bh = r / (2 * d.ch);
        let row = &x[d.row(bh / d.heads, part, bh % d.heads, i)..][..d.n];
        *o = dot(row, row).sqrt().max(NORM_EPS);
    });
    out
}

/// (P, A) of every (b, h): two (B*heads, ch, ch) arrays.
fn scores(x: &[f32], t: &[f32], nrm: &[f32], d: Dims) -> (Vec<f32>, Vec<f32>) {
    let ch = d.ch;
    let mut p = vec![0f32; d.b * d.heads * ch * ch];
    let mut a = vec![0f32; p.len()];
    p.par_chunks_mut(ch)
        .zip(a.par_chunks_mut(ch))
        .enumerate()
        .for_each(|(r, (prow, arow))| {
            let (bh, i) = (r / ch, r % ch);
            let (b, h) = (bh / d.heads, bh % d.heads);
            let q = &x[d.row(b, 0, h, i)..][..d.n];
            let nq = nrm[(bh * 2) * ch + i];
            matvec(prow, &x[d.row(b, 1, h, 0)..][..ch * d.n], q);
            for (j, pv) in prow.iter_mut().enumerate() {
                *pv /= nq * nrm[(bh * 2 + 1) * ch + j];
            }
            let th = t[h];
            let max = prow
                .iter()
                .map(|v| th * v)
                .fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (av, pv) in arow.iter_mut().zip(prow.iter()) {
                *av = (th * pv - max).exp();
                sum += *av;
            }
            arow.iter_mut().for_each(|v| *v /= sum);
        });
    (p, a)
}

/// The attention of qkv `x` (B, 3C, N) with temperatures `t`: (B, C, N) values.
pub(super) fn forward(x: &[f32], t: &[f32], d: Dims) -> Vec<f32> {
    let nrm = norms(x, d);
    let (_, a) = scores(x, t, &nrm, d);
    let ch = d.ch;
    // (B, C, N): row (b, h*ch + i) = sum_j A_ij v_j.
    let mut out = vec![0f32; d.b * d.c * d.n];
    out.par_chunks_mut(d.n).enumerate().for_each(|(r, o)| {
        let (b, c) = (r / d.c, r % d.c);
        let (h, i) = (c / ch, c % ch);
        let arow = &a[((b * d.heads + h) * ch + i) * ch..][..ch];
        lincomb(o, arow, &x[d.row(b, 2, h, 0)..][..ch * d.n]);
    });
    out
}

impl CustomOp2 for ChannelAttention {
    fn name(&self) -> &'static str {
        "ifp-channel-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = Dims::of(l1, self.heads)?;
        let x = f32_slice(s1, l1, self.name())?;
        let t = f32_slice(s2, l2, self.name())?;
        let out = forward(x, t, d);
        let (_, _, hh, ww) = l1.shape().dims4()?;
        Ok((CpuStorage::F32(out), Shape::from((d.b, d.c, hh, ww))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = Dims::of(l1, self.heads)?.heads();
        super::cuda::mdta::channel_attention(d, (s1, l1), (s2, l2))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        t: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // One buffer: dqkv (B*3C*N values) followed by dt per (b, head).
        let both = qkv.apply_op3_no_bwd(
            t,
            &grad.contiguous()?,
            &ChannelAttentionBackward { heads: self.heads },
        )?;
        let per_image = Shape::from((qkv.dim(0)?, self.heads));
        let [dqkv, dt]: [Tensor; 2] = super::unpack(&both, &[qkv.shape(), &per_image])?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("channel attention: two gradients".into()))?;
        Ok((Some(dqkv), Some(dt.sum(0)?.reshape(t.shape())?)))
    }
}

/// The gradients of [`forward`] from the output gradient g (B, C, N): one buffer holding dqkv
/// (B*3C*N values) then dt per (image, head).
pub(super) fn backward(x: &[f32], t: &[f32], g: &[f32], d: Dims) -> Vec<f32> {
    let ch = d.ch;
    let nrm = norms(x, d);
    let (p, a) = scores(x, t, &nrm, d);
    let grow = |b: usize, h: usize, i: usize| &g[((b * d.c) + h * ch + i) * d.n..][..d.n];
    // dS (B*heads, ch, ch) and the per-row part of dt.
    let mut ds = vec![0f32; a.len()];
    let mut dt_rows = vec![0f32; d.b * d.heads * ch];
    ds.par_chunks_mut(ch)
        .zip(dt_rows.par_iter_mut())
        .enumerate()
        .for_each(|(r, (dsrow, dtr))| {
            let (bh, i) = (r / ch, r % ch);
            let (b, h) = (bh / d.heads, bh % d.heads);
            let gi = grow(b, h, i);
            let arow = &a[r * ch..][..ch];
            matvec(dsrow, &x[d.row(b, 2, h, 0)..][..ch * d.n], gi); // dA_ij
            let s: f32 = arow.iter().zip(dsrow.iter()).map(|(x, y)| x * y).sum();
            let prow = &p[r * ch..][..ch];
            let mut acc = 0f32;
            for ((v, &aij), &pij) in dsrow.iter_mut().zip(arow).zip(prow) {
                *v = aij * (*v - s);
                acc += *v * pij;
            }
            *dtr = acc;
        });
    let total = d.b * 3 * d.c * d.n;
    let mut out = vec![0f32; total + d.b * d.heads];
    let (dx, dt) = out.split_at_mut(total);
    for (bh, v) in dt.iter_mut().enumerate() {
        *v = dt_rows[bh * ch..][..ch].iter().sum();
    }
    dx.par_chunks_mut(d.n).enumerate().for_each(|(r, o)| {
        let (b, c3) = (r / (3 * d.c), r % (3 * d.c));
        let (part, c) = (c3 / d.c, c3 % d.c);
        let (h, i) = (c / ch, c % ch);
        let bh = b * d.heads + h;
        let th = t[h];
        let sq = &ds[bh * ch * ch..][..ch * ch];
        match part {
            0 | 1 => {
                // dqhat_i = t sum_j dS_ij k_j / nk_j (part 0), dkhat_i = t sum_j dS_ji q_j / nq_j.
                let other = 1 - part;
                let coef: Vec<f32> = (0..ch)
                    .map(|j| {
                        let sij = if part == 0 {
                            sq[i * ch + j]
                        } else {
                            sq[j * ch + i]
                        };
                        th * sij / nrm[(bh * 2 + other) * ch + j]
                    })
                    .collect();
                lincomb(o, &coef, &x[d.row(b, other, h, 0)..][..ch * d.n]);
                let own = &x[d.row(b, part, h, i)..][..d.n];
                // nrm = max(|row|, eps): above eps exactly where the clamp is inactive.
                let ni = nrm[(bh * 2 + part) * ch + i];
                if ni > NORM_EPS {
                    let c = dot(own, o) / (ni * ni * ni);
                    for (ov, xv) in o.iter_mut().zip(own) {
                        *ov = *ov / ni - c * xv;
                    }
                } else {
                    o.iter_mut().for_each(|v| *v /= NORM_EPS);
                }
            }
            _ => {
                // dv_i = sum_j A_ji g_j.
                let coef: Vec<f32> = (0..ch).map(|j| a[(bh * ch + j) * ch + i]).collect();
                lincomb(o, &coef, &g[(b * d.c + h * ch) * d.n..][..ch * d.n]);
            }
        }
    });
    out
}

struct ChannelAttentionBackward {
    heads: usize,
}

impl candle_core::CustomOp3 for ChannelAttentionBackward {
    fn name(&self) -> &'static str {
        "ifp-channel-attention-backward"
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
        let d = Dims::of(l1, self.heads)?;
        let x = f32_slice(s1, l1, self.name())?;
        let t = f32_slice(s2, l2, self.name())?;
        let g = f32_slice(s3, l3, self.name())?;
        let out = backward(x, t, g, d);
        let total = out.len();
        Ok((CpuStorage::F32(out), Shape::from(total)))
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
        let d = Dims::of(l1, self.heads)?.heads();
        super::cuda::mdta::channel_attention_backward(d, (s1, l1), (s2, l2), (s3, l3))
    }
}
