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

use candle_core::{Layout, Result};

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
    /// One cuBLAS call with A, B and C in these buffers.
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
    pub(super) temps: Vec<usize>,
    pub(super) out: usize,
    pub(super) steps: Vec<Step>,
}

/// Where the rows of one side of the op are: in an input (at its layout's offset), or, for a
/// side in the head layout, in a scratch buffer the plan first copies them into.
struct Rows {
    buf: Buf,
    at: usize,
}

impl Plan {
    fn temp(&mut self, len: usize) -> Buf {
        self.temps.push(len);
        Buf::Temp(self.temps.len() - 1)
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
                let buf = self.temp(s.rows() * f);
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
                buf: self.temp(s.rows() * f),
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
/// laid out as `output`. The sizes must be non-zero (cuBLAS refuses empty products).
pub(super) fn forward(
    s: LinearGeom,
    (input, output): (Tokens, Tokens),
    [lx, lw, lb]: [&Layout; 3],
) -> Result<Plan> {
    let mut p = empty();
    p.out = s.rows() * s.o;
    contiguous(lw)?;
    contiguous(lb)?;
    let x = p.rows_of(0, lx, input, s, s.k)?;
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
        transposed(0, lw.start_offset()),
        (0, y.at),
        1,
        true,
    );
    p.steps.push(Step::Gemm {
        call,
        a: Buf::Input(1),
        b: x.buf,
        c: y.buf,
    });
    p.place(y, output, s, s.o, 0)?;
    Ok(p)
}

/// The gradients `[dx, dW, db]`, one after another in the output, of x (`lx`), W (`lw`) and
/// the output gradient dy (`ldy`, laid out as `output`).
pub(super) fn backward(
    s: LinearGeom,
    (input, output): (Tokens, Tokens),
    [lx, lw, ldy]: [&Layout; 3],
) -> Result<Plan> {
    let mut p = empty();
    let (rows, nx, nw) = (s.rows(), s.rows() * s.k, s.o * s.k);
    p.out = s.gradients_len();
    contiguous(lw)?;
    let dy = p.rows_of(2, ldy, output, s, s.o)?;
    let x = p.rows_of(0, lx, input, s, s.k)?;
    // dx (R, k) = dy (R, o) W (o, k)
    let dx = p.rows_for(input, s, s.k, 0);
    let call = row_major(
        (rows, s.k, s.o),
        plain(0, dy.at),
        plain(0, lw.start_offset()),
        (0, dx.at),
        1,
        false,
    );
    p.steps.push(Step::Gemm {
        call,
        a: Buf::Input(1),
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
        src: dy.buf,
        from: dy.at,
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

    /// Runs a plan on the CPU: the copies through candle's CPU copy (the contract its CUDA
    /// copy kernel keeps), the products through the emulation of cuBLAS.
    fn run(plan: &Plan, inputs: &[&Tensor]) -> Vec<f32> {
        let storage = |t: &Tensor| CpuStorage::F32(values(t));
        let inputs: Vec<CpuStorage> = inputs.iter().map(|t| storage(t)).collect();
        let mut temps: Vec<CpuStorage> = plan
            .temps
            .iter()
            .map(|&n| CpuStorage::F32(vec![f32::NAN; n]))
            .collect();
        let mut out = CpuStorage::F32(vec![f32::NAN; plan.out]);
        let f32s = |s: &CpuStorage| match s {
            CpuStorage::F32(v) => v.clone(),
            _ => unreachable!("float32 buffers"),
        };
        for step in &plan.steps {
            let read = |b: Buf, temps: &[CpuStorage], out: &CpuStorage| match b {
                Buf::Input(i) => f32s(&inputs[i]),
                Buf::Temp(t) => f32s(&temps[t]),
                Buf::Out => f32s(out),
            };
            let (dst, written) = match step {
                Step::Copy {
                    src,
                    layout,
                    dst,
                    at,
                } => {
                    let (dv, sv) = (read(*dst, &temps, &out), read(*src, &temps, &out));
                    let (src_end, dst_end) = copy_extents(layout, *at);
                    assert!(
                        src_end <= sv.len() && dst_end <= dv.len(),
                        "{step:?} outside"
                    );
                    let mut d = CpuStorage::F32(dv);
                    let s = CpuStorage::F32(sv);
                    s.copy_strided_src(&mut d, *at, layout).expect("copy");
                    (*dst, f32s(&d))
                }
                Step::Gemm { call, a, b, c } => {
                    let mut cv = read(*c, &temps, &out);
                    call.emulate(&read(*a, &temps, &out), &read(*b, &temps, &out), &mut cv);
                    (*c, cv)
                }
                Step::ColumnSums {
                    src,
                    from,
                    rows,
                    cols,
                    dst,
                    at,
                } => {
                    let sv = read(*src, &temps, &out);
                    let mut d = read(*dst, &temps, &out);
                    for c in 0..*cols {
                        d[at + c] = (0..*rows).map(|r| sv[from + r * cols + c]).sum();
                    }
                    (*dst, d)
                }
            };
            let written = CpuStorage::F32(written);
            match dst {
                Buf::Input(_) => panic!("a step writes an input"),
                Buf::Temp(t) => temps[t] = written,
                Buf::Out => out = written,
            }
        }
        f32s(&out)
    }

    /// The plans, run step by step, give the composed layer's output and gradients in every
    /// layout pair, with inputs that start inside their storage (as narrowed tensors do).
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
        for &(shape, o, input, output) in cases {
            let what = format!("{shape:?} -> {o} ({input:?} -> {output:?})");
            let k = match input {
                Rows => shape[shape.len() - 1],
                Heads(h) => h * shape[3],
            };
            let var = |dims: &[usize]| Var::randn(0f32, 1.0, dims, &dev).expect("randn");
            let (x, w, b) = (var(shape), var(&[o, k]), var(&[o]));
            let y = linear_composed(x.as_tensor(), w.as_tensor(), b.as_tensor(), input, output)
                .expect("composed");
            let dy = Tensor::randn(0f32, 1.0, y.shape(), &dev).expect("dy");
            let grads = (&y * &dy)
                .and_then(|t| t.sum_all()?.backward())
                .expect("grads");
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
            let (dys, ldy) = padded(&dy);
            let fwd = forward(s, (input, output), [&lx, &lw, &lb]).expect("forward plan");
            close(
                &format!("{what}: output"),
                &run(&fwd, &[&xs, &ws, &bs]),
                &values(&y),
            );
            let bwd = backward(s, (input, output), [&lx, &lw, &ldy]).expect("backward plan");
            let got = run(&bwd, &[&xs, &ws, &dys]);
            let (nx, nw) = (x.elem_count(), w.elem_count());
            for (name, v, range) in [
                ("dx", &x, 0..nx),
                ("dW", &w, nx..nx + nw),
                ("db", &b, nx + nw..nx + nw + o),
            ] {
                let want = values(grads.get(v.as_tensor()).expect("gradient"));
                close(&format!("{what}: {name}"), &got[range], &want);
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
        let e = forward(s, (Tokens::Rows, Tokens::Rows), [&lx, &lw, &lb]);
        assert!(e.is_err_and(|e| e.to_string().contains("non-contiguous")));
    }
}
