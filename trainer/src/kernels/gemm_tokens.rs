//! Uformer's linear layer over tokens (`token::linear`) as a plan of steps that CUDA runs
//! (`cuda/linear.rs`): strided copies and broadcasts (candle's own copy kernel), cuBLAS
//! products planned like the dense convolutions' (`gemm`), and fixed-order column sums. The
//! whole plan is data, built here away from the GPU, so the tests run exactly the steps CUDA
//! runs (the copies through candle's CPU copy, the products through the emulation of cuBLAS)
//! and compare them with the composed layer, values and gradients.
//!
//! With `R` rows of tokens, `k` features in and `o` out, the op computes in rows
//! `y = b + x W^T` (the bias broadcast into the result, the product added to it); backward
//! `dx = dy W`, `dW = dy^T x` (one product, the sum over all rows in cuBLAS's order) and
//! `db` = the column sums of dy. A side in the attention's head layout `(B', heads, N, d)` is
//! copied to rows `(B', N, heads * d)` before the products, or from rows after them.
//!
//! Under bf16 autocast (where `mixed` is on) the products' operands are bfloat16: each is cast
//! from its float32 input straight into rows (the cast reads the head layout's view as the copy
//! does) and the products accumulate into float32 results, as `mixed`'s product does; the bias
//! gradient still sums the float32 dy.

use candle_core::{DType, Layout, Result};

use super::gemm::{plain, row_major, transposed, Gemm};
use super::token::{LinearGeom, Tokens};

/// A buffer a step reads or writes: the op's input `i` (forward x, W, b; backward x, W, dy),
/// a scratch buffer of the plan, or the op's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Buf {
    Input(usize),
    Temp(usize),
    Out,
}

/// A scratch buffer: its length and element type. A float32 one is allocated before the plan
/// runs; a bfloat16 one is made whole by the [`Step::Cast`] that writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Temp {
    pub(super) len: usize,
    pub(super) dtype: DType,
}

/// One step of a plan. Offsets are in elements from the start of each buffer's storage.
#[derive(Debug, Clone)]
pub(super) enum Step {
    /// `dst[at..]` = the elements `layout` views in `src`, in its order, densely: a strided
    /// copy or a broadcast.
    Copy {
        src: Buf,
        layout: Layout,
        dst: Buf,
        at: usize,
    },
    /// `dst` (a bfloat16 scratch buffer) = the elements `layout` views in `src`, in its order,
    /// rounded to bfloat16, densely: the whole buffer.
    Cast { src: Buf, layout: Layout, dst: Buf },
    /// One cuBLAS call with A, B and C in these buffers (A and B of one type, C float32).
    Gemm { call: Gemm, a: Buf, b: Buf, c: Buf },
    /// `dst[at..at + cols]` = the sums over the rows of `src[from..]` viewed as (rows, cols).
    ColumnSums {
        src: Buf,
        from: usize,
        rows: usize,
        cols: usize,
        dst: Buf,
        at: usize,
    },
}

/// How many elements of its source and of its destination a copy of `layout` to `at` reaches:
/// the source's last element read (through the strides) plus one, and `at` plus the elements
/// written. The executors check both against their buffers first (candle's CUDA copy kernel
/// writes every element of the layout, whatever its destination holds).
pub(super) fn copy_extents(layout: &Layout, at: usize) -> (usize, usize) {
    let n = layout.shape().elem_count();
    let last: usize = layout
        .dims()
        .iter()
        .zip(layout.stride())
        .map(|(d, s)| d.saturating_sub(1) * s)
        .sum();
    let src = if n == 0 {
        0
    } else {
        layout.start_offset() + last + 1
    };
    (src, at + n)
}

/// The steps of one op: its scratch buffers' sizes, its output's size, the steps in order.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) temps: Vec<Temp>,
    pub(super) out: usize,
    pub(super) steps: Vec<Step>,
}

