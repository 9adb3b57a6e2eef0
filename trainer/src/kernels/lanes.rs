//! Row reductions written for the vectoriser: a dot product, a sum and a maximum over a slice
//! with eight independent lanes, which the kernels' own dispatched loops inline.

use multiversion::multiversion;

/// `a . b` in float32 with eight independent partial sums, so the loop vectorises (a single
/// running sum cannot be reordered by the compiler) and rounds less than one long chain.
/// Dispatched to the best instruction set the CPU has; kernels whose own loops are dispatched
/// call [`dot_inline`] instead.
#[multiversion(targets("x86_64+avx+avx2+fma"))]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_inline(a, b)
}

/// [`dot`], inlined into (and compiled for the instruction set of) its caller.
#[inline(always)]
pub(crate) fn dot_inline(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// The sum of `a` with eight independent partial sums (see [`dot_inline`]), inlined into its
/// caller.
#[inline(always)]
pub(crate) fn sum_inline(a: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for x in chunks {
        for l in 0..8 {
            acc[l] += x[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The largest value of `a` (negative infinity for none), eight lanes at a time so that the
/// loop vectorises; the maximum is exact in any order. Inlined into its caller.
#[inline(always)]
pub(crate) fn max_inline(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = a.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for x in chunks {
        for l in 0..8 {
            acc[l] = acc[l].max(x[l]);
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}
