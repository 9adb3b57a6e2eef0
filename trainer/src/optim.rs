//! Optimisation as the reference does it (`optimizer.py`, `lr_scheduler.py` and
//! `main_IFP.py` of IFP/MFM): AdamW with a no-decay group (1-D parameters and biases), learning
//! rates scaled by `batch / 512`, timm's warmup + cosine schedule per step, and clipping by global
//! norm. candle's own `AdamW` decays every parameter and keeps its moments private, so the update
//! is written out (`kernels::adamw_update`), in the same order of operations as
//! `torch.optim.AdamW` (single-tensor).

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

use crate::config::TrainConfig;
use crate::kernels::{self, AdamWStep};

/// The reference's linear LR scaling: `lr * batch * world_size / 512` (one process here).
pub fn lr_scale(batch: usize) -> f64 {
    batch as f64 / 512.0
}

/// timm's `CosineLRScheduler` as MFM/IFP build it, per optimiser step, on scaled rates.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    pub base_lr: f64,
    pub warmup_lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl LrSchedule {
    pub fn from_config(t: &TrainConfig, batch: usize) -> Self {
        let s = lr_scale(batch);
        LrSchedule {
            base_lr: t.base_lr * s,
            warmup_lr: t.warmup_lr * s,
            min_lr: t.min_lr * s,
            warmup_steps: t.warmup_epochs,
            total_steps: t.total_steps(),
        }
    }

    /// The scheduler's value at absolute step `t`: linear warmup from the warmup LR, then a
    /// cosine from the base LR to the minimum over the whole run (`warmup_prefix=False`, so the
    /// cosine runs on `t`, not `t - warmup`), and the minimum from `t >= total` on.
    pub fn value_at(&self, t: usize) -> f64 {
        if t < self.warmup_steps {
            let slope = (self.base_lr - self.warmup_lr) / self.warmup_steps as f64;
            self.warmup_lr + t as f64 * slope
        } else if t < self.total_steps {
            let x = std::f64::consts::PI * t as f64 / self.total_steps as f64;
            self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + x.cos())
        } else {
            self.min_lr
        }
    }

    /// The LR that optimiser step `k` (0-based) uses. The reference calls
    /// `step_update(k)` *after* step k, so step k runs at `value_at(k - 1)` and steps 0 and 1
    /// both run at the warmup LR.
    pub fn lr_for_step(&self, k: usize) -> f64 {
        self.value_at(k.saturating_sub(1))
    }
}

/// Whether the reference puts a parameter in the no-decay group (`optimizer.py`): 1-D tensors
/// and names ending in `.bias`. Restormer's `temperature` (heads, 1, 1) is therefore decayed.
pub fn skips_weight_decay(name: &str, shape: &[usize]) -> bool {
    shape.len() == 1 || name.ends_with(".bias")
}

