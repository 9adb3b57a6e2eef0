//! The custom kernels against the straightforward candle versions, values and gradients, on
//! random shapes including odd sizes and sizes smaller than the kernel. The depthwise tests run
//! on `IFP_TEST_DEVICE` (the CUDA kernels on a GPU machine, `bench/gpu-check.sh`), as do the
//! GDFN gate (`gate`), the channel LayerNorm (`norm`), the AdamW update (`optim`), Uformer's
//! token ops (`token`), im2col, the bias with its activation and the dense convolutions.

mod dense;
mod gate;
mod mixed;
mod norm;
mod optim;
mod token;
mod window;

use crate::common;

use candle_core::{DType, Device, Shape, Tensor, Var};
use ifp_trainer::kernels;
use ifp_trainer::kernels::{depthwise_composed, im2col_composed};

pub(super) fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b)
        .and_then(|d| d.sqr())
        .and_then(|d| d.sum_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff");
    let n = b
        .sqr()
        .and_then(|d| d.sum_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("norm");
    (d as f64 / (n as f64).max(1e-30)).sqrt()
}

pub(super) const SHAPES: &[(usize, usize, usize, usize, usize)] = &[
    (1, 1, 1, 1, 3),
    (2, 3, 5, 7, 3),
    (3, 4, 9, 4, 3),
    (1, 2, 2, 3, 5),
    (2, 5, 13, 11, 5),
    (1, 3, 6, 6, 1),
    // One-row and one-column planes (the 3x3 row stencil's edge cases).
    (2, 2, 1, 5, 3),
    (1, 2, 6, 1, 3),
    (1, 1, 2, 2, 3),
];

/// A variable on `dev` of normal values (standard deviation `std`) that `dtype` represents
/// exactly, so a kernel in `dtype` and the composed float32 version see the same input.
pub(super) fn rounded_var(dtype: DType, std: f32, shape: impl Into<Shape>, dev: &Device) -> Var {
    Tensor::randn(0f32, std, shape, dev)
        .and_then(|t| t.to_dtype(dtype)?.to_dtype(DType::F32))
        .and_then(|t| Var::from_tensor(&t))
        .expect("x")
}

/// im2col (the CPU op, or the CUDA one with the CUDA switch on) against the composed gather on
/// `IFP_TEST_DEVICE`, in `dtype`: the columns are a copy, so they must be equal; the input
/// gradient sums k*k taps (rounded once to `dtype`).
fn check_im2col(dtype: DType, tol_grad: f64) {
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    for (i, &(b, c, h, w, k)) in SHAPES.iter().enumerate() {
        let x = rounded_var(dtype, 1.0, (b, c, h, w), &dev);
        let low = || x.as_tensor().to_dtype(dtype).expect("x");
        assert!(kernels::im2col_applicable(&low()), "{dtype:?} on {dev:?}");
        compare_with_grads(
            &format!("im2col {dtype:?} shape {i}"),
            &[&x],
            || {
                kernels::im2col(&low(), k)
                    .and_then(|t| t.to_dtype(DType::F32))
                    .expect("fast")
            },
            || im2col_composed(x.as_tensor(), k).expect("slow"),
            // Equal columns: a relative error below any rounding.
            (1e-12, tol_grad),
        );
    }
    println!("im2col kernel on {dev:?} in {dtype:?} matches the composed float32 version");
}

#[test]
fn im2col_kernel_matches_composed() {
    check_im2col(DType::F32, 1e-6);
}

/// bf16 has a kernel on CUDA only; the gradient's error is the bf16 rounding of the probe's
/// gradient and of the sum (2^-9 relative each).
#[test]
fn im2col_kernel_bf16_matches_composed() {
    if common::test_device().is_cpu() {
        let x = Tensor::zeros((1, 1, 3, 3), DType::BF16, &Device::Cpu).expect("x");
        assert!(!kernels::im2col_applicable(&x), "no bf16 CPU kernel");
        return;
    }
    check_im2col(DType::BF16, 1e-2);
}

/// The depthwise kernel (on `IFP_TEST_DEVICE`: the CPU kernel, or the CUDA one run by
/// `bench/gpu-check.sh`) in `dtype` against the composed float32 version on the same
/// (dtype-rounded) inputs, values and both gradients.
fn check_depthwise(dtype: DType, tol_values: f64, tol_grads: f64) {
    let dev = common::test_device();
    // The last shape spans several partial-sum blocks of the CUDA weight gradient.
    let big = [(2, 3, 97, 101, 3)];
    for (i, &(b, c, h, w, k)) in SHAPES.iter().chain(&big).enumerate() {
        let x = rounded_var(dtype, 1.0, (b, c, h, w), &dev);
        let wt = rounded_var(dtype, 1.0, (c, 1, k, k), &dev);
        let low = |v: &Var| v.as_tensor().to_dtype(dtype).expect("low");
        assert!(
            kernels::depthwise_applicable(&low(&x), &low(&wt), k),
            "{dtype:?} on {dev:?}"
        );
        compare_with_grads(
            &format!("depthwise {dtype:?} shape {i}"),
            &[&x, &wt],
            || {
                kernels::depthwise(&low(&x), &low(&wt), k)
                    .and_then(|t| t.to_dtype(DType::F32))
                    .expect("fast")
            },
            || depthwise_composed(x.as_tensor(), wt.as_tensor(), k).expect("slow"),
            (tol_values, tol_grads),
        );
    }
    println!("depthwise kernel on {dev:?} in {dtype:?} matches the composed float32 version");
}

#[test]
fn depthwise_kernel_matches_composed() {
    check_depthwise(DType::F32, 1e-6, 1e-5);
}

/// bf16 has a kernel on CUDA only (the CPU takes the composed path); its error is the bf16
/// rounding of the output and of the output gradient (2^-9 relative each).
#[test]
fn depthwise_kernel_bf16_matches_composed() {
    if common::test_device().is_cpu() {
        let x = Tensor::zeros((1, 1, 3, 3), DType::BF16, &Device::Cpu).expect("x");
        let w = Tensor::zeros((1, 1, 3, 3), DType::BF16, &Device::Cpu).expect("w");
        assert!(
            !kernels::depthwise_applicable(&x, &w, 3),
            "no bf16 CPU kernel"
        );
        return;
    }
    check_depthwise(DType::BF16, 1e-2, 1e-2);
}

/// A CPU variable of normal values with this mean and standard deviation.
fn randn_var(mean: f32, std: f32, shape: impl Into<Shape>) -> Var {
    Var::from_tensor(&Tensor::randn(mean, std, shape, &Device::Cpu).expect("randn")).expect("var")
}

/// A CPU variable of values uniform in [lo, hi).
fn rand_var(lo: f32, hi: f32, shape: impl Into<Shape>) -> Var {
    Var::from_tensor(&Tensor::rand(lo, hi, shape, &Device::Cpu).expect("rand")).expect("var")
}

/// Turns all of this thread's CUDA kernels that wait for a GPU run on
/// (`kernels::set_cuda_fused`) while it lives, and puts back the set it had, however the test
/// ends.
pub(super) struct CudaKernelsOn(kernels::CudaKernels);

impl CudaKernelsOn {
    pub(super) fn new() -> Self {
        let before = kernels::cuda_kernels();
        kernels::set_cuda_fused(true);
        CudaKernelsOn(before)
    }
}

impl Drop for CudaKernelsOn {
    fn drop(&mut self) {
        kernels::set_cuda_kernels(self.0);
    }
}

/// Tolerances (values, gradients) of a kernel against its composed version, relative L2.
/// Same arithmetic in another order: float32 rounding only.
const EXACT: (f64, f64) = (1e-6, 1e-5);
/// The temperature's gradient is one sum over cancelling terms per head.
const ATTENTION: (f64, f64) = (1e-5, 1e-3);
/// The kernel's erf (PyTorch's vectorised-GELU approximation) is within 5e-7 of candle's exact
/// one: relative to a tensor's size that is ~1e-6, but a lone value near a zero of gelu or
/// gelu' can be off by far more in relative terms, so every shape has dozens of values and the
/// tolerances sit above that error, far below a wrong formula.
const GELU: (f64, f64) = (1e-5, 1e-4);
/// The composed version sums the bias gradient in float32, the kernel in f64.
const BIAS_SUM: (f64, f64) = (1e-5, 1e-4);

/// Values and the gradients of every input of `fast` and `slow` (the same function) under a
/// random probe of the output.
fn compare_with_grads(
    what: &str,
    inputs: &[&Var],
    fast: impl Fn() -> Tensor,
    slow: impl Fn() -> Tensor,
    (tol_values, tol_grads): (f64, f64),
) {
    let (f, s) = (fast(), slow());
    let e = rel(&f, &s);
    assert!(e < tol_values, "{what}: values {e}");
    let probe = Tensor::randn(0f32, 1.0, s.shape(), s.device()).expect("probe");
    let gf = (f * &probe)
        .and_then(|t| t.sum_all())
        .and_then(|t| t.backward())
        .expect("bwd");
    let gs = (s * &probe)
        .and_then(|t| t.sum_all())
        .and_then(|t| t.backward())
        .expect("bwd");
    for (n, v) in inputs.iter().enumerate() {
        let e = rel(
            gf.get(v.as_tensor()).expect("g"),
            gs.get(v.as_tensor()).expect("g"),
        );
        assert!(e < tol_grads, "{what}: gradient of input {n}: {e}");
    }
}

/// On `IFP_TEST_DEVICE`: the fused op, the CPU's or on CUDA (with the CUDA switch on) the
/// `mdta` one.
#[test]
fn channel_attention_kernel_matches_composed() {
    use ifp_trainer::kernels::channel_attention_composed;
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    // (batch, channels per part, heads, H, W): one head, several, odd and tiny planes.
    for &(b, c, heads, h, w) in &[
        (1, 1, 1, 1, 1),
        (2, 8, 1, 5, 7),
        (3, 12, 4, 9, 4),
        (2, 16, 2, 13, 11),
        (1, 48, 1, 16, 16),
        // Rows per head not a multiple of four (blocked rows plus a remainder).
        (2, 6, 1, 3, 5),
        (1, 14, 2, 7, 9),
    ] {
        let qkv = rounded_var(DType::F32, 1.0, (b, 3 * c, h, w), &dev);
        let t = Tensor::rand(0.5f32, 2.0, (heads, 1, 1), &dev)
            .and_then(|t| Var::from_tensor(&t))
            .expect("t");
        compare_with_grads(
            &format!("attention b{b} c{c} heads{heads} {h}x{w}"),
            &[&qkv, &t],
            || kernels::channel_attention(qkv.as_tensor(), t.as_tensor(), heads).expect("fast"),
            || channel_attention_composed(qkv.as_tensor(), t.as_tensor(), heads).expect("slow"),
            ATTENTION,
        );
    }
}

/// `F.normalize` over the last dimension (the op on the CPU, and on CUDA with the switch on)
/// against its composed version: MDTA's long rows (H*W), many short ones, and odd lengths (a
/// row of one has a zero gradient, all rounding, so the shortest is two).
#[test]
fn l2_normalize_kernel_matches_composed() {
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    for shape in [
        (1, 1, 1, 2),
        (2, 1, 48, 4096),
        (2, 4, 12, 197),
        (3, 2, 300, 7),
    ] {
        let x = rounded_var(DType::F32, 1.0, shape, &dev);
        assert!(
            kernels::fused_applies(x.as_tensor(), kernels::CudaKernel::Normalize),
            "the kernel runs on {dev:?}"
        );
        compare_with_grads(
            &format!("l2 normalize {shape:?}"),
            &[&x],
            || kernels::l2_normalize_last(x.as_tensor()).expect("fast"),
            || kernels::l2_normalize_last_composed(x.as_tensor()).expect("slow"),
            EXACT,
        );
    }
    println!("l2 normalize kernel on {dev:?} matches the composed version");
}

#[test]
fn bias_act_kernel_matches_composed() {
    use ifp_trainer::kernels::{activation, Activation};
    // On IFP_TEST_DEVICE: the CPU op, or the CUDA one with the CUDA switch on.
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    // The last shape spans many pixels per partial sum of the CUDA bias gradient.
    for &(b, c, h, w) in &[(1, 1, 1, 1), (2, 3, 5, 7), (4, 16, 33, 31)] {
        let x = rounded_var(DType::F32, 1.0, (b, c, h, w), &dev);
        let bias = rounded_var(DType::F32, 1.0, c, &dev);
        assert!(
            kernels::fused_applies(x.as_tensor(), kernels::CudaKernel::Bias),
            "the kernel runs on {dev:?}"
        );
        for act in [
            Activation::Identity,
            Activation::Relu,
            Activation::LeakyRelu(0.1),
        ] {
            // The broadcast sum and the activation from tensor ops: the path off the CPU.
            let composed = || {
                let y = x
                    .as_tensor()
                    .broadcast_add(&bias.as_tensor().reshape((1, c, 1, 1)).expect("b"))
                    .expect("add");
                activation(&y, act).expect("act")
            };
            compare_with_grads(
                &format!("bias act {act:?} b{b} c{c} {h}x{w}"),
                &[&x, &bias],
                || kernels::bias_act(x.as_tensor(), bias.as_tensor(), act).expect("fast"),
                composed,
                EXACT,
            );
        }
    }
}

/// The qkv depthwise convolution with the whole channel attention as one op, on
/// `IFP_TEST_DEVICE` (on CUDA with the CUDA switch on: the depthwise kernel and `mdta`).
#[test]
fn depthwise_channel_attention_kernel_matches_composed() {
    use ifp_trainer::kernels::channel_attention_composed;
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    // (batch, channels per part, heads, H, W)
    for &(b, c, heads, h, w) in &[
        (1, 1, 1, 1, 1),
        (2, 6, 2, 5, 7),
        (3, 8, 1, 1, 9),
        (1, 12, 3, 8, 6),
    ] {
        let x = rounded_var(DType::F32, 1.0, (b, 3 * c, h, w), &dev);
        let wt = rounded_var(DType::F32, 1.0, (3 * c, 1, 3, 3), &dev);
        let t = rounded_var(DType::F32, 0.3, (heads, 1, 1), &dev);
        let t = Var::from_tensor(&(t.as_tensor() + 1.0).expect("t")).expect("var");
        compare_with_grads(
            &format!("depthwise + attention b{b} c{c} heads{heads} {h}x{w}"),
            &[&x, &wt, &t],
            || {
                kernels::depthwise_channel_attention(
                    x.as_tensor(),
                    wt.as_tensor(),
                    3,
                    t.as_tensor(),
                    heads,
                )
                .expect("fast")
            },
            || {
                depthwise_composed(x.as_tensor(), wt.as_tensor(), 3)
                    .and_then(|y| channel_attention_composed(&y, t.as_tensor(), heads))
                    .expect("slow")
            },
            ATTENTION,
        );
    }
}

/// The GDFN's depthwise convolution with its gate as one op, on `IFP_TEST_DEVICE` (on CUDA
/// with the CUDA switch on: the depthwise and gate kernels).
#[test]
fn depthwise_gelu_gate_kernel_matches_composed() {
    use ifp_trainer::kernels::gelu_gate_composed;
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    // (batch, hidden, H, W): odd planes, one-pixel rows and columns.
    for &(b, h, hh, ww) in &[
        (2, 2, 1, 6),
        (2, 3, 5, 7),
        (3, 5, 1, 9),
        (1, 4, 8, 1),
        (2, 21, 16, 13),
    ] {
        let x = rounded_var(DType::F32, 1.0, (b, 2 * h, hh, ww), &dev);
        let wt = rounded_var(DType::F32, 1.0, (2 * h, 1, 3, 3), &dev);
        compare_with_grads(
            &format!("depthwise + gelu gate b{b} h{h} {hh}x{ww}"),
            &[&x, &wt],
            || kernels::depthwise_gelu_gate(x.as_tensor(), wt.as_tensor(), 3).expect("fast"),
            || {
                depthwise_composed(x.as_tensor(), wt.as_tensor(), 3)
                    .and_then(|y| gelu_gate_composed(&y))
                    .expect("slow")
            },
            GELU,
        );
    }
}
