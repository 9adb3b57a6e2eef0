//! CUDA launches of a convolution's bias with its activation (`bias.cu`), float32: the output
//! in one pass, and for the backward the input gradient in one pass and the bias gradient from
//! fixed-order partial sums per channel (deterministic).

use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaStorage, Layout, Result, Shape};

use super::{f32_view, grid};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/bias.ptx"));
/// What errors name.
const WHAT: &str = "bias act";
const MODULE: &str = "ifp_bias";
/// Partial sums per channel of the bias gradient.
const PARTS: usize = 256;

/// `(has_slope, slope)` as the kernels take them.
fn slope_args(slope: Option<f32>) -> (i32, f32) {
    (i32::from(slope.is_some()), slope.unwrap_or(0.0))
}

/// `act(x + b[c])` of x (B, C, H, W) and bias (C).
pub(in crate::kernels) fn bias_act(
    (x, lx): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
    slope: Option<f32>,
) -> Result<(CudaStorage, Shape)> {
    let (_, c, h, w) = lx.shape().dims4()?;
    if lb.shape().elem_count() != c {
        return Err(candle_core::Error::Msg(format!(
            "bias act: bias {:?} for {c} channels",
            lb.shape()
        )));
    }
    let dev = x.device.clone();
    let (xv, bv) = (f32_view(x, lx, WHAT)?, f32_view(b, lb, WHAT)?);
    let n = lx.shape().elem_count();
    let f = dev.get_or_load_custom_func("ifp_bias_act_f32", MODULE, PTX)?;
    // SAFETY: the kernel writes every element.
    let y = unsafe { dev.alloc::<f32>(n)? };
    let (n64, c32, hw64) = (n as i64, c as i32, (h * w) as i64);
    let (has_slope, s) = slope_args(slope);
    let mut args = f.builder();
    args.arg(&xv)
        .arg(&bv)
        .arg(&y)
        .arg(&n64)
        .arg(&c32)
        .arg(&hw64);
    args.arg(&has_slope).arg(&s);
    // SAFETY: argument types and order match ifp_bias_act_f32 in bias.cu.
    unsafe { args.launch(grid(n, 256)) }.w()?;
    let slice = CudaStorageSlice::F32(y);
    Ok((CudaStorage { slice, device: dev }, lx.shape().clone()))
}

/// (y, dy) -> [dx (B*C*H*W), db (C)] packed in one buffer, as the CPU op returns them.
pub(in crate::kernels) fn bias_act_backward(
    (y, ly): (&CudaStorage, &Layout),
    (g, lg): (&CudaStorage, &Layout),
    slope: Option<f32>,
) -> Result<(CudaStorage, Shape)> {
    let (b, c, h, w) = ly.shape().dims4()?;
    let n = ly.shape().elem_count();
    if lg.shape().elem_count() != n {
        return Err(candle_core::Error::Msg(format!(
            "bias act backward: gradient {:?} for output {:?}",
            lg.shape(),
            ly.shape()
        )));
    }
    let dev = y.device.clone();
    let (yv, gv) = (f32_view(y, ly, WHAT)?, f32_view(g, lg, WHAT)?);
    // SAFETY: dx fills out[..n], the reduction out[n..n + C].
    let out = unsafe { dev.alloc::<f32>(n + c)? };
    let (has_slope, s) = slope_args(slope);
    let n64 = n as i64;

    let f = dev.get_or_load_custom_func("ifp_bias_act_dx_f32", MODULE, PTX)?;
    let mut args = f.builder();
    args.arg(&yv)
        .arg(&gv)
        .arg(&out)
        .arg(&n64)
        .arg(&has_slope)
        .arg(&s);
    // SAFETY: argument types and order match ifp_bias_act_dx_f32 in bias.cu.
    unsafe { args.launch(grid(n, 256)) }.w()?;

    // SAFETY: the partial kernel writes all C * PARTS sums.
    let partial = unsafe { dev.alloc::<f64>(c * PARTS)? };
    let (b64, c32, hw64, parts) = (b as i64, c as i32, (h * w) as i64, PARTS as i32);
    let dx = out.slice(..n);
    let f = dev.get_or_load_custom_func("ifp_channel_sum_partial_f32", MODULE, PTX)?;
    let mut args = f.builder();
    args.arg(&dx)
        .arg(&partial)
        .arg(&b64)
        .arg(&c32)
        .arg(&hw64)
        .arg(&parts);
    // SAFETY: argument types and order match ifp_channel_sum_partial_f32 in bias.cu.
    unsafe { args.launch(grid(c * PARTS, 256)) }.w()?;

    let f = dev.get_or_load_custom_func("ifp_channel_sum_reduce_f32", MODULE, PTX)?;
    let mut args = f.builder();
    args.arg(&partial).arg(&out).arg(&n64).arg(&c32).arg(&parts);
    // SAFETY: argument types and order match ifp_channel_sum_reduce_f32 in bias.cu.
    unsafe { args.launch(grid(c, 64)) }.w()?;

    let slice = CudaStorageSlice::F32(out);
    Ok((CudaStorage { slice, device: dev }, Shape::from(n + c)))
}
