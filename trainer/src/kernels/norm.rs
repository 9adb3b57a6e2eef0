//! The channel LayerNorm of Restormer as one fused op with a fused backward: composed from
//! tensor ops it costs about ten graph nodes, each with a full-size gradient buffer.
//!
//! Per pixel (b, p) over the C channels: `mu = mean(x)`, `r = 1 / sqrt(mean((x - mu)^2) + eps)`;
//! WithBias: `y = (x - mu) * r * w + b`; BiasFree: `y = x * r * w`. With `g = dy * w`:
//! WithBias `dx = r * (g - mean(g) - xhat * mean(g * xhat))`, `xhat = (x - mu) * r`;
//! BiasFree `dx = r * g - r^3 * (x - mu) * mean(g * x)`.
//!
//! The same op runs on CUDA in float32 (`cuda/norm.cu`) where `IFP_CUDA_FUSED` turns on `norm`.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;

use super::conv::f32_slice;

const EPS: f32 = 1e-5;
/// Pixels per parallel task in the per-pixel reductions over channels.
const BLOCK: usize = 512;

pub(super) struct ChannelNorm {
    pub(super) with_bias: bool,
}

/// Per pixel of each image: (mean, 1/std) over channels, two-pass like `torch.var`.
fn stats(x: &[f32], b: usize, c: usize, hw: usize) -> (Vec<f32>, Vec<f32>) {
    let mut mean = vec![0f32; b * hw];
    let mut rstd = vec![0f32; b * hw];
    mean.par_chunks_mut(hw)
        .zip(rstd.par_chunks_mut(hw))
        .enumerate()
        .for_each(|(bi, (mean_b, rstd_b))| {
            let img = &x[bi * c * hw..(bi + 1) * c * hw];
            mean_b
                .par_chunks_mut(BLOCK)
                .zip(rstd_b.par_chunks_mut(BLOCK))
                .enumerate()
                .for_each(|(blk, (m, r))| stats_block(m, r, img, blk * BLOCK, c, hw));
        });
    (mean, rstd)
}

/// Mean and 1/std over the channels of the `m.len()` pixels from `p0` of one image.
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn stats_block(m: &mut [f32], r: &mut [f32], img: &[f32], p0: usize, c: usize, hw: usize) {
    let n = m.len();
    for ch in 0..c {
        let row = &img[ch * hw + p0..][..n];
        m.iter_mut().zip(row).for_each(|(a, v)| *a += v);
    }
    m.iter_mut().for_each(|a| *a /= c as f32);
    for ch in 0..c {
        let row = &img[ch * hw + p0..][..n];
        for ((a, v), mu) in r.iter_mut().zip(row).zip(m.iter()) {
            let d = v - mu;
            *a += d * d;
        }
    }
    r.iter_mut()
        .for_each(|a| *a = 1.0 / (*a / c as f32 + EPS).sqrt());
}

/// One normalised plane: `(x - mu) r w + b` (WithBias) or `x r w` (BiasFree).
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn forward_plane(
    o: &mut [f32],
    xs: &[f32],
    m: &[f32],
    r: &[f32],
    wc: f32,
    bc: f32,
    with_bias: bool,
) {
    let px = o.iter_mut().zip(xs).zip(m.iter().zip(r));
    if with_bias {
        px.for_each(|((o, &x), (&m, &r))| *o = (x - m) * r * wc + bc);
    } else {
        px.for_each(|((o, &x), (_, &r))| *o = x * r * wc);
    }
}

/// Adds one plane's terms of the per-pixel sums `k1 += g`, `k2 += g xhat` (or `g x`),
/// `g = dy w`.
#[multiversion(targets("x86_64+avx+avx2+fma"))]
#[allow(clippy::too_many_arguments)]
fn backward_sums(
    k1: &mut [f32],
    k2: &mut [f32],
    xs: &[f32],
    gs: &[f32],
    m: &[f32],
    r: &[f32],
    wc: f32,
    with_bias: bool,
) {
    let px = k1
        .iter_mut()
        .zip(k2.iter_mut())
        .zip(xs.iter().zip(gs))
        .zip(m.iter().zip(r));
    for (((a1, a2), (&x, &gy)), (&m, &r)) in px {
        let g = gy * wc;
        *a1 += g;
        *a2 += if with_bias { g * (x - m) * r } else { g * x };
    }
}

/// One plane of dx from the per-pixel sums (see the module header).
#[multiversion(targets("x86_64+avx+avx2+fma"))]
#[allow(clippy::too_many_arguments)]
fn backward_plane(
    o: &mut [f32],
    xs: &[f32],
    gs: &[f32],
    m: &[f32],
    r: &[f32],
    k1: &[f32],
    k2: &[f32],
    wc: f32,
    with_bias: bool,
) {
    let px = o
        .iter_mut()
        .zip(xs.iter().zip(gs))
        .zip(m.iter().zip(r))
        .zip(k1.iter().zip(k2));
    for (((o, (&x, &gy)), (&m, &r)), (&a1, &a2)) in px {
        let g = gy * wc;
        let xc = x - m;
        *o = if with_bias {
            r * (g - a1 - xc * r * a2)
        } else {
            r * (g - xc * r * r * a2)
        };
    }
}

