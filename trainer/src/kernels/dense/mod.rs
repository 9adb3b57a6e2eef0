//! A dense stride-1 "same" k x k convolution (no bias) as one op: per image, tiles of 256
//! pixels, each an im2col into a small scratch block and one matrix product with gemm (the
//! kernels candle's own matmul uses). Only the input stays alive for the backward pass, which
//! rebuilds the columns: composed as im2col + matmul, the (C*k*k, H*W) column matrix of every
//! convolution (9x its input for 3x3) was kept for the backward pass, most of the MSRResNet
//! head's memory at full resolution.
//!
//! Per image b and tile: `cols = im2col(x_b)` over the tile's pixels (C*k*k, 256),
//! `y_b[:, tile] = W cols` with W (O, C*k*k). Backward: `dW += dy_b[:, tile] cols^T`, and
//! `dx_b` is the convolution of dy_b by the adjoint weight (W with its two channel axes swapped
//! and each kernel turned by 180 degrees), on the same tiled path. 1x1 convolutions are one
//! product per image each way, reading x and dy and writing y and dx in place (composed as
//! reshape + broadcast matmul + reshape, each reshape and the broadcast weight were nodes whose
//! gradients candle zero-fills and adds, and the weight's gradient was a (B, O, C) tensor
//! summed over the batch).
//!
//! On CUDA (float32, where `IFP_CUDA_FUSED` names `dense`) the same ops run as cuBLAS
//! products over whole images (`gemm`, `cuda/dense.rs`), the backward likewise rebuilding the
//! columns.
//!
//! Threads: when the batch divides among them, whole images run in parallel, each image's tiles
//! in turn (per-image dW summed in image order); otherwise images run in turn with their tiles
//! in parallel (dW summed over fixed groups of tiles, in order). Either way the result does not
//! depend on the schedule. Each thread keeps its tile buffers between calls.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::f32_slice;
use super::gemm::Geom;

mod cpu;

pub(super) struct DenseConv {
    pub(super) k: usize,
    /// Multiply in bfloat16 into float32 results (bf16 autocast; CUDA only).
    pub(super) bf16: bool,
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

/// The input's and the weight's gradients of a dense convolution. The input's is skipped on
/// the CPU where nothing reads it (a network's first convolution, whose input is the
/// corrupted image): with 3 input channels, it was a third of that convolution's backward.
fn backward(
    x: &Tensor,
    wt: &Tensor,
    grad: &Tensor,
    k: usize,
    bf16: bool,
) -> Result<(Option<Tensor>, Tensor)> {
    let input_grad = x.track_op() || !x.device().is_cpu();
    let op = DenseConvBackward {
        k,
        bf16,
        input_grad,
    };
    let packed = x.apply_op3_no_bwd(wt, &grad.contiguous()?, &op)?;
    if !input_grad {
        return Ok((None, packed.reshape(wt.shape())?));
    }
    let [dx, dw]: [Tensor; 2] = super::unpack(&packed, &[x.shape(), wt.shape()])?
        .try_into()
        .map_err(|_| candle_core::Error::Msg("dense conv: two gradients".into()))?;
    Ok((Some(dx), dw))
}

/// The batch and the geometry of a convolution of x (its layout `x`) into `o` channels.
fn geometry(x: &Layout, o: usize, k: usize) -> Result<(usize, Geom)> {
    let (b, c, h, w) = x.shape().dims4()?;
    Ok((b, Geom { c, o, h, w, k }))
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
        let (b, g) = geometry(l1, l2.shape().dims4()?.0, self.k)?;
        let x = f32_slice(s1, l1, self.name())?;
        let wt = f32_slice(s2, l2, self.name())?;
        let mut out = vec![0f32; b * g.o * g.hw()];
        cpu::forward_into(&mut out, x, wt, b, g, false);
        Ok((CpuStorage::F32(out), Shape::from((b, g.o, g.h, g.w))))
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
        Ok((dx, Some(dw)))
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
        let o = l2.shape().dims()[0];
        let (b, g) = geometry(l1, o, self.k)?;
        let (c, h, w, ckk) = (g.c, g.h, g.w, g.ckk());
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
            cpu::forward_into(&mut out, x, &w, b, g, true);
        } else {
            cpu::forward_into(&mut out, x, wt, b, g, true);
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
            return Ok((dx, Some(dw), Some(grad.clone())));
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
        Ok((dx, Some(dwb), Some(grad.clone())))
    }
}

/// (x, W, dy) -> [dx (B*C*H*W values), dW (O*C*k*k values)], or dW alone without
/// `input_grad` (CPU only).
struct DenseConvBackward {
    k: usize,
    bf16: bool,
    input_grad: bool,
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
        let (b, g) = geometry(l1, l2.shape().dims4()?.0, self.k)?;
        let x = f32_slice(s1, l1, self.name())?;
        let wt = f32_slice(s2, l2, self.name())?;
        let dy = f32_slice(s3, l3, self.name())?;
        let out = cpu::backward(x, wt, dy, b, g, self.input_grad);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
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
