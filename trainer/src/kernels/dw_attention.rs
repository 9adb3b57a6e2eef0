//! Restormer's MDTA depthwise convolution and channel attention as one op (`DwAttention`): the
//! convolution's output (3C channels, the qkv of every pixel) is neither kept for the backward
//! pass, which recomputes it, nor a graph node whose gradient candle zero-fills and adds. The
//! attention itself, its maths and its CPU loops are `attention`'s; on CUDA the op runs the
//! depthwise kernel around the `mdta` launches.

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};

use super::attention::{backward, forward, Dims};
use super::conv::{depthwise_forward, depthwise_input_grad, depthwise_weight_grad, f32_slice};
use super::pack_after;

/// The attention's depthwise convolution and the attention as one op: x (B, 3C, H, W) (the
/// qkv 1x1 convolution's output), a bias-free depthwise weight (3C, 1, k, k) and the
/// temperatures -> (B, C, H, W). The convolution's output is neither kept for the backward
/// pass (which recomputes it) nor a graph node whose gradient candle zero-fills and adds.
pub(super) struct DwAttention {
    pub(super) heads: usize,
    pub(super) k: usize,
}

impl candle_core::CustomOp3 for DwAttention {
    fn name(&self) -> &'static str {
        "ifp-dwconv-channel-attention"
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
        let d = Dims::of(l1, self.heads)?;
        let x = f32_slice(s1, l1, self.name())?;
        let wt = f32_slice(s2, l2, self.name())?;
        let t = f32_slice(s3, l3, self.name())?;
        let (_, c3, hh, ww) = l1.shape().dims4()?;
        let y = depthwise_forward(x, wt, [d.b, c3, hh, ww], self.k);
        let out = forward(&y, t, d);
        Ok((CpuStorage::F32(out), Shape::from((d.b, d.c, hh, ww))))
    }

    /// The depthwise kernel, then the `mdta` op; the convolution's output lives only here.
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
        let d = Dims::of(l1, self.heads)?.heads();
        let (y, ys) = super::cuda::depthwise_apply(s1, l1, s2, l2, self.k, false)?;
        super::cuda::mdta::channel_attention(d, (&y, &Layout::contiguous(ys)), (s3, l3))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wt: &Tensor,
        t: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // A custom op takes at most three inputs: the few temperatures travel after the
        // weight, in one small tensor (on the device: no read back to the host).
        let wt_t = Tensor::cat(&[wt.flatten_all()?, t.flatten_all()?], 0)?;
        let packed = x.apply_op3_no_bwd(
            &wt_t,
            &grad.contiguous()?,
            &DwAttentionBackward {
                heads: self.heads,
                k: self.k,
            },
        )?;
        let per_image = Shape::from((x.dim(0)?, self.heads));
        let [dx, dw, dt]: [Tensor; 3] =
            super::unpack(&packed, &[x.shape(), wt.shape(), &per_image])?
                .try_into()
                .map_err(|_| candle_core::Error::Msg("dwconv attention: three gradients".into()))?;
        Ok((Some(dx), Some(dw), Some(dt.sum(0)?.reshape(t.shape())?)))
    }
}

/// (x, [W (3C*k*k values), t (heads)], dout) -> [dx (B*3C*H*W values), dW (3C*k*k),
/// dt (B*heads)].
struct DwAttentionBackward {
    heads: usize,
    k: usize,
}

impl DwAttentionBackward {
    /// The layouts of the weight and of the temperatures inside the packed second input.
    fn split(&self, l: &Layout, c3: usize) -> Result<(Layout, Layout)> {
        let kk = self.k * self.k;
        if l.shape().elem_count() != c3 * kk + self.heads {
            return Err(candle_core::Error::Msg(format!(
                "dwconv attention backward: {} weights and temperatures for {c3} channels",
                l.shape().elem_count()
            )));
        }
        let at = l.start_offset();
        Ok((
            Layout::contiguous_with_offset((c3, 1, self.k, self.k), at),
            Layout::contiguous_with_offset(self.heads, at + c3 * kk),
        ))
    }
}

impl candle_core::CustomOp3 for DwAttentionBackward {
    fn name(&self) -> &'static str {
        "ifp-dwconv-channel-attention-backward"
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
        let d = Dims::of(l1, self.heads)?;
        let (_, c3, hh, ww) = l1.shape().dims4()?;
        let (lw, lt) = self.split(l2, c3)?;
        let x = f32_slice(s1, l1, self.name())?;
        let wt = f32_slice(s2, &lw, self.name())?;
        let t = f32_slice(s2, &lt, self.name())?;
        let g = f32_slice(s3, l3, self.name())?;
        let dims = [d.b, c3, hh, ww];
        let y = depthwise_forward(x, wt, dims, self.k);
        let both = backward(&y, t, g, d);
        drop(y);
        let (dy, dt) = both.split_at(x.len());
        // The weight's gradient (its size) and the temperatures' follow dx.
        let mut out = depthwise_input_grad(dy, wt, dims, self.k, wt.len() + dt.len());
        pack_after(&mut out, &[&depthwise_weight_grad(x, dy, dims, self.k), dt]);
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    /// The convolution recomputed, the `mdta` op's backward, then the convolution's two
    /// gradients.
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
        use super::cuda::{depthwise_apply, depthwise_weight_grad, mdta, pack};
        let d = Dims::of(l1, self.heads)?;
        let (_, c3, _, _) = l1.shape().dims4()?;
        let (lw, lt) = self.split(l2, c3)?;
        let (y, ys) = depthwise_apply(s1, l1, s2, &lw, self.k, false)?;
        let yl = Layout::contiguous(ys);
        let (both, _) =
            mdta::channel_attention_backward(d.heads(), (&y, &yl), (s2, &lt), (s3, l3))?;
        drop(y);
        // dy then dt in `both`.
        let total = l1.shape().elem_count();
        let dyl = Layout::contiguous(l1.shape());
        let dtl = Layout::contiguous_with_offset(d.b * self.heads, total);
        let (dx, dxs) = depthwise_apply(&both, &dyl, s2, &lw, self.k, true)?;
        let (dw, dws) = depthwise_weight_grad(s1, l1, &both, &dyl, self.k)?;
        let (dxl, dwl) = (Layout::contiguous(dxs), Layout::contiguous(dws));
        let out = pack(&s1.device, &[(&dx, &dxl), (&dw, &dwl), (&both, &dtl)])?;
        let n = total + c3 * self.k * self.k + d.b * self.heads;
        Ok((out, Shape::from(n)))
    }
}
