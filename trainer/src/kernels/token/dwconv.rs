//! The depthwise "same" convolution with its bias over Uformer's tokens, channels last: the
//! LeFF's 3x3 convolution read and written as `(B, H*W, C)`, as the linear layers around it
//! use them. Composed, the tokens were transposed to `(B, C, H, W)` and back around the
//! convolution: two strided copies in each direction, and four graph nodes whose backward
//! candle zero-fills and adds at the LeFF's hidden width (four times the block's).
//!
//! The LeFF runs it between two GELUs (`Gelus::BOTH`), both inside the op. The first is
//! computed into a scratch buffer and recomputed in the backward pass, so the op keeps
//! only its input (the first linear layer's output). As separate ops, the GELU kept that same
//! tensor and the convolution kept the GELU's output, a second tensor at the LeFF's hidden
//! width, and candle zero-filled and added the gradient between them.
//!
//! Per output pixel the taps are added over the channels, which are contiguous, so the inner
//! loops run over whole channel rows. Backward: the input's gradient is the same convolution
//! of the output's gradient with the kernel flipped; the weight's and the bias's gradients are
//! partial sums over fixed blocks of image rows, added in block order (the result does not
//! depend on the thread count).

use std::borrow::Cow;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;

use super::gelu::{gelu_grad, gelu_in_place, gelu_of, gelu_values};
use super::rows_per_task;
use crate::kernels::conv::valid;
use crate::kernels::{
    f32_slice, fused_applies, pack_after, unpack, zeros_with_room, Activation, CudaKernel,
};

/// The sizes of one call: `b` images of `h x w` pixels with `c` channels, a `k x k` kernel.
#[derive(Clone, Copy)]
pub(in crate::kernels) struct DepthwiseGeom {
    pub b: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub k: usize,
}

impl DepthwiseGeom {
    /// From tokens `(B, H*W, C)` of rows of `w` pixels and a weight `(C, 1, k, k)`.
    pub(super) fn new(x: &[usize], weight: &[usize], w: usize) -> Result<Self> {
        let bad = |why: String| candle_core::Error::Msg(format!("token depthwise: {why}"));
        let &[b, l, c] = x else {
            return Err(bad(format!("input {x:?} is not (B, H*W, C)")));
        };
        let &[wc, 1, k, k2] = weight else {
            return Err(bad(format!("weight {weight:?} is not (C, 1, k, k)")));
        };
        if wc != c || k != k2 || k.is_multiple_of(2) {
            return Err(bad(format!(
                "weight {weight:?} is not an odd square kernel for {c} channels"
            )));
        }
        if w == 0 || !l.is_multiple_of(w) {
            return Err(bad(format!("{l} tokens are not rows of {w} pixels")));
        }
        Ok(DepthwiseGeom {
            b,
            h: l / w,
            w,
            c,
            k,
        })
    }

    /// One bias per channel.
    fn check_bias(&self, len: usize) -> Result<()> {
        if len != self.c {
            return Err(candle_core::Error::Msg(format!(
                "token depthwise: {len} biases for {} channels",
                self.c
            )));
        }
        Ok(())
    }

    fn row(&self) -> usize {
        self.w * self.c
    }

    fn image(&self) -> usize {
        self.h * self.row()
    }

    /// The values of the weight's and the bias's gradients together: k*k taps and a bias per
    /// channel.
    pub(in crate::kernels) fn params(&self) -> usize {
        (self.k * self.k + 1) * self.c
    }
}

/// The weight `(C, k*k)` as taps `(k*k, C)`, flipped in both directions with `flip` (the
/// input gradient's kernel).
pub(super) fn taps(weight: &[f32], g: DepthwiseGeom, flip: bool) -> Vec<f32> {
    let kk = g.k * g.k;
    let mut t = vec![0f32; kk * g.c];
    for (ch, wc) in weight.chunks(kk).enumerate() {
        for (tap, &v) in wc.iter().enumerate() {
            let at = if flip { kk - 1 - tap } else { tap };
            t[at * g.c + ch] = v;
        }
    }
    t
}

