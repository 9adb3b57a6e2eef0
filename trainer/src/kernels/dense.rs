//! A dense stride-1 "same" k x k convolution (no bias) as one op: per image, im2col into a
//! scratch buffer and one matrix product with gemm (the kernels candle's own matmul uses). Only
//! the input stays alive for the backward pass, which rebuilds the columns: composed as im2col +
//! matmul, the (C*k*k, H*W) column matrix of every convolution (9x its input for 3x3) was kept
//! for the backward pass, most of the MSRResNet head's memory at full resolution.
//!
//! Per image b: `cols = im2col(x_b)` (C*k*k, HW), `y_b = W cols` with W (O, C*k*k).
//! Backward: `dW += dy_b cols^T`, `dx_b = col2im(W^T dy_b)`. For 1x1 the columns are x_b itself:
//! one matrix product per image each way, and the backward reads and writes x's and dx's memory
//! directly (composed as reshape + broadcast matmul + reshape, each reshape and the broadcast
//! weight were nodes whose gradients candle zero-fills and adds, and the weight's gradient was
//! a (B, O, C) tensor summed over the batch).
//!
//! On CUDA (float32, where `IFP_CUDA_FUSED` names `dense`) the same ops run as cuBLAS
//! products (`gemm`, `cuda/dense.rs`), the backward likewise rebuilding the columns.
//!
//! Threads: when the batch divides among them, whole images run in parallel with
//! single-threaded products (per-image dW summed in image order, so results do not depend on
//! the schedule); otherwise images run in turn with each product split across the threads.
//! Each thread keeps its column buffers between calls.

use std::cell::Cell;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::conv::{col2im_plane, f32_slice, im2col_plane};
use super::gemm::Geom;
use super::product::{matmul, Mat};

pub(super) struct DenseConv {
    pub(super) k: usize,
    /// Multiply in bfloat16 into float32 results (bf16 autocast; CUDA only).
    pub(super) bf16: bool,
}

/// im2col of one image (C, H, W) into `cols` (C*k*k, H*W), planes in parallel unless `par` is
/// `Parallelism::None` (images already in parallel).
fn im2col_image(cols: &mut [f32], img: &[f32], g: Geom, par: Parallelism) {
    let (k, h, w, hw) = (g.k, g.h, g.w, g.hw());
    let rows = cols.chunks_mut(k * k * hw).zip(img.chunks(hw));
    if matches!(par, Parallelism::None) {
        rows.for_each(|(rows, plane)| im2col_plane(rows, plane, k, h, w));
    } else {
        cols.par_chunks_mut(k * k * hw)
            .zip(img.par_chunks(hw))
            .for_each(|(rows, plane)| im2col_plane(rows, plane, k, h, w));
    }
}

