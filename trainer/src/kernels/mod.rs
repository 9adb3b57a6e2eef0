//! Kernels as candle custom ops with their own backward, for the operations whose candle 0.11
//! backward is slow or missing (ARCHITECTURE.md, "Known traps in candle 0.11"): convolutions
//! (`conv`) and the channel LayerNorm (`norm`), Restormer's channel attention (`attention`; with
//! its depthwise convolution, `dw_attention`) and its GDFN gate (`gate`), a convolution's bias
//! with its activation (`bias`), dense k x k
//! convolutions that keep no column matrix (`dense`), Uformer's token ops (`token`) and its
//! shifted window partition and reverse (`window`), the row
//! normalisation of MDTA's queries and keys (`normalize`) and the AdamW update (`optim`). All
//! run on the CPU in float32. On CUDA (`cuda`, feature `cuda`) the depthwise convolution runs
//! in float32 and bfloat16; im2col and the GELU gate (float32 and bfloat16), the channel
//! LayerNorm, the bias with its activation, the token ops, the window partition (float32 and
//! bfloat16), the row normalisation, the dense
//! convolutions (cuBLAS products planned by `gemm`), the products under bf16 autocast
//! (`mixed`), Uformer's window attention, channels-last depthwise convolution and linear
//! layers (`gemm_tokens` plans them), Restormer's
//! channel attention (`gemm_heads` plans its products) and the AdamW update (float32) run only
//! where `IFP_CUDA_FUSED` names them (`switch`, [`CudaKernel`]).
//! Each public function here falls back to composed tensor ops elsewhere, and the tests compare
//! each kernel with that composed version (values and gradients).

pub mod amp;
mod attention;
mod bias;
mod conv;
#[cfg(feature = "cuda")]
mod cuda;
mod dense;
mod dw_attention;
mod gate;
// Planned and tested in every build, issued only by the CUDA one.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
mod gemm;
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
mod gemm_heads;
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
mod gemm_tokens;
mod lanes;
mod math;
mod mixed;
mod norm;
mod normalize;
mod optim;
mod product;
mod switch;
pub mod token;
mod window;

use candle_core::{Result, Tensor};

pub(crate) use conv::f32_slice;
pub(crate) use lanes::{dot, dot_inline, max_inline, sum_inline};
pub use mixed::{mixed_applicable, mixed_autocast, runs_uncast};
pub use normalize::{l2_normalize_last, l2_normalize_last_composed};
pub use optim::{
    adamw_update, adamw_update_composed, adamw_update_in_place, squared_norm,
    squared_norm_composed, AdamWItem, AdamWStep,
};
use switch::enabled;
pub use switch::{
    applicable, cuda_fused, cuda_fused_setting, cuda_kernels, fused_applies, kernel_applies,
    prepare_device, set_cuda_fused, set_cuda_kernels, set_enabled, CudaKernel, CudaKernels,
    Settings, GPU_VERIFIED,
};
pub use window::{
    window_partition, window_partition_composed, window_reverse, window_reverse_add,
    window_reverse_add_composed, window_reverse_composed, WindowGrid,
};

/// A zero-filled buffer of `len` values with room for `room` more: the first part of a backward
/// op's packed output, allocated once with the room its other parts take (see [`pack_after`]).
pub(crate) fn zeros_with_room(len: usize, room: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len + room);
    v.resize(len, 0.0);
    v
}