/// One output row `y` of one image: `out = bias + sum over taps of tap * shifted input`.
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn conv_row(
    out: &mut [f32],
    img: &[f32],
    taps: &[f32],
    bias: Option<&[f32]>,
    y: usize,
    g: DepthwiseGeom,
) {
    let (c, k, p) = (g.c, g.k, (g.k / 2) as isize);
    match bias {
        Some(b) => out.chunks_mut(c).for_each(|o| o.copy_from_slice(b)),
        None => out.fill(0.0),
    }
    for i in 0..k {
        let yy = y as isize + i as isize - p;
        if yy < 0 || yy >= g.h as isize {
            continue;
        }
        let src = &img[yy as usize * g.row()..][..g.row()];
        for j in 0..k {
            let d = j as isize - p;
            let (lo, hi) = valid(g.w, d);
            if lo == hi {
                continue;
            }
            let tap = &taps[(i * k + j) * c..][..c];
            let shifted = (lo as isize + d) as usize;
            let dst = out[lo * c..hi * c].chunks_exact_mut(c);
            for (o, s) in dst.zip(src[shifted * c..].chunks_exact(c)) {
                for ((o, &s), &t) in o.iter_mut().zip(s).zip(tap) {
                    *o += t * s;
                }
            }
        }
    }
}

/// The convolution of all images, rows in parallel, each row then through a GELU with `gelu`.
pub(super) fn convolve(
    x: &[f32],
    taps: &[f32],
    bias: Option<&[f32]>,
    gelu: bool,
    g: DepthwiseGeom,
    room: usize,
) -> Vec<f32> {
    let mut out = zeros_with_room(x.len(), room);
    out.par_chunks_mut(g.image())
        .zip(x.par_chunks(g.image()))
        .for_each(|(oi, img)| {
            oi.par_chunks_mut(g.row()).enumerate().for_each(|(y, row)| {
                conv_row(row, img, taps, bias, y, g);
                if gelu {
                    gelu_in_place(row);
                }
            });
        });
    out
}

/// Adds one output row's contribution to the weight gradient `acc` (taps `(k*k, C)`, then
/// the bias gradient `(C)`).
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn weight_grad_row(acc: &mut [f32], img: &[f32], dy: &[f32], y: usize, g: DepthwiseGeom) {
    let (c, k, p) = (g.c, g.k, (g.k / 2) as isize);
    let (tap_acc, bias_acc) = acc.split_at_mut(k * k * c);
    for d in dy.chunks_exact(c) {
        for (a, &v) in bias_acc.iter_mut().zip(d) {
            *a += v;
        }
    }
    for i in 0..k {
        let yy = y as isize + i as isize - p;
        if yy < 0 || yy >= g.h as isize {
            continue;
        }
        let src = &img[yy as usize * g.row()..][..g.row()];
        for j in 0..k {
            let d = j as isize - p;
            let (lo, hi) = valid(g.w, d);
            if lo == hi {
                continue;
            }
            let a = &mut tap_acc[(i * k + j) * c..][..c];
            let shifted = (lo as isize + d) as usize;
            let grads = dy[lo * c..hi * c].chunks_exact(c);
            for (dv, s) in grads.zip(src[shifted * c..].chunks_exact(c)) {
                for ((a, &dv), &s) in a.iter_mut().zip(dv).zip(s) {
                    *a += dv * s;
                }
            }
        }
    }
}

