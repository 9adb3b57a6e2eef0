//! One AdamW update of one parameter tensor as a single pass (in place where it can write the
//! weights and moments, see [`adamw_update_in_place`]): the gradient's clipping scale,
//! the decoupled weight decay, both moments and the step, where the composed version takes
//! about ten tensor ops (and as many full-size temporaries) per parameter. The pass rounds in
//! exactly the composed version's order (each scalar product `x * s + 0`, as candle's `affine`
//! computes it), so the two give the same bits on the CPU; the CUDA kernel (`cuda/optim.cu`)
//! does the same sums in the same order. Also the squared global norm of all the gradients,
//! which clipping needs, in three CUDA launches instead of about three per tensor.

use candle_core::{DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

/// The scalars of one AdamW step, in float32 as the composed version's `affine` ops use them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// The clipping factor for the gradient, when clipping applies.
    pub grad_scale: Option<f32>,
    /// `1 - lr * weight_decay`, when the parameter is decayed.
    pub decay: Option<f32>,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// `1 / sqrt(1 - beta2^t)`.
    pub inv_bias_correction2: f32,
    pub eps: f32,
    /// `lr / (1 - beta1^t)`.
    pub step_size: f32,
}

impl AdamWStep {
    /// The step scalars from the optimiser's float64 settings at step `t` (1-based), cast to
    /// float32 the way candle casts an `affine` op's factors.
    pub fn new(
        t: i32,
        lr: f64,
        betas: (f64, f64),
        eps: f64,
        weight_decay: f64,
        grad_scale: Option<f64>,
    ) -> Self {
        let bc1 = 1.0 - betas.0.powi(t);
        let bc2_sqrt = (1.0 - betas.1.powi(t)).sqrt();
        AdamWStep {
            grad_scale: grad_scale.map(|c| c as f32),
            decay: (weight_decay != 0.0).then_some((1.0 - lr * weight_decay) as f32),
            one_minus_beta1: (1.0 - betas.0) as f32,
            beta2: betas.1 as f32,
            one_minus_beta2: (1.0 - betas.1) as f32,
            inv_bias_correction2: (1.0 / bc2_sqrt) as f32,
            eps: eps as f32,
            step_size: (lr / bc1) as f32,
        }
    }

    /// One element's update: `(w, g, m, v) -> (w', m', v')`. Each `x * s + 0.0` is candle's
    /// `affine(s, 0)`; the `+ 0.0` is kept because it turns a `-0.0` product into `+0.0`.
    #[inline(always)]
    pub fn apply(&self, w: f32, g: f32, m: f32, v: f32) -> (f32, f32, f32) {
        let g = match self.grad_scale {
            Some(c) => g * c + 0.0,
            None => g,
        };
        let w = match self.decay {
            Some(d) => w * d + 0.0,
            None => w,
        };
        let m = m + ((g - m) * self.one_minus_beta1 + 0.0);
        let v = (v * self.beta2 + 0.0) + ((g * g) * self.one_minus_beta2 + 0.0);
        let denom = (v.sqrt() * self.inv_bias_correction2 + 0.0) * 1.0 + self.eps;
        let w = w - ((m / denom) * self.step_size + 0.0);
        (w, m, v)
    }
}

/// `(w', m', v')` after one AdamW step `s` of the parameter `w` with gradient `g` and moments
/// `m`, `v` (all one shape): one pass for float32 on the CPU (and on CUDA where
/// [`super::CudaKernel::Optim`] is on), else [`adamw_update_composed`].
pub fn adamw_update(
    w: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    s: &AdamWStep,
) -> Result<(Tensor, Tensor, Tensor)> {
    let all_f32 = [w, g, m, v].iter().all(|t| t.dtype() == DType::F32);
    let same_shape = [g, m, v].iter().all(|t| t.dims() == w.dims());
    if !(all_f32 && same_shape && super::fused_applies(w, super::CudaKernel::Optim)) {
        return adamw_update_composed(w, g, m, v, s);
    }
    let [w, g, m, v] = [w, g, m, v].map(Tensor::contiguous);
    let (w, g, m, v) = (w?, g?, m?, v?);
    let out = {
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let (ms, ml) = m.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        match (&*ws, &*gs, &*ms, &*vs) {
            (Storage::Cpu(w), Storage::Cpu(g), Storage::Cpu(m), Storage::Cpu(v)) => {
                let slice = |st, l| super::f32_slice(st, l, "ifp-adamw");
                let (w, g, m, v) = (slice(w, wl)?, slice(g, gl)?, slice(m, ml)?, slice(v, vl)?);
                let [w, m, v] = cpu_update(w, g, m, v, s);
                Some([w, m, v].map(|x| Storage::Cpu(candle_core::CpuStorage::F32(x))))
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(w), Storage::Cuda(g), Storage::Cuda(m), Storage::Cuda(v)) => Some(
                super::cuda::adamw_update([(w, wl), (g, gl), (m, ml), (v, vl)], s)?
                    .map(Storage::Cuda),
            ),
            _ => None,
        }
    };
    let Some(out) = out else {
        return adamw_update_composed(&w, &g, &m, &v, s);
    };
    let [w2, m2, v2] = out.map(|st| {
        Tensor::from_storage(
            st,
            w.shape().clone(),
            candle_core::op::BackpropOp::none(),
            false,
        )
    });
    Ok((w2, m2, v2))
}

