//! Products under bf16 autocast as one op (CUDA, with the CUDA switch on): bfloat16 operands
//! into float32 results, where the composed path also rounds the result and both gradients to
//! bfloat16. The two are not equal, so each is compared with the float32 product: the op must
//! come as close to it as the composed path does (within 1.5x), values and both gradients. The
//! CPU has no such op.

use candle_core::{DType, Tensor, Var};
use ifp_trainer::kernels::{self, amp, mixed_applicable, runs_uncast};

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

/// An op of its input and float32 parameters.
type Op = fn(&Tensor, &[Tensor]) -> candle_core::Result<Tensor>;

/// The ops [`runs_uncast`] lets run under mixed autocast, each on an input x (2, 24, 5, 7), with
/// parameters of these shapes.
const UNCAST: &[(&str, &[&[usize]], Op)] = &[
    ("depthwise convolution", &[&[24, 1, 3, 3]], |x, p| {
        use candle_core::Module;
        let weights = [("weight".to_string(), p[0].clone())].into();
        let vb = candle_nn::VarBuilder::from_tensors(weights, DType::F32, x.device());
        ifp_trainer::models::layers::Conv2d::depthwise(24, 3, false, vb)?.forward(x)
    }),
    ("channel attention", &[&[2, 1, 1]], |x, p| {
        kernels::channel_attention(x, &p[0], 2)
    }),
    (
        "depthwise channel attention",
        &[&[24, 1, 3, 3], &[2, 1, 1]],
        |x, p| kernels::depthwise_channel_attention(x, &p[0], 3, &p[1], 2),
    ),
    ("depthwise GELU gate", &[&[24, 1, 3, 3]], |x, p| {
        kernels::depthwise_gelu_gate(x, &p[0], 3)
    }),
    ("window attention", &[&[2, 20, 20]], |x, p| {
        // x as (B' = 2, 3 * heads = 6, N = 20, d = 7), the bias (heads, N, N)
        kernels::token::window_attention(&x.reshape((2, 6, 20, 7))?, &p[0], 2)
    }),
    (
        "channels-last depthwise convolution",
        &[&[24, 1, 3, 3], &[24]],
        |x, p| {
            // x as tokens (B = 2, H*W = 5 * 7, C = 24)
            let tokens = x.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
            kernels::token::depthwise(&tokens, &p[0], &p[1], 7, kernels::token::Gelus::AFTER)
        },
    ),
];

/// With the products mixed, the fused ops that compute in float32 read their float32 inputs
/// under bf16 autocast (no bfloat16 copy, no cast of their result): output and input gradient
/// equal the float32 ones, bit for bit, where the composed bf16 path would round both.
#[test]
fn float32_ops_skip_their_casts_under_mixed_autocast() {
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    let bf16 = Some(DType::BF16);
    let x =
        Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 24, 5, 7), &dev).expect("x")).expect("var");
    if dev.is_cpu() {
        assert!(!amp::autocast(bf16, || runs_uncast(x.as_tensor())));
        return;
    }
    for (name, shapes, op) in UNCAST {
        let params: Vec<Tensor> = shapes
            .iter()
            .map(|s| Tensor::randn(0f32, 1.0, *s, &dev).expect("randn"))
            .collect();
        let run = |low: Option<DType>| {
            let y = amp::autocast(low, || {
                assert!(runs_uncast(x.as_tensor()), "{name}");
                op(x.as_tensor(), &params)
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(y.dtype(), DType::F32, "{name}");
            let g = y.sum_all().and_then(|s| s.backward()).expect("backward");
            let gx = g.get(x.as_tensor()).expect("input gradient").clone();
            [y, gx]
        };
        let full = run(None);
        let mixed = run(bf16);
        for (what, (a, b)) in ["output", "input gradient"]
            .iter()
            .zip(full.iter().zip(&mixed))
        {
            let d = (a - b)
                .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
                .expect("diff");
            assert_eq!(
                d, 0.0,
                "{name}: the {what} under mixed autocast is the float32 one"
            );
        }
    }
}
