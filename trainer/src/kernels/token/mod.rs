//! Fused ops for Uformer's token path, each a candle custom op with its own backward, one file
//! per op: LayerNorm over the last dimension (`norm`), softmax over the last dimension, also
//! with the attention's bias and mask added inside (`softmax`), exact (erf) GELU (`gelu`), the
//! addition of a tensor repeated over the leading dimensions (`bias`: biases, the relative
//! position bias, the modulator), the linear layer, also to and from the attention's head
//! layout (`linear`), the LeFF's depthwise convolution, channels last (`dwconv`), and on the
//! CPU the whole LeFF after its first linear layer (`leff`: GELU, that convolution, GELU and
//! the second linear layer), the whole window attention from packed q, k, v (`attention`), and
//! a residual connection whose branch is scaled per sample, stochastic depth's (`residual`). Composed from tensor ops each
//! costs several graph nodes with a full-size buffer per node in the backward (candle
//! zero-fills every gradient first), and candle reduces a broadcast gradient over leading
//! dimensions with a slow strided loop; these run on every token of every block.
//!
//! float32 on the CPU, and on CUDA (`cuda/token.cu`) where `IFP_CUDA_FUSED` turns on `token`;
//! [`layer_norm`], [`softmax`], [`gelu`] and [`add_bias`] fall back to the composed versions
//! elsewhere, which are also what the tests compare them with. [`window_attention`] and
//! [`depthwise`] run on CUDA too (`cuda/attention.cu`, `cuda/dwconv.cu`) where
//! `IFP_CUDA_FUSED` turns on `attention` and `dwconv`, and [`linear`] (`cuda/linear.rs`)
//! where it turns on `linear` (under bf16 autocast too, where it also turns on `mixed`).
//! [`scaled_residual`] runs on CUDA where `IFP_CUDA_FUSED` turns on `token` too.
//! [`biased_softmax`] is a CPU op only (no CUDA version yet): elsewhere it is its composed
//! version, the path the network took before it. Like the other kernels, the per-row loops
//! are compiled for AVX2+FMA as well as the baseline and picked at run time, with the
//! vectorisable `math::erf`/`math::exp`.

use rayon::prelude::*;

mod attention;
mod bias;
mod dwconv;
mod gelu;
mod leff;
mod linear;
mod norm;
mod residual;
mod softmax;

pub use attention::{window_attention, window_attention_applies, window_attention_composed};
#[cfg(feature = "cuda")]
pub(in crate::kernels) use attention::{AttentionGeom, CUDA_MAX_HEAD_WIDTH};
pub use bias::add_bias;
#[cfg(feature = "cuda")]
pub(in crate::kernels) use dwconv::DepthwiseGeom;
pub use dwconv::{depthwise, depthwise_applies, depthwise_composed, through_planes, Gelus};
pub use gelu::gelu;
pub use leff::{leff_tail, leff_tail_applies, leff_tail_composed};
pub(in crate::kernels) use linear::LinearGeom;
pub use linear::{linear, linear_applies, linear_composed, Tokens};
pub use norm::{layer_norm, layer_norm_composed};
pub use residual::{scaled_residual, scaled_residual_composed};
pub use softmax::{biased_softmax, biased_softmax_composed, softmax, softmax_last};

/// Elements per parallel task: large enough that rayon's dispatch is noise.
const CHUNK: usize = 16 * 1024;

/// Rows of length `n` per parallel task.
fn rows_per_task(n: usize) -> usize {
    (CHUNK / n.max(1)).max(1)
}

/// A new buffer of x's size whose rows of `n` values are `f(out_rows, x_rows)`, whole rows per
/// parallel task.
fn map_rows(x: &[f32], n: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    let task = rows_per_task(n) * n;
    out.par_chunks_mut(task)
        .zip(x.par_chunks(task))
        .for_each(|(o, xs)| f(o, xs));
    out
}
