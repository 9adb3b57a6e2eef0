//! Uformer's token kernels (`kernels::token`: LayerNorm and softmax over the last dimension,
//! exact GELU, a bias repeated over the leading dimensions) against their composed versions on
//! `IFP_TEST_DEVICE` (the CPU kernels, or the CUDA ones with the CUDA switch on), values and
//! the gradients of every input.

use candle_core::{DType, Device, Tensor, Var};
use ifp_trainer::kernels::token::Gelus;
use ifp_trainer::kernels::{self, amp, token};

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

/// Linear layers over tokens: (input shape, outputs, input layout, output layout). Odd sizes, a
/// single feature, leading dimensions flattened, and the window attention's head split and
/// merge.
const LINEAR_CASES: &[(&[usize], usize, token::Tokens, token::Tokens)] = {
    use token::Tokens::{Heads, Rows};
    &[
        (&[2, 7, 5], 6, Rows, Rows),
        (&[3, 64, 16], 48, Rows, Rows),
        (&[1, 4, 3, 9], 4, Rows, Rows),
        (&[5, 1], 3, Rows, Rows),
        (&[6, 64, 16], 32, Rows, Heads(2)),
        (&[3, 5, 8], 12, Rows, Heads(4)),
        (&[6, 2, 64, 8], 16, Heads(2), Rows),
        (&[3, 4, 5, 2], 6, Heads(4), Heads(2)),
    ]
};

/// Random x, W and b of a layer in [`LINEAR_CASES`].
fn linear_vars(shape: &[usize], o: usize, input: token::Tokens, dev: &Device) -> [Var; 3] {
    let k = match input {
        token::Tokens::Rows => shape[shape.len() - 1],
        token::Tokens::Heads(h) => h * shape[3],
    };
    [
        rounded_var(DType::F32, 1.0, shape, dev),
        rounded_var(DType::F32, 0.5, (o, k), dev),
        rounded_var(DType::F32, 1.0, o, dev),
    ]
}

/// Linear layers over tokens (`token::linear`), in each layout pair of [`LINEAR_CASES`].
#[test]
fn token_linear_matches_composed() {
    use token::Tokens::{Heads, Rows};
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    for &(shape, o, input, output) in LINEAR_CASES {
        let [x, w, b] = linear_vars(shape, o, input, &dev);
        assert!(
            token::linear_applies(x.as_tensor()),
            "one op with the CUDA kernels on ({dev:?})"
        );
        let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        compare_with_grads(
            &format!("linear {shape:?} -> {o} ({input:?} -> {output:?})"),
            &[&x, &w, &b],
            || token::linear(xt, wt, bt, input, output).expect("fast"),
            || token::linear_composed(xt, wt, bt, input, output).expect("slow"),
            BIAS_SUM,
        );
    }
    // Zero heads is an error, not a division by zero (on every path: the sizes are checked
    // first).
    let x = rounded_var(DType::F32, 1.0, (2, 0, 3, 4), &dev);
    let w = rounded_var(DType::F32, 1.0, (4, 0), &dev);
    let b = rounded_var(DType::F32, 1.0, 4, &dev);
    let e = token::linear(x.as_tensor(), w.as_tensor(), b.as_tensor(), Heads(0), Rows);
    assert!(e.is_err(), "zero heads accepted");
    // A weight that does not fit the input is an error naming both sizes.
    let x = rounded_var(DType::F32, 1.0, (2, 3, 5), &dev);
    let w = rounded_var(DType::F32, 1.0, (4, 6), &dev);
    let b = rounded_var(DType::F32, 1.0, 4, &dev);
    let e = token::linear(x.as_tensor(), w.as_tensor(), b.as_tensor(), Rows, Rows)
        .expect_err("5 features against a weight for 6");
    assert!(
        e.to_string().contains('5') && e.to_string().contains('6'),
        "{e}"
    );
}

