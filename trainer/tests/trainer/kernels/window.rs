//! Uformer's window partition and reverse (one permuting copy each) against the composed rolls
//! and permutes on `IFP_TEST_DEVICE`: the CPU op, or the CUDA one with the CUDA switch on,
//! float32 and (on CUDA) bfloat16. Both move values without arithmetic, so the outputs and the
//! gradients must be equal, bit for bit. So must the reverse with the block's residual added
//! (float32) and its composed version: each product and sum is rounded alone on both sides.

use candle_core::{DType, Tensor, Var};
use ifp_trainer::kernels::{
    self, window_partition, window_partition_composed, window_reverse, window_reverse_composed,
    WindowGrid,
};

use super::CudaKernelsOn;
use crate::common;

/// (batch, H, W, channels, window, shift): unshifted and shifted, non-square images, a shift of
/// a whole window and one past the image's side, one channel and one window per image.
const SHAPES: &[(usize, usize, usize, usize, usize, usize)] = &[
    (1, 2, 2, 1, 2, 0),
    (2, 8, 8, 3, 4, 2),
    (2, 6, 9, 5, 3, 1),
    (1, 8, 4, 2, 2, 1),
    (3, 16, 16, 4, 8, 4),
    (1, 4, 4, 2, 2, 2),
    (1, 4, 6, 2, 2, 7),
];

fn grid(win: usize, shift: usize, h: usize, w: usize) -> WindowGrid {
    WindowGrid { win, shift, h, w }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all()?.to_vec1())
        .expect("values")
}

/// `fast` and `slow` of input `v`: equal values, and equal gradients of `v` under one probe.
fn assert_equal_with_grads(what: &str, v: &Var, fast: &Tensor, slow: &Tensor) {
    assert_eq!(fast.dims(), slow.dims(), "{what}");
    assert_eq!(values(fast), values(slow), "{what}");
    let probe = Tensor::randn(0f32, 1.0, slow.shape(), slow.device())
        .and_then(|t| t.to_dtype(slow.dtype()))
        .expect("probe");
    let grad = |y: &Tensor| {
        let g = (y * &probe)
            .and_then(|t| t.to_dtype(DType::F32)?.sum_all()?.backward())
            .expect("backward");
        values(g.get(v.as_tensor()).expect("gradient"))
    };
    assert_eq!(grad(fast), grad(slow), "{what}: gradient");
}

/// The ops and their composed versions in `dtype`: equal outputs, equal gradients.
fn check(dtype: DType) {
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    for &(b, h, w, c, win, shift) in SHAPES {
        let what = format!("{dtype:?} b{b} {h}x{w} c{c} win{win} shift{shift}");
        let x = Tensor::randn(0f32, 1.0, (b, h * w, c), &dev)
            .and_then(|t| t.to_dtype(dtype))
            .and_then(|t| Var::from_tensor(&t))
            .expect("x");
        let g = grid(win, shift, h, w);
        let fast = window_partition(x.as_tensor(), g).expect("fast");
        let slow = window_partition_composed(x.as_tensor(), g).expect("slow");
        assert_equal_with_grads(&format!("{what}: partition"), &x, &fast, &slow);

        // The reverse undoes the partition, and matches its composed version too.
        let windows = Var::from_tensor(&fast).expect("windows");
        let back = window_reverse(windows.as_tensor(), g).expect("reverse");
        let slow = window_reverse_composed(windows.as_tensor(), g).expect("slow");
        assert_eq!(values(&back), values(x.as_tensor()), "{what}: round trip");
        assert_equal_with_grads(&format!("{what}: reverse"), &windows, &back, &slow);
    }
    println!("window partition/reverse on {dev:?} in {dtype:?} equal the composed versions");
}

#[test]
fn window_kernels_match_composed() {
    check(DType::F32);
}

/// bfloat16 has a kernel on CUDA only (on the CPU both sides are the composed version).
#[test]
fn window_kernels_bf16_match_composed() {
    check(DType::BF16);
}

/// The reverse with the LeWin block's residual added (`window_reverse_add`) against
/// the reverse and `token::scaled_residual`: values and both gradients bit for bit, with
/// per-image scales (0 for a dropped branch) and without.
#[test]
fn window_reverse_add_matches_composed_exactly() {
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    for &(b, h, w, c, win, shift) in SHAPES {
        let nw = (h / win) * (w / win);
        let windows = Var::from_tensor(
            &Tensor::randn(0f32, 1.0, (b * nw, win * win, c), &dev).expect("windows"),
        )
        .expect("var");
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h * w, c), &dev).expect("x"))
            .expect("var");
        assert!(
            kernels::kernel_applies(
                x.as_tensor(),
                Some(kernels::CudaKernel::Window),
                &[DType::F32]
            ),
            "one op on {dev:?}"
        );
        let drawn: Vec<f32> = (0..b).map(|i| [1.25, 0.0, 1.0 / 0.9][i % 3]).collect();
        for scales in [Some(drawn.as_slice()), None] {
            let what = format!("b{b} {h}x{w} c{c} win{win} shift{shift} scales {scales:?}");
            let g = grid(win, shift, h, w);
            let (wt, xt) = (windows.as_tensor(), x.as_tensor());
            let fast = kernels::window_reverse_add(wt, xt, scales, g).expect("fast");
            let slow = kernels::window_reverse_add_composed(wt, xt, scales, g).expect("slow");
            assert_equal_with_grads(&format!("{what}, windows"), &windows, &fast, &slow);
            assert_equal_with_grads(&format!("{what}, x"), &x, &fast, &slow);
        }
    }
    let windows = Tensor::zeros((4, 4, 2), DType::F32, &dev).expect("windows");
    let x = Tensor::zeros((1, 16, 3), DType::F32, &dev).expect("x");
    let e = kernels::window_reverse_add(&windows, &x, None, grid(2, 0, 4, 4))
        .expect_err("3 channels against 2");
    assert!(e.to_string().contains("[1, 16, 3]"), "{e}");
}

#[test]
fn a_window_that_does_not_tile_the_image_is_named() {
    let x = Tensor::zeros((1, 20, 2), DType::F32, &common::test_device()).expect("x");
    let _on = CudaKernelsOn::new();
    let e = window_partition(&x, grid(2, 1, 5, 4)).expect_err("5 rows in 2x2 windows");
    assert!(
        e.to_string()
            .contains("window partition: [1, 20, 2] is not (B, H*W, C) for 2x2 windows on 5x4"),
        "{e}"
    );
    let e = window_partition(&x, grid(2, 1, 4, 4)).expect_err("20 tokens for a 4x4 image");
    assert!(e.to_string().contains("[1, 20, 2]"), "{e}");
    let w = Tensor::zeros((3, 4, 2), DType::F32, &common::test_device()).expect("w");
    let e = window_reverse(&w, grid(2, 0, 4, 4)).expect_err("3 windows for 4 in a 4x4 image");
    assert!(e.to_string().contains("window reverse: [3, 4, 2]"), "{e}");
    assert!(kernels::kernel_applies(
        &x,
        Some(kernels::CudaKernel::Window),
        &[DType::F32]
    ));
}
