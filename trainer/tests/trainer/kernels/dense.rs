//! The dense convolutions as one op (`kernels::conv_dense`, `conv_dense_residual`): float32
//! against the composed im2col + matmul on `IFP_TEST_DEVICE`, and on CUDA the bf16 op against
//! the float32 convolution, at least as close as the composed bf16 path.

use candle_core::{DType, Shape, Tensor};
use ifp_trainer::kernels;
use ifp_trainer::kernels::im2col_composed;

use super::{compare_with_grads, rel, rounded_var, CudaKernelsOn, BIAS_SUM, EXACT};
use crate::common;

/// Under bf16 autocast on CUDA (with the CUDA switch on) the dense op multiplies in bfloat16
/// into float32 results, where the composed path also rounds each product's result to
/// bfloat16: the two are not equal, so each is compared with the float32 convolution, and the
/// op must come as close to it as the composed path does (within 1.5x), values and every
/// gradient, with and without a residual. The CPU has no bfloat16 op.
#[test]
fn dense_conv_kernel_bf16_is_as_accurate_as_composed() {
    use ifp_trainer::kernels::{amp, conv_dense_composed};
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    let bf16 = Some(DType::BF16);
    if dev.is_cpu() {
        let x = Tensor::zeros((1, 2, 3, 3), DType::F32, &dev).expect("x");
        assert!(!amp::autocast(bf16, || kernels::dense_applicable(&x)));
        return;
    }
    let mut worst = (0f64, 0f64);
    for &(b, c, o, h, w, k) in &[
        (2, 16, 24, 17, 15, 1),
        (1, 8, 8, 9, 13, 3),
        (2, 48, 16, 16, 16, 1),
        (3, 5, 7, 11, 9, 3),
    ] {
        let var = |shape: Shape| rounded_var(DType::F32, 1.0, shape, &dev);
        let (x, wt, r) = (
            var((b, c, h, w).into()),
            var((o, c, k, k).into()),
            var((b, o, h, w).into()),
        );
        let probe = Tensor::randn(0f32, 1.0, (b, o, h, w), &dev).expect("probe");
        // The output and the gradients of x, w (and r, where it is used) under the probe.
        let run = |f: &dyn Fn() -> candle_core::Result<Tensor>| -> Vec<Tensor> {
            let y = f().expect("forward");
            let g = (&y * &probe)
                .and_then(|t| t.sum_all()?.backward())
                .expect("backward");
            let grads = [&x, &wt, &r].map(|v| g.get(v.as_tensor()).cloned());
            std::iter::once(y)
                .chain(grads.into_iter().flatten())
                .collect()
        };
        let (xt, wtt, rt) = (x.as_tensor(), wt.as_tensor(), r.as_tensor());
        for residual in [false, true] {
            let with = |y: Tensor| if residual { rt + y } else { Ok(y) };
            let exact = run(&|| with(conv_dense_composed(xt, wtt, k)?));
            let fast = run(&|| {
                amp::autocast(bf16, || {
                    assert!(kernels::dense_applicable(xt));
                    if residual {
                        kernels::conv_dense_residual(xt, wtt, None, k, rt)
                    } else {
                        kernels::conv_dense(xt, wtt, k)
                    }
                })
            });
            let slow = run(&|| amp::autocast(bf16, || with(conv_dense_composed(xt, wtt, k)?)));
            assert_eq!(fast.len(), if residual { 4 } else { 3 });
            assert!(exact.len() == fast.len() && slow.len() == fast.len());
            for (i, what) in ["output", "grad x", "grad w", "grad r"]
                .iter()
                .enumerate()
                .take(fast.len())
            {
                let (ef, es) = (rel(&fast[i], &exact[i]), rel(&slow[i], &exact[i]));
                worst = (worst.0.max(ef), worst.1.max(es));
                assert!(
                    ef <= 1.5 * es + 1e-6 && ef < 2e-2,
                    "bf16 dense conv b{b} c{c} o{o} {h}x{w} k{k} residual {residual}: {what} \
                     {ef:.3e} from float32, composed bf16 {es:.3e}"
                );
            }
        }
    }
    println!(
        "dense conv kernels on {dev:?} in bf16 as accurate as the composed bf16 path (worst rel \
         L2 from float32 {:.2e}, composed {:.2e})",
        worst.0, worst.1
    );
}

