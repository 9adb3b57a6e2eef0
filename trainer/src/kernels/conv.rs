//! Convolution kernels: the im2col gather of a "same" k x k convolution (its backward is a
//! col2im scatter instead of 2*k*k zero-padded narrows) and the depthwise convolution (backward
//! as two direct kernels instead of per-tap reductions). Planes are processed in parallel;
//! inner loops run over contiguous row segments so they vectorise. im2col and col2im also run
//! on CUDA (`cuda/conv.cu`, float32 and bfloat16) where `IFP_CUDA_FUSED` turns on `im2col`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;

use super::zeros_with_room;

/// The contiguous float32 data of a custom op's input.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(d) => d.as_slice(),
        _ => return Err(candle_core::Error::Msg(format!("{what}: float32 only"))),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => Err(candle_core::Error::Msg(format!(
            "{what}: needs a contiguous input"
        ))),
    }
}

/// The valid output range `[lo, hi)` of positions `x` with `0 <= x + d < n`. When it is empty,
/// `lo + d` may lie outside the input: callers skip an empty range before indexing with it.
#[inline]
pub(super) fn valid(n: usize, d: isize) -> (usize, usize) {
    let lo = (-d).max(0) as usize;
    let hi = ((n as isize) - d).clamp(0, n as isize) as usize;
    (lo.min(hi), hi)
}

/// The k*k rows (each H*W) of one input plane: row `i*k + j` is the plane shifted by
/// `(i - k/2, j - k/2)`, zero outside.
pub(super) fn im2col_plane(rows: &mut [f32], plane: &[f32], k: usize, h: usize, w: usize) {
    let (p, hw) = ((k / 2) as isize, h * w);
    for i in 0..k {
        let dy = i as isize - p;
        let (y0, y1) = valid(h, dy);
        for j in 0..k {
            let dx = j as isize - p;
            let (x0, x1) = valid(w, dx);
            let row = &mut rows[(i * k + j) * hw..(i * k + j + 1) * hw];
            // Only the border is zero; the rest is overwritten.
            row[..y0 * w].fill(0.0);
            row[y1 * w..].fill(0.0);
            for y in y0..y1 {
                row[y * w..y * w + x0].fill(0.0);
                row[y * w + x1..(y + 1) * w].fill(0.0);
                if x0 < x1 {
                    let src = ((y as isize + dy) as usize) * w;
                    let s0 = (src as isize + x0 as isize + dx) as usize;
                    row[y * w + x0..y * w + x1].copy_from_slice(&plane[s0..s0 + (x1 - x0)]);
                }
            }
        }
    }
}

/// The adjoint of [`im2col_plane`]: adds each of the k*k rows back at its shift.
#[multiversion(targets("x86_64+avx+avx2+fma"))]
pub(super) fn col2im_plane(plane: &mut [f32], rows: &[f32], k: usize, h: usize, w: usize) {
    let (p, hw) = ((k / 2) as isize, h * w);
    for i in 0..k {
        let dy = i as isize - p;
        let (y0, y1) = valid(h, dy);
        for j in 0..k {
            let dx = j as isize - p;
            let (x0, x1) = valid(w, dx);
            if x0 == x1 {
                continue;
            }
            let row = &rows[(i * k + j) * hw..(i * k + j + 1) * hw];
            for y in y0..y1 {
                let dst = ((y as isize + dy) as usize) * w;
                let d0 = (dst as isize + x0 as isize + dx) as usize;
                let d = &mut plane[d0..d0 + (x1 - x0)];
                for (o, v) in d.iter_mut().zip(&row[y * w + x0..y * w + x1]) {
                    *o += v;
                }
            }
        }
    }
}

/// (B, C, H, W) -> (B, C*k*k, H*W): tap `(i, j)` of channel `c` is row `c*k*k + i*k + j`.
pub(super) struct Im2col {
    pub(super) k: usize,
}

