//! CUDA launches of Uformer's token ops (`token.cu`), float32: LayerNorm over the last
//! dimension (per-row statistics, then the output; for the backward the statistics again,
//! cheaper to recompute than to keep, dx, and the parameter gradients from fixed-order partial
//! sums), softmax over the last dimension, exact GELU, a bias repeated over the rows with its
//! column-sum gradient, and stochastic depth's residual (`x + b * s[sample]`) with its branch's
//! gradient. Every sum over rows is deterministic.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape};

use super::{f32_storage, f32_view, grid};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/token.ptx"));
const MODULE: &str = "ifp_token";
/// Most partial sums per column of a sum over rows (fewer when there are fewer rows).
const PARTS: usize = 256;

fn msg(text: String) -> candle_core::Error {
    candle_core::Error::Msg(text)
}

/// (rows, row length) of a tensor whose last dimension is `k` long.
fn rows(l: &Layout, k: usize, what: &str) -> Result<(i64, i32)> {
    let n = l.shape().elem_count();
    if k == 0 || l.shape().dims().last() != Some(&k) {
        return Err(msg(format!("{what}: {:?} has no rows of {k}", l.shape())));
    }
    Ok(((n / k) as i64, k as i32))
}

/// Both gradients' element counts equal.
fn same_count(a: &Layout, b: &Layout, what: &str) -> Result<()> {
    if a.shape().elem_count() != b.shape().elem_count() {
        return Err(msg(format!(
            "{what}: gradient {:?} for {:?}",
            b.shape(),
            a.shape()
        )));
    }
    Ok(())
}

/// Partial sums per column: how many for `rows` rows.
pub(super) fn parts(rows: i64) -> i32 {
    rows.clamp(1, PARTS as i64) as i32
}

/// Per row: the mean and 1 / sqrt(variance + eps).
fn row_stats(
    dev: &CudaDevice,
    x: &CudaView<f32>,
    (r, c): (i64, i32),
) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
    let f = dev.get_or_load_custom_func("ifp_rln_stats_f32", MODULE, PTX)?;
    // SAFETY: the kernel writes one mean and one rstd per row.
    let (mean, rstd) = unsafe { (dev.alloc::<f32>(r as usize)?, dev.alloc::<f32>(r as usize)?) };
    let mut args = f.builder();
    args.arg(x).arg(&mean).arg(&rstd).arg(&r).arg(&c);
    // SAFETY: argument types and order match ifp_rln_stats_f32 in token.cu.
    unsafe { args.launch(grid(r as usize, 128)) }.w()?;
    Ok((mean, rstd))
}

/// `nn.LayerNorm` over the last dimension of x, whose length is the element count of w and b.
pub(in crate::kernels) fn layer_norm(
    (x, lx): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "token layer norm";
    let d = rows(lx, lw.shape().elem_count(), WHAT)?;
    let dev = x.device.clone();
    let (xv, wv, bv) = (
        f32_view(x, lx, WHAT)?,
        f32_view(w, lw, WHAT)?,
        f32_view(b, lb, WHAT)?,
    );
    let (mean, rstd) = row_stats(&dev, &xv, d)?;
    let n = lx.shape().elem_count();
    let f = dev.get_or_load_custom_func("ifp_rln_apply_f32", MODULE, PTX)?;
    // SAFETY: the kernel writes every element.
    let y = unsafe { dev.alloc::<f32>(n)? };
    let (r, c) = d;
    let mut args = f.builder();
    args.arg(&xv)
        .arg(&wv)
        .arg(&bv)
        .arg(&mean)
        .arg(&rstd)
        .arg(&y);
    args.arg(&r).arg(&c);
    // SAFETY: argument types and order match ifp_rln_apply_f32 in token.cu.
    unsafe { args.launch(grid(n, 256)) }.w()?;
    Ok((f32_storage(dev, y), lx.shape().clone()))
}