/// On `IFP_TEST_DEVICE`: the CPU op, or on CUDA (with the CUDA switch on) the cuBLAS products.
#[test]
fn dense_conv_kernel_matches_composed() {
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    let var = |shape: Shape| rounded_var(DType::F32, 1.0, shape, &dev);
    // (batch, in, out, H, W, k), odd sizes and planes smaller than the kernel included; planes
    // of several 256-pixel tiles whose edges fall inside rows, with the images in parallel
    // (a batch of 2), or one after another with their tiles in parallel (1 and 3).
    for &(b, c, o, h, w, k) in &[
        (1, 5, 3, 21, 25, 3),
        (3, 3, 4, 23, 19, 5),
        // An even kernel takes the composed path, whose shifts the op's forward shares.
        (2, 3, 2, 6, 7, 2),
        (1, 1, 1, 1, 1, 3),
        (2, 3, 5, 7, 6, 3),
        (3, 4, 2, 9, 13, 5),
        (1, 2, 3, 2, 3, 5),
        (2, 16, 16, 33, 31, 3),
        (1, 3, 4, 6, 6, 1),
        (3, 5, 7, 11, 9, 1),
        (2, 48, 16, 17, 15, 1),
    ] {
        let x = var((b, c, h, w).into());
        let wt = var((o, c, k, k).into());
        let composed = || {
            let cols = im2col_composed(x.as_tensor(), k).expect("cols");
            let wm = wt.as_tensor().reshape((o, c * k * k)).expect("wm");
            wm.broadcast_matmul(&cols)
                .and_then(|y| y.reshape((b, o, h, w)))
                .expect("y")
        };
        compare_with_grads(
            &format!("dense conv b{b} c{c} o{o} {h}x{w} k{k}"),
            &[&x, &wt],
            || kernels::conv_dense(x.as_tensor(), wt.as_tensor(), k).expect("fast"),
            composed,
            EXACT,
        );
        // A constant input (a network's first convolution): the op skips its gradient on the
        // CPU, and the weight's must not change.
        compare_with_grads(
            &format!("dense conv of a constant b{b} c{c} o{o} {h}x{w} k{k}"),
            &[&wt],
            || kernels::conv_dense(&x.as_tensor().detach(), wt.as_tensor(), k).expect("fast"),
            composed,
            EXACT,
        );
        // The same convolution added to a residual, as one op.
        let r = var((b, o, h, w).into());
        compare_with_grads(
            &format!("dense conv + residual b{b} c{c} o{o} {h}x{w} k{k}"),
            &[&x, &wt, &r],
            || {
                kernels::conv_dense_residual(x.as_tensor(), wt.as_tensor(), None, k, r.as_tensor())
                    .expect("fast")
            },
            || (r.as_tensor() + composed()).expect("slow"),
            EXACT,
        );
        // ... and with a bias (summed in another order than the reference: a lone output
        // value where r and the convolution cancel has a large relative error, so only outputs
        // of some size are compared).
        if b * o * h * w < 32 {
            continue;
        }
        let bias = var(o.into());
        compare_with_grads(
            &format!("dense conv + bias + residual b{b} c{c} o{o} {h}x{w} k{k}"),
            &[&x, &wt, &bias, &r],
            || {
                let bias = Some(bias.as_tensor());
                kernels::conv_dense_residual(x.as_tensor(), wt.as_tensor(), bias, k, r.as_tensor())
                    .expect("fast")
            },
            || {
                let b4 = bias.as_tensor().reshape((1, o, 1, 1)).expect("b4");
                composed()
                    .broadcast_add(&b4)
                    .and_then(|y| r.as_tensor() + y)
                    .expect("slow")
            },
            BIAS_SUM,
        );
    }
}
