//! LayerNorm over the last dimension (`nn.LayerNorm`, eps 1e-5) with its fused backward.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, D};
use multiversion::multiversion;
use rayon::prelude::*;

use super::{map_rows, rows_per_task};
use crate::kernels::{f32_slice, fused_applies, unpack, CudaKernel};

const EPS: f32 = 1e-5;

/// Per row: `y = (x - mu) * r * w + b`, `r = 1 / sqrt(var + eps)` (biased variance, two-pass
/// like PyTorch).
struct LayerNormOp;

/// (mean, 1/std) of one row.
#[inline(always)]
fn row_stats(x: &[f32]) -> (f32, f32) {
    let n = x.len() as f32;
    let mu = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mu) * (v - mu)).sum::<f32>() / n;
    (mu, 1.0 / (var + EPS).sqrt())
}

/// The forward of whole rows (`w.len()` values each).
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn layer_norm_rows(o: &mut [f32], xs: &[f32], w: &[f32], b: &[f32]) {
    let c = w.len();
    for (orow, xrow) in o.chunks_mut(c).zip(xs.chunks(c)) {
        let (mu, r) = row_stats(xrow);
        for i in 0..c {
            orow[i] = (xrow[i] - mu) * r * w[i] + b[i];
        }
    }
}

/// The backward of whole rows: their dx, and their dw then db added into `acc` (2c values).
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn layer_norm_backward_rows(dxs: &mut [f32], acc: &mut [f32], xs: &[f32], dys: &[f32], w: &[f32]) {
    let c = w.len();
    let mut xhat = vec![0f32; c];
    let mut g = vec![0f32; c];
    for ((dxr, xr), dyr) in dxs.chunks_mut(c).zip(xs.chunks(c)).zip(dys.chunks(c)) {
        let (mu, r) = row_stats(xr);
        let (mut mg, mut mgx) = (0f32, 0f32);
        for i in 0..c {
            xhat[i] = (xr[i] - mu) * r;
            g[i] = dyr[i] * w[i];
            mg += g[i];
            mgx += g[i] * xhat[i];
            acc[i] += dyr[i] * xhat[i];
            acc[c + i] += dyr[i];
        }
        let (mg, mgx) = (mg / c as f32, mgx / c as f32);
        for i in 0..c {
            dxr[i] = r * (g[i] - mg - xhat[i] * mgx);
        }
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "ifp-token-layer-norm"
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
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let b = f32_slice(s3, l3, self.name())?;
        let c = w.len();
        let out = map_rows(x, c, |o, xs| layer_norm_rows(o, xs, w, b));
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
        crate::kernels::cuda::token::layer_norm((s1, l1), (s2, l2), (s3, l3))
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
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormBackward)?;
        let mut parts = unpack(&packed, &[x.shape(), w.shape(), w.shape()])?.into_iter();
        Ok((parts.next(), parts.next(), parts.next()))
    }
}

/// (x, w, dy) -> [dx, dw, db] flattened. With `xhat = (x - mu) * r` and `g = dy * w`:
/// `dx = r * (g - mean(g) - xhat * mean(g * xhat))`, `dw = sum(dy * xhat)`, `db = sum(dy)`.
struct LayerNormBackward;

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "ifp-token-layer-norm-backward"
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
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let dy = f32_slice(s3, l3, self.name())?;
        let c = w.len();
        let n = x.len();
        let mut out = vec![0f32; n + 2 * c];
        let (dx, dwb) = out.split_at_mut(n);
        let task = rows_per_task(c) * c;
        // Each task writes its rows of dx and returns its partial (dw, db).
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(task)
            .zip(x.par_chunks(task).zip(dy.par_chunks(task)))
            .map(|(dxs, (xs, dys))| {
                let mut acc = vec![0f32; 2 * c];
                layer_norm_backward_rows(dxs, &mut acc, xs, dys, w);
                acc
            })
            .collect();
        for p in partials {
            dwb.iter_mut().zip(&p).for_each(|(a, v)| *a += v);
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
        crate::kernels::cuda::token::layer_norm_backward((s1, l1), (s2, l2), (s3, l3))
    }
}

/// `nn.LayerNorm` over the last dimension of `x`, eps 1e-5.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if fused_applies(x, CudaKernel::Token) && x.dim(D::Minus1)? == weight.elem_count() {
        return x
            .contiguous()?
            .apply_op3(&weight.contiguous()?, &bias.contiguous()?, LayerNormOp);
    }
    layer_norm_composed(x, weight, bias)
}

/// The same from elementary tensor ops (any device and dtype).
pub fn layer_norm_composed(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let xc = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + EPS as f64)?.sqrt()?)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}