/// One plane's `(sum dy xhat, sum dy)` (`xhat = x r` for BiasFree).
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn param_sums(xs: &[f32], gs: &[f32], m: &[f32], r: &[f32], with_bias: bool) -> (f32, f32) {
    let (mut pw, mut pb) = (0f32, 0f32);
    for ((&x, &g), (&m, &r)) in xs.iter().zip(gs).zip(m.iter().zip(r)) {
        let xn = if with_bias { (x - m) * r } else { x * r };
        pw += g * xn;
        pb += g;
    }
    (pw, pb)
}

impl CustomOp3 for ChannelNorm {
    fn name(&self) -> &'static str {
        "ifp-channel-layer-norm"
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
        let (b, c, h, w) = l1.shape().dims4()?;
        let hw = h * w;
        let x = f32_slice(s1, l1, self.name())?;
        let wt = f32_slice(s2, l2, self.name())?;
        let bias = f32_slice(s3, l3, self.name())?;
        let (mean, rstd) = stats(x, b, c, hw);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(n, (o, xs))| {
                let (bi, ch) = (n / c, n % c);
                let (m, r) = (&mean[bi * hw..][..hw], &rstd[bi * hw..][..hw]);
                forward_plane(o, xs, m, r, wt[ch], bias[ch], self.with_bias);
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
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::channel_norm((s1, l1), (s2, l2), (s3, l3), self.with_bias)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // One packed result: dx, then dw, then db.
        let packed = x.apply_op3_no_bwd(
            w,
            &grad.contiguous()?,
            &ChannelNormBackward {
                with_bias: self.with_bias,
            },
        )?;
        let [dx, dw, db]: [Tensor; 3] = super::unpack(&packed, &[x.shape(), w.shape(), w.shape()])?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("channel norm: three gradients".into()))?;
        Ok((Some(dx), Some(dw), self.with_bias.then_some(db)))
    }
}

/// (x, w, dy) -> [dx (B*C*H*W), dw (C), db (C)] flattened.
struct ChannelNormBackward {
    with_bias: bool,
}

impl CustomOp3 for ChannelNormBackward {
    fn name(&self) -> &'static str {
        "ifp-channel-layer-norm-backward"
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
        let (b, c, h, w) = l1.shape().dims4()?;
        let hw = h * w;
        let x = f32_slice(s1, l1, self.name())?;
        let wt = f32_slice(s2, l2, self.name())?;
        let dy = f32_slice(s3, l3, self.name())?;
        let (mean, rstd) = stats(x, b, c, hw);
        let with_bias = self.with_bias;

        // Per pixel: k1 = mean_c(g), k2 = mean_c(g * xhat) (WithBias) or mean_c(g * x) (BiasFree).
        let mut k1 = vec![0f32; b * hw];
        let mut k2 = vec![0f32; b * hw];
        k1.par_chunks_mut(hw)
            .zip(k2.par_chunks_mut(hw))
            .enumerate()
            .for_each(|(bi, (k1b, k2b))| {
                let (m, r) = (&mean[bi * hw..][..hw], &rstd[bi * hw..][..hw]);
                for (ch, &wc) in wt.iter().enumerate().take(c) {
                    let off = (bi * c + ch) * hw;
                    let (xs, gs) = (&x[off..off + hw], &dy[off..off + hw]);
                    backward_sums(k1b, k2b, xs, gs, m, r, wc, with_bias);
                }
                k1b.iter_mut().for_each(|v| *v /= c as f32);
                k2b.iter_mut().for_each(|v| *v /= c as f32);
            });

        let n = x.len();
        let mut out = vec![0f32; n + 2 * c];
        let (dx, dwb) = out.split_at_mut(n);
        dx.par_chunks_mut(hw).enumerate().for_each(|(pl, o)| {
            let (bi, ch) = (pl / c, pl % c);
            let off = pl * hw;
            let (xs, gs) = (&x[off..off + hw], &dy[off..off + hw]);
            let (m, r) = (&mean[bi * hw..][..hw], &rstd[bi * hw..][..hw]);
            let (a1, a2) = (&k1[bi * hw..][..hw], &k2[bi * hw..][..hw]);
            backward_plane(o, xs, gs, m, r, a1, a2, wt[ch], with_bias);
        });
        // dw[c] = sum dy * xhat (or dy * x * r), db[c] = sum dy, accumulated in f64.
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut sw, mut sb) = (0f64, 0f64);
                for bi in 0..b {
                    let off = (bi * c + ch) * hw;
                    let (xs, gs) = (&x[off..off + hw], &dy[off..off + hw]);
                    let (m, r) = (&mean[bi * hw..][..hw], &rstd[bi * hw..][..hw]);
                    let (pw, pb) = param_sums(xs, gs, m, r, with_bias);
                    sw += pw as f64;
                    sb += pb as f64;
                }
                (sw, sb)
            })
            .collect();
        for (ch, (sw, sb)) in sums.into_iter().enumerate() {
            dwb[ch] = sw as f32;
            dwb[c + ch] = sb as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(n + 2 * c)))
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
        super::cuda::channel_norm_backward((s1, l1), (s2, l2), (s3, l3), self.with_bias)
    }
}
