//! The channel LayerNorm kernel against its composed version on `IFP_TEST_DEVICE` (the CPU
//! kernel, or the CUDA one with the CUDA switch on), WithBias and BiasFree, values and the
//! gradients of input, weight and bias.

use candle_core::{Tensor, Var};
use ifp_trainer::kernels::{self, channel_layer_norm_composed};

use super::{rel, CudaKernelsOn, SHAPES};
use crate::common;

#[test]
fn channel_layer_norm_kernel_matches_composed() {
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    // The last shape spans many pixels per partial sum of the CUDA parameter gradients.
    let big = [(2, 48, 33, 37, 0)];
    for (i, &(b, c, h, w, _)) in SHAPES.iter().chain(&big).enumerate() {
        for with_bias in [true, false] {
            // An offset and scale per sample make the statistics non-trivial.
            let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).expect("x");
            let x = Var::from_tensor(&((x * 3.0).expect("s") + 0.5).expect("o")).expect("var");
            let wt = Var::from_tensor(&Tensor::randn(1f32, 0.2, c, &dev).expect("w")).expect("var");
            let bias =
                Var::from_tensor(&Tensor::randn(0f32, 0.2, c, &dev).expect("b")).expect("var");
            let bias_ref = with_bias.then_some(bias.as_tensor());
            assert!(
                kernels::fused_applies(x.as_tensor(), kernels::CudaKernel::Norm),
                "the kernel runs on {dev:?}"
            );
            let probe = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).expect("probe");
            let fast =
                kernels::channel_layer_norm(x.as_tensor(), wt.as_tensor(), bias_ref).expect("fast");
            let slow =
                channel_layer_norm_composed(x.as_tensor(), wt.as_tensor(), bias_ref).expect("slow");
            let e = rel(&fast, &slow);
            assert!(e < 1e-5, "shape {i} bias {with_bias}: values {e}");
            let gf = (fast * &probe)
                .and_then(|t| t.sum_all())
                .and_then(|t| t.backward())
                .expect("bwd");
            let gs = (slow * &probe)
                .and_then(|t| t.sum_all())
                .and_then(|t| t.backward())
                .expect("bwd");
            let mut vars = vec![("input", &x), ("weight", &wt)];
            if with_bias {
                vars.push(("bias", &bias));
            } else {
                assert!(
                    gf.get(bias.as_tensor()).is_none(),
                    "BiasFree must not touch the bias"
                );
            }
            for (name, v) in vars {
                let (f, s) = (
                    gf.get(v.as_tensor()).expect("g"),
                    gs.get(v.as_tensor()).expect("g"),
                );
                if c <= 2 && name == "input" {
                    // With one or two channels the normalised values are exactly 0 or +-1, so
                    // the input gradient vanishes up to the eps term: a relative error would
                    // measure rounding noise only. Bound the difference by the gradient's scale
                    // with more channels (the probe's, about 1) instead. 1e-3 of it: draws with
                    // the two channels close together amplify rounding (seen: 2.1e-4 of 1.5),
                    // while a wrong formula is off by the whole scale.
                    let max_abs = |t: &Tensor| -> f32 {
                        t.abs()
                            .and_then(|a| a.max_all())
                            .and_then(|m| m.to_scalar::<f32>())
                            .expect("max")
                    };
                    let diff = max_abs(&(f - s).expect("diff"));
                    let scale = max_abs(s).max(1.0);
                    assert!(
                        diff <= 1e-3 * scale,
                        "shape {i} bias {with_bias}: input gradient differs by {diff} (scale {scale})"
                    );
                    continue;
                }
                let e = rel(f, s);
                assert!(e < 1e-4, "shape {i} bias {with_bias}: {name} gradient {e}");
            }
        }
    }
    println!("channel layer norm kernel on {dev:?} matches the composed version");
}