/// Under bf16 autocast with `mixed` on (CUDA), the linear layer stays one op, its products
/// taking bfloat16 operands into float32 results: it equals the composed layer there (whose
/// product is `mixed`'s), values and gradients, up to the order of float32 sums. The CPU keeps
/// the composed layer under autocast.
#[test]
fn token_linear_under_mixed_autocast_matches_composed() {
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    let bf16 = Some(DType::BF16);
    for &(shape, o, input, output) in LINEAR_CASES {
        let [x, w, b] = linear_vars(shape, o, input, &dev);
        let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        let applies = amp::autocast(bf16, || token::linear_applies(xt));
        assert_eq!(
            applies,
            dev.is_cuda(),
            "one op under mixed autocast on {dev:?}"
        );
        if !applies {
            continue;
        }
        compare_with_grads(
            &format!("linear under mixed autocast {shape:?} -> {o} ({input:?} -> {output:?})"),
            &[&x, &w, &b],
            || amp::autocast(bf16, || token::linear(xt, wt, bt, input, output)).expect("fast"),
            || {
                amp::autocast(bf16, || token::linear_composed(xt, wt, bt, input, output))
                    .expect("slow")
            },
            BIAS_SUM,
        );
    }
}

/// The LeFF's channels-last depthwise convolution with its bias, alone, followed by the GELU,
/// and between two GELUs (`token::depthwise`): odd sizes, one channel, one pixel, grids
/// narrower than the kernel, a 5x5 kernel, and more image rows than the CUDA kernel's partial
/// sums (256).
#[test]
fn token_depthwise_matches_composed() {
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    // (B, H, W, C, k)
    let cases = [
        (2, 5, 7, 3, 3),
        (1, 8, 8, 64, 3),
        (3, 1, 1, 4, 3),
        (1, 2, 9, 1, 3),
        (2, 6, 4, 5, 5),
        // A 5x5 kernel wider than the grid: taps that reach no pixel at all.
        (1, 2, 1, 2, 5),
        (2, 150, 3, 5, 3),
    ];
    for (b, h, w, c, k) in cases {
        let x = rounded_var(DType::F32, 1.0, (b, h * w, c), &dev);
        let weight = rounded_var(DType::F32, 0.5, (c, 1, k, k), &dev);
        let bias = rounded_var(DType::F32, 1.0, c, &dev);
        assert!(
            token::depthwise_applies(x.as_tensor()),
            "one op on {dev:?} with the CUDA kernels on"
        );
        let (xt, wt, bt) = (x.as_tensor(), weight.as_tensor(), bias.as_tensor());
        for gelus in [Gelus::NONE, Gelus::AFTER, Gelus::BOTH] {
            compare_with_grads(
                &format!("token depthwise {b}x{h}x{w}x{c} k{k} {gelus:?}"),
                &[&x, &weight, &bias],
                || token::depthwise(xt, wt, bt, w, gelus).expect("fast"),
                || token::depthwise_composed(xt, wt, bt, w, gelus).expect("slow"),
                if gelus == Gelus::NONE { BIAS_SUM } else { GELU },
            );
        }
    }
    let x = rounded_var(DType::F32, 1.0, (1, 10, 2), &dev);
    let weight = rounded_var(DType::F32, 1.0, (2, 1, 3, 3), &dev);
    let bias = rounded_var(DType::F32, 1.0, 2, &dev);
    let e = token::depthwise(
        x.as_tensor(),
        weight.as_tensor(),
        bias.as_tensor(),
        4,
        Gelus::NONE,
    )
    .expect_err("10 tokens in rows of 4");
    assert!(e.to_string().contains("10 tokens"), "{e}");
}

/// The window attention's softmax of logits plus a bias repeated over the leading rows
/// (`token::biased_softmax`): the relative position bias alone, and with a shift mask per
/// window repeated over the images; one bias row; odd sizes; a bias longer than a task.
#[test]
fn biased_softmax_matches_composed() {
    let dev = common::test_device();
    // (logits, bias)
    let cases: &[(&[usize], &[usize])] = &[
        (&[6, 2, 16, 16], &[2, 16, 16]),
        (&[2, 4, 3, 9, 9], &[4, 3, 9, 9]),
        (&[8, 2, 16, 16], &[4, 2, 16, 16]),
        (&[3, 5], &[5]),
        (&[300, 7], &[2, 7]),
        // A bias longer than one parallel task.
        (&[2, 2000, 9], &[2000, 9]),
    ];
    for &(shape, bshape) in cases {
        let x = rounded_var(DType::F32, 3.0, shape, &dev);
        let b = rounded_var(DType::F32, 1.0, bshape, &dev);
        let (xt, bt) = (x.as_tensor(), b.as_tensor());
        compare_with_grads(
            &format!("biased softmax {shape:?} + {bshape:?}"),
            &[&x, &b],
            || token::biased_softmax(xt, bt).expect("fast"),
            || token::biased_softmax_composed(xt, bt).expect("slow"),
            BIAS_SUM,
        );
    }
    let x = rounded_var(DType::F32, 1.0, (3, 4), &dev);
    let b = rounded_var(DType::F32, 1.0, 8, &dev);
    let e = token::biased_softmax(x.as_tensor(), b.as_tensor()).expect_err("8 into 12 values");
    assert!(e.to_string().contains("[8]"), "{e}");
}