struct ParamState {
    name: String,
    var: Var,
    weight_decay: f64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// AdamW over named parameters, with per-parameter weight decay and exposed moments.
pub struct AdamW {
    params: Vec<ParamState>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    step: usize,
}

impl AdamW {
    /// `weight_decay` applies to every parameter but those `skips_weight_decay` selects.
    pub fn new(
        vars: Vec<(String, Var)>,
        weight_decay: f64,
        betas: (f64, f64),
        eps: f64,
    ) -> Result<Self> {
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                let decay = if skips_weight_decay(&name, var.dims()) {
                    0.0
                } else {
                    weight_decay
                };
                Ok(ParamState {
                    exp_avg: var.zeros_like()?,
                    exp_avg_sq: var.zeros_like()?,
                    name,
                    var,
                    weight_decay: decay,
                })
            })
            .collect::<Result<_>>()?;
        Ok(AdamW {
            params,
            beta1: betas.0,
            beta2: betas.1,
            eps,
            step: 0,
        })
    }

    /// Number of steps taken so far.
    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// (decayed, not decayed) parameter counts, for logs.
    pub fn group_sizes(&self) -> (usize, usize) {
        let nd = self.params.iter().filter(|p| p.weight_decay == 0.0).count();
        (self.params.len() - nd, nd)
    }

    /// One update with learning rate `lr`, each gradient first scaled by `grad_scale` when
    /// clipping applies (see [`clip_scale`]). Parameters without a gradient are left alone (as
    /// PyTorch skips parameters whose `.grad` is None). The weights and moments are written in
    /// place where `kernels::adamw_update_in_place` applies (float32 on the CPU, one pass per
    /// parameter; on CUDA with the `optim` kernel on, one launch for all); elsewhere each
    /// parameter's update is one `kernels::adamw_update`, whose new moments replace the old.
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: Option<f64>) -> Result<()> {
        self.step += 1;
        let betas = (self.beta1, self.beta2);
        let step_of = |p: &ParamState| {
            AdamWStep::new(
                self.step as i32,
                lr,
                betas,
                self.eps,
                p.weight_decay,
                grad_scale,
            )
        };
        // Each parameter's gradient and step, once (`None`: no gradient, left alone).
        let work: Vec<Option<(Tensor, AdamWStep)>> = self
            .params
            .iter()
            .map(|p| Some((grads.get(p.var.as_tensor())?.clone(), step_of(p))))
            .collect();
        // In place, where that applies.
        let items: Vec<kernels::AdamWItem> = self
            .params
            .iter()
            .zip(&work)
            .filter_map(|(p, w)| {
                let (g, s) = w.as_ref()?;
                Some((p.var.as_tensor(), g, &p.exp_avg, &p.exp_avg_sq, *s))
            })
            .collect();
        if kernels::adamw_update_in_place(&items)? {
            return Ok(());
        }
        drop(items);
        for (p, (g, s)) in self
            .params
            .iter_mut()
            .zip(work)
            .filter_map(|(p, w)| Some((p, w?)))
        {
            let w = p.var.as_tensor().detach();
            let (w, m, v) = kernels::adamw_update(&w, &g.detach(), &p.exp_avg, &p.exp_avg_sq, &s)?;
            p.var.set(&w)?;
            p.exp_avg = m;
            p.exp_avg_sq = v;
        }
        Ok(())
    }

    /// The optimiser state as named tensors (`exp_avg.<param>`, `exp_avg_sq.<param>`). They
    /// share their storage with the moments, which the next [`AdamW::step`] may write in place
    /// (as it writes the weights): use them before that step.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for p in &self.params {
            out.insert(format!("exp_avg.{}", p.name), p.exp_avg.clone());
            out.insert(format!("exp_avg_sq.{}", p.name), p.exp_avg_sq.clone());
        }
        out
    }

    /// Restores a state written by `state_tensors` after `steps` steps.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>, steps: usize) -> Result<()> {
        for p in &mut self.params {
            for (key, slot) in [
                (format!("exp_avg.{}", p.name), &mut p.exp_avg),
                (format!("exp_avg_sq.{}", p.name), &mut p.exp_avg_sq),
            ] {
                let t = state.get(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("training state lacks `{key}`"))
                })?;
                if t.dims() != slot.dims() {
                    return Err(candle_core::Error::Msg(format!(
                        "training state `{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        slot.dims()
                    )));
                }
                *slot = t.to_dtype(slot.dtype())?.to_device(slot.device())?;
            }
        }
        self.step = steps;
        Ok(())
    }
}

/// The squared global 2-norm of the gradients, as a float64 scalar on their device: per-tensor
/// sums of squares first, then their sum, as `torch.nn.utils.clip_grad_norm_` takes the norm of
/// the per-tensor norms (`kernels::squared_norm`). Nothing is read back to the host (one read
/// per step does that).
pub fn grad_norm_sq(grads: &GradStore, vars: &[Var]) -> Result<Tensor> {
    let gs: Vec<&Tensor> = vars
        .iter()
        .filter_map(|v| grads.get(v.as_tensor()))
        .collect();
    let device = vars
        .first()
        .map_or(candle_core::Device::Cpu, |v| v.device().clone());
    kernels::squared_norm(&gs, &device)
}

/// The factor `torch.nn.utils.clip_grad_norm_(params, max_norm)` scales every gradient by for
/// a global norm `norm`: `max_norm / (norm + 1e-6)` when that is below 1, else none. A
/// `max_norm <= 0` only measures.
pub fn clip_scale(norm: f64, max_norm: f64) -> Option<f64> {
    if max_norm > 0.0 && norm.is_finite() {
        let coef = max_norm / (norm + 1e-6);
        (coef < 1.0).then_some(coef)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_squared_norm_keeps_float64_gradients_exact() {
        // 1 + 1e-9 is not a float32: a float64 gradient's square must not pass through one.
        let a = Var::from_tensor(&Tensor::new(&[1f64, 0.0], &Device::Cpu).expect("a")).expect("a");
        let b = Var::from_tensor(&Tensor::new(&[0f64], &Device::Cpu).expect("b")).expect("b");
        let loss = ((a.as_tensor() * (1.0 + 1e-9)).and_then(|t| t.sum_all()))
            .and_then(|t| t + (b.as_tensor() * 2.0)?.sum_all()?)
            .expect("loss");
        let grads = loss.backward().expect("grads");
        let sq = grad_norm_sq(&grads, &[a, b])
            .and_then(|t| t.to_scalar::<f64>())
            .expect("norm");
        let want = 2.0 * (1.0f64 + 1e-9).powi(2) + 4.0;
        assert_eq!(sq, want);
    }

    #[test]
    fn clipping_scales_only_above_the_limit() {
        assert_eq!(clip_scale(1.0, 3.0), None);
        assert_eq!(clip_scale(6.0, 3.0), Some(3.0 / (6.0 + 1e-6)));
        assert_eq!(clip_scale(6.0, 0.0), None, "max_norm 0 only measures");
        assert_eq!(clip_scale(f64::INFINITY, 3.0), None);
    }
}