/// Appends `parts` to a backward op's packed output, whose first part was allocated with room
/// for them: growing a full buffer would copy that (activation-sized) first part and take
/// fresh memory for twice its size.
pub(crate) fn pack_after(out: &mut Vec<f32>, parts: &[&[f32]]) {
    let more: usize = parts.iter().map(|p| p.len()).sum();
    debug_assert!(
        out.capacity() - out.len() >= more,
        "a packed output of {} values without room for {more} more",
        out.len()
    );
    for p in parts {
        out.extend_from_slice(p);
    }
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

/// Where [`im2col`] runs a kernel: float32 on the CPU; float32 or bfloat16 on CUDA where
/// [`CudaKernel::Im2col`] is on.
pub fn im2col_applicable(x: &Tensor) -> bool {
    let dtypes = [candle_core::DType::F32, candle_core::DType::BF16];
    kernel_applies(x, Some(CudaKernel::Im2col), &dtypes)
}

/// (B, C, H, W) -> (B, C*k*k, H*W), zero padding k/2: the CPU or CUDA op where
/// [`im2col_applicable`], else [`im2col_composed`].
pub fn im2col(x: &Tensor, k: usize) -> Result<Tensor> {
    if !im2col_applicable(x) {
        return im2col_composed(x, k);
    }
    x.contiguous()?.apply_op1(conv::Im2col { k })
}

/// (B, C, H, W) -> (B, C*k*k, H*W) with zero padding k/2, column order `c*k*k + i*k + j`
/// (the layout of a PyTorch conv weight reshaped to (O, C*k*k)), from tensor ops (any device
/// and dtype): the composed version of [`im2col`].
pub fn im2col_composed(x: &Tensor, k: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let p = k / 2;
    let xp = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
    let mut taps = Vec::with_capacity(k * k);
    for i in 0..k {
        for j in 0..k {
            taps.push(xp.narrow(2, i, h)?.narrow(3, j, w)?);
        }
    }
    // k*k x (B, C, H, W) -> (B, C, k*k, H, W)
    Tensor::stack(&taps, 2)?.reshape((b, c * k * k, h * w))
}

/// Whether `depthwise` runs for this input and weight: float32 on the CPU; with the `cuda`
/// feature also float32 or bfloat16 (one dtype for both) on CUDA, for kernels up to 7x7.
pub fn depthwise_applicable(x: &Tensor, weight: &Tensor, k: usize) -> bool {
    if !enabled() || x.dtype() != weight.dtype() {
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

/// Depthwise "same" convolution with weight (C, 1, k, k): the CPU or CUDA kernel where
/// [`depthwise_applicable`], else [`depthwise_composed`].
pub fn depthwise(x: &Tensor, weight: &Tensor, k: usize) -> Result<Tensor> {
    if !depthwise_applicable(x, weight, k) {
        return depthwise_composed(x, weight, k);
    }
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, conv::Depthwise { k })
}

/// Depthwise convolution from tensor ops (any device and dtype): a sum of shifted views, each
/// scaled per channel. The composed version of [`depthwise`].
pub fn depthwise_composed(x: &Tensor, weight: &Tensor, k: usize) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let p = k / 2;
    let xp = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
    // (C, 1, k, k) -> (C, k*k): one per-channel scale per tap.
    let taps = weight.reshape((c, k * k))?;
    let mut acc: Option<Tensor> = None;
    for i in 0..k {
        for j in 0..k {
            let tap = taps.narrow(1, i * k + j, 1)?.reshape((1, c, 1, 1))?;
            let term = xp.narrow(2, i, h)?.narrow(3, j, w)?.broadcast_mul(&tap)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
    }
    acc.ok_or_else(|| candle_core::Error::Msg("empty depthwise kernel".into()))
}

/// Restormer's channel LayerNorm of (B, C, H, W) over C: `(x - mu) / sqrt(var + 1e-5) * w + b`
/// (`bias: Some`) or `x / sqrt(var + 1e-5) * w` (BiasFree, `bias: None`).
/// The CPU kernel for float32 CPU tensors (and the CUDA one where [`CudaKernel::Norm`] is on), else
/// [`channel_layer_norm_composed`].
pub fn channel_layer_norm(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let float32 = [Some(weight), bias]
        .into_iter()
        .flatten()
        .all(|t| t.dtype() == candle_core::DType::F32);
    if !(float32 && fused_applies(x, CudaKernel::Norm)) {
        return channel_layer_norm_composed(x, weight, bias);
    }
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

/// The channel LayerNorm from tensor ops (any device and dtype); the composed version of
/// [`channel_layer_norm`].
pub fn channel_layer_norm_composed(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let c = x.dim(1)?;
    let mu = x.mean_keepdim(1)?;
    let xc = x.broadcast_sub(&mu)?;
    let var = xc.sqr()?.mean_keepdim(1)?;
    let denom = (var + 1e-5)?.sqrt()?;
    let w = weight.reshape((1, c, 1, 1))?;
    match bias {
        Some(b) => xc
            .broadcast_div(&denom)?
            .broadcast_mul(&w)?
            .broadcast_add(&b.reshape((1, c, 1, 1))?),
        // BiasFree divides the raw input, not the centred one.
        None => x.broadcast_div(&denom)?.broadcast_mul(&w),
    }
}

/// Restormer's channel attention from the output of its depthwise convolution: qkv
/// (B, 3C, H, W) and the per-head temperature (heads, 1, 1) -> (B, C, H, W) (see `attention`).
/// The fused op multiplies in float32, so under autocast the products take
/// [`channel_attention_composed`], which runs them in the low dtype as PyTorch does, except
/// where [`runs_uncast`] (CUDA with `mixed` on). On CUDA the op runs where `IFP_CUDA_FUSED`
/// turns on `mdta` (`cuda/mdta.rs`); elsewhere there the same composition runs with the
/// normalisation and softmax kernels where they are on.
pub fn channel_attention(qkv: &Tensor, temperature: &Tensor, heads: usize) -> Result<Tensor> {
    if !(fused_applies(qkv, CudaKernel::Mdta) && runs_uncast(qkv)) {
        if qkv.device().is_cuda() {
            // The products stay cuBLAS's (under autocast too); the normalisations and the
            // softmax are one op each where `IFP_CUDA_FUSED` turns on `normalize` and `token`.
            let ops: (UnaryOp, UnaryOp) = (l2_normalize_last, token::softmax);
            return channel_attention_with(qkv, temperature, heads, ops);
        }
        return channel_attention_composed(qkv, temperature, heads);
    }
    qkv.contiguous()?.apply_op2(
        &temperature.contiguous()?,
        attention::ChannelAttention { heads },
    )
}

/// The channel attention from tensor ops (any device and dtype; products under autocast): the
/// composed version of [`channel_attention`]. qkv (B, 3C, H, W), temperature (heads, 1, 1)
/// -> (B, C, H, W).
pub fn channel_attention_composed(
    qkv: &Tensor,
    temperature: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    let ops: (UnaryOp, UnaryOp) = (l2_normalize_last_composed, token::softmax_last);
    channel_attention_with(qkv, temperature, heads, ops)
}

/// A tensor op of one tensor.
type UnaryOp = fn(&Tensor) -> Result<Tensor>;

/// The channel attention from tensor ops and `(normalize, softmax)`: `F.normalize(x, dim=-1)`
/// and the softmax over the last dimension.
fn channel_attention_with(
    qkv: &Tensor,
    temperature: &Tensor,
    heads: usize,
    (normalize, softmax): (UnaryOp, UnaryOp),
) -> Result<Tensor> {
    let (b, c3, h, w) = qkv.dims4()?;
    let c = c3 / 3;
    let ch = c / heads;
    // (B, C, H, W) -> (B, heads, C/heads, H*W)
    let split = |i: usize| qkv.narrow(1, i * c, c)?.reshape((b, heads, ch, h * w));
    let q = normalize(&split(0)?)?;
    let k = normalize(&split(1)?)?;
    let v = split(2)?;
    // (B, heads, ch, ch), scaled per head
    let attn = amp::matmul(&q, &k.t()?)?.broadcast_mul(&temperature.unsqueeze(0)?)?;
    let attn = softmax(&attn)?;
    amp::matmul(&attn, &v.contiguous()?)?.reshape((b, c, h, w))
}

/// Whether an op that fuses a bias-free depthwise convolution (weight `(C, 1, k, k)`) into the
/// op after it runs for x: float32, on the CPU, or on CUDA where `IFP_CUDA_FUSED` turns on
/// `kernel` (the op's own) and the depthwise kernel takes `k`; not under autocast, except
/// where [`runs_uncast`]: there the convolution reads float32 and the op after it computes in
/// float32, so the one op computes what the two in turn do, only without keeping the
/// convolution's output.
pub fn depthwise_fused_applicable(
    x: &Tensor,
    weight: &Tensor,
    k: usize,
    kernel: CudaKernel,
) -> bool {
    runs_uncast(x) && fused_applies(x, kernel) && depthwise_applicable(x, weight, k)
}

/// [`channel_attention`] of `depthwise(x, weight)`, with the bias-free depthwise convolution
/// fused in where [`depthwise_fused_applicable`] (`mdta` on CUDA): x (B, 3C, H, W), weight
/// (3C, 1, k, k) (see `dw_attention::DwAttention`); otherwise the two in turn.
pub fn depthwise_channel_attention(
    x: &Tensor,
    weight: &Tensor,
    k: usize,
    temperature: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    if !depthwise_fused_applicable(x, weight, k, CudaKernel::Mdta) {
        return channel_attention(&depthwise(x, weight, k)?, temperature, heads);
    }
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &temperature.contiguous()?,
        dw_attention::DwAttention { heads, k },
    )
}

/// Whether [`gelu_gate`] runs a kernel for x: float32 on the CPU; with the `cuda` feature and
/// [`CudaKernel::Gate`] on, float32 or bfloat16 on CUDA.
pub fn gelu_gate_applicable(x: &Tensor) -> bool {
    let dtypes = [candle_core::DType::F32, candle_core::DType::BF16];
    kernel_applies(x, Some(CudaKernel::Gate), &dtypes)
}

/// `gelu(x1) * x2` of the two channel halves of x (B, 2h, H, W) -> (B, h, H, W): the CPU or
/// CUDA kernel where [`gelu_gate_applicable`], else [`gelu_gate_composed`].
pub fn gelu_gate(x: &Tensor) -> Result<Tensor> {
    if !gelu_gate_applicable(x) {
        return gelu_gate_composed(x);
    }
    x.contiguous()?.apply_op1(gate::GeluGate)
}

/// The GDFN gate `gelu(x1) * x2` of the channel halves of x (B, 2h, H, W), from tensor ops: the
/// composed version of [`gelu_gate`].
pub fn gelu_gate_composed(x: &Tensor) -> Result<Tensor> {
    let hidden = x.dim(1)? / 2;
    x.narrow(1, 0, hidden)?.gelu_erf()? * x.narrow(1, hidden, hidden)?
}

/// `gelu_gate(depthwise(x, weight))` of x (B, 2h, H, W) and a bias-free depthwise weight
/// (2h, 1, k, k) -> (B, h, H, W): one op where [`depthwise_fused_applicable`] (`gate` on CUDA;
/// see `gate::DwGate`), otherwise the two in turn.
pub fn depthwise_gelu_gate(x: &Tensor, weight: &Tensor, k: usize) -> Result<Tensor> {
    if !depthwise_fused_applicable(x, weight, k, CudaKernel::Gate) {
        return gelu_gate(&depthwise(x, weight, k)?);
    }
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, gate::DwGate { k })
}

/// What follows a convolution, fused with its bias where a kernel applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Identity,
    Relu,
    /// LeakyReLU with this negative slope (>= 0).
    LeakyRelu(f64),
}

