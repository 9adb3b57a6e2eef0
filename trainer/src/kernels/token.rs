//! Fused CPU ops for Uformer's token path, each a candle custom op with its own backward:
//! LayerNorm over the last dimension, softmax over the last dimension, exact (erf) GELU, and
//! the addition of a tensor repeated over the leading dimensions (biases, the relative position
//! bias, the modulator). Composed from tensor ops each costs several graph nodes with a
//! full-size buffer per node in the backward (candle zero-fills every gradient first), and candle reduces a broadcast
//! gradient over leading dimensions with a slow strided loop; these run on every token of every
//! block. float32 on CPU only; [`layer_norm`], [`softmax`], [`gelu`] and [`add_bias`] fall
//! back to the composed versions elsewhere, which are also what the tests compare them with.
//! Like the other kernels, the per-row loops are compiled for AVX2+FMA as well as the baseline
//! and picked at run time, with the vectorisable `math::erf`/`math::exp`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};
use multiversion::multiversion;
use rayon::prelude::*;

use super::math::{erf, exp};
use super::{applicable, f32_slice, unpack};

const EPS: f32 = 1e-5;
/// Elements per parallel task: large enough that rayon's dispatch is noise.
const CHUNK: usize = 16 * 1024;

/// Rows of length `n` per parallel task.
fn rows_per_task(n: usize) -> usize {
    (CHUNK / n.max(1)).max(1)
}

// ---- LayerNorm over the last dimension ------------------------------------------------------

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
        let mut out = vec![0f32; x.len()];
        let task = rows_per_task(c) * c;
        out.par_chunks_mut(task)
            .zip(x.par_chunks(task))
            .for_each(|(o, xs)| layer_norm_rows(o, xs, w, b));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
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
}

/// `nn.LayerNorm` over the last dimension of `x`, eps 1e-5.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if applicable(x) && x.dim(D::Minus1)? == weight.elem_count() {
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

// ---- softmax over the last dimension --------------------------------------------------------

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
        let mut out = vec![0f32; x.len()];
        let task = rows_per_task(n) * n;
        out.par_chunks_mut(task)
            .zip(x.par_chunks(task))
            .for_each(|(o, xs)| softmax_rows(o, xs, n));
        Ok((CpuStorage::F32(out), l.shape().clone()))
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
}

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    if applicable(x) {
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

// ---- exact GELU -----------------------------------------------------------------------------

struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "ifp-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, xs)| gelu_chunk(o, xs));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = arg
            .contiguous()?
            .apply_op2_no_bwd(&grad.contiguous()?, &GeluBackward)?;
        Ok(Some(dx))
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
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
            .for_each(|(o, (xs, dys))| gelu_backward_chunk(o, xs, dys));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `x Phi(x)` over one chunk.
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn gelu_chunk(o: &mut [f32], xs: &[f32]) {
    for (a, &v) in o.iter_mut().zip(xs) {
        *a = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// `dy (Phi(x) + x phi(x))` over one chunk.
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn gelu_backward_chunk(o: &mut [f32], xs: &[f32], dys: &[f32]) {
    // 1 / sqrt(2 pi)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for ((a, &v), &g) in o.iter_mut().zip(xs).zip(dys) {
        let cdf = 0.5 * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
        let pdf = INV_SQRT_2PI * exp(-0.5 * v * v);
        *a = g * (cdf + v * pdf);
    }
}

/// Exact (erf) GELU, as `nn.GELU()`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if applicable(x) {
        return x.contiguous()?.apply_op1(GeluOp);
    }
    x.gelu_erf()
}

// ---- addition of a tensor repeated over the leading dimensions -----------------------------

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
        let mut out = vec![0f32; x.len()];
        let task = rows_per_task(k) * k;
        out.par_chunks_mut(task)
            .zip(x.par_chunks(task))
            .for_each(|(o, xs)| add_rows(o, xs, b));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
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
        let k = self.k;
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
        Ok((CpuStorage::F32(out), Shape::from(k)))
    }
}

/// `x + b`, `b` repeated over the leading dimensions of `x` (its shape is a suffix of x's).
pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (xd, bd) = (x.dims(), b.dims());
    let suffix = bd.len() <= xd.len() && xd[xd.len() - bd.len()..] == *bd;
    if applicable(x) && b.dtype() == x.dtype() && suffix && b.elem_count() > 0 {
        let k = b.elem_count();
        return x.contiguous()?.apply_op2(&b.contiguous()?, AddBias { k });
    }
    x.broadcast_add(b)
}
