//! A dense stride-1 "same" convolution on CUDA as cuBLAS products (`kernels::gemm` plans
//! them), float32: the weight is read in place by every image's product (no copy per image),
//! a residual is the product's beta-1 accumulator (no separate sum), the weight's gradient
//! accumulates image by image in the products, and a k x k convolution's columns (the
//! `conv.cu` gather) live only during the op that needs them, never kept for the backward pass.
//! The float32 products use the compute type candle's own float32 matmul uses. Under bf16
//! autocast the op casts its operands to bfloat16 itself and multiplies them into float32
//! results (float32 accumulation), where the composed path rounds each product's result to
//! bfloat16 and casts it back in separate passes.

use candle_core::cuda_backend::cudarc::driver::CudaView;
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::{CudaStorage, Layout, Result, Shape};

use super::blas::{self, Operand};
use super::f32_view;
use crate::kernels::gemm::{self, Geom};

fn typed<'a, T: Operand>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    blas::typed(s, l, WHAT)
}

/// What errors name.
const WHAT: &str = "dense conv";

fn msg(what: String) -> candle_core::Error {
    candle_core::Error::Msg(format!("{WHAT}: {what}"))
}

/// The geometry of x (B, C, H, W) convolved by w (O, C, k, k): (B, geometry).
fn geometry(lx: &Layout, lw: &Layout, k: usize) -> Result<(usize, Geom)> {
    let (b, c, h, w) = lx.shape().dims4()?;
    let (o, cw, kh, kw) = lw.shape().dims4()?;
    if cw != c || kh != k || kw != k {
        return Err(msg(format!(
            "weight {:?} for an input {:?} and a {k}x{k} kernel",
            lw.shape(),
            lx.shape()
        )));
    }
    Ok((b, Geom { c, o, h, w, k }))
}

/// The columns (B, C*k*k, H*W) of x (in `T`, contiguous) for the products: x itself for 1x1,
/// else gathered by the im2col kernel into a buffer the caller drops when its products are
/// issued.
fn columns(x: &CudaStorage, lx: &Layout, k: usize) -> Result<Option<CudaStorage>> {
    if k == 1 {
        return Ok(None);
    }
    Ok(Some(super::conv::im2col(x, lx, k)?.0))
}

/// A view of the columns [`columns`] gave for x (B, C, H, W).
fn columns_view<'a, T: Operand>(
    cols: &'a Option<CudaStorage>,
    x: &'a CudaStorage,
    lx: &Layout,
    b: usize,
    g: Geom,
) -> Result<CudaView<'a, T>> {
    match cols {
        Some(s) => typed(s, &Layout::contiguous((b, g.ckk(), g.hw()))),
        None => typed(x, lx),
    }
}

/// `conv(x, w)`, or `residual + conv(x, w)` with a residual (B, O, H, W) given: x (B, C, H, W),
/// w (O, C, k, k), float32; multiplied in bfloat16 with `bf16`. The result is float32.
pub(in crate::kernels) fn dense_conv(
    (x, lx): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    residual: Option<(&CudaStorage, &Layout)>,
    k: usize,
    bf16: bool,
) -> Result<(CudaStorage, Shape)> {
    if bf16 {
        forward::<half::bf16>((x, lx), (w, lw), residual, k)
    } else {
        forward::<f32>((x, lx), (w, lw), residual, k)
    }
}

fn forward<T: Operand>(
    (x, lx): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    residual: Option<(&CudaStorage, &Layout)>,
    k: usize,
) -> Result<(CudaStorage, Shape)> {
    let (b, g) = geometry(lx, lw, k)?;
    let shape = Shape::from((b, g.o, g.h, g.w));
    let dev = x.device.clone();
    let ((xt, lxt), (wt, lwt)) = (blas::operand::<T>(x, lx)?, blas::operand::<T>(w, lw)?);
    let (x, w) = (xt.as_ref().unwrap_or(x), wt.as_ref().unwrap_or(w));
    let cols = columns(x, &lxt, k)?;
    let cols_v = columns_view::<T>(&cols, x, &lxt, b, g)?;
    let wv = typed::<T>(w, &lwt)?;
    // SAFETY: the copy of the residual, or the product (beta 0, which writes without reading),
    // writes every element.
    let mut out = unsafe { dev.alloc::<f32>(shape.elem_count())? };
    if let Some((r, lr)) = residual {
        if lr.shape() != &shape {
            return Err(msg(format!(
                "residual {:?} for an output {shape:?}",
                lr.shape()
            )));
        }
        dev.memcpy_dtod(&f32_view(r, lr, WHAT)?, &mut out)?;
    }
    let call = gemm::forward(g, b, residual.is_some());
    blas::issue(WHAT, &dev, &call, &cols_v, &wv, &mut out)?;
    let slice = CudaStorageSlice::F32(out);
    Ok((CudaStorage { slice, device: dev }, shape))
}

