//! CUDA launches of `F.normalize` over the last dimension (`normalize.cu`), float32: each row
//! sum (the squared norm, and in the backward the gradient's dot product with the input) from
//! fixed-order partial sums in float64, then one pass over the elements.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape};

use super::{f32_view, grid};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/normalize.ptx"));
const MODULE: &str = "ifp_normalize";
/// What errors name.
const WHAT: &str = "l2 normalize";
/// Threads the partial sums aim for over all rows, and the most partial sums per row.
const THREADS: usize = 1 << 16;
const MAX_PARTS: usize = 1024;

/// (rows, row length) of x, whose last dimension is `n` long.
fn dims(l: &Layout, n: usize) -> Result<(i64, i64)> {
    if n == 0 || l.shape().dims().last() != Some(&n) {
        return Err(candle_core::Error::Msg(format!(
            "{WHAT}: {:?} has no rows of {n}",
            l.shape()
        )));
    }
    Ok(((l.shape().elem_count() / n) as i64, n as i64))
}

/// Partial sums per row: enough threads in all, no more than the row has values. A function
/// of the shape only, so the sums' order is too.
fn parts((r, n): (i64, i64)) -> i32 {
    (THREADS / r as usize).clamp(1, MAX_PARTS).min(n as usize) as i32
}

/// `sum(a * b)` of every row, in float64.
pub(super) fn row_dots(
    dev: &CudaDevice,
    a: &CudaView<f32>,
    b: &CudaView<f32>,
    (r, n): (i64, i64),
) -> Result<CudaSlice<f64>> {
    let j = parts((r, n));
    // SAFETY: the partial kernel writes all R * J sums.
    let partial = unsafe { dev.alloc::<f64>(r as usize * j as usize)? };
    let f = dev.get_or_load_custom_func("ifp_row_dot_partial_f32", MODULE, PTX)?;
    let mut args = f.builder();
    args.arg(a).arg(b).arg(&partial).arg(&r).arg(&n).arg(&j);
    // SAFETY: argument types and order match ifp_row_dot_partial_f32 in normalize.cu.
    unsafe { args.launch(grid(r as usize * j as usize, 256)) }.w()?;
    // SAFETY: the reduction writes one sum per row.
    let out = unsafe { dev.alloc::<f64>(r as usize)? };
    let f = dev.get_or_load_custom_func("ifp_row_dot_reduce_f32", MODULE, PTX)?;
    let mut args = f.builder();
    args.arg(&partial).arg(&out).arg(&r).arg(&j);
    // SAFETY: argument types and order match ifp_row_dot_reduce_f32 in normalize.cu.
    unsafe { args.launch(grid(r as usize, 64)) }.w()?;
    Ok(out)
}

/// `x / max(|x|, 1e-12)` per row of `n`.
pub(in crate::kernels) fn l2_normalize(
    (x, lx): (&CudaStorage, &Layout),
    n: usize,
) -> Result<(CudaStorage, Shape)> {
    let d = dims(lx, n)?;
    let dev = x.device.clone();
    let xv = f32_view(x, lx, WHAT)?;
    let sumsq = row_dots(&dev, &xv, &xv, d)?;
    let total = lx.shape().elem_count();
    let f = dev.get_or_load_custom_func("ifp_l2n_apply_f32", MODULE, PTX)?;
    // SAFETY: the kernel writes every element.
    let y = unsafe { dev.alloc::<f32>(total)? };
    let (r, n) = d;
    let mut args = f.builder();
    args.arg(&xv).arg(&sumsq).arg(&y).arg(&r).arg(&n);
    // SAFETY: argument types and order match ifp_l2n_apply_f32 in normalize.cu.
    unsafe { args.launch(grid(total, 256)) }.w()?;
    let slice = CudaStorageSlice::F32(y);
    Ok((CudaStorage { slice, device: dev }, lx.shape().clone()))
}

/// (x, g) -> `g / d - x (g . x) / d^3` per row of `n`.
pub(in crate::kernels) fn l2_normalize_backward(
    (x, lx): (&CudaStorage, &Layout),
    (g, lg): (&CudaStorage, &Layout),
    n: usize,
) -> Result<(CudaStorage, Shape)> {
    let d = dims(lx, n)?;
    let total = lx.shape().elem_count();
    if lg.shape().elem_count() != total {
        return Err(candle_core::Error::Msg(format!(
            "{WHAT} backward: gradient {:?} for input {:?}",
            lg.shape(),
            lx.shape()
        )));
    }
    let dev = x.device.clone();
    let (xv, gv) = (f32_view(x, lx, WHAT)?, f32_view(g, lg, WHAT)?);
    let sumsq = row_dots(&dev, &xv, &xv, d)?;
    let gx = row_dots(&dev, &gv, &xv, d)?;
    let f = dev.get_or_load_custom_func("ifp_l2n_dx_f32", MODULE, PTX)?;
    // SAFETY: the kernel writes every element.
    let dx = unsafe { dev.alloc::<f32>(total)? };
    let (r, n) = d;
    let mut args = f.builder();
    args.arg(&xv).arg(&gv).arg(&sumsq).arg(&gx).arg(&dx);
    args.arg(&r).arg(&n);
    // SAFETY: argument types and order match ifp_l2n_dx_f32 in normalize.cu.
    unsafe { args.launch(grid(total, 256)) }.w()?;
    let slice = CudaStorageSlice::F32(dx);
    Ok((CudaStorage { slice, device: dev }, lx.shape().clone()))
}
