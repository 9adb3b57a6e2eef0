//! Row-major matrix products on the CPU with `gemm` (the kernels candle's own matmul uses), each
//! operand stored as is or transposed: the products of the dense convolutions and of Uformer's
//! token ops.

use gemm::Parallelism;

/// A row-major matrix operand: `rows x cols` stored as is, or transposed storage.
#[derive(Clone, Copy)]
pub(in crate::kernels) struct Mat<'a> {
    pub(in crate::kernels) data: &'a [f32],
    /// Stored as the transpose (cols x rows, row-major).
    pub(in crate::kernels) transposed: bool,
}

impl<'a> Mat<'a> {
    /// Stored as is.
    pub(in crate::kernels) fn plain(data: &'a [f32]) -> Self {
        Mat {
            data,
            transposed: false,
        }
    }

    /// Stored as the transpose.
    pub(in crate::kernels) fn transposed(data: &'a [f32]) -> Self {
        Mat {
            data,
            transposed: true,
        }
    }
}

/// `dst (m x n) = a (m x k) b (k x n)`, or `dst += ...` with `accumulate`.
#[allow(clippy::too_many_arguments)]
pub(in crate::kernels) fn matmul(
    dst: &mut [f32],
    a: Mat,
    b: Mat,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    par: Parallelism,
) {
    // Checked in every build: the call below reads and writes raw pointers over these extents.
    assert!(
        dst.len() >= m * n && a.data.len() >= m * k && b.data.len() >= k * n,
        "a {m}x{k} by {k}x{n} product on buffers of {}, {} and {}",
        a.data.len(),
        b.data.len(),
        dst.len()
    );
    let (a_rs, a_cs) = if a.transposed { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if b.transposed { (1, k) } else { (n, 1) };
    // SAFETY: the strides describe the slices' extents checked above; dst does not alias a, b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.data.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}
