//! CUDA launches of Uformer's window attention (`attention.cu`), float32: the forward pass in
//! one launch, one thread per query; the backward pass in two (the queries' gradients and row
//! statistics, then the keys' and values' gradients with the logits' gradient), and the bias's
//! gradient as the fixed-order column sums of `token.cu`. Nothing of the size of the attention
//! matrix outlives a call.

use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, Layout, Result, Shape};

use super::token::column_sums_into;
use super::{f32_storage, f32_view, grid};
use crate::kernels::token::AttentionGeom;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/attention.ptx"));
const MODULE: &str = "ifp_attention";
/// Threads per block: at most 255 registers each (the 64-wide kernels), within an SM's 64K.
const THREADS: u32 = 128;

/// The register widths `attention.cu` is instantiated for.
const WIDTHS: [usize; 3] = [16, 32, 64];
// The op sends wider heads to the composed path.
const _: () = assert!(WIDTHS[WIDTHS.len() - 1] == crate::kernels::token::CUDA_MAX_HEAD_WIDTH);

/// The register width of the kernels for heads `d` wide, or `None` for wider heads, which
/// take the composed path.
fn width(d: usize) -> Option<usize> {
    WIDTHS.into_iter().find(|&w| d <= w)
}

/// `ifp_watt_<stage>_d<width>_f32` for heads `d` wide.
fn kernel(stage: &str, d: usize) -> Result<String> {
    let w = width(d).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "window attention: heads {d} wide are past the CUDA kernel's 64"
        ))
    })?;
    Ok(format!("ifp_watt_{stage}_d{w}_f32"))
}

/// The kernels' trailing arguments: (rows, H, N, D, K).
fn dims(g: &AttentionGeom) -> (i64, i32, i32, i32, i64) {
    (
        (g.windows * g.heads * g.n) as i64,
        g.heads as i32,
        g.n as i32,
        g.d as i32,
        g.k as i64,
    )
}

/// (qkv, bias) -> the attention's output `(B', heads, N, d)`.
pub(in crate::kernels) fn window_attention(
    g: &AttentionGeom,
    (qkv, lq): (&CudaStorage, &Layout),
    (bias, lb): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "window attention";
    let dev = qkv.device.clone();
    let (qv, bv) = (f32_view(qkv, lq, WHAT)?, f32_view(bias, lb, WHAT)?);
    let (rows, h, n, d, k) = dims(g);
    let f = dev.get_or_load_custom_func(&kernel("fwd", g.d)?, MODULE, PTX)?;
    // SAFETY: one thread per query row writes its d outputs.
    let out = unsafe { dev.alloc::<f32>(rows as usize * g.d)? };
    let mut args = f.builder();
    args.arg(&qv).arg(&bv).arg(&out);
    args.arg(&rows).arg(&h).arg(&n).arg(&d).arg(&k);
    // SAFETY: argument types and order match ifp_watt_fwd_* in attention.cu.
    unsafe { args.launch(grid(rows as usize, THREADS)) }.w()?;
    let shape = Shape::from((g.windows, g.heads, g.n, g.d));
    Ok((f32_storage(dev, out), shape))
}

/// (qkv, bias, dout) -> [dqkv, dbias] in one buffer, as the CPU op returns them.
pub(in crate::kernels) fn window_attention_backward(
    g: &AttentionGeom,
    (qkv, lq): (&CudaStorage, &Layout),
    (bias, lb): (&CudaStorage, &Layout),
    (dout, ld): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    const WHAT: &str = "window attention backward";
    let dev = qkv.device.clone();
    let (qv, bv, gv) = (
        f32_view(qkv, lq, WHAT)?,
        f32_view(bias, lb, WHAT)?,
        f32_view(dout, ld, WHAT)?,
    );
    let (rows, h, n, d, k) = dims(g);
    let len = lq.shape().elem_count();
    // SAFETY: the rows kernel writes every dq, the columns kernel every dk and dv (the whole
    // of dqkv), the column sums the k values after them.
    let out = unsafe { dev.alloc::<f32>(len + g.k)? };
    // SAFETY: the rows kernel writes three statistics per row.
    let stats = unsafe { dev.alloc::<f32>(3 * rows as usize)? };
    // SAFETY: the columns kernel writes every logit's gradient.
    let ds = unsafe { dev.alloc::<f32>(rows as usize * g.n)? };

    let f = dev.get_or_load_custom_func(&kernel("rows", g.d)?, MODULE, PTX)?;
    let mut args = f.builder();
    args.arg(&qv).arg(&bv).arg(&gv).arg(&out).arg(&stats);
    args.arg(&rows).arg(&h).arg(&n).arg(&d).arg(&k);
    // SAFETY: argument types and order match ifp_watt_rows_* in attention.cu.
    unsafe { args.launch(grid(rows as usize, THREADS)) }.w()?;

    let f = dev.get_or_load_custom_func(&kernel("cols", g.d)?, MODULE, PTX)?;
    let mut args = f.builder();
    args.arg(&qv)
        .arg(&bv)
        .arg(&gv)
        .arg(&stats)
        .arg(&out)
        .arg(&ds);
    args.arg(&rows).arg(&h).arg(&n).arg(&d).arg(&k);
    // SAFETY: argument types and order match ifp_watt_cols_* in attention.cu.
    unsafe { args.launch(grid(rows as usize, THREADS)) }.w()?;

    let logits = rows as usize * g.n;
    column_sums_into(&dev, &ds.slice(..), (logits / g.k, g.k), &out, len)?;
    Ok((f32_storage(dev, out), Shape::from(len + g.k)))
}