/// (x, w, dy) -> [dx (R*C), dw (C), db (C)] packed in one buffer, as the CPU op returns them.
pub(in crate::kernels) fn layer_norm_backward(
    (x, lx): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    (dy, ldy): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "token layer norm backward";
    let d = rows(lx, lw.shape().elem_count(), WHAT)?;
    same_count(lx, ldy, WHAT)?;
    let dev = x.device.clone();
    let (xv, wv, gv) = (
        f32_view(x, lx, WHAT)?,
        f32_view(w, lw, WHAT)?,
        f32_view(dy, ldy, WHAT)?,
    );
    let (mean, rstd) = row_stats(&dev, &xv, d)?;
    let (r, c) = d;
    let (n, channels) = (lx.shape().elem_count(), c as usize);
    // SAFETY: dx fills out[..n], the column reduction out[n..n + 2C].
    let out = unsafe { dev.alloc::<f32>(n + 2 * channels)? };

    let f = dev.get_or_load_custom_func("ifp_rln_dx_f32", MODULE, PTX)?;
    let mut args = f.builder();
    args.arg(&xv)
        .arg(&wv)
        .arg(&gv)
        .arg(&mean)
        .arg(&rstd)
        .arg(&out);
    args.arg(&r).arg(&c);
    // SAFETY: argument types and order match ifp_rln_dx_f32 in token.cu; it writes out[..n].
    unsafe { args.launch(grid(r as usize, 128)) }.w()?;

    let j = parts(r);
    // SAFETY: the partial kernel writes all J * 2C sums.
    let partial = unsafe { dev.alloc::<f64>(j as usize * 2 * channels)? };
    let f = dev.get_or_load_custom_func("ifp_rln_params_partial_f32", MODULE, PTX)?;
    let mut args = f.builder();
    args.arg(&xv).arg(&gv).arg(&mean).arg(&rstd).arg(&partial);
    args.arg(&r).arg(&c).arg(&j);
    // SAFETY: argument types and order match ifp_rln_params_partial_f32 in token.cu.
    unsafe { args.launch(grid(j as usize * channels, 256)) }.w()?;
    column_reduce(&dev, &partial, &out, n as i64, 2 * c, j)?;
    Ok((f32_storage(dev, out), Shape::from(n + 2 * channels)))
}

/// `out[at + k]` = the `j` partial sums of column k of `partial` (J, K), added in order.
pub(super) fn column_reduce(
    dev: &CudaDevice,
    partial: &CudaSlice<f64>,
    out: &CudaSlice<f32>,
    at: i64,
    k: i32,
    j: i32,
) -> Result<()> {
    let f = dev.get_or_load_custom_func("ifp_col_sum_reduce_f32", MODULE, PTX)?;
    let mut args = f.builder();
    args.arg(partial).arg(out).arg(&at).arg(&k).arg(&j);
    // SAFETY: argument types and order match ifp_col_sum_reduce_f32 in token.cu.
    unsafe { args.launch(grid(k as usize, 64)) }.w()?;
    Ok(())
}

/// One launch of `name` over `(inputs..., y, count)` or `(inputs..., y, count, k)` (`k`: the
/// row or bias length): the kernels of one output the size of the first input.
fn launch_into(
    name: &str,
    inputs: &[CudaView<f32>],
    dev: &CudaDevice,
    n: usize,
    (count, k): (i64, Option<i32>),
    threads_for: usize,
) -> Result<CudaSlice<f32>> {
    let f = dev.get_or_load_custom_func(name, MODULE, PTX)?;
    // SAFETY: each of these kernels writes every element of its output.
    let y = unsafe { dev.alloc::<f32>(n)? };
    let mut args = f.builder();
    for v in inputs {
        args.arg(v);
    }
    args.arg(&y).arg(&count);
    if let Some(k) = k.as_ref() {
        args.arg(k);
    }
    // SAFETY: argument types and order match `name` in token.cu (its inputs, the output, the
    // count, and the row or bias length where it takes one).
    unsafe { args.launch(grid(threads_for, 128)) }.w()?;
    Ok(y)
}

