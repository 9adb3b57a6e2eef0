//! Products under bf16 autocast as one op (CUDA, with the CUDA switch on): bfloat16 operands
//! into float32 results, where the composed path also rounds the result and both gradients to
//! bfloat16. The two are not equal, so each is compared with the float32 product: the op must
//! come as close to it as the composed path does (within 1.5x), values and both gradients. The
//! CPU has no such op.

use candle_core::{DType, Tensor, Var};
use ifp_trainer::kernels::{amp, mixed_applicable};

use super::{rel, CudaKernelsOn};
use crate::common;

/// (left, right) shapes, and whether the right operand is a transposed view (`k.t()`, as the
/// attention and linear layers pass it): one matrix, a batch, two batch dimensions.
const CASES: &[(&[usize], &[usize], bool)] = &[
    (&[37, 19], &[23, 19], true),
    (&[3, 5, 8], &[3, 8, 6], false),
    (&[2, 3, 64, 32], &[2, 3, 64, 32], true),
    (&[4, 2, 16, 16], &[4, 2, 16, 24], false),
];

#[test]
fn mixed_products_are_as_accurate_as_composed() {
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    let bf16 = Some(DType::BF16);
    if dev.is_cpu() {
        let a = Tensor::zeros((2, 3), DType::F32, &dev).expect("a");
        let b = Tensor::zeros((3, 2), DType::F32, &dev).expect("b");
        assert!(!amp::autocast(bf16, || mixed_applicable(&a, &b)));
        return;
    }
    let mut worst = (0f64, 0f64);
    for &(la, lb, transposed) in CASES {
        let var = |dims: &[usize]| {
            Var::from_tensor(&Tensor::randn(0f32, 1.0, dims, &dev).expect("randn")).expect("var")
        };
        let (a, b) = (var(la), var(lb));
        let right = || {
            if transposed {
                b.as_tensor().t()
            } else {
                Ok(b.as_tensor().clone())
            }
        };
        let out = amp::matmul_composed(a.as_tensor(), &right().expect("b")).expect("shape");
        let probe = Tensor::randn(0f32, 1.0, out.shape(), &dev).expect("probe");
        // The product and the gradients of a and b under the probe.
        let run = |f: &dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>| {
            let y = f(a.as_tensor(), &right().expect("b")).expect("product");
            let g = (&y * &probe)
                .and_then(|t| t.sum_all()?.backward())
                .expect("backward");
            let grad = |v: &Var| g.get(v.as_tensor()).expect("gradient").clone();
            [y, grad(&a), grad(&b)]
        };
        let exact = run(&|x, y| x.matmul(y));
        let fast = run(&|x, y| {
            amp::autocast(bf16, || {
                assert!(mixed_applicable(x, y), "{la:?} by {lb:?}");
                amp::matmul(x, y)
            })
        });
        let slow = run(&|x, y| amp::autocast(bf16, || amp::matmul_composed(x, y)));
        for (i, what) in ["product", "grad a", "grad b"].iter().enumerate() {
            let (ef, es) = (rel(&fast[i], &exact[i]), rel(&slow[i], &exact[i]));
            worst = (worst.0.max(ef), worst.1.max(es));
            assert!(
                ef <= 1.5 * es + 1e-6 && ef < 2e-2,
                "mixed matmul {la:?} by {lb:?} (transposed {transposed}): {what} {ef:.3e} from \
                 float32, composed bf16 {es:.3e}"
            );
        }
    }
    println!(
        "mixed products kernels on {dev:?} as accurate as the composed bf16 path (worst rel L2 \
         from float32 {:.2e}, composed {:.2e})",
        worst.0, worst.1
    );
}

/// With the products mixed, a depthwise convolution under bf16 autocast reads its float32 input
/// (no bfloat16 copy, no cast of its result): its output equals the float32 one, bit for bit.
#[test]
fn depthwise_convolutions_skip_their_casts_under_mixed_autocast() {
    use candle_core::Module;
    use ifp_trainer::kernels::mixed_autocast;
    use ifp_trainer::models::layers::Conv2d;
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    let bf16 = Some(DType::BF16);
    let x = Tensor::randn(0f32, 1.0, (2, 6, 9, 7), &dev).expect("x");
    if dev.is_cpu() {
        assert!(!amp::autocast(bf16, || mixed_autocast(&x)));
        return;
    }
    let map = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&map, DType::F32, &dev);
    let conv = Conv2d::depthwise(6, 3, false, vb).expect("conv");
    let full = conv.forward(&x).expect("float32");
    let mixed = amp::autocast(bf16, || {
        assert!(mixed_autocast(&x));
        conv.forward(&x)
    })
    .expect("autocast");
    assert_eq!(mixed.dtype(), DType::F32);
    let d = (full - mixed)
        .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
        .expect("diff");
    assert_eq!(
        d, 0.0,
        "the depthwise output under mixed autocast is the float32 one"
    );
}
