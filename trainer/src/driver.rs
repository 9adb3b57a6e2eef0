//! The one training driver behind pre-training, fine-tuning and both arms of a comparison: the
//! run loop (resume, steps, progress, checkpoints, stop), the same-run check a resume makes, and
//! the optimiser step with its non-finite checks. A kind of run implements [`Run`]; what differs
//! between kinds (the batch, the loss, what a checkpoint holds) stays in its own file.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor, Var};

use crate::checkpoint::{self, Checkpoint, TrainingState};
use crate::config::TrainConfig;
use crate::data::image::Image;
use crate::error::{Result, TrainerError};
use crate::optim::{self, AdamW, LrSchedule};
use crate::train::{Control, PhaseTimes, Progress, Started, StepStats, TrainOptions};

/// One kind of training run, as the driver steps it.
pub trait Run {
    /// What a checkpoint reports besides its files (a fine-tuning run's validation scores).
    type Note;

    /// Steps completed.
    fn step(&self) -> usize;
    /// Trainable scalars of the network.
    fn parameters(&self) -> Result<usize>;
    /// One optimiser step; callers go through [`step`], which runs it on the worker pool.
    fn train_step(&mut self) -> Result<StepStats>;
    /// Writes the checkpoint of the current step into `dir`.
    fn save_checkpoint(&mut self, dir: &Path) -> Result<(Checkpoint, Self::Note)>;
    /// Continues from the checkpoint at `step` in `dir`.
    fn restore(&mut self, dir: &Path, step: usize) -> Result<()>;
}

/// The run's length, images per step (for the throughput figure), and a checkpoint every
/// `save_freq` steps (and at the end, and when stopped).
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    pub total_steps: usize,
    pub batch_size: usize,
    pub save_freq: usize,
}

impl Cadence {
    pub fn new(total_steps: usize, batch_size: usize, save_freq: usize) -> Self {
        Cadence {
            total_steps,
            batch_size,
            save_freq,
        }
    }
}

/// What the driver tells its caller.
pub enum Tick<'a, N> {
    /// About to train.
    Started(Started),
    Step(&'a Progress),
    Checkpoint(&'a Checkpoint, &'a N),
}

/// How a driven run ended.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub steps_done: usize,
    pub final_loss: Option<f64>,
    pub last_checkpoint: Option<Checkpoint>,
    /// The callback asked to stop before the last step.
    pub stopped: bool,
    pub resumed_from: Option<usize>,
}