/// One parameter's AdamW step for [`adamw_update_in_place`]: weights, gradient, both moments
/// (one shape) and the step's scalars.
pub type AdamWItem<'a> = (&'a Tensor, &'a Tensor, &'a Tensor, &'a Tensor, AdamWStep);

/// The AdamW steps of many parameters, written into the weights and moments in place, where it
/// applies: float32 tensors with the one-pass update on ([`super::fused_applies`] for
/// [`super::CudaKernel::Optim`]), each parameter's four tensors of one shape and with storages
/// of their own, the weights and moments contiguous. On CUDA, all of them are one launch (the
/// gradients contiguous too, the steps differing only in their decay); on the CPU, one pass
/// per parameter. Each element is what [`adamw_update`] gives. Returns false, touching nothing,
/// elsewhere (the caller then updates one by one).
pub fn adamw_update_in_place(items: &[AdamWItem]) -> Result<bool> {
    let Some((w0, ..)) = items.first() else {
        return Ok(false);
    };
    let applies = super::fused_applies(w0, super::CudaKernel::Optim)
        && items.iter().all(|&(w, g, m, v, _)| {
            let tensors = [w, g, m, v];
            tensors.iter().all(|t| {
                t.dtype() == DType::F32
                    && t.device().same_device(w0.device())
                    && t.dims() == w.dims()
            }) && [w, m, v].iter().all(|t| t.is_contiguous())
                && distinct_storages(&tensors)
        });
    if !applies {
        return Ok(false);
    }
    match w0.device() {
        Device::Cpu => {
            for (w, g, m, v, s) in items {
                cpu_update_in_place(w, g, m, v, s)?;
            }
            Ok(true)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda_update_in_place(dev, items),
        _ => Ok(false),
    }
}

/// Whether no two of `tensors` share a storage. An update in place writes three of them while
/// it reads the fourth; a shared one would be read after it was written (and its lock taken
/// twice).
fn distinct_storages(tensors: &[&Tensor]) -> bool {
    let addresses: Vec<usize> = tensors
        .iter()
        .map(|t| std::ptr::from_ref(&*t.storage_and_layout().0).addr())
        .collect();
    addresses
        .iter()
        .enumerate()
        .all(|(i, a)| !addresses[..i].contains(a))
}

/// The name of the CPU's in-place update in its errors.
const IN_PLACE: &str = "ifp-adamw-in-place";

/// One parameter's step on the CPU, in place: the gradient read, the weights and both moments
/// written in one pass.
fn cpu_update_in_place(
    w: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    s: &AdamWStep,
) -> Result<()> {
    let g = g.contiguous()?;
    let (gs, gl) = g.storage_and_layout();
    let Storage::Cpu(gs) = &*gs else {
        return Err(candle_core::Error::Msg(format!(
            "{IN_PLACE}: not on the CPU"
        )));
    };
    let g = super::f32_slice(gs, gl, IN_PLACE)?;
    // Candle hands out one tensor's storage for writing at a time (an in-place op), so the
    // three writable ones are taken one inside the other.
    with_data_mut(w, |w| {
        with_data_mut(m, |m| {
            with_data_mut(v, |v| {
                cpu_update_into(w, g, m, v, s);
                Ok(())
            })
        })
    })
}

/// Runs `f` on the float32 elements of `t` (on the CPU, contiguous), writable: an in-place op
/// that hands its storage to `f`.
fn with_data_mut<F: FnOnce(&mut [f32]) -> Result<()>>(t: &Tensor, f: F) -> Result<()> {
    struct WithData<F>(std::cell::Cell<Option<F>>);
    impl<F: FnOnce(&mut [f32]) -> Result<()>> candle_core::InplaceOp1 for WithData<F> {
        fn name(&self) -> &'static str {
            IN_PLACE
        }

        fn cpu_fwd(&self, s: &mut candle_core::CpuStorage, l: &candle_core::Layout) -> Result<()> {
            let (Some(f), candle_core::CpuStorage::F32(data)) = (self.0.take(), s) else {
                return Err(candle_core::Error::Msg(format!("{IN_PLACE}: float32 only")));
            };
            let Some((a, b)) = l.contiguous_offsets() else {
                return Err(candle_core::Error::Msg(format!(
                    "{IN_PLACE}: needs a contiguous tensor"
                )));
            };
            f(&mut data[a..b])
        }
    }
    t.inplace_op1(&WithData(std::cell::Cell::new(Some(f))))
}