impl CustomOp1 for Im2col {
    fn name(&self) -> &'static str {
        "ifp-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let x = f32_slice(s, l, self.name())?;
        let (k, hw) = (self.k, h * w);
        let mut out = vec![0f32; b * c * k * k * hw];
        // One chunk of k*k rows per input plane (b, c).
        out.par_chunks_mut(k * k * hw)
            .zip(x.par_chunks(hw))
            .for_each(|(rows, plane)| im2col_plane(rows, plane, k, h, w));
        Ok((CpuStorage::F32(out), Shape::from((b, c * k * k, hw))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::im2col(s, l, self.k)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        let g = grad.contiguous()?;
        Ok(Some(g.apply_op1_no_bwd(&Col2im { k: self.k, h, w })?))
    }
}

/// The adjoint of `Im2col`: (B, C*k*k, H*W) -> (B, C, H, W), summing the taps.
pub(super) struct Col2im {
    pub(super) k: usize,
    pub(super) h: usize,
    pub(super) w: usize,
}

impl CustomOp1 for Col2im {
    fn name(&self) -> &'static str {
        "ifp-col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, ckk, _) = l.shape().dims3()?;
        let g = f32_slice(s, l, self.name())?;
        let (k, h, w) = (self.k, self.h, self.w);
        let (c, hw) = (ckk / (k * k), h * w);
        let mut out = vec![0f32; b * c * hw];
        out.par_chunks_mut(hw)
            .zip(g.par_chunks(k * k * hw))
            .for_each(|(plane, rows)| col2im_plane(plane, rows, k, h, w));
        Ok((CpuStorage::F32(out), Shape::from((b, c, h, w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::col2im(s, l, (self.k, self.h, self.w))
    }
}

/// Depthwise "same" convolution: x (B, C, H, W), weight (C, 1, k, k) -> (B, C, H, W).
pub(super) struct Depthwise {
    pub(super) k: usize,
}

/// `out[y, x] += wt * src[y + dy, x + dx]` over the valid region, for one plane.
#[inline]
fn shifted_axpy(out: &mut [f32], src: &[f32], wt: f32, h: usize, w: usize, dy: isize, dx: isize) {
    let (y0, y1) = valid(h, dy);
    let (x0, x1) = valid(w, dx);
    if x0 == x1 {
        return;
    }
    for y in y0..y1 {
        let s0 = ((y as isize + dy) as usize) * w;
        let s = &src[(s0 as isize + x0 as isize + dx) as usize..][..x1 - x0];
        for (o, v) in out[y * w + x0..y * w + x1].iter_mut().zip(s) {
            *o += wt * v;
        }
    }
}

/// One source row's share of a 3x3 stencil row: `o[x] (+)= a r[x-1] + b r[x] + c r[x+1]`, zero
/// outside the row; `add: false` overwrites `o`.
#[inline(always)]
fn row3(o: &mut [f32], r: &[f32], [a, b, c]: [f32; 3], add: bool) {
    let w = o.len();
    let put = |o: &mut f32, v: f32| {
        if add {
            *o += v
        } else {
            *o = v
        }
    };
    if w == 1 {
        put(&mut o[0], b * r[0]);
        return;
    }
    put(&mut o[0], b * r[0] + c * r[1]);
    put(&mut o[w - 1], a * r[w - 2] + b * r[w - 1]);
    // Equal-length slices, so the interior loop has no bounds checks and vectorises.
    let (l, m, rr) = (&r[..w - 2], &r[1..w - 1], &r[2..w]);
    let inner = o[1..w - 1].iter_mut().zip(l).zip(m).zip(rr);
    if add {
        for (((o, &l), &m), &r) in inner {
            *o += a * l + b * m + c * r;
        }
    } else {
        for (((o, &l), &m), &r) in inner {
            *o = a * l + b * m + c * r;
        }
    }
}

/// `out` = the "same" 3x3 correlation of one plane with `t` (row-major taps), zero padding.
/// Row by row, so each output row is written once from its three source rows while it is in
/// L1 (a pass per tap over the whole plane re-read and re-wrote the output nine times).
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn stencil3(out: &mut [f32], src: &[f32], t: &[f32], h: usize, w: usize) {
    for (y, o) in out.chunks_exact_mut(w).enumerate().take(h) {
        row3(o, &src[y * w..][..w], [t[3], t[4], t[5]], false);
        if y > 0 {
            row3(o, &src[(y - 1) * w..][..w], [t[0], t[1], t[2]], true);
        }
        if y + 1 < h {
            row3(o, &src[(y + 1) * w..][..w], [t[6], t[7], t[8]], true);
        }
    }
}

/// Depthwise "same" convolution of x (B, C, H, W) with weight (C, 1, k, k), on the CPU.
pub(super) fn depthwise_forward(x: &[f32], wt: &[f32], dims: [usize; 4], k: usize) -> Vec<f32> {
    depthwise_into_room(x, wt, dims, k, 0)
}

/// [`depthwise_forward`] into a buffer with room for `room` more values.
fn depthwise_into_room(x: &[f32], wt: &[f32], dims: [usize; 4], k: usize, room: usize) -> Vec<f32> {
    let [b, c, h, w] = dims;
    let (p, hw) = ((k / 2) as isize, h * w);
    let mut out = zeros_with_room(b * c * hw, room);
    out.par_chunks_mut(hw)
        .zip(x.par_chunks(hw))
        .enumerate()
        .for_each(|(n, (o, plane))| {
            let taps = &wt[(n % c) * k * k..][..k * k];
            if k == 3 {
                return stencil3(o, plane, taps, h, w);
            }
            for i in 0..k {
                for j in 0..k {
                    shifted_axpy(
                        o,
                        plane,
                        taps[i * k + j],
                        h,
                        w,
                        i as isize - p,
                        j as isize - p,
                    );
                }
            }
        });
    out
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "ifp-depthwise"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::depthwise_apply(s1, l1, s2, l2, self.k, false)
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l1.shape().dims4()?;
        let x = f32_slice(s1, l1, self.name())?;
        let wt = f32_slice(s2, l2, self.name())?;
        let out = depthwise_forward(x, wt, [b, c, h, w], self.k);
        Ok((CpuStorage::F32(out), Shape::from((b, c, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wt: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let gx = g.apply_op2_no_bwd(wt, &DepthwiseInputGrad { k: self.k })?;
        let gw = x.apply_op2_no_bwd(&g, &DepthwiseWeightGrad { k: self.k })?;
        Ok((Some(gx), Some(gw)))
    }
}

/// The input gradient of [`depthwise_forward`] from the output gradient g (B, C, H, W): the
/// transposed correlation, i.e. the correlation with each channel's kernel turned by 180
/// degrees (x[y + i - p] fed out[y], so out-grad at y flows to x at y + i - p).
pub(super) fn depthwise_input_grad(
    g: &[f32],
    wt: &[f32],
    dims: [usize; 4],
    k: usize,
    room: usize,
) -> Vec<f32> {
    let turned: Vec<f32> = wt
        .chunks(k * k)
        .flat_map(|taps| taps.iter().rev().copied())
        .collect();
    depthwise_into_room(g, &turned, dims, k, room)
}

/// d(out)/d(x): the transposed depthwise convolution of the output gradient.
struct DepthwiseInputGrad {
    k: usize,
}

impl CustomOp2 for DepthwiseInputGrad {
    fn name(&self) -> &'static str {
        "ifp-depthwise-grad-input"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::depthwise_apply(s1, l1, s2, l2, self.k, true)
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l1.shape().dims4()?;
        let g = f32_slice(s1, l1, self.name())?;
        let wt = f32_slice(s2, l2, self.name())?;
        let out = depthwise_input_grad(g, wt, [b, c, h, w], self.k, 0);
        Ok((CpuStorage::F32(out), Shape::from((b, c, h, w))))
    }
}

/// Adds one plane's share to the k*k weight gradients of its channel: per tap, the sum over
/// pixels of grad * shifted x.
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn weight_grad_plane(taps: &mut [f32], xp: &[f32], gp: &[f32], k: usize, h: usize, w: usize) {
    let p = (k / 2) as isize;
    for i in 0..k {
        let dy = i as isize - p;
        let (y0, y1) = valid(h, dy);
        for j in 0..k {
            let dx = j as isize - p;
            let (x0, x1) = valid(w, dx);
            if x0 == x1 {
                continue;
            }
            // Accumulate in f64 per tap: these are long sums.
            let mut acc = 0f64;
            for y in y0..y1 {
                let s0 = (((y as isize + dy) as usize) * w) as isize + x0 as isize + dx;
                let xs = &xp[s0 as usize..][..x1 - x0];
                let gs = &gp[y * w + x0..y * w + x1];
                acc += super::dot_inline(xs, gs) as f64;
            }
            taps[i * k + j] += acc as f32;
        }
    }
}

/// The weight gradient (C, 1, k, k) of [`depthwise_forward`] from x and the output gradient g.
pub(super) fn depthwise_weight_grad(x: &[f32], g: &[f32], dims: [usize; 4], k: usize) -> Vec<f32> {
    let [b, c, h, w] = dims;
    let hw = h * w;
    let mut out = vec![0f32; c * k * k];
    out.par_chunks_mut(k * k)
        .enumerate()
        .for_each(|(ch, taps)| {
            for bi in 0..b {
                let off = (bi * c + ch) * hw;
                weight_grad_plane(taps, &x[off..off + hw], &g[off..off + hw], k, h, w);
            }
        });
    out
}

/// d(out)/d(weight): per channel and tap, the sum over batch and pixels of grad * shifted x.
struct DepthwiseWeightGrad {
    k: usize,
}

impl CustomOp2 for DepthwiseWeightGrad {
    fn name(&self) -> &'static str {
        "ifp-depthwise-grad-weight"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::depthwise_weight_grad(s1, l1, s2, l2, self.k)
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l1.shape().dims4()?;
        let x = f32_slice(s1, l1, self.name())?;
        let g = f32_slice(s2, l2, self.name())?;
        let k = self.k;
        let out = depthwise_weight_grad(x, g, [b, c, h, w], k);
        Ok((CpuStorage::F32(out), Shape::from((c, 1, k, k))))
    }
}