/// The gradients of [`dense_conv`] from x, w and the output gradient dy (B, O, H, W), all
/// float32, packed as [dx (B*C*H*W values), dw (O*C*k*k values)]; the products in bfloat16
/// with `bf16`, their results float32.
pub(in crate::kernels) fn dense_conv_backward(
    x: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
    dy: (&CudaStorage, &Layout),
    k: usize,
    bf16: bool,
) -> Result<(CudaStorage, Shape)> {
    if bf16 {
        backward::<half::bf16>(x, w, dy, k)
    } else {
        backward::<f32>(x, w, dy, k)
    }
}

fn backward<T: Operand>(
    (x, lx): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    (dy, ldy): (&CudaStorage, &Layout),
    k: usize,
) -> Result<(CudaStorage, Shape)> {
    let (b, g) = geometry(lx, lw, k)?;
    if ldy.shape().dims() != [b, g.o, g.h, g.w] {
        return Err(msg(format!(
            "output gradient {:?} for an input {:?}",
            ldy.shape(),
            lx.shape()
        )));
    }
    let dev = x.device.clone();
    let n = lx.shape().elem_count();
    let (wt, lwt) = blas::operand::<T>(w, lw)?;
    let (dyt, ldyt) = blas::operand::<T>(dy, ldy)?;
    let wv = typed::<T>(wt.as_ref().unwrap_or(w), &lwt)?;
    let dyv = typed::<T>(dyt.as_ref().unwrap_or(dy), &ldyt)?;
    // SAFETY: dx is written whole (by the product for 1x1, by the copy from col2im otherwise),
    // and dw by the first weight-gradient product (beta 0).
    let mut out = unsafe { dev.alloc::<f32>(n + g.o * g.ckk())? };
    {
        let (xt, lxt) = blas::operand::<T>(x, lx)?;
        let x = xt.as_ref().unwrap_or(x);
        let cols = columns(x, &lxt, k)?;
        let cols_v = columns_view::<T>(&cols, x, &lxt, b, g)?;
        let mut dw = out.slice_mut(n..);
        for call in gemm::weight_grad(g, b) {
            blas::issue(WHAT, &dev, &call, &cols_v, &dyv, &mut dw)?;
        }
    }
    if k == 1 {
        let mut dx = out.slice_mut(..n);
        blas::issue(WHAT, &dev, &gemm::columns_grad(g, b), &dyv, &wv, &mut dx)?;
    } else {
        let cols_shape = Shape::from((b, g.ckk(), g.hw()));
        // SAFETY: the product (beta 0) writes every element without reading it.
        let mut dcols = unsafe { dev.alloc::<f32>(cols_shape.elem_count())? };
        blas::issue(WHAT, &dev, &gemm::columns_grad(g, b), &dyv, &wv, &mut dcols)?;
        let dcols = CudaStorage {
            slice: CudaStorageSlice::F32(dcols),
            device: dev.clone(),
        };
        let (dx, _) = super::conv::col2im(&dcols, &Layout::contiguous(cols_shape), (k, g.h, g.w))?;
        let dxv = f32_view(&dx, &Layout::contiguous(lx.shape()), WHAT)?;
        dev.memcpy_dtod(&dxv, &mut out.slice_mut(..n))?;
    }
    let slice = CudaStorageSlice::F32(out);
    Ok((
        CudaStorage { slice, device: dev },
        Shape::from(n + g.o * g.ckk()),
    ))
}