/// [`adamw_update_in_place`] on CUDA: one launch for all the parameters.
#[cfg(feature = "cuda")]
fn cuda_update_in_place(dev: &candle_core::CudaDevice, items: &[AdamWItem]) -> Result<bool> {
    let Some(s0) = items.first().map(|i| i.4) else {
        return Ok(false);
    };
    let uniform = |s: &AdamWStep| AdamWStep { decay: None, ..*s };
    let applies = items
        .iter()
        .all(|(_, g, _, _, s)| uniform(s) == uniform(&s0) && g.is_contiguous());
    if !applies {
        return Ok(false);
    }
    let guards: Vec<_> = items
        .iter()
        .map(|(w, g, m, v, s)| ([w, g, m, v].map(|t| t.storage_and_layout()), s.decay))
        .collect();
    let params = guards
        .iter()
        .map(|(tensors, decay)| {
            let [w, g, m, v] = tensors.each_ref().map(|(s, l)| cuda_part(s, l, "adamw"));
            Ok(([w?, g?, m?, v?], *decay))
        })
        .collect::<Result<Vec<_>>>()?;
    super::cuda::adamw_update_in_place(dev, &params, &s0)?;
    Ok(true)
}

/// The update of [`adamw_update`] element by element, split over the worker pool.
fn cpu_update(w: &[f32], g: &[f32], m: &[f32], v: &[f32], s: &AdamWStep) -> [Vec<f32>; 3] {
    let (mut w2, mut m2, mut v2) = (w.to_vec(), m.to_vec(), v.to_vec());
    cpu_update_into(&mut w2, g, &mut m2, &mut v2, s);
    [w2, m2, v2]
}

/// [`AdamWStep::apply`] on every element of `w`, `m` and `v` in place, split over the worker
/// pool.
fn cpu_update_into(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &AdamWStep) {
    const CHUNK: usize = 1 << 14;
    (
        w.par_chunks_mut(CHUNK),
        m.par_chunks_mut(CHUNK),
        v.par_chunks_mut(CHUNK),
        g.par_chunks(CHUNK),
    )
        .into_par_iter()
        .for_each(|(w, m, v, g)| {
            for (((w, m), v), g) in w.iter_mut().zip(m).zip(v).zip(g) {
                (*w, *m, *v) = s.apply(*w, *g, *m, *v);
            }
        });
}

/// [`adamw_update`] from tensor ops (any device and dtype), in `torch.optim.AdamW`'s order of
/// operations (single-tensor): the composed version, and the test oracle of the fused one.
pub fn adamw_update_composed(
    w: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    s: &AdamWStep,
) -> Result<(Tensor, Tensor, Tensor)> {
    let g = match s.grad_scale {
        Some(c) => (g * c as f64)?,
        None => g.clone(),
    };
    let w = match s.decay {
        Some(d) => (w * d as f64)?,
        None => w.clone(),
    };
    // exp_avg.lerp_(grad, 1 - beta1): m + w * (g - m) for weights below 0.5.
    let m = (m + ((&g - m)? * s.one_minus_beta1 as f64)?)?;
    let v = ((v * s.beta2 as f64)? + (g.sqr()? * s.one_minus_beta2 as f64)?)?;
    let denom = ((v.sqrt()? * s.inv_bias_correction2 as f64)? + s.eps as f64)?;
    let w = (w - (m.div(&denom)? * s.step_size as f64)?)?;
    Ok((w, m, v))
}

