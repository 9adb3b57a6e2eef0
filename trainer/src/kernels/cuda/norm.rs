//! CUDA launches of Restormer's channel LayerNorm (`norm.cu`), float32: per-pixel statistics,
//! then the output; for the backward, the statistics again (cheaper to recompute than to keep),
//! dx, and the weight and bias gradients from fixed-order partial sums, so that they do not
//! depend on scheduling.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape};

use super::{f32_view, grid};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/norm.ptx"));
/// What errors name.
const WHAT: &str = "channel layer norm";
const MODULE: &str = "ifp_norm";
/// Partial sums per channel of the parameter gradients.
const PARTS: usize = 256;

/// (B, C, H*W) of x, checked against the channel count of w.
fn dims(lx: &Layout, lw: &Layout) -> Result<(i64, i32, i64)> {
    let (b, c, h, w) = lx.shape().dims4()?;
    if lw.shape().elem_count() != c {
        return Err(candle_core::Error::Msg(format!(
            "channel layer norm: weight {:?} for {c} channels",
            lw.shape()
        )));
    }
    Ok((b as i64, c as i32, (h * w) as i64))
}

/// Per pixel: the mean over channels and 1 / sqrt(variance + eps).
fn stats(
    dev: &CudaDevice,
    x: &CudaView<f32>,
    (b, c, hw): (i64, i32, i64),
) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
    let pixels = (b * hw) as usize;
    let f = dev.get_or_load_custom_func("ifp_cln_stats_f32", MODULE, PTX)?;
    // SAFETY: the kernel writes one mean and one rstd per pixel.
    let (mean, rstd) = unsafe { (dev.alloc::<f32>(pixels)?, dev.alloc::<f32>(pixels)?) };
    let mut args = f.builder();
    args.arg(x).arg(&mean).arg(&rstd).arg(&b).arg(&c).arg(&hw);
    // SAFETY: argument types and order match ifp_cln_stats_f32 in norm.cu.
    unsafe { args.launch(grid(pixels, 128)) }.w()?;
    Ok((mean, rstd))
}

/// `(x - mu) r w + b` (`with_bias`) or `x r w` of x (B, C, H, W) over C.
pub(in crate::kernels) fn channel_norm(
    (x, lx): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    (bias, lb): (&CudaStorage, &Layout),
    with_bias: bool,
) -> Result<(CudaStorage, Shape)> {
    let d = dims(lx, lw)?;
    let dev = x.device.clone();
    let (xv, wv, bv) = (
        f32_view(x, lx, WHAT)?,
        f32_view(w, lw, WHAT)?,
        f32_view(bias, lb, WHAT)?,
    );
    let (mean, rstd) = stats(&dev, &xv, d)?;
    let n = lx.shape().elem_count();
    let f = dev.get_or_load_custom_func("ifp_cln_apply_f32", MODULE, PTX)?;
    // SAFETY: the kernel writes every element.
    let y = unsafe { dev.alloc::<f32>(n)? };
    let (b, c, hw) = d;
    let wb = i32::from(with_bias);
    let mut args = f.builder();
    args.arg(&xv)
        .arg(&wv)
        .arg(&bv)
        .arg(&mean)
        .arg(&rstd)
        .arg(&y);
    args.arg(&b).arg(&c).arg(&hw).arg(&wb);
    // SAFETY: argument types and order match ifp_cln_apply_f32 in norm.cu.
    unsafe { args.launch(grid(n, 256)) }.w()?;
    let slice = CudaStorageSlice::F32(y);
    Ok((CudaStorage { slice, device: dev }, lx.shape().clone()))
}

/// (x, w, dy) -> [dx (B*C*H*W), dw (C), db (C)] packed in one buffer, as the CPU op returns them.
pub(in crate::kernels) fn channel_norm_backward(
    (x, lx): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    (dy, ldy): (&CudaStorage, &Layout),
    with_bias: bool,
) -> Result<(CudaStorage, Shape)> {
    let d = dims(lx, lw)?;
    let n = lx.shape().elem_count();
    if ldy.shape().elem_count() != n {
        return Err(candle_core::Error::Msg(format!(
            "channel layer norm backward: gradient {:?} for input {:?}",
            ldy.shape(),
            lx.shape()
        )));
    }
    let dev = x.device.clone();
    let (xv, wv, gv) = (
        f32_view(x, lx, WHAT)?,
        f32_view(w, lw, WHAT)?,
        f32_view(dy, ldy, WHAT)?,
    );
    let (mean, rstd) = stats(&dev, &xv, d)?;
    let (b, c, hw) = d;
    let wb = i32::from(with_bias);
    let channels = c as usize;
    // SAFETY: dx fills out[..n], the reduction out[n..n + 2C].
    let out = unsafe { dev.alloc::<f32>(n + 2 * channels)? };

    let f = dev.get_or_load_custom_func("ifp_cln_dx_f32", MODULE, PTX)?;
    let mut args = f.builder();
    args.arg(&xv)
        .arg(&wv)
        .arg(&gv)
        .arg(&mean)
        .arg(&rstd)
        .arg(&out);
    args.arg(&b).arg(&c).arg(&hw).arg(&wb);
    // SAFETY: argument types and order match ifp_cln_dx_f32 in norm.cu.
    unsafe { args.launch(grid((b * hw) as usize, 128)) }.w()?;

    // SAFETY: the partial kernel writes all 2 * C * PARTS sums.
    let partial = unsafe { dev.alloc::<f32>(2 * channels * PARTS)? };
    let parts = PARTS as i32;
    let f = dev.get_or_load_custom_func("ifp_cln_params_partial_f32", MODULE, PTX)?;
    let mut args = f.builder();
    args.arg(&xv).arg(&gv).arg(&mean).arg(&rstd).arg(&partial);
    args.arg(&b).arg(&c).arg(&hw).arg(&parts).arg(&wb);
    // SAFETY: argument types and order match ifp_cln_params_partial_f32 in norm.cu.
    unsafe { args.launch(grid(channels * PARTS, 256)) }.w()?;

    let n64 = n as i64;
    let f = dev.get_or_load_custom_func("ifp_cln_params_reduce_f32", MODULE, PTX)?;
    let mut args = f.builder();
    args.arg(&partial).arg(&out).arg(&n64).arg(&c).arg(&parts);
    // SAFETY: argument types and order match ifp_cln_params_reduce_f32 in norm.cu.
    unsafe { args.launch(grid(2 * channels, 64)) }.w()?;

    let slice = CudaStorageSlice::F32(out);
    Ok((
        CudaStorage { slice, device: dev },
        Shape::from(n + 2 * channels),
    ))
}
