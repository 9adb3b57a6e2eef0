//! The CPU arithmetic of the dense convolutions: a k x k one over tiles of 256 pixels (im2col
//! of a tile into a per-thread block, one gemm into a tile of y), its weight gradient summed
//! over the tiles and its input gradient a convolution by the adjoint weight on the same path;
//! a 1x1 one as one product per image on the image itself. Why tiles: see [`TILE`].

use std::cell::Cell;

use gemm::Parallelism;
use rayon::prelude::*;

use super::super::gemm::Geom;
use super::super::product::{matmul, Mat};

thread_local! {
    /// Per thread, the tile buffers of the last call (columns, and a product or dy's tile),
    /// kept so that the next call neither allocates nor zero-fills them: each is fully
    /// overwritten before it is read.
    static SCRATCH: Cell<(Vec<f32>, Vec<f32>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// The largest scratch buffer a thread keeps between calls (32 MiB of float32).
const KEEP_SCRATCH: usize = 8 << 20;

/// Runs `f` with this thread's scratch buffers (fresh empty ones if a caller further up the
/// stack on this thread holds them).
fn with_scratch<R>(f: impl FnOnce(&mut (Vec<f32>, Vec<f32>)) -> R) -> R {
    let mut bufs = SCRATCH.with(Cell::take);
    let r = f(&mut bufs);
    for b in [&mut bufs.0, &mut bufs.1] {
        if b.capacity() > KEEP_SCRATCH {
            *b = Vec::new();
        }
    }
    SCRATCH.with(|s| s.set(bufs));
    r
}

/// How a call uses the threads: whole images in parallel, each image's tiles in turn on its
/// thread, when the batch divides well among the threads; otherwise one image after another,
/// its tiles in parallel.
fn images_in_parallel(b: usize) -> bool {
    let t = rayon::current_num_threads();
    t > 1 && b >= t && (b.is_multiple_of(t) || b >= 4 * t)
}

/// Pixels per tile. Each product reads its columns from a contiguous (C*k*k, TILE) block: read
/// in place from a whole image's (C*k*k, H*W) columns, the rows lie H*W floats apart (64 KiB at
/// 128x128, all in one cache set), and gemm ran at 13 GFLOPS on one AVX2 core where the same
/// product over 256-pixel tiles ran at 73 (`m32 k288 n16384`, the MSRResNet head's 3x3 layer).
/// A tile's columns also stay in L2 between im2col and the product.
const TILE: usize = 256;
/// Tiles whose weight gradients one task sums before they join the others: fixed, so the sum's
/// order (and so its rounding) does not depend on the number of threads.
const GROUP: usize = 16;

/// The rows of the pixels `[p0, p0 + t)` of a row-major H x W plane: `(y, x0, x1, at)`, the
/// pixels `x0..x1` of row y, at `at` in the tile.
fn segments(w: usize, p0: usize, t: usize) -> Vec<(usize, usize, usize, usize)> {
    let mut out = Vec::with_capacity(t / w.max(1) + 2);
    let mut p = p0;
    while p < p0 + t {
        let (y, x0) = (p / w, p % w);
        let x1 = w.min(x0 + p0 + t - p);
        out.push((y, x0, x1, p - p0));
        p += x1 - x0;
    }
    out
}

/// im2col of the pixels `[p0, p0 + t)` of one image (C, H, W) into `cols` (C*k*k, t): row
/// `c*k*k + i*k + j` holds channel c shifted by `(i - k/2, j - k/2)`, zero outside the image.
fn im2col_tile(cols: &mut [f32], img: &[f32], g: Geom, p0: usize, t: usize) {
    let (k, h, w, hw) = (g.k, g.h, g.w, g.hw());
    let p = (k / 2) as isize;
    let segs = segments(w, p0, t);
    for (c, plane) in img.chunks_exact(hw).enumerate() {
        for i in 0..k {
            let dy = i as isize - p;
            for j in 0..k {
                let dx = j as isize - p;
                let row = &mut cols[((c * k + i) * k + j) * t..][..t];
                for &(y, x0, x1, at) in &segs {
                    let out = &mut row[at..at + x1 - x0];
                    let sy = y as isize + dy;
                    if sy < 0 || sy >= h as isize {
                        out.fill(0.0);
                        continue;
                    }
                    // Source columns x + dx inside the row: x in [lo, hi).
                    let lo = x0.max((-dx).max(0) as usize);
                    let hi = x1.min((w as isize - dx).max(0) as usize).max(lo);
                    out[..lo - x0].fill(0.0);
                    out[hi - x0..].fill(0.0);
                    if lo < hi {
                        let s0 = (sy as usize * w) as isize + lo as isize + dx;
                        out[lo - x0..hi - x0]
                            .copy_from_slice(&plane[s0 as usize..s0 as usize + (hi - lo)]);
                    }
                }
            }
        }
    }
}

/// `out` (O, t) = W (O, Ckk) cols (Ckk, t) over the tile at `p0`, its columns built in `cols`.
fn product_tile(
    out: &mut Vec<f32>,
    cols: &mut Vec<f32>,
    xb: &[f32],
    wt: &[f32],
    g: Geom,
    p0: usize,
    t: usize,
) {
    // Both are fully overwritten: zeros are only written where a buffer grows.
    cols.resize(g.ckk() * t, 0.0);
    out.resize(g.o * t, 0.0);
    im2col_tile(cols, xb, g, p0, t);
    let (wm, cm) = (Mat::plain(wt), Mat::plain(cols));
    matmul(out, wm, cm, g.o, t, g.ckk(), false, Parallelism::None);
}

/// Writes (or adds, with `accumulate`) a tile's (O, t) product into row `o` of y_b (O, HW).
fn store_row(row: &mut [f32], tile_row: &[f32], p0: usize, accumulate: bool) {
    let dst = &mut row[p0..p0 + tile_row.len()];
    if accumulate {
        dst.iter_mut().zip(tile_row).for_each(|(a, v)| *a += v);
    } else {
        dst.copy_from_slice(tile_row);
    }
}

/// Tile `i` of an image of `hw` pixels: its first pixel and its width.
fn tile(hw: usize, i: usize) -> (usize, usize) {
    (i * TILE, TILE.min(hw - i * TILE))
}

/// y_b (O, HW) (+)= W (O, Ckk) cols (Ckk, HW), tile by tile; the tiles run in parallel with
/// `parallel` (one image at a time), else in turn on this thread (images in parallel).
fn forward_image(
    yb: &mut [f32],
    xb: &[f32],
    wt: &[f32],
    g: Geom,
    accumulate: bool,
    parallel: bool,
) {
    let hw = g.hw();
    if g.k == 1 {
        // The columns are the image itself, read in place: the product with C rows of H*W
        // floats, at this network's widths, runs as fast as over copied tiles.
        let (wm, xm) = (Mat::plain(wt), Mat::plain(xb));
        let par = if parallel {
            all_threads()
        } else {
            Parallelism::None
        };
        matmul(yb, wm, xm, g.o, hw, g.c, accumulate, par);
        return;
    }
    if !parallel {
        with_scratch(|(cols, out)| {
            for i in 0..hw.div_ceil(TILE) {
                let (p0, t) = tile(hw, i);
                product_tile(out, cols, xb, wt, g, p0, t);
                for (row, tile_row) in yb.chunks_exact_mut(hw).zip(out.chunks_exact(t)) {
                    store_row(row, tile_row, p0, accumulate);
                }
            }
        });
        return;
    }
    let products: Vec<(usize, Vec<f32>)> = (0..hw.div_ceil(TILE))
        .into_par_iter()
        .map(|i| {
            let (p0, t) = tile(hw, i);
            let mut out = Vec::new();
            with_scratch(|(cols, _)| product_tile(&mut out, cols, xb, wt, g, p0, t));
            (p0, out)
        })
        .collect();
    yb.par_chunks_exact_mut(hw)
        .enumerate()
        .for_each(|(o, row)| {
            for (p0, out) in &products {
                let t = out.len() / g.o;
                store_row(row, &out[o * t..(o + 1) * t], *p0, accumulate);
            }
        });
}

/// The convolution of x (B, C, H, W) by W (O, C, k, k) into `out` (B*O*H*W values), added to
/// what `out` holds with `accumulate`.
pub(super) fn forward_into(
    out: &mut [f32],
    x: &[f32],
    wt: &[f32],
    b: usize,
    g: Geom,
    accumulate: bool,
) {
    let (c, o, hw) = (g.c, g.o, g.hw());
    if images_in_parallel(b) {
        out.par_chunks_mut(o * hw)
            .zip(x.par_chunks(c * hw))
            .for_each(|(yb, xb)| forward_image(yb, xb, wt, g, accumulate, false));
    } else {
        for (yb, xb) in out.chunks_mut(o * hw).zip(x.chunks(c * hw)) {
            forward_image(yb, xb, wt, g, accumulate, true);
        }
    }
}

/// `dw (+)= sum over the tiles [first, last) of dy_tile (O, t) cols_tile^T (t, Ckk)`, in tile
/// order (`accumulate` for the first tile; the rest always add).
#[allow(clippy::too_many_arguments)]
fn weight_grad_tiles(
    dw: &mut [f32],
    accumulate: bool,
    xb: &[f32],
    dyb: &[f32],
    g: Geom,
    first: usize,
    last: usize,
    scratch: &mut (Vec<f32>, Vec<f32>),
) {
    let (hw, ckk, o) = (g.hw(), g.ckk(), g.o);
    let (cols, dy_tile) = scratch;
    for ti in first..last {
        let (p0, t) = tile(hw, ti);
        cols.resize(ckk * t, 0.0);
        im2col_tile(cols, xb, g, p0, t);
        // dy's tile, contiguous for the same reason as the columns.
        dy_tile.clear();
        for row in dyb.chunks_exact(hw) {
            dy_tile.extend_from_slice(&row[p0..p0 + t]);
        }
        let (dym, ct) = (Mat::plain(dy_tile), Mat::transposed(cols));
        matmul(
            dw,
            dym,
            ct,
            o,
            ckk,
            t,
            accumulate || ti > first,
            Parallelism::None,
        );
    }
}

/// The weight gradient of a k x k convolution (k > 1) in parts: per image where images run in
/// parallel, else per group of tiles.
fn weight_grad_parts(x: &[f32], dy: &[f32], b: usize, g: Geom) -> Vec<Vec<f32>> {
    let (c, o, hw, ckk) = (g.c, g.o, g.hw(), g.ckk());
    let n_tiles = hw.div_ceil(TILE);
    let (groups, per_group) = if images_in_parallel(b) {
        (1, n_tiles)
    } else {
        (n_tiles.div_ceil(GROUP), GROUP)
    };
    (0..b * groups)
        .into_par_iter()
        .map(|i| {
            let (bi, gi) = (i / groups, i % groups);
            let (xb, dyb) = (&x[bi * c * hw..][..c * hw], &dy[bi * o * hw..][..o * hw]);
            let (first, last) = (gi * per_group, n_tiles.min((gi + 1) * per_group));
            let mut part = vec![0f32; o * ckk];
            with_scratch(|s| weight_grad_tiles(&mut part, false, xb, dyb, g, first, last, s));
            part
        })
        .collect()
}

/// 1x1: per image, `dx_b = W^T dy_b` and `dW_b = dy_b x_b^T`, reading and writing the images
/// in place; returns the weight gradient in parts (one per image where images run in parallel,
/// else one).
fn pointwise_backward(
    dx: Option<&mut [f32]>,
    x: &[f32],
    wt: &[f32],
    dy: &[f32],
    b: usize,
    g: Geom,
) -> Vec<Vec<f32>> {
    let (c, o, hw) = (g.c, g.o, g.hw());
    let image = |dxb: Option<&mut [f32]>, dwb: &mut [f32], acc: bool, xb, dyb, par| {
        let (dym, xt) = (Mat::plain(dyb), Mat::transposed(xb));
        matmul(dwb, dym, xt, o, c, hw, acc, par);
        if let Some(dxb) = dxb {
            matmul(dxb, Mat::transposed(wt), dym, c, hw, o, false, par);
        }
    };
    let dxs: Vec<Option<&mut [f32]>> = match dx {
        Some(dx) => dx.chunks_mut(c * hw).map(Some).collect(),
        None => (0..b).map(|_| None).collect(),
    };
    let images: Vec<_> = dxs
        .into_iter()
        .zip(x.chunks(c * hw))
        .zip(dy.chunks(o * hw))
        .collect();
    if images_in_parallel(b) {
        return images
            .into_par_iter()
            .map(|((dxb, xb), dyb)| {
                let mut part = vec![0f32; o * c];
                image(dxb, &mut part, false, xb, dyb, Parallelism::None);
                part
            })
            .collect();
    }
    let mut dw = vec![0f32; o * c];
    for (bi, ((dxb, xb), dyb)) in images.into_iter().enumerate() {
        image(dxb, &mut dw, bi > 0, xb, dyb, all_threads());
    }
    vec![dw]
}

/// A product split across all the threads (one image at a time).
fn all_threads() -> Parallelism {
    match rayon::current_num_threads() {
        1 => Parallelism::None,
        t => Parallelism::Rayon(t),
    }
}

/// W (O, C, k, k) turned into the weight of its adjoint: (C, O, k, k), each kernel rotated by
/// 180 degrees. For a stride-1 "same" convolution with odd k, the input gradient is the
/// convolution of dy by it: x[y + d] fed out[y] for each tap offset d, so dy at y flows to x at
/// y + d, which the rotated tap -d reads.
fn adjoint_weight(wt: &[f32], g: Geom) -> Vec<f32> {
    let (c, o, kk) = (g.c, g.o, g.k * g.k);
    let mut out = vec![0f32; wt.len()];
    for oi in 0..o {
        for ci in 0..c {
            let src = &wt[(oi * c + ci) * kk..][..kk];
            let dst = &mut out[(ci * o + oi) * kk..][..kk];
            dst.iter_mut()
                .zip(src.iter().rev())
                .for_each(|(d, s)| *d = *s);
        }
    }
    out
}

/// The gradients of the convolution of x (B, C, H, W) by W (O, C, k, k) from dy: dx (B*C*H*W
/// values, left out without `input_grad`) then dW (O*C*k*k values).
pub(super) fn backward(
    x: &[f32],
    wt: &[f32],
    dy: &[f32],
    b: usize,
    g: Geom,
    input_grad: bool,
) -> Vec<f32> {
    let (c, o) = (g.c, g.o);
    let ckk = g.ckk();
    let n = if input_grad { x.len() } else { 0 };
    let mut out = vec![0f32; n + o * ckk];
    let (dx, dw) = out.split_at_mut(n);
    let parts = if g.k == 1 {
        pointwise_backward(input_grad.then_some(dx), x, wt, dy, b, g)
    } else {
        if input_grad {
            // dx is the convolution of dy by the adjoint weight, on the forward path.
            let adjoint = Geom { c: o, o: c, ..g };
            forward_into(dx, dy, &adjoint_weight(wt, g), b, adjoint, false);
        }
        weight_grad_parts(x, dy, b, g)
    };
    // The parts (images or tile groups) summed in order: the result does not depend on
    // which thread ran which part.
    for part in &parts {
        dw.iter_mut().zip(part).for_each(|(a, v)| *a += v);
    }
    out
}
