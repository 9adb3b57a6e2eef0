//! CUDA launches of Restormer's channel attention as one op (`mdta.cu` around cuBLAS products
//! planned in `kernels/gemm_heads.rs`), float32: the rows' norms as fixed-order float64 row
//! sums, the products of the raw rows (the normalisation enters the small ch x ch matrices, so
//! no normalised copy of q or k is made or kept), the probabilities, and the output; the
//! backward pass recomputes those and forms every gradient, the temperatures' on the device.
//! Composed, each block's attention narrowed q, k and v out of qkv (whose backward zero-fills
//! a full qkv-sized gradient per narrow), kept normalised copies of q and k and a contiguous v
//! for the backward pass, and multiplied the temperature in as its own graph node.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape};

use super::normalize::row_dots;
use super::{blas, f32_storage, f32_view, grid};
use crate::kernels::gemm_heads::{self as plan, Heads};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/mdta.ptx"));
const MODULE: &str = "ifp_mdta";
const WHAT: &str = "channel attention";

/// The kernels' shape arguments: (small-matrix rows B*heads*ch, C, heads, ch).
fn small_rows(d: Heads, batch: usize) -> (i64, i32, i32, i32) {
    (
        (batch * d.heads * d.ch) as i64,
        d.c as i32,
        d.heads as i32,
        d.ch as i32,
    )
}

/// Each row's squared norm in float64, the products of the rows `S` and the probabilities `A`.
fn probabilities(
    dev: &CudaDevice,
    d: Heads,
    batch: usize,
    x: &CudaView<f32>,
    t: &CudaView<f32>,
) -> Result<(CudaSlice<f64>, CudaSlice<f32>, CudaSlice<f32>)> {
    let sumsq = row_dots(dev, x, x, ((batch * 3 * d.c) as i64, d.n as i64))?;
    let small = batch * d.heads * d.ch * d.ch;
    // SAFETY: the products (beta 0) write every element.
    let mut s = unsafe { dev.alloc::<f32>(small)? };
    for b in 0..batch {
        blas::issue(WHAT, dev, &plan::scores(d, b), x, x, &mut s)?;
    }
    // SAFETY: the kernel writes every row of A.
    let a = unsafe { dev.alloc::<f32>(small)? };
    let (rows, c, heads, ch) = small_rows(d, batch);
    let f = dev.get_or_load_custom_func("ifp_mdta_probs_f32", MODULE, PTX)?;
    let mut args = f.builder();
    args.arg(&s).arg(&sumsq).arg(t).arg(&a);
    args.arg(&rows).arg(&c).arg(&heads).arg(&ch);
    // SAFETY: argument types and order match ifp_mdta_probs_f32 in mdta.cu.
    unsafe { args.launch(grid(rows as usize, 128)) }.w()?;
    Ok((sumsq, s, a))
}

/// (qkv (B, 3C, H, W), t) -> the attention's output (B, C, H, W).
pub(in crate::kernels) fn channel_attention(
    d: Heads,
    (x, lx): (&CudaStorage, &Layout),
    (t, lt): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let (batch, _, h, w) = lx.shape().dims4()?;
    let dev = x.device.clone();
    let (xv, tv) = (f32_view(x, lx, WHAT)?, f32_view(t, lt, WHAT)?);
    let (_, _, a) = probabilities(&dev, d, batch, &xv, &tv)?;
    // SAFETY: the products (beta 0) write every element.
    let mut out = unsafe { dev.alloc::<f32>(batch * d.c * d.n)? };
    let av = a.slice(..);
    for b in 0..batch {
        blas::issue(WHAT, &dev, &plan::values(d, b), &xv, &av, &mut out)?;
    }
    Ok((f32_storage(dev, out), Shape::from((batch, d.c, h, w))))
}

