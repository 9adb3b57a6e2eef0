//! The GDFN gate kernel against its composed version on `IFP_TEST_DEVICE`, values and input
//! gradient: float32 (the CPU kernel, or the CUDA one with the CUDA switch on), and bfloat16
//! on CUDA.

use candle_core::{DType, Device, Tensor};
use ifp_trainer::kernels::{self, gelu_gate_composed};

use super::{compare_with_grads, rounded_var, CudaKernelsOn, GELU};
use crate::common;

/// Dozens of values per shape (see `GELU`); odd planes, and one image larger than a block.
const SHAPES: &[(usize, usize, usize, usize)] = &[
    (1, 2, 3, 5),
    (2, 6, 5, 7),
    (3, 84, 9, 13),
    (1, 10, 128, 130),
];

/// The kernel in `dtype` against the composed float32 gate on the same (dtype-rounded) input.
fn check_gate(dtype: DType, tol: (f64, f64)) {
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    for &(b, c2, h, w) in SHAPES {
        let x = rounded_var(dtype, 2.0, (b, c2, h, w), &dev);
        let low = || x.as_tensor().to_dtype(dtype).expect("x");
        assert!(
            kernels::gelu_gate_applicable(&low()),
            "{dtype:?} on {dev:?}"
        );
        compare_with_grads(
            &format!("gelu gate {dtype:?} b{b} c{c2} {h}x{w}"),
            &[&x],
            || {
                kernels::gelu_gate(&low())
                    .and_then(|y| y.to_dtype(DType::F32))
                    .expect("fast")
            },
            || gelu_gate_composed(x.as_tensor()).expect("slow"),
            tol,
        );
    }
    println!("gelu gate kernel on {dev:?} in {dtype:?} matches the composed float32 version");
}

#[test]
fn gelu_gate_kernel_matches_composed() {
    check_gate(DType::F32, GELU);
}

/// bf16 has a kernel on CUDA only; its error is the bf16 rounding of the output and of the
/// output gradient (2^-9 relative each).
#[test]
fn gelu_gate_kernel_bf16_matches_composed() {
    if common::test_device().is_cpu() {
        let x = Tensor::zeros((1, 2, 3, 3), DType::BF16, &Device::Cpu).expect("x");
        assert!(!kernels::gelu_gate_applicable(&x), "no bf16 CPU kernel");
        return;
    }
    check_gate(DType::BF16, (1e-2, 1e-2));
}
