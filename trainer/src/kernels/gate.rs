//! The gate of Restormer's GDFN as one fused op: `y = gelu(x1) * x2` where x1 and x2 are the
//! two channel halves of x (B, 2h, H, W). Composed, it is two narrows (whose backward pads and
//! concatenates), an erf GELU (whose candle backward is about ten full-size ops) and a product.
//! Backward: `dx1 = dy * x2 * (Phi(x1) + x1 phi(x1))`, `dx2 = dy * gelu(x1)`, written straight
//! into one (B, 2h, H, W) buffer. The gate (not the depthwise-fused one) also runs on CUDA
//! (`cuda/gate.cu`, float32 and bfloat16) where `IFP_CUDA_FUSED` turns on `gate`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;

use super::conv::{depthwise_forward, depthwise_input_grad, depthwise_weight_grad, f32_slice};
use super::pack_after;

/// The normal CDF `0.5 (1 + erf(x / sqrt 2))`, with PyTorch's vectorised erf.
#[inline(always)]
fn cdf(x: f32) -> f32 {
    0.5 * (1.0 + super::math::erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Pixels per parallel task.
const CHUNK: usize = 8 * 1024;

/// `o = gelu(x1) * x2` over one chunk (`o.len()` values).
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn forward_chunk(o: &mut [f32], x1: &[f32], x2: &[f32]) {
    for ((ov, &a), &g) in o.iter_mut().zip(x1).zip(x2) {
        *ov = a * cdf(a) * g;
    }
}

/// `d1 = dy x2 gelu'(x1)`, `d2 = dy gelu(x1)` over one chunk (`d1.len()` values).
#[multiversion(targets("x86_64+avx+avx2+fma"))]
fn backward_chunk(d1: &mut [f32], d2: &mut [f32], x1: &[f32], x2: &[f32], dy: &[f32]) {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let ins = x1.iter().zip(x2).zip(dy);
    for ((o1, o2), ((&a, &v), &gv)) in d1.iter_mut().zip(d2.iter_mut()).zip(ins) {
        let phi = cdf(a);
        let pdf = INV_SQRT_2PI * super::math::exp(-0.5 * a * a);
        *o1 = gv * v * (phi + a * pdf);
        *o2 = gv * a * phi;
    }
}

/// `gelu(x1) * x2` for x of `b` images, each two halves of `half` values.
fn gate_forward(x: &[f32], b: usize, half: usize) -> Vec<f32> {
    let mut out = vec![0f32; b * half];
    out.par_chunks_mut(half).enumerate().for_each(|(bi, o)| {
        let (x1, x2) = x[bi * 2 * half..][..2 * half].split_at(half);
        o.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, oc)| {
            let off = ci * CHUNK;
            forward_chunk(oc, &x1[off..], &x2[off..]);
        });
    });
    out
}

/// The gradient (shaped like x) of [`gate_forward`] from the output gradient dy.
fn gate_backward(x: &[f32], dy: &[f32], b: usize, half: usize) -> Vec<f32> {
    let mut out = vec![0f32; b * 2 * half];
    out.par_chunks_mut(2 * half)
        .enumerate()
        .for_each(|(bi, o)| {
            let (x1, x2) = x[bi * 2 * half..][..2 * half].split_at(half);
            let g = &dy[bi * half..][..half];
            let (d1, d2) = o.split_at_mut(half);
            d1.par_chunks_mut(CHUNK)
                .zip(d2.par_chunks_mut(CHUNK))
                .enumerate()
                .for_each(|(ci, (c1, c2))| {
                    let (off, n) = (ci * CHUNK, c1.len());
                    backward_chunk(c1, c2, &x1[off..off + n], &x2[off..off + n], &g[off..]);
                });
        });
    out
}

pub(super) struct GeluGate;

/// Splits (B, 2h, H, W) into per-image halves: `(b, h, plane)`.
fn dims(l: &Layout) -> Result<(usize, usize, usize)> {
    let (b, c2, hh, ww) = l.shape().dims4()?;
    if c2 % 2 != 0 {
        return Err(candle_core::Error::Msg(format!(
            "gelu gate: {c2} channels are not two halves"
        )));
    }
    Ok((b, c2 / 2, hh * ww))
}

