//! CUDA launches of the LeFF's depthwise convolution on tokens, channels last (`dwconv.cu`),
//! float32: the forward pass with its bias (and GELU), in one launch; the backward pass as the
//! mirrored convolution for the input gradient and fixed-order partial sums for the weight and
//! bias gradients, reduced in order by `token.cu`'s column kernel (deterministic).

use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, Layout, Result, Shape};

use super::token::{column_reduce, parts};
use super::{f32_storage, f32_view, grid};
use crate::kernels::token::DepthwiseGeom;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/dwconv.ptx"));
const MODULE: &str = "ifp_dwconv";

/// The kernels' shape arguments: (H, W, C, k).
fn dims(g: &DepthwiseGeom) -> (i32, i32, i32, i32) {
    (g.h as i32, g.w as i32, g.c as i32, g.k as i32)
}

/// `(x, weight, bias)` -> the convolution of tokens `(B, H*W, C)` plus the bias, then a GELU
/// with `gelu`.
pub(in crate::kernels) fn token_depthwise(
    g: &DepthwiseGeom,
    (x, lx): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
    gelu: bool,
) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "token depthwise";
    let dev = x.device.clone();
    let (xv, wv, bv) = (
        f32_view(x, lx, WHAT)?,
        f32_view(w, lw, WHAT)?,
        f32_view(b, lb, WHAT)?,
    );
    let n = lx.shape().elem_count();
    let (h, wd, c, k) = dims(g);
    let (n64, mirror, gelu) = (n as i64, 0i32, i32::from(gelu));
    let f = dev.get_or_load_custom_func("ifp_tdw_apply_f32", MODULE, PTX)?;
    // SAFETY: one thread per output value writes it.
    let y = unsafe { dev.alloc::<f32>(n)? };
    let mut args = f.builder();
    args.arg(&xv).arg(&wv).arg(&bv).arg(&y);
    args.arg(&n64).arg(&h).arg(&wd).arg(&c).arg(&k);
    args.arg(&mirror).arg(&gelu);
    // SAFETY: argument types and order match ifp_tdw_apply_f32 in dwconv.cu.
    unsafe { args.launch(grid(n, 256)) }.w()?;
    Ok((f32_storage(dev, y), lx.shape().clone()))
}

/// `(x, weight, dy)` -> [dx, dweight, dbias] in one buffer, as the CPU op returns them.
pub(in crate::kernels) fn token_depthwise_backward(
    g: &DepthwiseGeom,
    (x, lx): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    (dy, ldy): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "token depthwise backward";
    let dev = x.device.clone();
    let (xv, wv, gv) = (
        f32_view(x, lx, WHAT)?,
        f32_view(w, lw, WHAT)?,
        f32_view(dy, ldy, WHAT)?,
    );
    let n = lx.shape().elem_count();
    let params = g.params();
    let (h, wd, c, k) = dims(g);
    // SAFETY: the mirrored convolution writes out[..n], the reduction out[n..n + params].
    let out = unsafe { dev.alloc::<f32>(n + params)? };

    let (n64, mirror, gelu) = (n as i64, 1i32, 0i32);
    let f = dev.get_or_load_custom_func("ifp_tdw_apply_f32", MODULE, PTX)?;
    let mut args = f.builder();
    // The mirrored pass reads no bias: the weight stands in for that argument.
    args.arg(&gv).arg(&wv).arg(&wv).arg(&out);
    args.arg(&n64).arg(&h).arg(&wd).arg(&c).arg(&k);
    args.arg(&mirror).arg(&gelu);
    // SAFETY: argument types and order match ifp_tdw_apply_f32 in dwconv.cu; it writes out[..n].
    unsafe { args.launch(grid(n, 256)) }.w()?;

    let rows = (g.b * g.h) as i64;
    let j = parts(rows);
    // SAFETY: the partial kernel writes all J * params sums.
    let partial = unsafe { dev.alloc::<f64>(j as usize * params)? };
    let f = dev.get_or_load_custom_func("ifp_tdw_params_partial_f32", MODULE, PTX)?;
    let mut args = f.builder();
    args.arg(&xv).arg(&gv).arg(&partial);
    args.arg(&rows).arg(&h).arg(&wd).arg(&c).arg(&k).arg(&j);
    // SAFETY: argument types and order match ifp_tdw_params_partial_f32 in dwconv.cu.
    unsafe { args.launch(grid(j as usize * params, 256)) }.w()?;
    column_reduce(&dev, &partial, &out, n as i64, params as i32, j)?;
    Ok((f32_storage(dev, out), Shape::from(n + params)))
}
