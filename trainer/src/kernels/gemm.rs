//! The matrix products of a dense stride-1 "same" convolution as cuBLAS calls (issued on CUDA
//! by `cuda/dense.rs`), planned here, away from the GPU, so that their sizes, leading
//! dimensions, strides and offsets are tested on any machine: the tests run the plans through
//! an emulation of cuBLAS's column-major contract and compare with the composed convolution.
//!
//! Per image b, with `cols_b` the (C*k*k, H*W) columns (for 1x1, the image itself):
//! `y_b = W cols_b`, `dcols_b = W^T dy_b`, `dW = sum_b dy_b cols_b^T`.
//!
//! cuBLAS reads a row-major (r x c) matrix as the column-major (c x r) one, its transpose. A
//! row-major product `C = op(L) op(R)` is therefore issued as `C^T = op(R)^T op(L)^T`: cuBLAS's
//! A is the row-major right-hand side, its B the left-hand side, m and n swapped.

/// The sizes of one dense convolution: input channels `c`, output channels `o`, planes of
/// `h` x `w`, a `k` x `k` kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geom {
    pub(super) c: usize,
    pub(super) o: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) k: usize,
}

impl Geom {
    pub(super) fn hw(&self) -> usize {
        self.h * self.w
    }

    pub(super) fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }
}

/// One `cublasGemmStridedBatchedEx` call with alpha 1: for each `p < batch`,
/// `C_p = op(A_p) op(B_p) (+ C_p with accumulate)`, column-major, where `X_p` starts at
/// `x_offset + p * stride_x` elements of its buffer. op(A) is m x k, op(B) k x n, C m x n.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Gemm {
    pub(super) trans_a: bool,
    pub(super) trans_b: bool,
    pub(super) m: usize,
    pub(super) n: usize,
    pub(super) k: usize,
    pub(super) lda: usize,
    pub(super) ldb: usize,
    pub(super) ldc: usize,
    pub(super) offset_a: usize,
    pub(super) offset_b: usize,
    pub(super) offset_c: usize,
    pub(super) stride_a: usize,
    pub(super) stride_b: usize,
    pub(super) stride_c: usize,
    pub(super) batch: usize,
    /// beta 1 (add to C) rather than 0 (C is written without being read).
    pub(super) accumulate: bool,
}

/// A row-major operand of a product: stored as its transpose (`transposed`), the images
/// `stride` elements apart (0: one matrix for every image), starting at `offset`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stored {
    transposed: bool,
    stride: usize,
    offset: usize,
}

pub(super) const fn plain(stride: usize, offset: usize) -> Stored {
    Stored {
        transposed: false,
        stride,
        offset,
    }
}

pub(super) const fn transposed(stride: usize, offset: usize) -> Stored {
    Stored {
        transposed: true,
        stride,
        offset,
    }
}

/// The call for the row-major `C (m x n) = op(L) (m x k) op(R) (k x n)` over `batch` images,
/// C's images `stride_c` apart from `offset_c`. L is stored (m x k), or (k x m) transposed;
/// R (k x n), or (n x k) transposed; every matrix densely, rows one after another.
#[allow(clippy::too_many_arguments)]
pub(super) fn row_major(
    (m, n, k): (usize, usize, usize),
    l: Stored,
    r: Stored,
    (stride_c, offset_c): (usize, usize),
    batch: usize,
    accumulate: bool,
) -> Gemm {
    Gemm {
        trans_a: r.transposed,
        trans_b: l.transposed,
        m: n,
        n: m,
        k,
        lda: if r.transposed { k } else { n },
        ldb: if l.transposed { m } else { k },
        ldc: n,
        offset_a: r.offset,
        offset_b: l.offset,
        offset_c,
        stride_a: r.stride,
        stride_b: l.stride,
        stride_c,
        batch,
        accumulate,
    }
}

/// Forward, all images in one call: A = the columns (B, C*k*k, H*W), B = the weight
/// (O, C*k*k), C = the output (B, O, H*W), added to what it holds with `accumulate`.
pub(super) fn forward(g: Geom, images: usize, accumulate: bool) -> Gemm {
    let (ckk, hw) = (g.ckk(), g.hw());
    row_major(
        (g.o, hw, ckk),
        plain(0, 0),
        plain(ckk * hw, 0),
        (g.o * hw, 0),
        images,
        accumulate,
    )
}

/// The columns' gradient, all images in one call: A = the output gradient (B, O, H*W),
/// B = the weight (O, C*k*k), C = the columns' gradient (B, C*k*k, H*W), written.
pub(super) fn columns_grad(g: Geom, images: usize) -> Gemm {
    let (ckk, hw) = (g.ckk(), g.hw());
    row_major(
        (ckk, hw, g.o),
        transposed(0, 0),
        plain(g.o * hw, 0),
        (ckk * hw, 0),
        images,
        false,
    )
}