/// `act(x + b[c])` of x (B, C, H, W) and bias (C): the CPU op for float32 CPU tensors (and the
/// CUDA one where [`CudaKernel::Bias`] is on), else the broadcast sum and [`activation`].
pub fn bias_act(x: &Tensor, bias: &Tensor, act: Activation) -> Result<Tensor> {
    if !(fused_applies(x, CudaKernel::Bias) && bias.dtype() == candle_core::DType::F32) {
        let c = bias.elem_count();
        return activation(&x.broadcast_add(&bias.reshape((1, c, 1, 1))?)?, act);
    }
    let slope = match act {
        Activation::Identity => None,
        Activation::Relu => Some(0.0),
        Activation::LeakyRelu(s) => Some(s as f32),
    };
    x.contiguous()?
        .apply_op2(&bias.contiguous()?, bias::BiasAct { slope })
}

/// `act(x)` from tensor ops (any device and dtype).
pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::Identity => Ok(x.clone()),
        Activation::Relu => x.relu(),
        Activation::LeakyRelu(s) => leaky_relu(x, s),
    }
}

/// LeakyReLU with the given slope, differentiable: `max(x, 0) + slope * min(x, 0)`.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    let pos = x.relu()?;
    let neg = (x - &pos)?;
    pos + (neg * slope)?
}

