//! The IFP training loop: sample a batch, reconstruct, Fourier loss, backward, clip, AdamW with
//! the scheduled LR; report progress through a callback, checkpoint every `SAVE_FREQ` steps and
//! at the end, and resume exactly from the newest complete checkpoint.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

use crate::batch::{Batch, Sampler};
use crate::checkpoint::{self, Checkpoint, TrainingState, STATE_VERSION};
use crate::config::Config;
use crate::data::image::Image;
use crate::error::{Result, TrainerError};
use crate::loss::{FreqLoss, RecoverTarget};
use crate::models::uformer::DropPathRng;
use crate::models::{load_weights, Network, WeightSource};
use crate::optim::{clip_grad_norm, AdamW, LrSchedule};

const INIT_STREAM: u64 = 0x1F9_1417;
/// Stochastic depth (Uformer): one ChaCha stream per optimiser step of this seed, so a resumed
/// run draws the same masks without any saved RNG state.
const DROP_PATH_STREAM: u64 = 0x1F9_D807;

/// Progress after one optimiser step.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Steps completed (1-based after the first step).
    pub step: usize,
    pub total_steps: usize,
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub images_per_sec: f64,
    pub step_time: Duration,
    pub eta: Duration,
}

/// What the loop reports.
#[derive(Debug)]
pub enum Event<'a> {
    Started {
        start_step: usize,
        total_steps: usize,
        parameters: usize,
    },
    Step(&'a Progress),
    Checkpoint(&'a Checkpoint),
}

/// The callback's answer: go on, or stop after this step (a cancelled job).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Stop,
}

/// Where and how to run.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub out_dir: PathBuf,
    pub device: Device,
    /// Continue from the newest complete checkpoint in `out_dir`, if any.
    pub resume: bool,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub steps_done: usize,
    pub final_loss: Option<f64>,
    pub last_checkpoint: Option<Checkpoint>,
    /// The callback asked to stop before the last step.
    pub stopped: bool,
    pub resumed_from: Option<usize>,
}

/// Statistics of one step.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Wall time of the phases: data, forward (network + loss), backward, clip + optimiser.
    pub phases: PhaseTimes,
}

/// Where one step's time went.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseTimes {
    pub data: Duration,
    pub forward: Duration,
    pub backward: Duration,
    pub optimizer: Duration,
}

/// The state of one run: network, optimiser, data and schedule.
pub struct Trainer {
    cfg: Config,
    device: Device,
    net: Network,
    opt: AdamW,
    sampler: Sampler,
    sched: LrSchedule,
    loss: FreqLoss,
    step: usize,
    last: Option<(Batch, Tensor)>,
}

impl Trainer {
    /// A fresh run with weights drawn from `SEED`.
    pub fn new(cfg: &Config, device: &Device) -> Result<Self> {
        let net = Network::build(cfg, WeightSource::Init(cfg.seed ^ INIT_STREAM), device)?;
        Self::with_network(cfg, device, net)
    }

    fn with_network(cfg: &Config, device: &Device, net: Network) -> Result<Self> {
        let t = &cfg.train;
        let opt = AdamW::new(
            net.vars()?,
            t.weight_decay,
            t.optimizer.betas,
            t.optimizer.eps,
        )?;
        let kind: RecoverTarget =
            cfg.model.recover_target_type.parse().map_err(|e| {
                TrainerError::Unsupported(format!("MODEL.RECOVER_TARGET_TYPE: {e}"))
            })?;
        Ok(Trainer {
            loss: FreqLoss::new(kind, cfg.data.img_size, 3, device)?,
            sampler: Sampler::from_config(cfg)?,
            sched: LrSchedule::from_config(t, cfg.data.batch_size),
            cfg: cfg.clone(),
            device: device.clone(),
            net,
            opt,
            step: 0,
            last: None,
        })
    }

    /// Steps completed.
    pub fn step(&self) -> usize {
        self.step
    }

    pub fn network(&self) -> &Network {
        &self.net
    }