/// Softmax over the last dimension (`n` long) of x.
pub(in crate::kernels) fn softmax(
    (x, lx): (&CudaStorage, &Layout),
    n: usize,
) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "softmax";
    let (r, k) = rows(lx, n, WHAT)?;
    let dev = x.device.clone();
    let xv = f32_view(x, lx, WHAT)?;
    let size = lx.shape().elem_count();
    let y = launch_into(
        "ifp_softmax_f32",
        &[xv],
        &dev,
        size,
        (r, Some(k)),
        r as usize,
    )?;
    Ok((f32_storage(dev, y), lx.shape().clone()))
}

/// (y, dy) -> `dx = y (dy - sum(dy y))` per row of `n`.
pub(in crate::kernels) fn softmax_backward(
    (y, ly): (&CudaStorage, &Layout),
    (dy, ldy): (&CudaStorage, &Layout),
    n: usize,
) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "softmax backward";
    let (r, k) = rows(ly, n, WHAT)?;
    same_count(ly, ldy, WHAT)?;
    let dev = y.device.clone();
    let views = [f32_view(y, ly, WHAT)?, f32_view(dy, ldy, WHAT)?];
    let size = ly.shape().elem_count();
    let dx = launch_into(
        "ifp_softmax_dx_f32",
        &views,
        &dev,
        size,
        (r, Some(k)),
        r as usize,
    )?;
    Ok((f32_storage(dev, dx), ly.shape().clone()))
}

/// Exact GELU of x.
pub(in crate::kernels) fn gelu((x, lx): (&CudaStorage, &Layout)) -> Result<(CudaStorage, Shape)> {
    let dev = x.device.clone();
    let xv = f32_view(x, lx, "gelu")?;
    let n = lx.shape().elem_count();
    let y = launch_into("ifp_gelu_f32", &[xv], &dev, n, (n as i64, None), n)?;
    Ok((f32_storage(dev, y), lx.shape().clone()))
}

/// (x, dy) -> `dy (Phi(x) + x phi(x))`.
pub(in crate::kernels) fn gelu_backward(
    (x, lx): (&CudaStorage, &Layout),
    (dy, ldy): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "gelu backward";
    same_count(lx, ldy, WHAT)?;
    let dev = x.device.clone();
    let views = [f32_view(x, lx, WHAT)?, f32_view(dy, ldy, WHAT)?];
    let n = lx.shape().elem_count();
    let dx = launch_into("ifp_gelu_dx_f32", &views, &dev, n, (n as i64, None), n)?;
    Ok((f32_storage(dev, dx), lx.shape().clone()))
}

/// `x + b`, b (`k` values) repeated over the rows of x.
pub(in crate::kernels) fn add_rows(
    (x, lx): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
    k: usize,
) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "add bias";
    if k == 0 || lb.shape().elem_count() != k || !lx.shape().elem_count().is_multiple_of(k) {
        return Err(msg(format!(
            "{WHAT}: bias {:?} does not tile {:?}",
            lb.shape(),
            lx.shape()
        )));
    }
    let dev = x.device.clone();
    let views = [f32_view(x, lx, WHAT)?, f32_view(b, lb, WHAT)?];
    let n = lx.shape().elem_count();
    let y = launch_into(
        "ifp_add_rows_f32",
        &views,
        &dev,
        n,
        (n as i64, Some(k as i32)),
        n,
    )?;
    Ok((f32_storage(dev, y), lx.shape().clone()))
}

/// (R, K) flattened -> (K): the sum over rows, from fixed-order partial sums.
pub(in crate::kernels) fn column_sum(
    (g, lg): (&CudaStorage, &Layout),
    k: usize,
) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "column sum";
    let n = lg.shape().elem_count();
    if k == 0 || !n.is_multiple_of(k) {
        return Err(msg(format!("{WHAT}: {:?} has no rows of {k}", lg.shape())));
    }
    let dev = g.device.clone();
    let gv = f32_view(g, lg, WHAT)?;
    // SAFETY: the reduction writes all K sums.
    let out = unsafe { dev.alloc::<f32>(k)? };
    column_sums_into(&dev, &gv, (n / k, k), &out, 0)?;
    Ok((f32_storage(dev, out), Shape::from(k)))
}

