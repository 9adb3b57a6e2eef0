//! The one training driver behind pre-training, fine-tuning and both arms of a comparison: the
//! run loop (resume, steps, progress, checkpoints, stop), the same-run check a resume makes, and
//! the optimiser step with its non-finite checks. A kind of run implements [`Run`]; what differs
//! between kinds (the batch, the loss, what a checkpoint holds) stays in its own file.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor, Var};

use crate::checkpoint::{self, Checkpoint, TrainingState};
use crate::error::{Result, TrainerError};
use crate::optim::{clip_grad_norm, AdamW};
use crate::train::{Control, PhaseTimes, Progress, StepStats, TrainOptions};

/// One kind of training run, as the driver steps it.
pub trait Run {
    /// What a checkpoint reports besides its files (a fine-tuning run's validation scores).
    type Note;

    /// Steps completed.
    fn step(&self) -> usize;
    /// One optimiser step.
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
    /// About to train, from this step (after a resume, the checkpoint's).
    Started {
        start_step: usize,
    },
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
pub fn drive<R: Run>(
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
    on_tick(Tick::Started {
        start_step: run.step(),
    });
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
        let stats = run.train_step()?;
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

/// One optimiser step's outcome, with when its phases ended.
pub struct Optimised {
    pub loss: f64,
    pub grad_norm: f64,
    /// The loss was read back (the end of the forward phase).
    pub forward_done: Instant,
    /// The gradients were computed.
    pub backward_done: Instant,
}

impl Optimised {
    /// The step's figures at learning rate `lr`, for a step that started at `started` and had
    /// its batch at `data_done`.
    pub fn stats(&self, lr: f64, started: Instant, data_done: Instant) -> StepStats {
        StepStats {
            loss: self.loss,
            lr,
            grad_norm: self.grad_norm,
            phases: PhaseTimes {
                data: data_done - started,
                forward: self.forward_done - data_done,
                backward: self.backward_done - self.forward_done,
                optimizer: self.backward_done.elapsed(),
            },
        }
    }
}

/// Backward, clipping by global norm and the AdamW update for step `step` (0-based) at `lr`,
/// refusing a non-finite loss or gradient norm before anything is updated.
pub fn optimiser_step(
    loss: &Tensor,
    vars: &[Var],
    clip: f64,
    opt: &mut AdamW,
    lr: f64,
    step: usize,
) -> Result<Optimised> {
    let loss_v = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    let forward_done = Instant::now();
    if !loss_v.is_finite() {
        return Err(TrainerError::NonFinite {
            step: step + 1,
            what: format!("the loss ({loss_v})"),
        });
    }
    let mut grads = loss.backward()?;
    let backward_done = Instant::now();
    let grad_norm = clip_grad_norm(&mut grads, vars, clip)?;
    if !grad_norm.is_finite() {
        return Err(TrainerError::NonFinite {
            step: step + 1,
            what: format!("the gradient norm ({grad_norm})"),
        });
    }
    opt.step(&grads, lr)?;
    Ok(Optimised {
        loss: loss_v,
        grad_norm,
        forward_done,
        backward_done,
    })
}

/// A run's configuration as a resume compares it: a resumed run must be the same run.
pub trait SameRun: Sized {
    /// Reads the config a checkpoint stored.
    fn from_stored(yaml: &str) -> std::result::Result<Self, String>;
    /// The config as YAML with what a resume may change (the run's length, the print and save
    /// frequencies, retention) set to fixed values.
    fn same_run_form(&self) -> String;
}

/// The optimiser moments and training state of the checkpoint at `step` in `dir`, checked to
/// be that step's and written by the same run as `cfg`.
pub fn load_state_for_resume<C: SameRun>(
    dir: &Path,
    step: usize,
    device: &Device,
    cfg: &C,
) -> Result<(BTreeMap<String, Tensor>, TrainingState)> {
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
    Ok((opt_state, state))
}