/// The window attention (`token::window_attention`): q, k, v packed per window, the bias of one
/// head set, of several windows repeated over the images (the shift mask's case), odd sizes,
/// a single token, and on CUDA heads of each of the kernel's register widths (16, 32, 64) and
/// one past them (the composed path there).
#[test]
fn window_attention_matches_composed() {
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    // (windows, heads, tokens, head width, bias shape)
    let cases: &[(usize, usize, usize, usize, &[usize])] = &[
        (6, 2, 16, 8, &[2, 16, 16]),
        (8, 1, 16, 8, &[4, 1, 16, 16]),
        (3, 3, 5, 7, &[3, 5, 5]),
        (2, 4, 9, 3, &[2, 4, 9, 9]),
        (4, 2, 1, 5, &[2, 1, 1]),
        (3, 2, 64, 32, &[2, 64, 64]),
        (2, 1, 7, 17, &[1, 7, 7]),
        (2, 1, 9, 40, &[1, 9, 9]),
        (2, 2, 4, 64, &[2, 4, 4]),
        (2, 1, 4, 65, &[1, 4, 4]),
    ];
    for &(windows, heads, n, d, bshape) in cases {
        let qkv = rounded_var(DType::F32, 1.0, (windows, 3 * heads, n, d), &dev);
        let bias = rounded_var(DType::F32, 1.0, bshape, &dev);
        assert!(
            token::window_attention_applies(qkv.as_tensor()),
            "one op on {dev:?} with the CUDA kernels on"
        );
        let (qt, bt) = (qkv.as_tensor(), bias.as_tensor());
        compare_with_grads(
            &format!("window attention {windows}x{heads}x{n}x{d} + {bshape:?}"),
            &[&qkv, &bias],
            || token::window_attention(qt, bt, heads).expect("fast"),
            || token::window_attention_composed(qt, bt, heads).expect("slow"),
            BIAS_SUM,
        );
    }
    let qkv = rounded_var(DType::F32, 1.0, (2, 6, 4, 3), &dev);
    let bias = rounded_var(DType::F32, 1.0, (3, 4, 4), &dev);
    let e = token::window_attention(qkv.as_tensor(), bias.as_tensor(), 2)
        .expect_err("a bias for 3 heads against 2");
    assert!(e.to_string().contains("48"), "{e}");
}

