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

    /// Input `i` (`layout` contiguous) as a product's operand in `products`' type: the rows of a
    /// side laid out as `side` (`None`: the weight, as it is). In float32 they are the input
    /// itself, or, for a side in the head layout, a dense copy of its rows' view; in bfloat16,
    /// a cast of that view (the cast reads the head layout itself).
    fn operand(
        &mut self,
        i: usize,
        layout: &Layout,
        side: Option<Tokens>,
        products: DType,
    ) -> Result<Rows> {
        contiguous(layout)?;
        // (B', heads, N, d) viewed as (B', N, heads, d): the rows, in order.
        let (view, heads) = match side {
            Some(Tokens::Heads(_)) => (layout.transpose(1, 2)?, true),
            Some(Tokens::Rows) | None => (layout.clone(), false),
        };
        let src = Buf::Input(i);
        match products {
            DType::F32 if !heads => {
                return Ok(Rows {
                    buf: src,
                    at: layout.start_offset(),
                })
            }
            DType::F32 | DType::BF16 => {}
            other => {
                return Err(candle_core::Error::Msg(format!(
                    "token linear: {other:?} products (float32 or bfloat16 only)"
                )))
            }
        }
        let dst = self.temp(view.shape().elem_count(), products);
        self.steps.push(if products == DType::F32 {
            Step::Copy {
                src,
                layout: view,
                dst,
                at: 0,
            }
        } else {
            Step::Cast {
                src,
                layout: view,
                dst,
            }
        });
        Ok(Rows { buf: dst, at: 0 })
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
    let x = p.operand(0, lx, Some(input), products)?;
    let w = p.operand(1, lw, None, products)?;
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
    let dy_sums = p.operand(2, ldy, Some(output), DType::F32)?;
    let dy = match products {
        DType::F32 => dy_sums,
        _ => p.operand(2, ldy, Some(output), products)?,
    };
    let x = p.operand(0, lx, Some(input), products)?;
    let w = p.operand(1, lw, None, products)?;
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
mod tests;