/// Runs `run` to `cadence.total_steps` in `opts.out_dir`, resuming from its newest complete checkpoint
/// when `opts.resume`. `on_tick` answers each step with go on or stop; a stop writes a checkpoint
/// first, so nothing is lost.
pub fn drive<R: Run + Send>(
    run: &mut R,
    cadence: Cadence,
    opts: &TrainOptions,
    mut on_tick: impl FnMut(Tick<'_, R::Note>) -> Control,
) -> Result<RunSummary> {
    let total = cadence.total_steps;
    std::fs::create_dir_all(&opts.out_dir).map_err(TrainerError::io(&opts.out_dir))?;
    let mut resumed_from = None;
    if opts.resume {
        if let Some(step) = checkpoint::latest_complete(&opts.out_dir) {
            run.restore(&opts.out_dir, step)?;
            resumed_from = Some(step);
        }
    }
    on_tick(Tick::Started(Started {
        start_step: run.step(),
        total_steps: total,
        parameters: run.parameters()?,
    }));
    let mut out = RunSummary {
        steps_done: run.step(),
        final_loss: None,
        last_checkpoint: None,
        stopped: false,
        resumed_from,
    };
    let mut clock = EtaClock::default();
    while run.step() < total {
        let t0 = Instant::now();
        let stats = step(run)?;
        let dt = t0.elapsed();
        let done = run.step();
        let progress = Progress {
            step: done,
            total_steps: total,
            loss: stats.loss,
            lr: stats.lr,
            grad_norm: stats.grad_norm,
            images_per_sec: cadence.batch_size as f64 / dt.as_secs_f64().max(1e-9),
            step_time: dt,
            eta: clock.eta(dt, total - done),
        };
        out.steps_done = done;
        out.final_loss = Some(stats.loss);
        let control = on_tick(Tick::Step(&progress));
        if done.is_multiple_of(cadence.save_freq) || done == total || control == Control::Stop {
            let (ck, note) = run.save_checkpoint(&opts.out_dir)?;
            on_tick(Tick::Checkpoint(&ck, &note));
            out.last_checkpoint = Some(ck);
        }
        if control == Control::Stop && done < total {
            out.stopped = true;
            break;
        }
    }
    Ok(out)
}

/// One optimiser step of `run`, on the worker pool so that the step's kernels have every
/// worker, the calling one included (see `threads`).
pub fn step<R: Run + Send>(run: &mut R) -> Result<StepStats> {
    crate::threads::on_workers(|| run.train_step())
}

/// Estimates the time left from step times. An exponential average of the step time keeps
/// the ETA steady without lagging for long.
#[derive(Debug, Default)]
pub struct EtaClock {
    avg: Option<f64>,
}

impl EtaClock {
    /// Records a step that took `dt` and returns the ETA for `remaining` more steps.
    pub fn eta(&mut self, dt: Duration, remaining: usize) -> Duration {
        let d = dt.as_secs_f64();
        let avg = self.avg.map_or(d, |a| 0.9 * a + 0.1 * d);
        self.avg = Some(avg);
        Duration::from_secs_f64(avg * remaining as f64)
    }
}

/// When a step started and when its batch was ready: the data phase of its phase times.
#[derive(Debug, Clone, Copy)]
pub struct StepTimer {
    started: Instant,
    data_done: Instant,
}

/// Draws a step's batch with `next_batch`, timing it as the step's data phase.
pub fn timed_batch<B>(next_batch: impl FnOnce() -> Result<B>) -> Result<(B, StepTimer)> {
    let started = Instant::now();
    let batch = next_batch()?;
    let timer = StepTimer {
        started,
        data_done: Instant::now(),
    };
    Ok((batch, timer))
}

/// The optimiser side of every kind of run: AdamW over the network's parameters (with the
/// reference's no-decay group), the learning-rate schedule and the clipping norm. It steps, and
/// its moments are saved with each checkpoint and restored on a resume.
pub struct Optimiser {
    adamw: AdamW,
    /// The parameters in AdamW's order, for the global gradient norm.
    vars: Vec<Var>,
    sched: LrSchedule,
    clip: f64,
    /// Synchronise the device at the ends of the forward pass and of the update, so that the
    /// phase times are the device's (see [`Optimiser::sync_phases`]).
    sync: bool,
}

impl Optimiser {
    /// AdamW as `t` configures it over the network's named parameters `vars`, stepping at the
    /// rates of `sched`, on their device readied for training (`kernels::prepare_device`).
    pub fn new(vars: Vec<(String, Var)>, t: &TrainConfig, sched: LrSchedule) -> Result<Self> {
        if let Some((_, v)) = vars.first() {
            crate::kernels::prepare_device(v.device())?;
        }
        let plain = vars.iter().map(|(_, v)| v.clone()).collect();
        Ok(Optimiser {
            adamw: AdamW::new(vars, t.weight_decay, t.optimizer.betas, t.optimizer.eps)?,
            vars: plain,
            sched,
            clip: t.clip_grad,
            sync: false,
        })
    }

    /// With `on`, each step waits for the device after the forward pass and after the update,
    /// so that its forward and optimizer phases are the device's time, not the launches'
    /// (`ifp bench --sync`). It slows the step: the host can no longer run ahead.
    pub fn sync_phases(&mut self, on: bool) {
        self.sync = on;
    }

    /// Optimiser step `k` (0-based) on `loss`: backward, clipping by global norm and the AdamW
    /// update at the scheduled rate, refusing a non-finite loss or gradient norm before
    /// anything is updated. The loss and the norm are read from the device together, once per
    /// step (on a GPU, the forward and backward phases' times therefore end at that read). The
    /// figures' phases are timed from `timer`.
    pub fn step(&mut self, loss: &Tensor, k: usize, timer: StepTimer) -> Result<StepStats> {
        if self.sync {
            loss.device().synchronize()?;
        }
        let forward_done = Instant::now();
        let grads = loss.backward()?;
        let norm_sq = optim::grad_norm_sq(&grads, &self.vars)?;
        let read = Tensor::stack(&[loss.to_dtype(DType::F64)?, norm_sq], 0)?.to_vec1::<f64>()?;
        let backward_done = Instant::now();
        let (loss_v, grad_norm) = (read[0], read[1].sqrt());
        if !loss_v.is_finite() {
            return Err(TrainerError::NonFinite {
                step: k + 1,
                what: format!("the loss ({loss_v})"),
            });
        }
        if !grad_norm.is_finite() {
            return Err(TrainerError::NonFinite {
                step: k + 1,
                what: format!("the gradient norm ({grad_norm})"),
            });
        }
        let lr = self.sched.lr_for_step(k);
        self.adamw
            .step(&grads, lr, optim::clip_scale(grad_norm, self.clip))?;
        if self.sync {
            loss.device().synchronize()?;
        }
        Ok(StepStats {
            loss: loss_v,
            lr,
            grad_norm,
            phases: PhaseTimes {
                data: timer.data_done - timer.started,
                forward: forward_done - timer.data_done,
                backward: backward_done - forward_done,
                optimizer: backward_done.elapsed(),
            },
        })
    }

    /// Writes the checkpoint of a run into `dir`: the network's `weights`, these moments, the
    /// training `state` and the sample strip.
    pub fn write_checkpoint(
        &self,
        dir: &Path,
        weights: &BTreeMap<String, Tensor>,
        state: &TrainingState,
        sample: Option<&Image>,
    ) -> Result<Checkpoint> {
        checkpoint::write(
            dir,
            &checkpoint::Contents {
                weights,
                optimizer: &self.adamw.state_tensors(),
                state,
                sample,
            },
        )
    }

    /// Continues from a checkpoint's `saved` state at `step`: its moments restored, its
    /// training state returned.
    pub fn resume(&mut self, saved: SavedState, step: usize) -> Result<TrainingState> {
        self.adamw.load_state(&saved.moments, step)?;
        Ok(saved.state)
    }
}

/// A run's configuration as a resume compares it: a resumed run must be the same run.
pub trait SameRun: Sized {
    /// Reads the config a checkpoint stored.
    fn from_stored(yaml: &str) -> std::result::Result<Self, String>;
    /// The config as YAML with what a resume may change (the run's length, the print and save
    /// frequencies, retention) set to fixed values.
    fn same_run_form(&self) -> String;
}

/// What a checkpoint's state file holds: the optimiser moments and the training state.
pub struct SavedState {
    moments: BTreeMap<String, Tensor>,
    state: TrainingState,
}

/// The saved state of the checkpoint at `step` in `dir`, checked to be that step's and written
/// by the same run as `cfg`. A resume reads it before anything else, so a changed config is
/// named as such rather than failing on the network's shapes.
pub fn load_state_for_resume<C: SameRun>(
    dir: &Path,
    step: usize,
    device: &Device,
    cfg: &C,
) -> Result<SavedState> {
    let path = checkpoint::state_path(dir, step);
    let now = cfg.same_run_form();
    let (opt_state, state) = checkpoint::load_state(&path, device)?;
    if state.step != step {
        return Err(TrainerError::Resume(format!(
            "{}: records step {}, its name says {step}",
            path.display(),
            state.step
        )));
    }
    let was = C::from_stored(&state.config_yaml)
        .map_err(|e| {
            TrainerError::Resume(format!("{}: unreadable stored config: {e}", path.display()))
        })?
        .same_run_form();
    if now != was {
        let diff = now
            .lines()
            .zip(was.lines())
            .find(|(x, y)| x != y)
            .map(|(x, y)| format!(" (now `{}`, was `{}`)", x.trim(), y.trim()))
            .unwrap_or_default();
        return Err(TrainerError::Resume(format!(
            "the config differs from the one {} was written with{diff}; resume with the same \
             config (only the number of steps may change)",
            path.display()
        )));
    }
    Ok(SavedState {
        moments: opt_state,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An optimiser over one weight `w` of `n` elements with the given value.
    fn one_weight(n: usize, value: f32) -> (Var, Optimiser) {
        let w = Var::from_tensor(&Tensor::full(value, n, &Device::Cpu).expect("w")).expect("var");
        // No warmup, and a base rate that scales to 0.01 at batch 1: a step visibly moves `w`.
        let t = TrainConfig {
            warmup_epochs: 0,
            base_lr: 5.12,
            ..TrainConfig::default()
        };
        let sched = LrSchedule::from_config(&t, 1);
        let opt = Optimiser::new(vec![("w".into(), w.clone())], &t, sched).expect("optimiser");
        (w, opt)
    }

    /// The step of `opt` on `loss`, and whether it left `w` as it was.
    fn step_on(opt: &mut Optimiser, w: &Var, loss: &Tensor) -> (Result<StepStats>, bool) {
        let before: Vec<f32> = w.as_tensor().to_vec1().expect("before");
        let (_, timer) = timed_batch(|| Ok(())).expect("timer");
        let out = opt.step(loss, 0, timer);
        let after: Vec<f32> = w.as_tensor().to_vec1().expect("after");
        (out, before == after)
    }

    #[test]
    fn a_non_finite_gradient_norm_is_refused_before_any_update() {
        // loss = sum(w * 1e20) is 4e-5, but each squared gradient (1e40) overflows float32.
        let (w, mut opt) = one_weight(4, 1e-25);
        let loss = (w.as_tensor() * 1e20)
            .and_then(|l| l.sum_all())
            .expect("loss");
        let (out, unchanged) = step_on(&mut opt, &w, &loss);
        let err = out.expect_err("an infinite gradient norm").to_string();
        assert!(
            err.contains("gradient norm (inf)") && err.contains("step 1"),
            "{err}"
        );
        assert!(unchanged, "no weight moved");
    }

    #[test]
    fn a_non_finite_loss_is_refused_before_any_update() {
        let (w, mut opt) = one_weight(3, 1.0);
        let loss = (w.as_tensor().sum_all().expect("sum") * f64::NAN).expect("loss");
        let (out, unchanged) = step_on(&mut opt, &w, &loss);
        let err = out.expect_err("a NaN loss").to_string();
        assert!(err.contains("the loss (NaN)"), "{err}");
        assert!(unchanged, "no weight moved");
    }

    #[test]
    fn a_finite_step_reports_its_loss_and_norm_and_moves_the_weights() {
        let (w, mut opt) = one_weight(4, 0.5);
        // loss = sum(3 w) = 6: each gradient is 3, so the global norm is 6.
        let loss = (w.as_tensor() * 3.0)
            .and_then(|l| l.sum_all())
            .expect("loss");
        let (out, unchanged) = step_on(&mut opt, &w, &loss);
        let stats = out.expect("a finite step");
        assert_eq!((stats.loss, stats.grad_norm), (6.0, 6.0));
        assert!(!unchanged, "the weights moved");
    }
}