/// The weight `(C, 1, k, k)` and bias `(C)` gradients, flattened one after the other.
fn weight_grad(x: &[f32], dy: &[f32], g: DepthwiseGeom) -> Vec<f32> {
    let (kk, c) = (g.k * g.k, g.c);
    let rows = g.b * g.h;
    let per_task = rows_per_task(g.row()).max(1);
    let partials: Vec<Vec<f32>> = (0..rows.div_ceil(per_task))
        .into_par_iter()
        .map(|task| {
            let mut acc = vec![0f32; g.params()];
            for r in task * per_task..((task + 1) * per_task).min(rows) {
                let (bi, y) = (r / g.h, r % g.h);
                let img = &x[bi * g.image()..][..g.image()];
                let dyr = &dy[r * g.row()..][..g.row()];
                weight_grad_row(&mut acc, img, dyr, y, g);
            }
            acc
        })
        .collect();
    let mut sum = vec![0f32; g.params()];
    for p in partials {
        sum.iter_mut().zip(&p).for_each(|(a, v)| *a += v);
    }
    // (k*k, C) taps -> (C, k*k), then the bias.
    let mut out = vec![0f32; g.params()];
    for (tap, row) in sum[..kk * c].chunks(c).enumerate() {
        for (ch, &v) in row.iter().enumerate() {
            out[ch * kk + tap] = v;
        }
    }
    out[kk * c..].copy_from_slice(&sum[kk * c..]);
    out
}

/// The exact GELUs around the convolution of [`depthwise`]: on its input, on its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gelus {
    pub before: bool,
    pub after: bool,
}

impl Gelus {
    /// The convolution alone.
    pub const NONE: Gelus = Gelus {
        before: false,
        after: false,
    };
    /// A GELU on the output only.
    pub const AFTER: Gelus = Gelus {
        before: false,
        after: true,
    };
    /// GELU, convolution, GELU: the LeFF's.
    pub const BOTH: Gelus = Gelus {
        before: true,
        after: true,
    };
}

/// `(x, weight, bias)`: the convolution of tokens in rows of `w` pixels, with the GELUs of
/// `gelus`.
pub(super) struct TokenDepthwise {
    pub(super) w: usize,
    pub(super) gelus: Gelus,
}

impl CustomOp3 for TokenDepthwise {
    fn name(&self) -> &'static str {
        "ifp-token-depthwise"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = DepthwiseGeom::new(l1.dims(), l2.dims(), self.w)?;
        let x = f32_slice(s1, l1, self.name())?;
        let weight = f32_slice(s2, l2, self.name())?;
        let bias = f32_slice(s3, l3, self.name())?;
        g.check_bias(bias.len())?;
        let x = if self.gelus.before {
            Cow::Owned(gelu_of(x))
        } else {
            Cow::Borrowed(x)
        };
        let out = convolve(
            &x,
            &taps(weight, g, false),
            Some(bias),
            self.gelus.after,
            g,
            0,
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = DepthwiseGeom::new(l1.dims(), l2.dims(), self.w)?;
        g.check_bias(l3.shape().elem_count())?;
        let (w, b) = ((s2, l2), (s3, l3));
        let after = self.gelus.after;
        if self.gelus.before {
            // The input's GELU into a scratch buffer (the `token` GELU kernel), freed on return.
            let (a, shape) = crate::kernels::cuda::token::gelu((s1, l1))?;
            let la = Layout::contiguous(shape);
            return crate::kernels::cuda::dwconv::token_depthwise(&g, (&a, &la), w, b, after);
        }
        crate::kernels::cuda::dwconv::token_depthwise(&g, (s1, l1), w, b, after)
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The convolution's input and output are recomputed rather than kept: the GELU of x
        // (one erf per value) and, behind a GELU, the output (nine products per value).
        let a = if self.gelus.before {
            gelu_values(x)?
        } else {
            x.clone()
        };
        let grad = if self.gelus.after {
            let plain = TokenDepthwise {
                w: self.w,
                gelus: Gelus::NONE,
            };
            gelu_grad(&a.apply_op3_no_bwd(weight, bias, &plain)?, grad)?
        } else {
            grad.contiguous()?
        };
        let backward = TokenDepthwiseBackward { w: self.w };
        let packed = a.apply_op3_no_bwd(weight, &grad, &backward)?;
        let shapes = [x.shape(), weight.shape(), bias.shape()];
        let mut parts = unpack(&packed, &shapes)?.into_iter();
        let da = parts.next();
        let dx = match da {
            Some(da) if self.gelus.before => Some(gelu_grad(x, &da)?),
            da => da,
        };
        Ok((dx, parts.next(), parts.next()))
    }
}

