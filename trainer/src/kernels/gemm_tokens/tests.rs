//! The plans run step by step on the CPU, against the composed layer (values and gradients),
//! and the checks a plan makes of its copies and operands.

use super::*;
use crate::kernels::gemm::tests::{close, values};
use crate::kernels::token::linear_composed;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Device, Tensor, Var};

/// Runs a plan on the CPU: the copies and casts through candle's CPU copy and cast (the
/// contracts its CUDA kernels keep), the products through the emulation of cuBLAS (bfloat16
/// operands widened: their products are exact in float32, which accumulates them).
fn run(plan: &Plan, inputs: &[&Tensor]) -> Vec<f32> {
    let inputs: Vec<CpuStorage> = inputs.iter().map(|t| CpuStorage::F32(values(t))).collect();
    let mut temps: Vec<CpuStorage> = plan
        .temps
        .iter()
        .map(|t| match t.dtype {
            DType::F32 => CpuStorage::F32(vec![f32::NAN; t.len]),
            // Made whole by its cast.
            _ => CpuStorage::BF16(Vec::new()),
        })
        .collect();
    let mut out = CpuStorage::F32(vec![f32::NAN; plan.out]);
    let f32s = |s: &CpuStorage| match s {
        CpuStorage::F32(v) => v.clone(),
        other => panic!("{:?} where float32 is read", other.dtype()),
    };
    let widened = |s: &CpuStorage| match s {
        CpuStorage::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
        other => f32s(other),
    };
    for step in &plan.steps {
        let read = |b: Buf, temps: &[CpuStorage], out: &CpuStorage| match b {
            Buf::Input(i) => inputs[i].clone(),
            Buf::Temp(t) => temps[t].clone(),
            Buf::Out => out.clone(),
        };
        let (dst, written) = match step {
            Step::Copy {
                src,
                layout,
                dst,
                at,
            } => {
                let (mut d, s) = (read(*dst, &temps, &out), read(*src, &temps, &out));
                let (src_end, dst_end) = copy_extents(layout, *at);
                assert!(
                    src_end <= f32s(&s).len() && dst_end <= f32s(&d).len(),
                    "{step:?} outside"
                );
                s.copy_strided_src(&mut d, *at, layout).expect("copy");
                (*dst, d)
            }
            Step::Cast { src, layout, dst } => {
                let s = read(*src, &temps, &out);
                let Buf::Temp(t) = dst else {
                    panic!("{step:?} casts into no scratch buffer")
                };
                assert!(
                    copy_extents(layout, 0).0 <= f32s(&s).len(),
                    "{step:?} outside"
                );
                let cast = s.to_dtype(layout, DType::BF16).expect("cast");
                assert_eq!(
                    (cast.dtype(), widened(&cast).len()),
                    (plan.temps[*t].dtype, plan.temps[*t].len),
                    "{step:?} fills its buffer"
                );
                (*dst, cast)
            }
            Step::Gemm { call, a, b, c } => {
                let (a, b) = (read(*a, &temps, &out), read(*b, &temps, &out));
                assert_eq!(a.dtype(), b.dtype(), "{step:?}: operands of one type");
                let mut cv = f32s(&read(*c, &temps, &out));
                call.emulate(&widened(&a), &widened(&b), &mut cv);
                (*c, CpuStorage::F32(cv))
            }
            Step::ColumnSums {
                src,
                from,
                rows,
                cols,
                dst,
                at,
            } => {
                let sv = f32s(&read(*src, &temps, &out));
                let mut d = f32s(&read(*dst, &temps, &out));
                for c in 0..*cols {
                    d[at + c] = (0..*rows).map(|r| sv[from + r * cols + c]).sum();
                }
                (*dst, CpuStorage::F32(d))
            }
        };
        match dst {
            Buf::Input(_) => panic!("a step writes an input"),
            Buf::Temp(t) => temps[t] = written,
            Buf::Out => out = written,
        }
    }
    f32s(&out)
}