thread_local! {
    /// Per thread, the column buffers of the last call (columns, their gradient), kept so that
    /// the next call neither allocates nor zero-fills them: each is fully overwritten before
    /// it is read.
    static SCRATCH: Cell<(Vec<f32>, Vec<f32>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// The largest scratch buffer a thread keeps between calls (32 MiB of float32); a larger one
/// (a big image at inference) is freed after its call.
const KEEP_SCRATCH: usize = 8 << 20;

/// Runs `f` with this thread's scratch buffers (fresh empty ones if a caller further up the
/// stack on this thread holds them).
fn with_scratch<R>(f: impl FnOnce(&mut (Vec<f32>, Vec<f32>)) -> R) -> R {
    let mut bufs = SCRATCH.with(Cell::take);
    let r = f(&mut bufs);
    for b in [&mut bufs.0, &mut bufs.1] {
        if b.capacity() > KEEP_SCRATCH {
            *b = Vec::new();
        }
    }
    SCRATCH.with(|s| s.set(bufs));
    r
}

/// How a call uses the threads: whole images in parallel, each with single-threaded products
/// (`None`), when the batch divides well among the threads; otherwise one image after
/// another, each product split across the threads (`Some(parallelism)`). Per image, a thread
/// packs and multiplies its own operands and meets the others once per call instead of in
/// every product.
fn image_parallelism(b: usize) -> Option<Parallelism> {
    let t = rayon::current_num_threads();
    if t > 1 && b >= t && (b.is_multiple_of(t) || b >= 4 * t) {
        None
    } else if t > 1 {
        Some(Parallelism::Rayon(t))
    } else {
        Some(Parallelism::None)
    }
}

/// The columns of one image: the image itself for 1x1, else im2col into `scratch`.
fn columns<'a>(scratch: &'a mut Vec<f32>, xb: &'a [f32], g: Geom, par: Parallelism) -> &'a [f32] {
    if g.k == 1 {
        return xb;
    }
    // im2col overwrites every element: zeros are only written where the buffer grows.
    scratch.resize(g.ckk() * g.hw(), 0.0);
    im2col_image(scratch, xb, g, par);
    scratch
}

/// y_b (O, HW) (+)= W (O, Ckk) cols (Ckk, HW), adding to y_b with `accumulate`.
fn forward_image(
    yb: &mut [f32],
    xb: &[f32],
    wt: &[f32],
    scratch: &mut Vec<f32>,
    g: Geom,
    accumulate: bool,
    par: Parallelism,
) {
    let cols = columns(scratch, xb, g, par);
    let wm = Mat {
        data: wt,
        transposed: false,
    };
    let cm = Mat {
        data: cols,
        transposed: false,
    };
    matmul(yb, wm, cm, g.o, g.hw(), g.ckk(), accumulate, par);
}

/// The convolution of x (B, C, H, W) by W (O, C, k, k) into `out` (B*O*H*W values), added to
/// what `out` holds with `accumulate`.
fn forward_into(out: &mut [f32], x: &[f32], wt: &[f32], b: usize, g: Geom, accumulate: bool) {
    let (c, o, hw) = (g.c, g.o, g.hw());
    match image_parallelism(b) {
        None => out
            .par_chunks_mut(o * hw)
            .zip(x.par_chunks(c * hw))
            .for_each(|(yb, xb)| {
                with_scratch(|s| {
                    forward_image(yb, xb, wt, &mut s.0, g, accumulate, Parallelism::None)
                })
            }),
        Some(par) => with_scratch(|s| {
            for (yb, xb) in out.chunks_mut(o * hw).zip(x.chunks(c * hw)) {
                forward_image(yb, xb, wt, &mut s.0, g, accumulate, par);
            }
        }),
    }
}

/// The CPU ops multiply in float32 only: a bf16 op reaching the CPU is a dispatch error.
fn float32_only(bf16: bool, name: &str) -> Result<()> {
    if bf16 {
        return Err(candle_core::Error::Msg(format!(
            "{name}: no bfloat16 products on the CPU"
        )));
    }
    Ok(())
}

/// The input's and the weight's gradients of a dense convolution.
fn backward(
    x: &Tensor,
    wt: &Tensor,
    grad: &Tensor,
    k: usize,
    bf16: bool,
) -> Result<(Tensor, Tensor)> {
    let both = x.apply_op3_no_bwd(wt, &grad.contiguous()?, &DenseConvBackward { k, bf16 })?;
    let [dx, dw]: [Tensor; 2] = super::unpack(&both, &[x.shape(), wt.shape()])?
        .try_into()
        .map_err(|_| candle_core::Error::Msg("dense conv: two gradients".into()))?;
    Ok((dx, dw))
}

/// One image's gradients: `dw (+)= dy_b cols^T` (`accumulate`), `dx_b = col2im(W^T dy_b)`
/// (for 1x1 the product is written straight into dx_b).
#[allow(clippy::too_many_arguments)]
fn backward_image(
    dxb: &mut [f32],
    dw: &mut [f32],
    accumulate: bool,
    xb: &[f32],
    dyb: &[f32],
    wt: &[f32],
    scratch: &mut (Vec<f32>, Vec<f32>),
    g: Geom,
    par: Parallelism,
) {
    let (hw, ckk) = (g.hw(), g.ckk());
    let cols = columns(&mut scratch.0, xb, g, par);
    let dym = Mat {
        data: dyb,
        transposed: false,
    };
    let ct = Mat {
        data: cols,
        transposed: true,
    };
    // dW (O, Ckk) (+)= dy_b (O, HW) cols^T (HW, Ckk)
    matmul(dw, dym, ct, g.o, ckk, hw, accumulate, par);
    let wtm = Mat {
        data: wt,
        transposed: true,
    };
    if g.k == 1 {
        matmul(dxb, wtm, dym, ckk, hw, g.o, false, par);
        return;
    }
    // dcols (Ckk, HW) = W^T (Ckk, O) dy_b (O, HW), then summed back onto the pixels.
    let dcols = &mut scratch.1;
    dcols.resize(ckk * hw, 0.0);
    matmul(dcols, wtm, dym, ckk, hw, g.o, false, par);
    let (k, h, w) = (g.k, g.h, g.w);
    if matches!(par, Parallelism::None) {
        dxb.chunks_mut(hw)
            .zip(dcols.chunks(k * k * hw))
            .for_each(|(plane, rows)| col2im_plane(plane, rows, k, h, w));
    } else {
        dxb.par_chunks_mut(hw)
            .zip(dcols.par_chunks(k * k * hw))
            .for_each(|(plane, rows)| col2im_plane(plane, rows, k, h, w));
    }
}

impl CustomOp2 for DenseConv {
    fn name(&self) -> &'static str {
        "ifp-dense-conv"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        float32_only(self.bf16, self.name())?;
        let (b, c, h, w) = l1.shape().dims4()?;
        let o = l2.shape().dims4()?.0;
        let x = f32_slice(s1, l1, self.name())?;
        let wt = f32_slice(s2, l2, self.name())?;
        let g = Geom {
            c,
            o,
            h,
            w,
            k: self.k,
        };
        let mut out = vec![0f32; b * o * g.hw()];
        forward_into(&mut out, x, wt, b, g, false);
        Ok((CpuStorage::F32(out), Shape::from((b, o, h, w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::dense_conv((s1, l1), (s2, l2), None, self.k, self.bf16)
    }

    fn bwd(
        &self,
        x: &Tensor,
        wt: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = backward(x, wt, grad, self.k, self.bf16)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `r + conv(x, W) (+ b)` (x, W, r): a residual connection whose branch ends in a
/// convolution, as one op. The product accumulates onto a copy of r (plus the bias), so the sum
/// is neither a separate pass nor a separate graph node (whose backward zero-fills and adds a
/// gradient for each of its two inputs). With `with_bias` the second input is `[W | b]`, the
/// weight as (O, C*k*k) with the bias as one more column (a custom op takes three inputs).
pub(super) struct DenseConvResidual {
    pub(super) k: usize,
    pub(super) with_bias: bool,
    /// As [`DenseConv::bf16`].
    pub(super) bf16: bool,
}

impl CustomOp3 for DenseConvResidual {
    fn name(&self) -> &'static str {
        "ifp-dense-conv-residual"
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
        float32_only(self.bf16, self.name())?;
        let (b, c, h, w) = l1.shape().dims4()?;
        let o = l2.shape().dims()[0];
        let g = Geom {
            c,
            o,
            h,
            w,
            k: self.k,
        };
        let ckk = g.ckk();
        let expected: &[usize] = if self.with_bias {
            &[o, ckk + 1]
        } else {
            &[o, c, g.k, g.k]
        };
        if l3.shape().dims() != [b, o, h, w] || l2.shape().dims() != expected {
            return Err(candle_core::Error::Msg(format!(
                "{}: weight {:?} and residual {:?} for an input {:?}",
                self.name(),
                l2.shape().dims(),
                l3.shape().dims(),
                l1.shape().dims()
            )));
        }
        let x = f32_slice(s1, l1, self.name())?;
        let wt = f32_slice(s2, l2, self.name())?;
        let mut out = f32_slice(s3, l3, self.name())?.to_vec();
        if self.with_bias {
            let (w, bias): (Vec<f32>, Vec<f32>) = (
                wt.chunks(ckk + 1).flat_map(|r| r[..ckk].to_vec()).collect(),
                wt.chunks(ckk + 1).map(|r| r[ckk]).collect(),
            );
            let hw = g.hw();
            out.par_chunks_mut(hw).enumerate().for_each(|(p, plane)| {
                let bc = bias[p % o];
                plane.iter_mut().for_each(|v| *v += bc);
            });
            forward_into(&mut out, x, &w, b, g, true);
        } else {
            forward_into(&mut out, x, wt, b, g, true);
        }
        Ok((CpuStorage::F32(out), l3.shape().clone()))
    }

    /// Without a bias only: on CUDA the bias is added by its own op (`kernels::bias_act`).
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
        if self.with_bias {
            return Err(candle_core::Error::Msg(format!(
                "{}: no CUDA version with a bias",
                self.name()
            )));
        }
        super::cuda::dense_conv((s1, l1), (s2, l2), Some((s3, l3)), self.k, self.bf16)
    }

    fn bwd(
        &self,
        x: &Tensor,
        wt: &Tensor,
        _r: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if !self.with_bias {
            let (dx, dw) = backward(x, wt, grad, self.k, self.bf16)?;
            return Ok((Some(dx), Some(dw), Some(grad.clone())));
        }
        let (_, c, _, _) = x.dims4()?;
        let (o, ckk) = (wt.dim(0)?, c * self.k * self.k);
        let w = wt
            .narrow(1, 0, ckk)?
            .contiguous()?
            .reshape((o, c, self.k, self.k))?;
        let (dx, dw) = backward(x, &w, grad, self.k, self.bf16)?;
        let db = grad
            .contiguous()?
            .apply_op1_no_bwd(&super::bias::ChannelSum)?;
        let dwb = Tensor::cat(&[dw.reshape((o, ckk))?, db.reshape((o, 1))?], 1)?;
        Ok((Some(dx), Some(dwb), Some(grad.clone())))
    }
}

/// (x, W, dy) -> [dx (B*C*H*W values), dW (O*C*k*k values)].
struct DenseConvBackward {
    k: usize,
    bf16: bool,
}

impl CustomOp3 for DenseConvBackward {
    fn name(&self) -> &'static str {
        "ifp-dense-conv-backward"
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
        float32_only(self.bf16, self.name())?;
        let (b, c, h, w) = l1.shape().dims4()?;
        let o = l2.shape().dims4()?.0;
        let x = f32_slice(s1, l1, self.name())?;
        let wt = f32_slice(s2, l2, self.name())?;
        let dy = f32_slice(s3, l3, self.name())?;
        let g = Geom {
            c,
            o,
            h,
            w,
            k: self.k,
        };
        let (hw, ckk) = (g.hw(), g.ckk());
        let n = x.len();
        let mut out = vec![0f32; n + o * ckk];
        let (dx, dw) = out.split_at_mut(n);
        match image_parallelism(b) {
            None => {
                // Each image's dW apart, then summed in image order: the result does not
                // depend on which thread ran which image.
                let mut parts = vec![0f32; b * o * ckk];
                dx.par_chunks_mut(c * hw)
                    .zip(x.par_chunks(c * hw))
                    .zip(dy.par_chunks(o * hw))
                    .zip(parts.par_chunks_mut(o * ckk))
                    .for_each(|(((dxb, xb), dyb), dwb)| {
                        with_scratch(|s| {
                            let par = Parallelism::None;
                            backward_image(dxb, dwb, false, xb, dyb, wt, s, g, par)
                        })
                    });
                for part in parts.chunks(o * ckk) {
                    dw.iter_mut().zip(part).for_each(|(a, v)| *a += v);
                }
            }
            Some(par) => with_scratch(|s| {
                let images = dx
                    .chunks_mut(c * hw)
                    .zip(x.chunks(c * hw))
                    .zip(dy.chunks(o * hw));
                for (bi, ((dxb, xb), dyb)) in images.enumerate() {
                    backward_image(dxb, dw, bi > 0, xb, dyb, wt, s, g, par);
                }
            }),
        }
        Ok((CpuStorage::F32(out), Shape::from(n + o * ckk)))
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
        super::cuda::dense_conv_backward((s1, l1), (s2, l2), (s3, l3), self.k, self.bf16)
    }
}