    /// Restores weights, optimiser, data streams and step from the checkpoint at `step` in `dir`.
    pub fn restore(&mut self, dir: &Path, step: usize) -> Result<()> {
        let weights = load_weights(&checkpoint::model_path(dir, step), &self.device)?;
        let net = Network::build(&self.cfg, WeightSource::Tensors(weights), &self.device)?;
        let (opt_state, state) =
            checkpoint::load_state(&checkpoint::state_path(dir, step), &self.device)?;
        if state.step != step {
            return Err(TrainerError::Resume(format!(
                "{}: records step {}, its name says {step}",
                checkpoint::state_path(dir, step).display(),
                state.step
            )));
        }
        check_same_run(
            &self.cfg,
            &state.config_yaml,
            &checkpoint::state_path(dir, step),
        )?;
        let mut fresh = Self::with_network(&self.cfg, &self.device, net)?;
        fresh.opt.load_state(&opt_state, step)?;
        fresh.sampler.restore(state.sampler);
        fresh.step = step;
        *self = fresh;
        Ok(())
    }

    /// One optimiser step.
    pub fn train_step(&mut self) -> Result<StepStats> {
        crate::threads::on_workers(|| self.step_once())
    }

    fn step_once(&mut self) -> Result<StepStats> {
        let k = self.step;
        let t0 = Instant::now();
        let batch = self
            .sampler
            .next_batch(self.cfg.data.batch_size, &self.device)?;
        let t1 = Instant::now();
        let mut drop_rng = DropPathRng::for_step(self.cfg.seed ^ DROP_PATH_STREAM, k as u64);
        let pred = self.net.forward_train(&batch.input, &mut drop_rng)?;
        let loss = self.loss.forward(&pred, &batch.target, &batch.mask)?;
        let loss_v = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let t2 = Instant::now();
        if !loss_v.is_finite() {
            return Err(TrainerError::NonFinite {
                step: k + 1,
                what: format!("the loss ({loss_v})"),
            });
        }
        let mut grads = loss.backward()?;
        let t3 = Instant::now();
        let vars: Vec<_> = self.net.vars()?.into_iter().map(|(_, v)| v).collect();
        let grad_norm = clip_grad_norm(&mut grads, &vars, self.cfg.train.clip_grad)?;
        if !grad_norm.is_finite() {
            return Err(TrainerError::NonFinite {
                step: k + 1,
                what: format!("the gradient norm ({grad_norm})"),
            });
        }
        let lr = self.sched.lr_for_step(k);
        self.opt.step(&grads, lr)?;
        self.step += 1;
        self.last = Some((batch, pred.detach()));
        Ok(StepStats {
            loss: loss_v,
            lr,
            grad_norm,
            phases: PhaseTimes {
                data: t1 - t0,
                forward: t2 - t1,
                backward: t3 - t2,
                optimizer: t3.elapsed(),
            },
        })
    }

    /// Writes the checkpoint of the current step into `dir`.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<Checkpoint> {
        let yaml = self.cfg.to_yaml();
        let model = checkpoint::save_model(
            &checkpoint::model_path(dir, self.step),
            &self.net.state_dict()?,
            self.step,
            &yaml,
        )?;
        let state = TrainingState {
            version: STATE_VERSION,
            step: self.step,
            sampler: self.sampler.state(),
            mask_radii: self.sampler.masks().fixed_radii().map(<[usize]>::to_vec),
            config_yaml: yaml,
        };
        let state = checkpoint::save_state(
            &checkpoint::state_path(dir, self.step),
            &self.opt.state_tensors(),
            &state,
        )?;
        let sample = match &self.last {
            Some((batch, pred)) => {
                let strip = sample_strip(batch, pred)?;
                Some(checkpoint::write_atomic(
                    &checkpoint::sample_path(dir, self.step),
                    &checkpoint::png_bytes(&strip)?,
                )?)
            }
            None => None,
        };
        Ok(Checkpoint {
            step: self.step,
            model,
            state,
            sample,
        })
    }
}