/// The weight's gradient, one call per image summing into it in image order (deterministic):
/// A = the columns (B, C*k*k, H*W), B = the output gradient (B, O, H*W), C = the weight's
/// gradient (O, C*k*k), written by the first call.
pub(super) fn weight_grad(g: Geom, images: usize) -> Vec<Gemm> {
    let (ckk, hw) = (g.ckk(), g.hw());
    (0..images)
        .map(|p| {
            row_major(
                (g.o, ckk, hw),
                plain(0, p * g.o * hw),
                transposed(0, p * ckk * hw),
                (0, 0),
                1,
                p > 0,
            )
        })
        .collect()
}

/// `C_p (m x n) = L_p (m x k) R_p (k x n)` for `batch` pairs of dense row-major matrices, each
/// operand's matrices one after another: A = R, B = L, C written.
pub(super) fn matmul(batch: usize, (m, n, k): (usize, usize, usize)) -> Gemm {
    row_major(
        (m, n, k),
        plain(m * k, 0),
        plain(k * n, 0),
        (m * n, 0),
        batch,
        false,
    )
}

impl Gemm {
    /// How many elements of A, B and C the call reaches (offsets included), after checking
    /// what cuBLAS requires of the leading dimensions. The CUDA launch checks its buffers
    /// against these before it issues the call.
    pub(super) fn extents(&self) -> Result<[usize; 3], String> {
        let rows_a = if self.trans_a { self.k } else { self.m };
        let rows_b = if self.trans_b { self.n } else { self.k };
        let cols_a = if self.trans_a { self.m } else { self.k };
        let cols_b = if self.trans_b { self.k } else { self.n };
        if self.lda < rows_a.max(1) || self.ldb < rows_b.max(1) || self.ldc < self.m.max(1) {
            return Err(format!(
                "gemm: leading dimensions below their rows: {self:?}"
            ));
        }
        if [self.m, self.n, self.k, self.batch].contains(&0) {
            return Err(format!("gemm: an empty product: {self:?}"));
        }
        let extent = |offset: usize, stride: usize, ld: usize, rows: usize, cols: usize| {
            offset + (self.batch - 1) * stride + (cols - 1) * ld + rows
        };
        Ok([
            extent(self.offset_a, self.stride_a, self.lda, rows_a, cols_a),
            extent(self.offset_b, self.stride_b, self.ldb, rows_b, cols_b),
            extent(self.offset_c, self.stride_c, self.ldc, self.m, self.n),
        ])
    }

    /// cuBLAS's result in float64 sums, on the CPU: the oracle for the plans.
    #[cfg(test)]
    pub(super) fn emulate(&self, a: &[f32], b: &[f32], c: &mut [f32]) {
        let [ea, eb, ec] = self.extents().expect("a valid call");
        assert!(
            ea <= a.len() && eb <= b.len() && ec <= c.len(),
            "{self:?} out of bounds"
        );
        for p in 0..self.batch {
            let (a0, b0) = (
                self.offset_a + p * self.stride_a,
                self.offset_b + p * self.stride_b,
            );
            let c0 = self.offset_c + p * self.stride_c;
            for i in 0..self.m {
                for j in 0..self.n {
                    let s: f64 = (0..self.k)
                        .map(|l| {
                            let av = if self.trans_a {
                                a[a0 + l + i * self.lda]
                            } else {
                                a[a0 + i + l * self.lda]
                            };
                            let bv = if self.trans_b {
                                b[b0 + j + l * self.ldb]
                            } else {
                                b[b0 + l + j * self.ldb]
                            };
                            av as f64 * bv as f64
                        })
                        .sum();
                    let ci = &mut c[c0 + i + j * self.ldc];
                    *ci = if self.accumulate {
                        *ci + s as f32
                    } else {
                        s as f32
                    };
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::kernels::{conv_dense_composed, im2col_composed};
    use candle_core::{Device, Tensor, Var};

    pub(in crate::kernels) fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().and_then(|t| t.to_vec1()).expect("values")
    }

    /// Panics unless `got` is within 1e-5 of `want` (relative L2).
    pub(in crate::kernels) fn close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let d: f64 = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b) as f64)
            .map(|d| d * d)
            .sum();
        let n: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
        let e = (d / n.max(1e-30)).sqrt();
        assert!(e < 1e-5, "{what}: relative error {e}");
    }