/// `residual + conv(x, weight) (+ bias)` with the convolution of [`conv_dense`]; residual
/// (B, O, H, W), bias (O). One op where [`conv_dense`]'s kernel applies, else the composed
/// convolution, bias and sum.
pub fn conv_dense_residual(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    k: usize,
    residual: &Tensor,
) -> Result<Tensor> {
    if !dense_op_applies(x, k) {
        let y = conv_by_columns(x, weight, k, im2col)?;
        let y = match bias {
            Some(b) => bias_act(&y, b, Activation::Identity)?,
            None => y,
        };
        return residual + y;
    }
    if let (Some(b), true) = (bias, x.device().is_cuda()) {
        // The CUDA op takes no bias: it is added by its own op, after the sum.
        let y = conv_dense_residual(x, weight, None, k, residual)?;
        return bias_act(&y, b, Activation::Identity);
    }
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
        dense::DenseConvResidual {
            k,
            with_bias,
            bf16: amp::low_dtype().is_some(),
        },
    )
}

/// [`dense_applicable`] for an odd k: with an even one the padding differs between the two
/// sides, and the CPU op's input gradient (the convolution by the turned kernel) would not be
/// the adjoint. The networks' dense convolutions are 1x1 and 3x3.
fn dense_op_applies(x: &Tensor, k: usize) -> bool {
    k % 2 == 1 && dense_applicable(x)
}

