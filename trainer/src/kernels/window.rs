//! Uformer's window partition with its cyclic shift, and the window reverse that undoes both,
//! each as one permuting copy (`WindowShuffle`), the backward of each being the other.
//! Composed, the shift is `roll` twice (each a pair of narrows and a concatenation, whose
//! backward zero-pads every piece to full size) and the partition a permute made contiguous:
//! for a shifted block, six full-size copies forward and more backward, on every block.
//!
//! Layouts: the image as Uformer's tokens (B, H*W, C), pixels row-major (so the blocks need no
//! reshape around the ops, each of which would be a node whose gradient candle zero-fills and
//! adds into); the windows (B*nW, win*win, C), windows in row-major order
//! over the (H/win, W/win) grid, tokens row-major inside a window. With shift s, window token
//! (ty, tx) of window (wy, wx) is the pixel ((wy*win + ty + s) mod H, (wx*win + tx + s) mod W):
//! `torch.roll(x, (-s, -s), (1, 2))` followed by the partition. Rows of C channels move whole.
//!
//! On the CPU (float32) and on CUDA (`cuda/window.cu`, float32 and bfloat16, where
//! `IFP_CUDA_FUSED` names `window`). So is the reverse with the block's residual added
//! (`window_reverse_add`), in float32 only; elsewhere it is the reverse and the addition.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::f32_slice;
use super::switch::{kernel_applies, CudaKernel};

/// The windows of an h x w image: `win` x `win` windows after a cyclic shift by `shift` (see
/// the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowGrid {
    pub win: usize,
    pub shift: usize,
    /// The image's height and width.
    pub h: usize,
    pub w: usize,
}

/// The permutation of rows between an image and its windows (see the module doc).
#[derive(Debug, Clone, Copy)]
pub(super) struct WindowShuffle {
    pub(super) grid: WindowGrid,
    /// False: image (B, H*W, C) -> windows; true: windows -> image.
    pub(super) reverse: bool,
}

impl WindowShuffle {
    /// The source row of destination row `r` (rows of C values; see the module doc). The CUDA
    /// kernel computes the same.
    pub(super) fn source_row(&self, r: usize) -> usize {
        let WindowGrid {
            win,
            shift: s,
            h,
            w,
        } = self.grid;
        let (nh, nw, n) = (h / win, w / win, win * win);
        if self.reverse {
            let (b, y, x) = (r / (h * w), (r / w) % h, r % w);
            let (y, x) = ((y + h - s % h) % h, (x + w - s % w) % w);
            ((b * nh + y / win) * nw + x / win) * n + (y % win) * win + x % win
        } else {
            let (t, bw) = (r % n, r / n);
            let (b, wy, wx) = (bw / (nh * nw), (bw % (nh * nw)) / nw, bw % nw);
            let y = (wy * win + t / win + s) % h;
            let x = (wx * win + t % win + s) % w;
            (b * h + y) * w + x
        }
    }

    /// Images in a tensor of `shape` and its channels, checking the shape fits.
    fn batch_and_channels(&self, shape: &Shape) -> Result<(usize, usize)> {
        let WindowGrid { win, h, w, .. } = self.grid;
        let fits = win > 0 && h % win == 0 && w % win == 0;
        let dims = shape.dims();
        let got = match (self.reverse, dims) {
            (false, &[b, l, c]) if fits && l == h * w => Some((b, c)),
            (true, &[bw, n, c]) if fits && n == win * win && bw % (h / win * (w / win)) == 0 => {
                Some((bw / (h / win * (w / win)), c))
            }
            _ => None,
        };
        got.ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "window {}: {dims:?} is not {} for {win}x{win} windows on {h}x{w}",
                if self.reverse { "reverse" } else { "partition" },
                if self.reverse {
                    "(B*nW, win*win, C)"
                } else {
                    "(B, H*W, C)"
                }
            ))
        })
    }

    /// The shape of the result for `b` images of `c` channels.
    fn out_shape(&self, b: usize, c: usize) -> Shape {
        if self.reverse {
            Shape::from((b, self.grid.h * self.grid.w, c))
        } else {
            let WindowGrid { win, h, w, .. } = self.grid;
            Shape::from((b * (h / win) * (w / win), win * win, c))
        }
    }
}