/// (qkv, t, dout) -> [dqkv (B*3C*H*W values), dt per (image, head)] in one buffer, as the CPU
/// op returns them.
pub(in crate::kernels) fn channel_attention_backward(
    d: Heads,
    (x, lx): (&CudaStorage, &Layout),
    (t, lt): (&CudaStorage, &Layout),
    (g, lg): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let batch = lx.shape().dims4()?.0;
    let dev = x.device.clone();
    let (xv, tv, gv) = (
        f32_view(x, lx, WHAT)?,
        f32_view(t, lt, WHAT)?,
        f32_view(g, lg, WHAT)?,
    );
    let (sumsq, s, a) = probabilities(&dev, d, batch, &xv, &tv)?;
    let small = batch * d.heads * d.ch * d.ch;
    let (rows, c, heads, ch) = small_rows(d, batch);

    // dA = g v^T, then dS in its place, the coefficients of dq and the temperature's parts.
    // SAFETY: the products (beta 0) write every element.
    let mut ds = unsafe { dev.alloc::<f32>(small)? };
    for b in 0..batch {
        blas::issue(
            WHAT,
            &dev,
            &plan::probabilities_grad(d, b),
            &xv,
            &gv,
            &mut ds,
        )?;
    }
    // SAFETY: the ds kernel writes every row of Mq and every row's dt part.
    let (mq, dt_rows) = unsafe { (dev.alloc::<f32>(small)?, dev.alloc::<f32>(rows as usize)?) };
    let f = dev.get_or_load_custom_func("ifp_mdta_ds_f32", MODULE, PTX)?;
    let mut args = f.builder();
    args.arg(&s)
        .arg(&sumsq)
        .arg(&tv)
        .arg(&a)
        .arg(&ds)
        .arg(&mq)
        .arg(&dt_rows);
    args.arg(&rows).arg(&c).arg(&heads).arg(&ch);
    // SAFETY: argument types and order match ifp_mdta_ds_f32 in mdta.cu.
    unsafe { args.launch(grid(rows as usize, 128)) }.w()?;

    let total = batch * 3 * d.c * d.n;
    // SAFETY: the products write all of dqkv (beta 0), the mk kernel the dt after it.
    let mut out = unsafe { dev.alloc::<f32>(total + batch * d.heads)? };
    // SAFETY: the mk kernel writes every row of Mk.
    let mk = unsafe { dev.alloc::<f32>(small)? };
    {
        let mut dt = out.slice_mut(total..);
        let f = dev.get_or_load_custom_func("ifp_mdta_mk_f32", MODULE, PTX)?;
        let mut args = f.builder();
        args.arg(&ds)
            .arg(&sumsq)
            .arg(&tv)
            .arg(&dt_rows)
            .arg(&mk)
            .arg(&mut dt);
        args.arg(&rows).arg(&c).arg(&heads).arg(&ch);
        // SAFETY: argument types and order match ifp_mdta_mk_f32 in mdta.cu; it writes the
        // B*heads values of dt.
        unsafe { args.launch(grid(rows as usize, 128)) }.w()?;
    }

    // The gradients of the normalised q and k rows, and v's.
    let (mqv, mkv, av) = (mq.slice(..), mk.slice(..), a.slice(..));
    for b in 0..batch {
        blas::issue(
            WHAT,
            &dev,
            &plan::rows_grad(d, b, 1, 0),
            &xv,
            &mqv,
            &mut out,
        )?;
        blas::issue(
            WHAT,
            &dev,
            &plan::rows_grad(d, b, 0, 1),
            &xv,
            &mkv,
            &mut out,
        )?;
        blas::issue(WHAT, &dev, &plan::values_grad(d, b), &gv, &av, &mut out)?;
    }

    // Through F.normalize: the rows' x . d, then the q and k rows in place.
    let qkv_rows = ((batch * 3 * d.c) as i64, d.n as i64);
    let xd = row_dots(&dev, &xv, &out.slice(..total), qkv_rows)?;
    let (b64, n64) = (batch as i64, d.n as i64);
    let f = dev.get_or_load_custom_func("ifp_mdta_norm_dx_f32", MODULE, PTX)?;
    let mut args = f.builder();
    args.arg(&xv).arg(&out).arg(&sumsq).arg(&xd);
    args.arg(&b64).arg(&c).arg(&n64);
    // SAFETY: argument types and order match ifp_mdta_norm_dx_f32 in mdta.cu; it rewrites the
    // q and k parts of dqkv in place.
    unsafe { args.launch(grid(batch * 2 * d.c * d.n, 256)) }.w()?;
    Ok((f32_storage(dev, out), Shape::from(total + batch * d.heads)))
}