/// The squared global 2-norm of `tensors` as a float64 scalar on their device, nothing read
/// back: on CUDA, float32 and with [`super::CudaKernel::Optim`] on, three launches whatever
/// their number (`cuda/optim.cu`); else [`squared_norm_composed`]. The per-tensor sums are
/// float64 there and the tensors' dtype here, so the two agree to float32 rounding.
pub fn squared_norm(tensors: &[&Tensor], device: &Device) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(t) = cuda_squared_norm(tensors)? {
        return Ok(t);
    }
    squared_norm_composed(tensors, device)
}

/// The CUDA storage of a tensor the caller has checked to be on CUDA.
#[cfg(feature = "cuda")]
fn cuda_part<'a>(
    s: &'a Storage,
    l: &'a candle_core::Layout,
    what: &str,
) -> Result<(&'a candle_core::CudaStorage, &'a candle_core::Layout)> {
    match s {
        Storage::Cuda(c) => Ok((c, l)),
        _ => Err(candle_core::Error::Msg(format!("{what}: not on CUDA"))),
    }
}

/// [`squared_norm`] on CUDA where it applies (`None` elsewhere).
#[cfg(feature = "cuda")]
fn cuda_squared_norm(tensors: &[&Tensor]) -> Result<Option<Tensor>> {
    let Some(first) = tensors.first() else {
        return Ok(None);
    };
    let Device::Cuda(dev) = first.device() else {
        return Ok(None);
    };
    let applies = super::kernel_applies(first, Some(super::CudaKernel::Optim), &[DType::F32])
        && tensors.iter().all(|t| {
            t.dtype() == DType::F32
                && t.device().same_device(first.device())
                && t.is_contiguous()
                && t.elem_count() > 0
        });
    if !applies {
        return Ok(None);
    }
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let parts = guards
        .iter()
        .map(|(s, l)| cuda_part(s, l, "squared norm"))
        .collect::<Result<Vec<_>>>()?;
    let out = super::cuda::squared_norms(dev, &parts)?;
    Ok(Some(Tensor::from_storage(
        Storage::Cuda(out),
        candle_core::Shape::from(()),
        candle_core::op::BackpropOp::none(),
        false,
    )))
}

/// [`squared_norm`] from tensor ops (any device and dtype): each tensor's sum of squares in its
/// own dtype (as PyTorch takes each tensor's norm), then their sum in float64. Zero for no
/// tensors, on `device`.
pub fn squared_norm_composed(tensors: &[&Tensor], device: &Device) -> Result<Tensor> {
    let mut sums = tensors
        .iter()
        .map(|g| g.sqr()?.sum_all())
        .collect::<Result<Vec<_>>>()?;
    let Some(first) = sums.first().map(Tensor::dtype) else {
        return Tensor::zeros((), DType::F64, device);
    };
    // One cast for the usual case of one dtype; mixed dtypes are widened one by one.
    if sums.iter().any(|s| s.dtype() != first) {
        sums = sums
            .iter()
            .map(|s| s.to_dtype(DType::F64))
            .collect::<Result<_>>()?;
    }
    Tensor::stack(&sums, 0)?.to_dtype(DType::F64)?.sum_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rand(n: usize, seed: f32) -> Tensor {
        let data: Vec<f32> = (0..n).map(|i| (i as f32 * seed).sin()).collect();
        Tensor::from_vec(data, n, &Device::Cpu).expect("tensor")
    }

    #[test]
    fn the_fused_update_keeps_the_parameter_shape() {
        let shape = (3, 4, 5);
        let w = rand(60, 0.7).reshape(shape).expect("w");
        let g = rand(60, 1.3).reshape(shape).expect("g");
        let z = w.zeros_like().expect("z");
        let s = AdamWStep::new(1, 1e-3, (0.9, 0.999), 1e-8, 0.0, None);
        let (w2, m2, v2) = adamw_update(&w, &g, &z, &z, &s).expect("fused");
        let (wc, _, _) = adamw_update_composed(&w, &g, &z, &z, &s).expect("composed");
        for t in [&w2, &m2, &v2] {
            assert_eq!(t.dims(), &[3, 4, 5]);
        }
        let same = w2
            .eq(&wc)
            .and_then(|e| e.to_dtype(DType::F32)?.mean_all()?.to_scalar::<f32>());
        assert_eq!(
            same.expect("compare"),
            1.0,
            "the same update as the composed one"
        );
    }
}