/// `out[at..at + k]` = the sums over the rows of `g` viewed as (`rows`, `k`), from fixed-order
/// partial sums.
pub(super) fn column_sums_into(
    dev: &CudaDevice,
    g: &CudaView<f32>,
    (rows, k): (usize, usize),
    out: &CudaSlice<f32>,
    at: usize,
) -> Result<()> {
    let (r, k32) = (rows as i64, k as i32);
    let j = parts(r);
    // SAFETY: the partial kernel writes all J * K sums.
    let partial = unsafe { dev.alloc::<f64>(j as usize * k)? };
    let f = dev.get_or_load_custom_func("ifp_col_sum_partial_f32", MODULE, PTX)?;
    let mut args = f.builder();
    args.arg(g).arg(&partial).arg(&r).arg(&k32).arg(&j);
    // SAFETY: argument types and order match ifp_col_sum_partial_f32 in token.cu.
    unsafe { args.launch(grid(j as usize * k, 256)) }.w()?;
    column_reduce(dev, &partial, out, at as i64, k32, j)
}

/// Runs token.cu's per-sample kernel `name` on `inputs` (float32 views of `n` values, before
/// the scales in its arguments), one scale per equal sample: a new tensor of `n` values.
fn launch_per_sample(
    name: &str,
    inputs: &[CudaView<f32>],
    (dev, scales): (&CudaDevice, &[f32]),
    n: usize,
) -> Result<CudaSlice<f32>> {
    if scales.is_empty() || !n.is_multiple_of(scales.len()) {
        return Err(msg(format!(
            "{name}: {n} values are not {} equal samples",
            scales.len()
        )));
    }
    let (s, per, n64) = (dev.clone_htod(scales)?, (n / scales.len()) as i64, n as i64);
    let f = dev.get_or_load_custom_func(name, MODULE, PTX)?;
    // SAFETY: both kernels write every element.
    let y = unsafe { dev.alloc::<f32>(n)? };
    let mut args = f.builder();
    for v in inputs {
        args.arg(v);
    }
    args.arg(&s).arg(&y).arg(&n64).arg(&per);
    // SAFETY: argument types and order match ifp_scaled_residual_f32 and ifp_scale_samples_f32
    // in token.cu (their inputs, the scales, the output, the count, the values per sample).
    unsafe { args.launch(grid(n, 256)) }.w()?;
    Ok(y)
}

/// `x + b * scales[sample]` (x and b of one shape, one scale per sample of the leading
/// dimension).
pub(in crate::kernels) fn scaled_residual(
    (x, lx): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
    scales: &[f32],
) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "scaled residual";
    same_count(lx, lb, WHAT)?;
    let dev = x.device.clone();
    let inputs = [f32_view(x, lx, WHAT)?, f32_view(b, lb, WHAT)?];
    let n = lx.shape().elem_count();
    let y = launch_per_sample("ifp_scaled_residual_f32", &inputs, (&dev, scales), n)?;
    Ok((f32_storage(dev, y), lx.shape().clone()))
}

/// `g * scales[sample]`: the branch's gradient of [`scaled_residual`].
pub(in crate::kernels) fn scale_samples(
    (g, lg): (&CudaStorage, &Layout),
    scales: &[f32],
) -> Result<(CudaStorage, Shape)> {
    let dev = g.device.clone();
    let inputs = [f32_view(g, lg, "scale samples")?];
    let n = lg.shape().elem_count();
    let dx = launch_per_sample("ifp_scale_samples_f32", &inputs, (&dev, scales), n)?;
    Ok((f32_storage(dev, dx), lg.shape().clone()))
}