/// Where [`conv_dense`] runs as one op: float32 without autocast on the CPU; on CUDA where
/// [`CudaKernel::Dense`] is on, float32 or under bf16 autocast (the op then multiplies in
/// bfloat16 itself, into float32 results).
pub fn dense_applicable(x: &Tensor) -> bool {
    match amp::low_dtype() {
        None => fused_applies(x, CudaKernel::Dense),
        Some(candle_core::DType::BF16) => {
            x.device().is_cuda() && fused_applies(x, CudaKernel::Dense)
        }
        Some(_) => false,
    }
}

/// A dense stride-1 "same" convolution without bias: x (B, C, H, W), weight (O, C, k, k) ->
/// (B, O, H, W). The op keeps only x for the backward pass (see `dense`, and `cuda/dense.rs`)
/// where [`dense_applicable`]; everywhere else it is [`conv_dense_composed`] with the columns
/// from [`im2col`] (a kernel where [`im2col_applicable`]).
pub fn conv_dense(x: &Tensor, weight: &Tensor, k: usize) -> Result<Tensor> {
    if !dense_op_applies(x, k) {
        return conv_by_columns(x, weight, k, im2col);
    }
    x.contiguous()?.apply_op2(
        &weight.contiguous()?,
        dense::DenseConv {
            k,
            bf16: amp::low_dtype().is_some(),
        },
    )
}

/// [`conv_dense`] from tensor ops (any device and dtype; products under autocast): a 1x1
/// convolution is one matrix product, a k x k one im2col and one.
pub fn conv_dense_composed(x: &Tensor, weight: &Tensor, k: usize) -> Result<Tensor> {
    conv_by_columns(x, weight, k, im2col_composed)
}

/// [`conv_dense_composed`] with the columns of a k x k convolution gathered by `gather`.
fn conv_by_columns(
    x: &Tensor,
    weight: &Tensor,
    k: usize,
    gather: fn(&Tensor, usize) -> Result<Tensor>,
) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let o = weight.dim(0)?;
    let y = if k == 1 {
        // (O, C) x (B, C, H*W) -> (B, O, H*W)
        let wm = weight.reshape((o, c))?;
        amp::broadcast_matmul(&wm, &x.reshape((b, c, h * w))?)?
    } else {
        // (B, C*k*k, H*W), gathered in the product's dtype (half the memory under AMP).
        let x = amp::lower(x)?;
        let cols = gather(&x, k)?;
        let wm = weight.reshape((o, c * k * k))?;
        amp::broadcast_matmul(&wm, &cols)?
    };
    y.reshape((b, o, h, w))
}
