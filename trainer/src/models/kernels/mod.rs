//! Kernels as candle custom ops with their own backward, for the operations whose candle 0.11
//! backward is slow or missing (DESIGN 4): convolutions (`conv`) and the channel LayerNorm
//! (`norm`), Restormer's channel attention (`attention`) and its GDFN gate (`gate`), a convolution's bias
//! with its activation (`bias`), and dense k x k convolutions that keep no column matrix
//! (`dense`). All run on the CPU in float32; the depthwise convolution also runs on CUDA in
//! float32 and bfloat16 (`cuda`, feature `cuda`). `ops.rs` falls back to composed tensor ops
//! elsewhere, and the tests compare each kernel with that composed version (values and
//! gradients).

mod attention;
mod bias;
mod conv;
#[cfg(feature = "cuda")]
mod cuda;
mod dense;
mod gate;
mod math;
mod norm;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Result, Tensor};
use multiversion::multiversion;

pub(crate) use conv::f32_slice;

/// `a . b` in float32 with eight independent partial sums, so the loop vectorises (a single
/// running sum cannot be reordered by the compiler) and rounds less than one long chain.
/// Dispatched to the best instruction set the CPU has; kernels whose own loops are dispatched
/// call [`dot_inline`] instead.
#[multiversion(targets("x86_64+avx+avx2+fma"))]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_inline(a, b)
}

/// [`dot`], inlined into (and compiled for the instruction set of) its caller.
#[inline(always)]
pub(crate) fn dot_inline(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// The tensors a backward op packed one after another into its single flat output (a custom op
/// has one output, so several gradients travel in one buffer), each reshaped to its shape.
pub(crate) fn unpack(packed: &Tensor, shapes: &[&candle_core::Shape]) -> Result<Vec<Tensor>> {
    let mut start = 0;
    shapes
        .iter()
        .map(|shape| {
            let n = shape.elem_count();
            let t = packed.narrow(0, start, n)?.reshape(*shape);
            start += n;
            t
        })
        .collect()
}

/// Off: every op takes its composed fallback, the path that runs on CUDA (and in bf16), so the
/// tests can compare the two on a CPU-only machine.
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the CPU kernels on or off for the whole process (tests of the fallback path).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the fast kernels apply to this tensor.
pub fn applicable(x: &Tensor) -> bool {
    ENABLED.load(Ordering::Relaxed) && x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// (B, C, H, W) -> (B, C*k*k, H*W), zero padding k/2.
pub fn im2col(x: &Tensor, k: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op1(conv::Im2col { k })
}

/// Whether `depthwise` runs for this input and weight: float32 on the CPU; with the `cuda`
/// feature also float32 or bfloat16 (one dtype for both) on CUDA, for kernels up to 7x7.
pub fn depthwise_applicable(x: &Tensor, weight: &Tensor, k: usize) -> bool {
    if !ENABLED.load(Ordering::Relaxed) || x.dtype() != weight.dtype() {
        return false;
    }
    if x.device().is_cpu() {
        return x.dtype() == candle_core::DType::F32;
    }
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return matches!(
            x.dtype(),
            candle_core::DType::F32 | candle_core::DType::BF16
        ) && k <= cuda::MAX_K;
    }
    let _ = k;
    false
}

/// Depthwise "same" convolution with weight (C, 1, k, k).
pub fn depthwise(x: &Tensor, weight: &Tensor, k: usize) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, conv::Depthwise { k })
}

/// Restormer's channel LayerNorm of (B, C, H, W) over C: `(x - mu) / sqrt(var + 1e-5) * w + b`
/// (`bias: Some`) or `x / sqrt(var + 1e-5) * w` (BiasFree, `bias: None`).
pub fn channel_layer_norm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let x = x.contiguous()?;
    match bias {
        Some(b) => x.apply_op3(weight, b, norm::ChannelNorm { with_bias: true }),
        None => {
            // The op always takes three inputs; BiasFree ignores the third.
            let zero = weight.zeros_like()?.detach();
            x.apply_op3(weight, &zero, norm::ChannelNorm { with_bias: false })
        }
    }
}

/// Restormer's channel attention from the output of its depthwise convolution: qkv
/// (B, 3C, H, W) and the per-head temperature (heads, 1, 1) -> (B, C, H, W) (see `attention`).
pub fn channel_attention(qkv: &Tensor, temperature: &Tensor, heads: usize) -> Result<Tensor> {
    qkv.contiguous()?.apply_op2(
        &temperature.contiguous()?,
        attention::ChannelAttention { heads },
    )
}

/// [`channel_attention`] of `depthwise(x, weight)`, with the bias-free depthwise convolution
/// fused in: x (B, 3C, H, W), weight (3C, 1, k, k) (see `attention::DwAttention`).
pub fn depthwise_channel_attention(
    x: &Tensor,
    weight: &Tensor,
    k: usize,
    temperature: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &temperature.contiguous()?,
        attention::DwAttention { heads, k },
    )
}

/// `gelu(x1) * x2` of the two channel halves of x (B, 2h, H, W) -> (B, h, H, W).
pub fn gelu_gate(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(gate::GeluGate)
}

/// `gelu_gate(depthwise(x, weight))` of x (B, 2h, H, W) and a bias-free depthwise weight
/// (2h, 1, k, k) -> (B, h, H, W), on the CPU in float32 (see `gate::DwGate`).
pub fn depthwise_gelu_gate(x: &Tensor, weight: &Tensor, k: usize) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, gate::DwGate { k })
}

/// `act(x + b[c])` of x (B, C, H, W) and bias (C): act the identity (`slope: None`), ReLU
/// (`Some(0.0)`) or LeakyReLU (`Some(s)`, s >= 0).
pub fn bias_act(x: &Tensor, bias: &Tensor, slope: Option<f32>) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&bias.contiguous()?, bias::BiasAct { slope })
}

/// `residual + conv(x, weight) (+ bias)` with the convolution of [`conv_dense`]; residual
/// (B, O, H, W), bias (O).
pub fn conv_dense_residual(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    k: usize,
    residual: &Tensor,
) -> Result<Tensor> {
    let (weight, with_bias) = match bias {
        None => (weight.contiguous()?, false),
        Some(b) => {
            // [W | b]: the bias as one more column of the (O, C*k*k) weight matrix.
            let o = weight.dim(0)?;
            let wm = weight.reshape((o, weight.elem_count() / o))?;
            (Tensor::cat(&[wm, b.reshape((o, 1))?], 1)?, true)
        }
    };
    x.contiguous()?.apply_op3(
        &weight,
        &residual.contiguous()?,
        dense::DenseConvResidual { k, with_bias },
    )
}

/// A dense stride-1 "same" convolution without bias: x (B, C, H, W), weight (O, C, k, k) ->
/// (B, O, H, W), keeping only x for the backward pass (see `dense`).
pub fn conv_dense(x: &Tensor, weight: &Tensor, k: usize) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, dense::DenseConv { k })
}
