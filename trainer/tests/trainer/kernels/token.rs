//! Uformer's token kernels (`kernels::token`: LayerNorm and softmax over the last dimension,
//! exact GELU, a bias repeated over the leading dimensions) against their composed versions on
//! `IFP_TEST_DEVICE` (the CPU kernels, or the CUDA ones with the CUDA switch on), values and
//! the gradients of every input.

use candle_core::{DType, Var};
use ifp_trainer::kernels::{self, token};

use super::{compare_with_grads, rounded_var, CudaKernelsOn, BIAS_SUM, EXACT, GELU};
use crate::common;

/// Token tensors: odd sizes, one value, rows of one, Uformer's window attention (64 tokens per
/// window) and more rows than the CUDA kernels' partial sums per column (256).
const SHAPES: &[&[usize]] = &[
    &[2, 7, 5],
    &[3, 64, 16],
    &[1, 4, 3, 9],
    &[1, 1],
    &[5, 1],
    &[2, 4, 64, 64],
    &[2, 300, 32],
];

#[test]
fn token_kernels_match_composed() {
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    for &shape in SHAPES {
        let c = *shape.last().expect("dims");
        // Spread and offset, so that the statistics matter.
        let x = Var::from_tensor(
            &(rounded_var(DType::F32, 3.0, shape, &dev).as_tensor() + 0.5).expect("x"),
        )
        .expect("var");
        let w = rounded_var(DType::F32, 1.0, c, &dev);
        let b = rounded_var(DType::F32, 1.0, c, &dev);
        assert!(
            kernels::fused_applies(x.as_tensor(), kernels::CudaKernel::Token),
            "the kernels run on {dev:?}"
        );
        compare_with_grads(
            &format!("layer norm {shape:?}"),
            &[&x, &w, &b],
            || token::layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor()).expect("fast"),
            || {
                token::layer_norm_composed(x.as_tensor(), w.as_tensor(), b.as_tensor())
                    .expect("slow")
            },
            // dw and db are sums over rows, in double on CUDA.
            BIAS_SUM,
        );
        compare_with_grads(
            &format!("softmax {shape:?}"),
            &[&x],
            || token::softmax(x.as_tensor()).expect("fast"),
            || token::softmax_last(x.as_tensor()).expect("slow"),
            EXACT,
        );
        // A lone value near a zero of gelu' has a large relative error (see `GELU`).
        if x.elem_count() >= 32 {
            compare_with_grads(
                &format!("gelu {shape:?}"),
                &[&x],
                || token::gelu(x.as_tensor()).expect("fast"),
                || x.as_tensor().gelu_erf().expect("slow"),
                GELU,
            );
        }
        // A bias over the last dimension, and one over the last two.
        let tail = &shape[shape.len().saturating_sub(2)..];
        for bshape in [vec![c], tail.to_vec()] {
            let bias = rounded_var(DType::F32, 1.0, bshape.as_slice(), &dev);
            compare_with_grads(
                &format!("add_bias {shape:?} + {bshape:?}"),
                &[&x, &bias],
                || token::add_bias(x.as_tensor(), bias.as_tensor()).expect("fast"),
                || x.as_tensor().broadcast_add(bias.as_tensor()).expect("slow"),
                BIAS_SUM,
            );
        }
    }
    println!("token kernel on {dev:?}: LayerNorm, softmax, GELU and bias match the composed ops");
}