    /// The plans, run through the emulation, give the composed convolution's output (alone
    /// and added to a residual) and its gradients; for k x k the columns come from im2col and
    /// their gradient goes back through col2im, as on CUDA.
    #[test]
    fn the_planned_products_are_the_convolution_and_its_gradients() {
        // (batch, in, out, H, W, k): 1x1 and k x k, one image and several, odd sizes.
        for &(b, c, o, h, w, k) in &[
            (1, 1, 1, 1, 1, 1),
            (2, 3, 5, 7, 6, 1),
            (3, 4, 2, 5, 3, 3),
            (2, 5, 7, 4, 9, 3),
            (1, 2, 3, 2, 3, 5),
        ] {
            let dev = Device::Cpu;
            let g = Geom { c, o, h, w, k };
            let what = format!("b{b} c{c} o{o} {h}x{w} k{k}");
            let x = Var::randn(0f32, 1.0, (b, c, h, w), &dev).expect("x");
            let wt = Var::randn(0f32, 1.0, (o, c, k, k), &dev).expect("w");
            let dy = Tensor::randn(0f32, 1.0, (b, o, h, w), &dev).expect("dy");
            let y = conv_dense_composed(x.as_tensor(), wt.as_tensor(), k).expect("y");
            let grads = (&y * &dy)
                .and_then(|t| t.sum_all())
                .and_then(|t| t.backward())
                .expect("grads");
            let cols = values(&im2col_composed(x.as_tensor(), k).expect("cols"));
            let (wv, dyv) = (values(wt.as_tensor()), values(&dy));

            let mut out = vec![f32::NAN; b * o * g.hw()];
            forward(g, b, false).emulate(&cols, &wv, &mut out);
            close(&format!("{what}: output"), &out, &values(&y));

            let r = Tensor::randn(0f32, 1.0, (b, o, h, w), &dev).expect("r");
            let mut out = values(&r);
            forward(g, b, true).emulate(&cols, &wv, &mut out);
            close(
                &format!("{what}: residual"),
                &out,
                &values(&(&r + &y).expect("sum")),
            );

            let mut dw = vec![f32::NAN; o * g.ckk()];
            for call in weight_grad(g, b) {
                call.emulate(&cols, &dyv, &mut dw);
            }
            let want = grads.get(wt.as_tensor()).expect("dw");
            close(&format!("{what}: weight gradient"), &dw, &values(want));

            let mut dcols = vec![f32::NAN; b * g.ckk() * g.hw()];
            columns_grad(g, b).emulate(&dyv, &wv, &mut dcols);
            let dx = if k == 1 {
                dcols
            } else {
                let t = Tensor::from_vec(dcols, (b, g.ckk(), g.hw()), &dev).expect("dcols");
                let t = t.apply_op1_no_bwd(&super::super::conv::Col2im { k, h, w });
                values(&t.expect("col2im"))
            };
            let want = grads.get(x.as_tensor()).expect("dx");
            close(&format!("{what}: input gradient"), &dx, &values(want));
        }
    }

    /// The batched product's plan, emulated, is candle's matmul (one matrix and several).
    #[test]
    fn the_planned_matmul_is_the_batched_product() {
        for &(batch, m, n, k) in &[(1, 1, 1, 1), (1, 7, 5, 3), (3, 4, 9, 6), (2, 16, 1, 8)] {
            let dev = Device::Cpu;
            let l = Tensor::randn(0f32, 1.0, (batch, m, k), &dev).expect("l");
            let r = Tensor::randn(0f32, 1.0, (batch, k, n), &dev).expect("r");
            let mut out = vec![f32::NAN; batch * m * n];
            matmul(batch, (m, n, k)).emulate(&values(&r), &values(&l), &mut out);
            let want = l.matmul(&r).expect("matmul");
            close(
                &format!("matmul {batch}x{m}x{k} by {k}x{n}"),
                &out,
                &values(&want),
            );
        }
    }

    #[test]
    fn a_call_outside_its_buffers_or_with_short_leading_dimensions_is_refused() {
        let g = Geom {
            c: 3,
            o: 4,
            h: 5,
            w: 6,
            k: 3,
        };
        let call = forward(g, 2, false);
        // A: two images of columns; B: the weight; C: two images of output.
        assert_eq!(
            call.extents(),
            Ok([2 * 27 * 30, 4 * 27, 2 * 4 * 30]),
            "{call:?}"
        );
        let last = *weight_grad(g, 2).last().expect("two calls");
        assert_eq!(last.extents(), Ok([2 * 27 * 30, 2 * 4 * 30, 4 * 27]));
        let short = Gemm { lda: 29, ..call };
        assert!(short.extents().is_err());
        let empty = Gemm { batch: 0, ..call };
        assert!(empty.extents().is_err());
    }
}