/// Where the rows of one side of the op are: in an input (at its layout's offset), or in a
/// scratch buffer the plan first copies (a side in the head layout) or casts them into.
#[derive(Clone, Copy)]
struct Rows {
    buf: Buf,
    at: usize,
}

impl Plan {
    fn temp(&mut self, len: usize, dtype: DType) -> Buf {
        self.temps.push(Temp { len, dtype });
        Buf::Temp(self.temps.len() - 1)
    }

    /// A product's operand from input `i` (`layout` contiguous; `f` features per token): the
    /// rows of a side laid out as `side` (`None`: the weight, as it is), in `products`' type.
    /// In float32 that is [`Plan::rows_of`] (the input itself where it is rows); in bfloat16,
    /// a cast of the rows' view into a scratch buffer.
    fn operand(
        &mut self,
        i: usize,
        layout: &Layout,
        side: Option<Tokens>,
        s: LinearGeom,
        f: usize,
        products: DType,
    ) -> Result<Rows> {
        contiguous(layout)?;
        match (products, side) {
            (DType::F32, Some(side)) => self.rows_of(i, layout, side, s, f),
            (DType::F32, None) => Ok(Rows {
                buf: Buf::Input(i),
                at: layout.start_offset(),
            }),
            (DType::BF16, side) => {
                let layout = match side {
                    Some(Tokens::Heads(_)) => layout.transpose(1, 2)?,
                    Some(Tokens::Rows) | None => layout.clone(),
                };
                let buf = self.temp(layout.shape().elem_count(), DType::BF16);
                self.steps.push(Step::Cast {
                    src: Buf::Input(i),
                    layout,
                    dst: buf,
                });
                Ok(Rows { buf, at: 0 })
            }
            (other, _) => Err(candle_core::Error::Msg(format!(
                "token linear: {other:?} products (float32 or bfloat16 only)"
            ))),
        }
    }

    /// The rows of input `i` (laid out as `side`, `f` features per token, `layout` contiguous).
    fn rows_of(
        &mut self,
        i: usize,
        layout: &Layout,
        side: Tokens,
        s: LinearGeom,
        f: usize,
    ) -> Result<Rows> {
        contiguous(layout)?;
        match side {
            Tokens::Rows => Ok(Rows {
                buf: Buf::Input(i),
                at: layout.start_offset(),
            }),
            // (B', heads, N, d) viewed as (B', N, heads, d), copied densely: the rows.
            Tokens::Heads(_) => {
                let buf = self.temp(s.rows() * f, DType::F32);
                self.steps.push(Step::Copy {
                    src: Buf::Input(i),
                    layout: layout.transpose(1, 2)?,
                    dst: buf,
                    at: 0,
                });
                Ok(Rows { buf, at: 0 })
            }
        }
    }

    /// Where the rows of a result laid out as `side` (`f` features per token) are written, at
    /// `at` in the output: the output itself, or a scratch buffer that [`Plan::place`] copies
    /// into the output.
    fn rows_for(&mut self, side: Tokens, s: LinearGeom, f: usize, at: usize) -> Rows {
        match side {
            Tokens::Rows => Rows { buf: Buf::Out, at },
            Tokens::Heads(_) => Rows {
                buf: self.temp(s.rows() * f, DType::F32),
                at: 0,
            },
        }
    }

    /// The rows in `rows` (from [`Plan::rows_for`]) laid out as `side` at `at` in the output.
    fn place(
        &mut self,
        rows: Rows,
        side: Tokens,
        s: LinearGeom,
        f: usize,
        at: usize,
    ) -> Result<()> {
        if let Tokens::Heads(h) = side {
            // (B', N, heads, d) viewed as (B', heads, N, d), copied densely.
            let layout = Layout::contiguous((s.groups, s.tokens, h, f / h)).transpose(1, 2)?;
            self.steps.push(Step::Copy {
                src: rows.buf,
                layout,
                dst: Buf::Out,
                at,
            });
        }
        Ok(())
    }
}