/// Stochastic depth's residual (`token::scaled_residual`, `x + branch * s[sample]`) against
/// its composed version, values and both gradients bit for bit (on CUDA too: each product and
/// sum is rounded alone on both sides): samples much smaller than a
/// parallel block (many per block), one sample over several blocks, a block boundary inside a
/// sample, a single sample, dropped (0) and kept branches.
#[test]
fn scaled_residual_matches_composed_exactly() {
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    let cases: &[(&[usize], &[f32])] = &[
        (&[4, 5, 3], &[0.0, 1.25, 1.25, 0.0]),
        (&[300, 7], &[1.1; 300]),
        (&[3, 40000], &[1.0 / 0.9, 0.0, 1.0 / 0.9]),
        (&[2, 4097, 8], &[1.0 / 0.7, 1.0 / 0.7]),
        (&[1, 9, 2], &[2.0]),
    ];
    let values = |t: &Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("v");
    for &(shape, scales) in cases {
        let x = rounded_var(DType::F32, 1.0, shape, &dev);
        let branch = rounded_var(DType::F32, 1.0, shape, &dev);
        let (xt, bt) = (x.as_tensor(), branch.as_tensor());
        assert!(
            kernels::fused_applies(xt, kernels::CudaKernel::Token),
            "one op on {dev:?}"
        );
        let fast = token::scaled_residual(xt, bt, Some(scales)).expect("fast");
        let slow = token::scaled_residual_composed(xt, bt, Some(scales)).expect("slow");
        assert_eq!(values(&fast), values(&slow), "{shape:?}: values");
        let probe = Tensor::randn(0f32, 1.0, shape, &dev).expect("probe");
        let grads = |y: Tensor| {
            let g = (y * &probe)
                .and_then(|t| t.sum_all())
                .and_then(|t| t.backward())
                .expect("backward");
            [&x, &branch].map(|v| values(g.get(v.as_tensor()).expect("gradient")))
        };
        assert_eq!(grads(fast), grads(slow), "{shape:?}: gradients");
    }
    let x = rounded_var(DType::F32, 1.0, (3, 4), &dev);
    let e = token::scaled_residual(x.as_tensor(), x.as_tensor(), Some(&[1.0, 1.0]))
        .expect_err("2 scales for 3 samples");
    assert!(e.to_string().contains("2 scales"), "{e}");
}

/// The LeFF after its first linear layer (`token::leff_tail`: GELU, depthwise convolution,
/// GELU, linear; one op) against its composed version, values and the gradients of the input
/// and of all five parameters; and against the two ops it replaces (`token::depthwise` with
/// both GELUs, then `token::linear`), whose kernels it runs in the same order, so it must equal
/// them bit for bit (on CUDA as well: `bench/gpu-check.sh` files this test under `dwconv`).
#[test]
fn leff_tail_matches_composed_and_the_two_ops() {
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    // (B, H, W, C, O)
    for (b, h, w, c, o) in [(2, 5, 7, 12, 3), (1, 8, 8, 16, 8), (3, 1, 1, 4, 2)] {
        let x = rounded_var(DType::F32, 1.0, (b, h * w, c), &dev);
        let dw = rounded_var(DType::F32, 0.5, (c, 1, 3, 3), &dev);
        let db = rounded_var(DType::F32, 1.0, c, &dev);
        let weight = rounded_var(DType::F32, 0.5, (o, c), &dev);
        let bias = rounded_var(DType::F32, 1.0, o, &dev);
        assert!(
            token::leff_tail_applies(x.as_tensor()),
            "one op, with the kernels on"
        );
        let conv = (dw.as_tensor(), db.as_tensor());
        let linear = (weight.as_tensor(), bias.as_tensor());
        let vars = [&x, &dw, &db, &weight, &bias];
        let what = format!("leff tail {b}x{h}x{w}x{c} -> {o}");
        compare_with_grads(
            &what,
            &vars,
            || token::leff_tail(x.as_tensor(), conv, w, linear).expect("fast"),
            || token::leff_tail_composed(x.as_tensor(), conv, w, linear).expect("slow"),
            GELU,
        );
        let two_ops = || {
            let y = token::depthwise(x.as_tensor(), conv.0, conv.1, w, Gelus::BOTH)?;
            token::linear(
                &y,
                linear.0,
                linear.1,
                token::Tokens::Rows,
                token::Tokens::Rows,
            )
        };
        let one_op = token::leff_tail(x.as_tensor(), conv, w, linear).expect("one op");
        let two = two_ops().expect("two ops");
        let probe = Tensor::randn(0f32, 1.0, two.shape(), &dev).expect("probe");
        let grads = |y: &Tensor| {
            (y * &probe)
                .and_then(|t| t.sum_all()?.backward())
                .expect("backward")
        };
        let (g1, g2) = (grads(&one_op), grads(&two));
        let flat = |t: &Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("v");
        assert_eq!(flat(&one_op), flat(&two), "{what}: values");
        for (n, v) in vars.iter().enumerate() {
            let get = |g: &candle_core::backprop::GradStore| flat(g.get(v.as_tensor()).expect("g"));
            assert_eq!(get(&g1), get(&g2), "{what}: gradient of input {n}");
        }
    }
}