impl CustomOp1 for GeluGate {
    fn name(&self) -> &'static str {
        "ifp-gelu-gate"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, h, hw) = dims(l)?;
        let x = f32_slice(s, l, self.name())?;
        let out = gate_forward(x, b, h * hw);
        let (_, _, hh, ww) = l.shape().dims4()?;
        Ok((CpuStorage::F32(out), Shape::from((b, h, hh, ww))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        dims(l)?;
        super::cuda::gelu_gate(s, l)
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(
            &grad.contiguous()?,
            &GeluGateBackward,
        )?))
    }
}

struct GeluGateBackward;

impl CustomOp2 for GeluGateBackward {
    fn name(&self) -> &'static str {
        "ifp-gelu-gate-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, h, hw) = dims(l1)?;
        let x = f32_slice(s1, l1, self.name())?;
        let dy = f32_slice(s2, l2, self.name())?;
        let out = gate_backward(x, dy, b, h * hw);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        dims(l1)?;
        super::cuda::gelu_gate_backward(s1, l1, s2, l2)
    }
}

/// The GDFN's depthwise convolution and gate as one op: `gate(dwconv(x))` of x (B, 2h, H, W)
/// with a bias-free depthwise weight (2h, 1, k, k) -> (B, h, H, W). The convolution's output
/// is neither kept for the backward pass (which recomputes it: a cheap stencil) nor a graph
/// node (whose gradient candle would zero-fill and add): these are the largest tensors of a
/// Restormer block.
pub(super) struct DwGate {
    pub(super) k: usize,
}

impl CustomOp2 for DwGate {
    fn name(&self) -> &'static str {
        "ifp-dwconv-gelu-gate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, h, hw) = dims(l1)?;
        let x = f32_slice(s1, l1, self.name())?;
        let wt = f32_slice(s2, l2, self.name())?;
        let (_, c2, hh, ww) = l1.shape().dims4()?;
        let y = depthwise_forward(x, wt, [b, c2, hh, ww], self.k);
        let out = gate_forward(&y, b, h * hw);
        Ok((CpuStorage::F32(out), Shape::from((b, h, hh, ww))))
    }

    /// The depthwise and gate kernels in turn; the convolution's output lives only here.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        dims(l1)?;
        let (y, ys) = super::cuda::depthwise_apply(s1, l1, s2, l2, self.k, false)?;
        super::cuda::gelu_gate(&y, &Layout::contiguous(ys))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wt: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = x.apply_op3_no_bwd(wt, &grad.contiguous()?, &DwGateBackward { k: self.k })?;
        let [dx, dw]: [Tensor; 2] = super::unpack(&both, &[x.shape(), wt.shape()])?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("dwconv gate: two gradients".into()))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// (x, W, dout) -> [dx (B*2h*H*W values), dW (2h*k*k values)].
struct DwGateBackward {
    k: usize,
}

impl CustomOp3 for DwGateBackward {
    fn name(&self) -> &'static str {
        "ifp-dwconv-gelu-gate-backward"
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
        let (b, h, hw) = dims(l1)?;
        let x = f32_slice(s1, l1, self.name())?;
        let wt = f32_slice(s2, l2, self.name())?;
        let dout = f32_slice(s3, l3, self.name())?;
        let (_, c2, hh, ww) = l1.shape().dims4()?;
        let d = [b, c2, hh, ww];
        let y = depthwise_forward(x, wt, d, self.k);
        let dy = gate_backward(&y, dout, b, h * hw);
        drop(y);
        let mut out = depthwise_input_grad(&dy, wt, d, self.k, wt.len());
        pack_after(&mut out, &[&depthwise_weight_grad(x, &dy, d, self.k)]);
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    /// The convolution recomputed, the gate's gradient, then the convolution's two gradients.
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
        use super::cuda::{depthwise_apply, depthwise_weight_grad, gelu_gate_backward, pack};
        dims(l1)?;
        let (y, ys) = depthwise_apply(s1, l1, s2, l2, self.k, false)?;
        let (dy, dys) = gelu_gate_backward(&y, &Layout::contiguous(ys), s3, l3)?;
        drop(y);
        let dyl = Layout::contiguous(dys);
        let (dx, dxs) = depthwise_apply(&dy, &dyl, s2, l2, self.k, true)?;
        let (dw, dws) = depthwise_weight_grad(s1, l1, &dy, &dyl, self.k)?;
        let (dxl, dwl) = (Layout::contiguous(dxs), Layout::contiguous(dws));
        let out = pack(&s1.device, &[(&dx, &dxl), (&dw, &dwl)])?;
        let n = l1.shape().elem_count() + l2.shape().elem_count();
        Ok((out, Shape::from(n)))
    }
}