/// (x, weight, dy) -> [dx, dweight, dbias] flattened.
pub(super) struct TokenDepthwiseBackward {
    pub(super) w: usize,
}

impl CustomOp3 for TokenDepthwiseBackward {
    fn name(&self) -> &'static str {
        "ifp-token-depthwise-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = DepthwiseGeom::new(l1.dims(), l2.dims(), self.w)?;
        let x = f32_slice(s1, l1, self.name())?;
        let weight = f32_slice(s2, l2, self.name())?;
        let dy = f32_slice(s3, l3, self.name())?;
        let mut out = convolve(dy, &taps(weight, g, true), None, false, g, g.params());
        pack_after(&mut out, &[&weight_grad(x, dy, g)]);
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = DepthwiseGeom::new(l1.dims(), l2.dims(), self.w)?;
        let (x, w, dy) = ((s1, l1), (s2, l2), (s3, l3));
        crate::kernels::cuda::dwconv::token_depthwise_backward(&g, x, w, dy)
    }
}

/// Where [`depthwise`] runs as one op: float32 on the CPU, and on CUDA where `IFP_CUDA_FUSED`
/// turns on `dwconv` (`cuda/dwconv.cu`; with its GELUs it also takes the `token` GELU kernels,
/// whatever that switch says); not under autocast, which lowers convolutions,
/// unless it reads its float32 input there ([`crate::kernels::runs_uncast`]), as the
/// channels-first one does. Elsewhere it is the composed version.
pub fn depthwise_applies(x: &Tensor) -> bool {
    crate::kernels::runs_uncast(x) && fused_applies(x, CudaKernel::Dwconv)
}

/// The depthwise "same" convolution plus bias of tokens `(B, H*W, C)` laid out in rows of `w`
/// pixels: weight `(C, 1, k, k)` (k odd), bias `(C)` -> `(B, H*W, C)`; with the exact GELUs
/// of `gelus` before and after it (the LeFF's). One op where [`depthwise_applies`], else
/// [`depthwise_composed`].
pub fn depthwise(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    w: usize,
    gelus: Gelus,
) -> Result<Tensor> {
    let float32 = [weight, bias].iter().all(|t| t.dtype() == x.dtype());
    if !(depthwise_applies(x) && float32) {
        return depthwise_composed(x, weight, bias, w, gelus);
    }
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        TokenDepthwise { w, gelus },
    )
}

/// `f` applied to tokens `(B, H*W, C)` in rows of `w` pixels as planes `(B, C, H, W)`, its
/// result `(B, O, H, W)` turned back into tokens `(B, H*W, O)`: how a channels-first
/// convolution runs on tokens.
pub fn through_planes(
    x: &Tensor,
    w: usize,
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (b, l, c) = x.dims3()?;
    if w == 0 || !l.is_multiple_of(w) {
        return Err(candle_core::Error::Msg(format!(
            "tokens as planes: {l} tokens are not rows of {w} pixels"
        )));
    }
    let y = f(&x.transpose(1, 2)?.reshape((b, c, l / w, w))?)?;
    let o = y.dim(1)?;
    y.reshape((b, o, l))?.transpose(1, 2)
}

/// [`depthwise`] through the channels-first convolution (any device and dtype): [`super::gelu`]
/// with `gelus.before`, the tokens transposed to `(B, C, H, W)`, `kernels::depthwise` and its
/// bias, transposed back, then [`super::gelu`] with `gelus.after`.
pub fn depthwise_composed(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    w: usize,
    gelus: Gelus,
) -> Result<Tensor> {
    let k = weight.dim(3)?;
    let x = if gelus.before {
        super::gelu(x)?
    } else {
        x.clone()
    };
    let y = through_planes(&x, w, |planes| {
        let y = crate::kernels::depthwise(planes, weight, k)?;
        crate::kernels::bias_act(&y, bias, Activation::Identity)
    })?;
    if gelus.after {
        super::gelu(&y)
    } else {
        Ok(y)
    }
}