impl CustomOp1 for WindowShuffle {
    fn name(&self) -> &'static str {
        "ifp-window-shuffle"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c) = self.batch_and_channels(l.shape())?;
        let x = f32_slice(s, l, self.name())?;
        let mut out = vec![0f32; x.len()];
        if c > 0 {
            out.par_chunks_mut(c).enumerate().for_each(|(r, row)| {
                let src = self.source_row(r) * c;
                row.copy_from_slice(&x[src..src + c]);
            });
        }
        Ok((CpuStorage::F32(out), self.out_shape(b, c)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, c) = self.batch_and_channels(l.shape())?;
        let out = super::cuda::window_shuffle(s, l, self, c)?;
        Ok((out, self.out_shape(b, c)))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let back = WindowShuffle {
            reverse: !self.reverse,
            ..*self
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

/// Where the window ops run as one copy: float32 on the CPU; float32 or bfloat16 on CUDA where
/// [`CudaKernel::Window`] is on.
fn window_applicable(x: &Tensor) -> bool {
    kernel_applies(x, Some(CudaKernel::Window), &[DType::F32, DType::BF16])
}

/// x, an h x w image as tokens (B, H*W, C), rolled by `-shift` along H and W, then cut into
/// win x win windows: (B*nW, win*win, C). One copy where a kernel applies, else
/// [`window_partition_composed`].
pub fn window_partition(x: &Tensor, grid: WindowGrid) -> Result<Tensor> {
    if !window_applicable(x) {
        return window_partition_composed(x, grid);
    }
    let op = WindowShuffle {
        grid,
        reverse: false,
    };
    x.contiguous()?.apply_op1(op)
}

/// [`window_partition`] from tensor ops (any device and dtype).
pub fn window_partition_composed(x: &Tensor, grid: WindowGrid) -> Result<Tensor> {
    let WindowGrid { win, shift, h, w } = grid;
    let (b, _, c) = x.dims3()?;
    let x = x.reshape((b, h, w, c))?;
    let s = shift as i32;
    let x = if s > 0 {
        x.roll(-s, 1)?.roll(-s, 2)?
    } else {
        x.clone()
    };
    let (nh, nw) = (h / win, w / win);
    x.reshape((b, nh, win, nw, win, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .reshape((b * nh * nw, win * win, c))
}

/// The inverse of [`window_partition`]: windows (B*nW, win*win, C) of an h x w image put back
/// in place and rolled by `+shift`, as tokens (B, H*W, C). One copy where a kernel applies, else
/// [`window_reverse_composed`].
pub fn window_reverse(windows: &Tensor, grid: WindowGrid) -> Result<Tensor> {
    if !window_applicable(windows) {
        return window_reverse_composed(windows, grid);
    }
    let op = WindowShuffle {
        grid,
        reverse: true,
    };
    windows.contiguous()?.apply_op1(op)
}

/// The window reverse added to a residual, `x + s[b] * reverse(windows)` with `s[b]` the scale
/// of image `b` (1 for all without scales): the LeWin block's attention branch put back in
/// place and added to its input under stochastic depth. One op: its backward is `dy` for `x`
/// and `partition(dy * s)` for the windows in one pass, so no reversed copy of the branch is
/// kept for the backward pass or zero-filled and added into there. Each value is rounded as
/// the composed version rounds it (the product, then the sum).
struct WindowReverseAdd {
    /// The reverse (windows -> image).
    shuffle: WindowShuffle,
    scales: Option<Vec<f32>>,
}

impl WindowReverseAdd {
    /// The images and channels of windows laid out as `l1`, checked against a residual laid
    /// out as `l2` and the scales.
    fn images_and_channels(&self, l1: &Layout, l2: &Layout) -> Result<(usize, usize)> {
        let (b, c) = self.shuffle.batch_and_channels(l1.shape())?;
        if l2.shape() != &self.shuffle.out_shape(b, c)
            || self.scales.as_ref().is_some_and(|s| s.len() != b)
        {
            return Err(candle_core::Error::Msg(format!(
                "window reverse with residual: {:?} windows of {b} images, a residual {:?} \
                 and {:?} scales",
                l1.dims(),
                l2.dims(),
                self.scales.as_ref().map(Vec::len)
            )));
        }
        Ok((b, c))
    }

    /// The scale of image row `r`: 1 without scales (`v * 1` is `v` exactly, so the sum is
    /// the plain addition's, as in the CUDA kernel).
    fn scale(&self, r: usize) -> f32 {
        let rows = self.shuffle.grid.h * self.shuffle.grid.w;
        self.scales.as_ref().map_or(1.0, |s| s[r / rows])
    }
}

impl CustomOp2 for WindowReverseAdd {
    fn name(&self) -> &'static str {
        "ifp-window-reverse-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c) = self.images_and_channels(l1, l2)?;
        let shape = self.shuffle.out_shape(b, c);
        let windows = f32_slice(s1, l1, self.name())?;
        let x = f32_slice(s2, l2, self.name())?;
        let mut out = vec![0f32; x.len()];
        if c > 0 {
            out.par_chunks_mut(c)
                .zip(x.par_chunks(c))
                .enumerate()
                .for_each(|(r, (row, xs))| {
                    let src = &windows[self.shuffle.source_row(r) * c..][..c];
                    let s = self.scale(r);
                    for ((o, x), v) in row.iter_mut().zip(xs).zip(src) {
                        *o = x + v * s;
                    }
                });
        }
        Ok((CpuStorage::F32(out), shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, c) = self.images_and_channels(l1, l2)?;
        let scales = self.scales.as_deref();
        let out = super::cuda::window::reverse_add(
            (s1, l1),
            (s2, l2),
            scales,
            &self.shuffle.grid,
            (b, c),
        )?;
        Ok((out, self.shuffle.out_shape(b, c)))
    }

    fn bwd(
        &self,
        _windows: &Tensor,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let partition = WindowShuffle {
            reverse: false,
            ..self.shuffle
        };
        let grad = grad.contiguous()?;
        // Without scales the windows' gradient is the plain partition.
        let dwindows = match &self.scales {
            Some(scales) => grad.apply_op1_no_bwd(&ScaledPartition {
                shuffle: partition,
                scales: scales.clone(),
            })?,
            None => grad.apply_op1_no_bwd(&partition)?,
        };
        Ok((Some(dwindows), Some(grad)))
    }
}

/// `partition(dy * s)`: the windows' gradient of [`WindowReverseAdd`] with scales.
struct ScaledPartition {
    /// The partition (image -> windows).
    shuffle: WindowShuffle,
    scales: Vec<f32>,
}

impl CustomOp1 for ScaledPartition {
    fn name(&self) -> &'static str {
        "ifp-window-partition-scaled"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c) = self.shuffle.batch_and_channels(l.shape())?;
        let dy = f32_slice(s, l, self.name())?;
        let rows = self.shuffle.grid.h * self.shuffle.grid.w;
        let mut out = vec![0f32; dy.len()];
        if c > 0 {
            out.par_chunks_mut(c).enumerate().for_each(|(r, row)| {
                let at = self.shuffle.source_row(r);
                let s = self.scales[at / rows];
                for (o, v) in row.iter_mut().zip(&dy[at * c..][..c]) {
                    *o = v * s;
                }
            });
        }
        Ok((CpuStorage::F32(out), self.shuffle.out_shape(b, c)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, c) = self.shuffle.batch_and_channels(l.shape())?;
        let out =
            super::cuda::window::partition_scaled((s, l), &self.scales, &self.shuffle.grid, c)?;
        Ok((out, self.shuffle.out_shape(b, c)))
    }
}

/// `x + s[b] * window_reverse(windows)`, with `s[b]` the scale of image `b` of `x` (B, H*W, C)
/// (stochastic depth's) or 1 without scales: one op in float32 on the CPU and on CUDA where
/// `IFP_CUDA_FUSED` turns on `window`, else [`window_reverse_add_composed`].
pub fn window_reverse_add(
    windows: &Tensor,
    x: &Tensor,
    scales: Option<&[f32]>,
    grid: WindowGrid,
) -> Result<Tensor> {
    let fits = x.dtype() == windows.dtype() && x.elem_count() > 0;
    if !(fits && kernel_applies(x, Some(CudaKernel::Window), &[DType::F32])) {
        return window_reverse_add_composed(windows, x, scales, grid);
    }
    let op = WindowReverseAdd {
        shuffle: WindowShuffle {
            grid,
            reverse: true,
        },
        scales: scales.map(<[f32]>::to_vec),
    };
    windows.contiguous()?.apply_op2(&x.contiguous()?, op)
}

/// [`window_reverse_add`] as [`window_reverse`] then [`super::token::scaled_residual`].
pub fn window_reverse_add_composed(
    windows: &Tensor,
    x: &Tensor,
    scales: Option<&[f32]>,
    grid: WindowGrid,
) -> Result<Tensor> {
    let branch = window_reverse(windows, grid)?;
    super::token::scaled_residual(x, &branch, scales)
}

/// [`window_reverse`] from tensor ops (any device and dtype).
pub fn window_reverse_composed(windows: &Tensor, grid: WindowGrid) -> Result<Tensor> {
    let WindowGrid { win, shift, h, w } = grid;
    let (bw, _, c) = windows.dims3()?;
    let (nh, nw) = (h / win, w / win);
    let b = bw / (nh * nw).max(1);
    let x = windows
        .reshape((b, nh, nw, win, win, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .reshape((b, h, w, c))?;
    let s = shift as i32;
    let x = if s > 0 { x.roll(s, 1)?.roll(s, 2)? } else { x };
    x.reshape((b, h * w, c))
}
