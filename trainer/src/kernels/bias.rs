//! The bias of a convolution and the activation after it as one fused op: `y = act(x + b[c])`
//! on (B, C, H, W), act the identity, ReLU or LeakyReLU. Composed, the bias is a broadcast
//! addition whose backward reduces over batch and pixels with candle's strided sum, and a
//! LeakyReLU is four graph nodes. Backward: `dx = dy * act'(.)`, read off the output's sign
//! (positive exactly where the pre-activation is, for slopes >= 0), and `db[c] = sum dx`,
//! returned together from one pass. Both also run on CUDA in float32 (`cuda/bias.cu`) where
//! `IFP_CUDA_FUSED` turns on `bias`.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::f32_slice;

pub(super) struct BiasAct {
    /// None: identity; Some(s): `max(v, 0) + s * min(v, 0)` (ReLU for 0).
    pub(super) slope: Option<f32>,
}

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "ifp-bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = l1.shape().dims4()?;
        let x = f32_slice(s1, l1, self.name())?;
        let b = f32_slice(s2, l2, self.name())?;
        let hw = h * w;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(p, (o, xs))| {
                let bc = b[p % c];
                match self.slope {
                    None => o.iter_mut().zip(xs).for_each(|(a, v)| *a = v + bc),
                    Some(s) => o.iter_mut().zip(xs).for_each(|(a, v)| {
                        let t = v + bc;
                        *a = if t > 0.0 { t } else { s * t };
                    }),
                }
            });
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
        super::cuda::bias_act((s1, l1), (s2, l2), self.slope)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both =
            res.apply_op2_no_bwd(&grad.contiguous()?, &BiasActBackward { slope: self.slope })?;
        let [dx, db]: [Tensor; 2] = super::unpack(&both, &[res.shape(), b.shape()])?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("bias: two gradients".into()))?;
        Ok((Some(dx), Some(db)))
    }
}

/// (y, dy) -> [dx (B*C*H*W values), db (C values)].
struct BiasActBackward {
    slope: Option<f32>,
}

impl CustomOp2 for BiasActBackward {
    fn name(&self) -> &'static str {
        "ifp-bias-act-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (bn, c, h, w) = l1.shape().dims4()?;
        let y = f32_slice(s1, l1, self.name())?;
        let g = f32_slice(s2, l2, self.name())?;
        let (hw, n) = (h * w, y.len());
        let mut out = vec![0f32; n + c];
        let (dx, db) = out.split_at_mut(n);
        // Per plane: dx, and the plane's sum (f64: these are long sums).
        let plane_sums: Vec<f64> = dx
            .par_chunks_mut(hw)
            .zip(y.par_chunks(hw).zip(g.par_chunks(hw)))
            .map(|(d, (ys, gs))| {
                match self.slope {
                    None => d.copy_from_slice(gs),
                    Some(s) => d
                        .iter_mut()
                        .zip(ys.iter().zip(gs))
                        .for_each(|(a, (yv, gv))| *a = if *yv > 0.0 { *gv } else { s * gv }),
                }
                d.iter().map(|v| *v as f64).sum::<f64>()
            })
            .collect();
        for (ch, v) in db.iter_mut().enumerate() {
            *v = (0..bn).map(|bi| plane_sums[bi * c + ch]).sum::<f64>() as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(n + c)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::bias_act_backward((s1, l1), (s2, l2), self.slope)
    }
}

/// A bias's gradient from its output's: per channel C of (B, C, H, W), the sum over batch and
/// pixels (per plane in f64, planes in parallel; candle's strided sum over three axes runs on
/// one thread).
pub(super) struct ChannelSum;

impl candle_core::CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "ifp-channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let g = f32_slice(s, l, self.name())?;
        let planes: Vec<f64> = g
            .par_chunks(h * w)
            .map(|p| p.iter().map(|v| *v as f64).sum::<f64>())
            .collect();
        let out: Vec<f32> = (0..c)
            .map(|ch| (0..b).map(|bi| planes[bi * c + ch]).sum::<f64>() as f32)
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(c)))
    }
}