/// The plans, run step by step, give the composed layer's output and gradients in every
/// layout pair, with inputs that start inside their storage (as narrowed tensors do). With
/// bfloat16 products, they give the composed layer of x and W rounded to bfloat16 and its
/// gradients under dy rounded, all but the bias gradient, which sums the float32 dy.
#[test]
fn the_planned_steps_are_the_linear_layer_and_its_gradients() {
    use Tokens::{Heads, Rows};
    let dev = Device::Cpu;
    // (input shape, outputs, input layout, output layout)
    let cases: &[(&[usize], usize, Tokens, Tokens)] = &[
        (&[2, 7, 5], 6, Rows, Rows),
        (&[1, 4, 3, 9], 4, Rows, Rows),
        (&[5, 1], 3, Rows, Rows),
        (&[6, 16, 16], 32, Rows, Heads(2)),
        (&[3, 5, 8], 12, Rows, Heads(4)),
        (&[6, 2, 16, 8], 16, Heads(2), Rows),
        (&[3, 4, 5, 2], 6, Heads(4), Heads(2)),
    ];
    let rounded = |t: &Tensor| {
        t.to_dtype(DType::BF16)
            .and_then(|t| t.to_dtype(DType::F32))
            .expect("round")
    };
    for (&(shape, o, input, output), products) in cases
        .iter()
        .flat_map(|c| [(c, DType::F32), (c, DType::BF16)])
    {
        let what = format!("{shape:?} -> {o} ({input:?} -> {output:?}, {products:?})");
        let k = match input {
            Rows => shape[shape.len() - 1],
            Heads(h) => h * shape[3],
        };
        let var = |dims: &[usize]| Var::randn(0f32, 1.0, dims, &dev).expect("randn");
        let (x, w, b) = (var(shape), var(&[o, k]), var(&[o]));
        let dy = Tensor::randn(0f32, 1.0, (x.elem_count() / k) * o, &dev).expect("dy");
        // The composed layer of (x, w) and its gradients under dy.
        let composed = |x: &Var, w: &Var, dy: &Tensor| {
            let y = linear_composed(x.as_tensor(), w.as_tensor(), b.as_tensor(), input, output)
                .expect("composed");
            let dy = dy.reshape(y.shape()).expect("dy");
            let grads = (&y * &dy)
                .and_then(|t| t.sum_all()?.backward())
                .expect("grads");
            let grad = |v: &Var| values(grads.get(v.as_tensor()).expect("gradient"));
            (y, [grad(x), grad(w), grad(&b)])
        };
        let (mut y, mut want) = composed(&x, &w, &dy);
        if products == DType::BF16 {
            let round = |v: &Var| Var::from_tensor(&rounded(v.as_tensor())).expect("var");
            let (yr, [dx, dw, _]) = composed(&round(&x), &round(&w), &rounded(&dy));
            y = yr;
            want = [dx, dw, want[2].clone()];
        }
        let s = LinearGeom::new(input, output, shape, &[o, k]).expect("sizes");
        // Each operand 3 elements into its storage, so every offset is exercised.
        let padded = |t: &Tensor| {
            let flat = t.flatten_all().expect("flat");
            let pad = Tensor::zeros(3, flat.dtype(), &dev).expect("pad");
            let all = Tensor::cat(&[&pad, &flat], 0).expect("cat");
            let layout = Layout::contiguous_with_offset(t.shape(), 3);
            (all, layout)
        };
        let (xs, lx) = padded(x.as_tensor());
        let (ws, lw) = padded(w.as_tensor());
        let (bs, lb) = padded(b.as_tensor());
        let (dys, ldy) = padded(&dy.reshape(y.shape()).expect("dy"));
        let sides = (input, output);
        let fwd = forward(s, sides, products, [&lx, &lw, &lb]).expect("forward plan");
        close(
            &format!("{what}: output"),
            &run(&fwd, &[&xs, &ws, &bs]),
            &values(&y),
        );
        let bwd = backward(s, sides, products, [&lx, &lw, &ldy]).expect("backward plan");
        let got = run(&bwd, &[&xs, &ws, &dys]);
        let (nx, nw) = (x.elem_count(), w.elem_count());
        for ((name, range), want) in [
            ("dx", 0..nx),
            ("dW", nx..nx + nw),
            ("db", nx + nw..nx + nw + o),
        ]
        .into_iter()
        .zip(&want)
        {
            close(&format!("{what}: {name}"), &got[range], want);
        }
    }
}

/// A transposed view reaches its whole storage; a broadcast bias only its own values.
#[test]
fn a_copy_reaches_what_its_layout_views() {
    let heads = Layout::contiguous_with_offset((2, 3, 4, 5), 7).transpose(1, 2);
    assert_eq!(copy_extents(&heads.expect("t"), 11), (7 + 120, 11 + 120));
    let bias = Layout::contiguous_with_offset(6, 2).broadcast_as((10, 6));
    assert_eq!(copy_extents(&bias.expect("b"), 0), (2 + 6, 60));
}

#[test]
fn a_strided_operand_is_refused() {
    let s = LinearGeom {
        groups: 2,
        tokens: 3,
        k: 4,
        o: 5,
    };
    let lx = Layout::contiguous((2, 3, 4));
    let lw = Layout::contiguous((4, 5)).transpose(0, 1).expect("t");
    let lb = Layout::contiguous(5);
    for products in [DType::F32, DType::BF16] {
        let e = forward(s, (Tokens::Rows, Tokens::Rows), products, [&lx, &lw, &lb]);
        assert!(e.is_err_and(|e| e.to_string().contains("non-contiguous")));
    }
}