/// A resumed run must be the same run: only the length (`TRAIN.STEPS`/`EPOCHS`), the
/// logging/saving frequencies and the retention may change.
fn check_same_run(cfg: &Config, stored_yaml: &str, path: &Path) -> Result<()> {
    let stored = Config::from_yaml(stored_yaml).map_err(|e| {
        TrainerError::Resume(format!("{}: unreadable stored config: {e}", path.display()))
    })?;
    let normalise = |c: &Config| {
        let mut c = c.clone();
        c.train.steps = None;
        c.train.epochs = 0;
        c.print_freq = 1;
        c.save_freq = 1;
        c.train.keep_checkpoints = 1;
        c
    };
    if normalise(cfg) != normalise(&stored) {
        let (a, b) = (normalise(cfg).to_yaml(), normalise(&stored).to_yaml());
        let diff = a
            .lines()
            .zip(b.lines())
            .find(|(x, y)| x != y)
            .map(|(x, y)| format!(" (now `{}`, was `{}`)", x.trim(), y.trim()))
            .unwrap_or_default();
        return Err(TrainerError::Resume(format!(
            "the config differs from the one {} was written with{diff}; resume with the same \
             config (only the number of steps may change)",
            path.display()
        )));
    }
    Ok(())
}

/// input | corrupted | reconstruction | target of the batch's first sample, in [0, 1],
/// enlarged (nearest neighbour) so small crops stay visible.
fn sample_strip(batch: &Batch, pred: &Tensor) -> Result<Image> {
    let s = batch.first_clean.width;
    let mut rec: Vec<f32> = pred
        .get(0)?
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    crate::data::corrupt::denormalize_imagenet(&mut rec, 3, s * s)?;
    let mut tgt: Vec<f32> = batch.target.get(0)?.flatten_all()?.to_vec1()?;
    crate::data::corrupt::denormalize_imagenet(&mut tgt, 3, s * s)?;
    let panels = [
        &batch.first_clean.data,
        &batch.first_corrupted.data,
        &rec,
        &tgt,
    ];
    let zoom = (128 / s).max(1);
    let gap = 2;
    let (pw, ph) = (s * zoom, s * zoom);
    let width = 4 * pw + 3 * gap;
    let mut data = vec![1.0f32; 3 * width * ph];
    for (i, panel) in panels.iter().enumerate() {
        let x0 = i * (pw + gap);
        for c in 0..3 {
            for y in 0..ph {
                for x in 0..pw {
                    data[c * width * ph + y * width + x0 + x] =
                        panel[c * s * s + (y / zoom) * s + x / zoom].clamp(0.0, 1.0);
                }
            }
        }
    }
    Ok(Image::new(width, ph, data)?)
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

/// Runs a whole training job.
pub fn train(
    cfg: &Config,
    opts: &TrainOptions,
    mut on_event: impl FnMut(Event<'_>) -> Control,
) -> Result<TrainSummary> {
    std::fs::create_dir_all(&opts.out_dir).map_err(TrainerError::io(&opts.out_dir))?;
    let mut trainer = Trainer::new(cfg, &opts.device)?;
    let mut resumed_from = None;
    if opts.resume {
        if let Some(step) = checkpoint::latest_complete(&opts.out_dir) {
            trainer.restore(&opts.out_dir, step)?;
            resumed_from = Some(step);
        }
    }
    let total = cfg.total_steps();
    let batch = cfg.data.batch_size;
    on_event(Event::Started {
        start_step: trainer.step(),
        total_steps: total,
        parameters: trainer.network().num_parameters()?,
    });
    let mut summary = TrainSummary {
        steps_done: trainer.step(),
        final_loss: None,
        last_checkpoint: None,
        stopped: false,
        resumed_from,
    };
    let mut clock = EtaClock::default();
    while trainer.step() < total {
        let t0 = Instant::now();
        let stats = trainer.train_step()?;
        let dt = t0.elapsed();
        let done = trainer.step();
        let progress = Progress {
            step: done,
            total_steps: total,
            loss: stats.loss,
            lr: stats.lr,
            grad_norm: stats.grad_norm,
            images_per_sec: batch as f64 / dt.as_secs_f64().max(1e-9),
            step_time: dt,
            eta: clock.eta(dt, total - done),
        };
        summary.steps_done = done;
        summary.final_loss = Some(stats.loss);
        let control = on_event(Event::Step(&progress));
        if done % cfg.save_freq == 0 || done == total || control == Control::Stop {
            let ck = trainer.save_checkpoint(&opts.out_dir)?;
            on_event(Event::Checkpoint(&ck));
            summary.last_checkpoint = Some(ck);
        }
        if control == Control::Stop && done < total {
            summary.stopped = true;
            break;
        }
    }
    Ok(summary)
}
