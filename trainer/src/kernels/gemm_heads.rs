//! The matrix products of Restormer's channel attention as cuBLAS calls (issued on CUDA by
//! `cuda/mdta.rs`), planned here like the dense convolutions' (`gemm`), so that their offsets
//! and strides are tested on any machine against an emulation of cuBLAS.
//!
//! One call per image b, batched over its heads h, each head a block of `ch` rows of N = H*W
//! values: q, k and v are parts 0, 1 and 2 of qkv (B, 3C, N), the output and its gradient g
//! are (B, C, N), and the small matrices (the products of rows S, the probabilities A, their
//! gradients, the coefficients M) are (B, heads, ch, ch):
//! `S = q k^T`, `out = A v`, `dA = g v^T`, `dq = M_q k`, `dk = M_k q`, `dv = A^T g`.
//! cuBLAS's A is the row-major right-hand side and its B the left-hand side (see `gemm`).

use super::gemm::{plain, row_major, transposed, Gemm};

/// The sizes of one channel attention: `c` channels of each of q, k and v, in `heads` heads of
/// `ch` rows, rows of `n` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Heads {
    pub(super) c: usize,
    pub(super) heads: usize,
    pub(super) ch: usize,
    pub(super) n: usize,
}

impl Heads {
    /// The offset of part `part` (0 q, 1 k, 2 v) of image `b` in qkv.
    fn part(&self, b: usize, part: usize) -> usize {
        (b * 3 + part) * self.c * self.n
    }

    /// The offset of image `b` in the output and its gradient.
    fn image(&self, b: usize) -> usize {
        b * self.c * self.n
    }

    /// The offset of image `b`'s small matrices.
    fn small(&self, b: usize) -> usize {
        b * self.heads * self.ch * self.ch
    }

    /// Elements between two heads' row blocks, and between two heads' small matrices.
    fn strides(&self) -> (usize, usize) {
        (self.ch * self.n, self.ch * self.ch)
    }
}

/// `S = q k^T` of image b: A = qkv, B = qkv, C = the small matrices.
pub(super) fn scores(d: Heads, b: usize) -> Gemm {
    let (rows, small) = d.strides();
    row_major(
        (d.ch, d.ch, d.n),
        plain(rows, d.part(b, 0)),
        transposed(rows, d.part(b, 1)),
        (small, d.small(b)),
        d.heads,
        false,
    )
}

/// `out = A v` of image b: A = qkv, B = the probabilities, C = the output.
pub(super) fn values(d: Heads, b: usize) -> Gemm {
    let (rows, small) = d.strides();
    row_major(
        (d.ch, d.n, d.ch),
        plain(small, d.small(b)),
        plain(rows, d.part(b, 2)),
        (rows, d.image(b)),
        d.heads,
        false,
    )
}

/// `dA = g v^T` of image b: A = qkv, B = the output's gradient, C = the small matrices.
pub(super) fn probabilities_grad(d: Heads, b: usize) -> Gemm {
    let (rows, small) = d.strides();
    row_major(
        (d.ch, d.ch, d.n),
        plain(rows, d.image(b)),
        transposed(rows, d.part(b, 2)),
        (small, d.small(b)),
        d.heads,
        false,
    )
}

/// Part `to` of dqkv `= M x` with x part `from` of qkv, image b (`dq = M_q k`: from 1 to 0;
/// `dk = M_k q`: from 0 to 1): A = qkv, B = the coefficients, C = dqkv.
pub(super) fn rows_grad(d: Heads, b: usize, from: usize, to: usize) -> Gemm {
    let (rows, small) = d.strides();
    row_major(
        (d.ch, d.n, d.ch),
        plain(small, d.small(b)),
        plain(rows, d.part(b, from)),
        (rows, d.part(b, to)),
        d.heads,
        false,
    )
}

/// `dv = A^T g` of image b: A = the output's gradient, B = the probabilities, C = dqkv.
pub(super) fn values_grad(d: Heads, b: usize) -> Gemm {
    let (rows, small) = d.strides();
    row_major(
        (d.ch, d.n, d.ch),
        transposed(small, d.small(b)),
        plain(rows, d.image(b)),
        (rows, d.part(b, 2)),
        d.heads,
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm::tests::{close, values as values_of};
    use candle_core::{Device, Tensor};

    fn randn(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).expect("randn")
    }

    /// Each plan, emulated image by image, writes what candle's products of the same head
    /// blocks give, and only its own part of a shared output.
    #[test]
    fn the_planned_products_are_the_attentions_products() {
        // (B, heads, ch, N): one head, several, odd sizes.
        for &(b, heads, ch, n) in &[(1, 1, 1, 1), (2, 1, 3, 5), (2, 3, 4, 7), (3, 2, 5, 2)] {
            let d = Heads {
                c: heads * ch,
                heads,
                ch,
                n,
            };
            let what = format!("B {b}, {heads} heads of {ch} rows of {n}");
            let qkv = randn(&[b, 3, heads, ch, n]);
            let g = randn(&[b, heads, ch, n]);
            let m = randn(&[b, heads, ch, ch]);
            let (qkv_v, g_v, m_v) = (values_of(&qkv), values_of(&g), values_of(&m));
            let part = |p: usize| {
                qkv.narrow(1, p, 1)
                    .and_then(|t| t.squeeze(1)?.contiguous())
                    .expect("part")
            };
            let (q, k, v) = (part(0), part(1), part(2));
            let t = |x: &Tensor| x.t().and_then(|t| t.contiguous()).expect("t");
            let mm = |a: &Tensor, c: &Tensor| values_of(&a.matmul(c).expect("matmul"));
            let small = b * heads * ch * ch;
            let rows = b * heads * ch * n;
            let run = |plan: &dyn Fn(usize) -> Gemm, a: &[f32], bb: &[f32], len: usize| {
                let mut out = vec![f32::NAN; len];
                for i in 0..b {
                    plan(i).emulate(a, bb, &mut out);
                }
                out
            };
            let s = run(&|i| scores(d, i), &qkv_v, &qkv_v, small);
            close(&format!("{what}: q k^T"), &s, &mm(&q, &t(&k)));
            let out = run(&|i| values(d, i), &qkv_v, &m_v, rows);
            close(&format!("{what}: A v"), &out, &mm(&m, &v));
            let da = run(&|i| probabilities_grad(d, i), &qkv_v, &g_v, small);
            close(&format!("{what}: g v^T"), &da, &mm(&g, &t(&v)));
            // The three row gradients fill one dqkv, each its own part.
            let mut dqkv = vec![f32::NAN; 3 * rows];
            for i in 0..b {
                rows_grad(d, i, 1, 0).emulate(&qkv_v, &m_v, &mut dqkv);
                rows_grad(d, i, 0, 1).emulate(&qkv_v, &m_v, &mut dqkv);
                values_grad(d, i).emulate(&g_v, &m_v, &mut dqkv);
            }
            let want = Tensor::stack(
                &[
                    m.matmul(&k).expect("M k"),
                    m.matmul(&q).expect("M q"),
                    t(&m).matmul(&g).expect("A^T g"),
                ],
                1,
            )
            .expect("stack");
            close(&format!("{what}: dqkv"), &dqkv, &values_of(&want));
        }
    }
}
