//! Matrix products under bf16 autocast on CUDA as one op each (`MixedMatmul`): the operands
//! cast to bfloat16 inside the op and multiplied into a float32 result (float32 accumulation),
//! and the backward's two products the same way. Composed, a product under autocast is four
//! graph nodes (two casts, the bf16 product, the cast of its result back), each with its own
//! gradient buffers, keeps bf16 copies of both operands for the backward pass, and rounds the
//! result and both gradients to bfloat16. CUDA only (`cuda/mixed.rs`), where `IFP_CUDA_FUSED`
//! names `mixed`; with it the fused ops that compute in float32 anyway (the depthwise
//! convolutions, the GDFN gate, the window and channel attention) skip their casts too
//! ([`runs_uncast`]), and Uformer's linear layer stays one op whose products cast their
//! operands inside it, as this op does.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::amp;
use super::switch::{kernel_applies, CudaKernel};

/// `a b` of float32 tensors (..., m, k) and (..., k, n) with the same leading dimensions, in
/// bfloat16 with a float32 result.
pub(super) struct MixedMatmul;

impl CustomOp2 for MixedMatmul {
    fn name(&self) -> &'static str {
        "ifp-mixed-matmul"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Err(candle_core::Error::Msg(format!(
            "{}: CUDA only (on the CPU, autocast products are composed)",
            self.name()
        )))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::mixed_matmul((s1, l1), (s2, l2))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // da = g b^T and db = a^T g, each a product of this op (the transposed views are cast
        // to contiguous bf16 copies inside it).
        let da = grad.apply_op2_no_bwd(&b.t()?, &MixedMatmul)?;
        let db = a.t()?.apply_op2_no_bwd(grad, &MixedMatmul)?;
        Ok((Some(da), Some(db)))
    }
}

/// Whether ops on `x` run under bf16 autocast without casts of their own: float32 on CUDA with
/// [`CudaKernel::Mixed`] on. Products then take [`MixedMatmul`], and the depthwise convolution
/// (memory-bound, its kernel computing in float32 either way) reads its float32 input instead
/// of a bfloat16 copy whose result is cast back.
pub fn mixed_autocast(x: &Tensor) -> bool {
    amp::low_dtype() == Some(DType::BF16)
        && x.device().is_cuda()
        && kernel_applies(x, Some(CudaKernel::Mixed), &[DType::F32])
}

/// Whether a fused op on `x` that computes in float32 runs under the current autocast setting:
/// without autocast, or under [`mixed_autocast`]. There the activations between ops are
/// float32 (each product's result is), so such an op reads its float32 input as it is, where
/// the composed path would cast it to bfloat16 and its result back. The fused attentions'
/// products then stay float32 where PyTorch's autocast runs them in bfloat16: they are small
/// (head width by head width per channel-attention head, 64 by 64 per window) and the ops are
/// bound by memory traffic, which a bfloat16 copy of their input would only add to. A fused op
/// with large products (Uformer's linear layer) casts their operands inside itself here, as
/// [`MixedMatmul`] does.
pub fn runs_uncast(x: &Tensor) -> bool {
    amp::low_dtype().is_none() || mixed_autocast(x)
}

/// Whether `a b` takes [`MixedMatmul`]: [`mixed_autocast`], float32 tensors of the same rank
/// (at least 2) and leading dimensions whose inner dimensions agree.
pub fn mixed_applicable(a: &Tensor, b: &Tensor) -> bool {
    let (da, db) = (a.dims(), b.dims());
    let r = da.len();
    mixed_autocast(a)
        && b.dtype() == DType::F32
        && r >= 2
        && db.len() == r
        && da[..r - 2] == db[..r - 2]
        && da[r - 1] == db[r - 2]
}

/// `a b` as one [`MixedMatmul`] (see [`mixed_applicable`]).
pub(super) fn mixed_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.apply_op2(b, MixedMatmul)
}