fn contiguous(l: &Layout) -> Result<()> {
    if l.is_contiguous() {
        Ok(())
    } else {
        Err(candle_core::Error::Msg(format!(
            "token linear: a non-contiguous operand {l:?}"
        )))
    }
}

fn empty() -> Plan {
    Plan {
        temps: Vec::new(),
        out: 0,
        steps: Vec::new(),
    }
}

/// `y = b + x W^T` of x (`lx`, laid out as `input`), W (`lw`, (o, k)) and b (`lb`, (o)), y
/// laid out as `output`, the products' operands in `products` (float32, or bfloat16 under
/// mixed autocast). The sizes must be non-zero (cuBLAS refuses empty products).
pub(super) fn forward(
    s: LinearGeom,
    (input, output): (Tokens, Tokens),
    products: DType,
    [lx, lw, lb]: [&Layout; 3],
) -> Result<Plan> {
    let mut p = empty();
    p.out = s.rows() * s.o;
    contiguous(lb)?;
    let x = p.operand(0, lx, Some(input), s, s.k, products)?;
    let w = p.operand(1, lw, None, s, s.k, products)?;
    let y = p.rows_for(output, s, s.o, 0);
    p.steps.push(Step::Copy {
        src: Buf::Input(2),
        layout: lb.broadcast_as((s.rows(), s.o))?,
        dst: y.buf,
        at: y.at,
    });
    // y (R, o) += x (R, k) W^T, W stored (o, k); cuBLAS's A is the right-hand side (`gemm`).
    let call = row_major(
        (s.rows(), s.o, s.k),
        plain(0, x.at),
        transposed(0, w.at),
        (0, y.at),
        1,
        true,
    );
    p.steps.push(Step::Gemm {
        call,
        a: w.buf,
        b: x.buf,
        c: y.buf,
    });
    p.place(y, output, s, s.o, 0)?;
    Ok(p)
}

/// The gradients `[dx, dW, db]`, one after another in the output, of x (`lx`), W (`lw`) and
/// the output gradient dy (`ldy`, laid out as `output`), the products' operands in `products`.
pub(super) fn backward(
    s: LinearGeom,
    (input, output): (Tokens, Tokens),
    products: DType,
    [lx, lw, ldy]: [&Layout; 3],
) -> Result<Plan> {
    let mut p = empty();
    let (rows, nx, nw) = (s.rows(), s.rows() * s.k, s.o * s.k);
    p.out = s.gradients_len();
    // dy's float32 rows for the bias gradient, and the products' operands.
    let dy_sums = p.rows_of(2, ldy, output, s, s.o)?;
    let dy = match products {
        DType::F32 => dy_sums,
        _ => p.operand(2, ldy, Some(output), s, s.o, products)?,
    };
    let x = p.operand(0, lx, Some(input), s, s.k, products)?;
    let w = p.operand(1, lw, None, s, s.k, products)?;
    // dx (R, k) = dy (R, o) W (o, k)
    let dx = p.rows_for(input, s, s.k, 0);
    let call = row_major(
        (rows, s.k, s.o),
        plain(0, dy.at),
        plain(0, w.at),
        (0, dx.at),
        1,
        false,
    );
    p.steps.push(Step::Gemm {
        call,
        a: w.buf,
        b: dy.buf,
        c: dx.buf,
    });
    p.place(dx, input, s, s.k, 0)?;
    // dW (o, k) = dy^T (o, R) x (R, k), dy stored (R, o)
    let call = row_major(
        (s.o, s.k, rows),
        transposed(0, dy.at),
        plain(0, x.at),
        (0, nx),
        1,
        false,
    );
    p.steps.push(Step::Gemm {
        call,
        a: x.buf,
        b: dy.buf,
        c: Buf::Out,
    });
    p.steps.push(Step::ColumnSums {
        src: dy_sums.buf,
        from: dy_sums.at,
        rows,
        cols: s.o,
        dst: Buf::Out,
        at: nx + nw,
    });
    Ok(p)
}

#[cfg(test)]
mod tests {
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
}
