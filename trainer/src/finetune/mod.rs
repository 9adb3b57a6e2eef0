//! Downstream fine-tuning (issue 8): the pre-trained encoder plus a one-convolution task head
//! (`net`), trained with L1 on crops of a restoration data set (`data`), with the pre-training
//! machinery reused as is: `optim::AdamW` (decay / no-decay groups), `optim::LrSchedule`
//! (warmup + cosine, unscaled rates), `optim::clip_grad_norm`, `checkpoint`'s atomic, verified
//! model and state files, exact resumption, and `train::Progress`/`Control` for the callback.
//!
//! Every `SAVE_FREQ` steps (and at the end) the run validates on its held-out images and writes
//! `model-SSSSSS.safetensors` (`encoder.*`, `head.conv.*`), `state-SSSSSS.safetensors` (the
//! `TrainingState`'s `sampler.crop`/`sampler.mask` hold the crop and noise streams),
//! `sample-SSSSSS.png` (degraded | restored | target) and `history.json` (validation scores per
//! checkpoint; the best checkpoint is the one with the highest validation PSNR).

pub mod compare;
pub mod config;
pub mod data;
pub mod net;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use config::{FinetuneConfig, HeadConfig, TaskData};
pub use net::{FinetuneNet, Init};

use crate::batch::SamplerState;
use crate::checkpoint::{self, Checkpoint, TrainingState, STATE_VERSION};
use crate::data::image::Image;
use crate::error::{Result, TrainerError};
use crate::eval::{self, metrics::Scores};
use crate::optim::{clip_grad_norm, AdamW, LrSchedule};
use crate::train::{Control, Progress, TrainOptions};

const ENCODER_STREAM: u64 = 0xF17E_0E4C;
const HEAD_STREAM: u64 = 0xF17E_4EAD;

/// Validation scores of one checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ValPoint {
    pub step: usize,
    /// Mean training loss since the previous validation.
    pub train_loss: f64,
    #[serde(flatten)]
    pub scores: Scores,
}

/// What a fine-tuning run reports.
#[derive(Debug)]
pub enum Event<'a> {
    Started {
        start_step: usize,
        total_steps: usize,
        parameters: usize,
        train_images: usize,
        val_images: usize,
    },
    Step(&'a Progress),
    Validated(&'a ValPoint),
    Checkpoint(&'a Checkpoint),
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct FinetuneSummary {
    pub steps_done: usize,
    pub final_loss: Option<f64>,
    pub history: Vec<ValPoint>,
    pub best: Option<ValPoint>,
    pub stopped: bool,
    pub resumed_from: Option<usize>,
}

/// The validation history of a run folder (`history.json`).
pub fn history_path(dir: &Path) -> PathBuf {
    dir.join("history.json")
}

/// Reads a run's validation history (empty when there is none yet).
pub fn read_history(dir: &Path) -> Result<Vec<ValPoint>> {
    let p = history_path(dir);
    if !p.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&p).map_err(TrainerError::io(&p))?;
    serde_json::from_str(&text).map_err(|e| TrainerError::Weights {
        path: p,
        message: format!("unreadable validation history: {e}"),
    })
}

/// The checkpoint with the highest validation PSNR (the earliest on ties).
pub fn best_of(history: &[ValPoint]) -> Option<ValPoint> {
    history.iter().copied().fold(None, |best, p| match best {
        Some(b) if b.scores.psnr >= p.scores.psnr => Some(b),
        _ => Some(p),
    })
}

/// The model file of a run's best checkpoint.
pub fn best_model(dir: &Path) -> Result<Option<(ValPoint, PathBuf)>> {
    Ok(best_of(&read_history(dir)?).map(|p| (p, checkpoint::model_path(dir, p.step))))
}

/// The state of one fine-tuning run.
pub struct Finetuner {
    cfg: FinetuneConfig,
    device: Device,
    net: FinetuneNet,
    opt: AdamW,
    sched: LrSchedule,
    data: data::TrainSet,
    val: Vec<data::EvalItem>,
    step: usize,
    history: Vec<ValPoint>,
    loss_sum: f64,
    loss_n: usize,
    last: Option<(Image, Image, Tensor)>,
}

impl Finetuner {
    /// A fresh run: encoder from `cfg.init` (or seeded), new head, data loaded and split.
    pub fn new(cfg: &FinetuneConfig, device: &Device) -> Result<Self> {
        let enc = match &cfg.init {
            Some(p) => Init::Tensors(net::load_all(p, device)?),
            None => Init::Seed(cfg.seed ^ ENCODER_STREAM),
        };
        let net = FinetuneNet::new(
            &cfg.model,
            enc,
            Init::Seed(cfg.seed ^ HEAD_STREAM),
            cfg.head.residual,
            device,
        )?;
        Self::with_network(cfg, device, net)
    }

    fn with_network(cfg: &FinetuneConfig, device: &Device, net: FinetuneNet) -> Result<Self> {
        let t = &cfg.train;
        let opt = AdamW::new(
            net.vars()?,
            t.weight_decay,
            t.optimizer.betas,
            t.optimizer.eps,
        )?;
        let (train, val, _) = data::split(&cfg.data)?;
        let deg = cfg.data.degradation();
        Ok(Finetuner {
            sched: LrSchedule {
                base_lr: t.base_lr,
                warmup_lr: t.warmup_lr,
                min_lr: t.min_lr,
                warmup_steps: t.warmup_epochs,
                total_steps: t.total_steps(),
            },
            data: data::TrainSet::new(&train, &cfg.data, cfg.seed)?,
            val: data::load_eval(&val, &deg, cfg.seed, cfg.data.val_crop)?,
            cfg: cfg.clone(),
            device: device.clone(),
            net,
            opt,
            step: 0,
            history: Vec::new(),
            loss_sum: 0.0,
            loss_n: 0,
            last: None,
        })
    }

    pub fn step(&self) -> usize {
        self.step
    }

    pub fn network(&self) -> &FinetuneNet {
        &self.net
    }

    pub fn history(&self) -> &[ValPoint] {
        &self.history
    }

    /// Restores weights, optimiser, data streams, step and history from `dir` at `step`.
    pub fn restore(&mut self, dir: &Path, step: usize) -> Result<()> {
        let spath = checkpoint::state_path(dir, step);
        let (opt_state, state) = checkpoint::load_state(&spath, &self.device)?;
        if state.step != step {
            return Err(TrainerError::Resume(format!(
                "{}: records step {}, its name says {step}",
                spath.display(),
                state.step
            )));
        }
        check_same_run(&self.cfg, &state.config_yaml, &spath)?;
        let weights = net::load_all(&checkpoint::model_path(dir, step), &self.device)?;
        let net = FinetuneNet::new(
            &self.cfg.model,
            Init::Tensors(weights.clone()),
            Init::Tensors(weights),
            self.cfg.head.residual,
            &self.device,
        )?;
        let mut fresh = Self::with_network(&self.cfg, &self.device, net)?;
        fresh.opt.load_state(&opt_state, step)?;
        fresh.data.restore(state.sampler.crop, state.sampler.mask);
        fresh.step = step;
        fresh.history = read_history(dir)?
            .into_iter()
            .filter(|p| p.step <= step)
            .collect();
        *self = fresh;
        Ok(())
    }

    /// One optimiser step of L1 loss on a fresh batch; returns (loss, lr, grad norm).
    pub fn train_step(&mut self) -> Result<(f64, f64, f64)> {
        crate::threads::on_workers(|| self.step_once())
    }

    fn step_once(&mut self) -> Result<(f64, f64, f64)> {
        let k = self.step;
        let batch = self
            .data
            .next_batch(self.cfg.data.batch_size, &self.device)?;
        let pred = self.net.forward(&batch.input)?;
        let loss = (&pred - &batch.target)?.abs()?.mean_all()?;
        let loss_v = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        if !loss_v.is_finite() {
            return Err(TrainerError::NonFinite {
                step: k + 1,
                what: format!("the loss ({loss_v})"),
            });
        }
        let mut grads = loss.backward()?;
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
        self.loss_sum += loss_v;
        self.loss_n += 1;
        self.last = Some((batch.first_input, batch.first_target, pred.get(0)?.detach()));
        Ok((loss_v, lr, grad_norm))
    }

    /// Mean scores on the validation images (whole images or their centre crops).
    pub fn validate(&mut self) -> Result<ValPoint> {
        let scores = eval::evaluate(&self.net, &self.val, None)?;
        let p = ValPoint {
            step: self.step,
            train_loss: if self.loss_n > 0 {
                self.loss_sum / self.loss_n as f64
            } else {
                f64::NAN
            },
            scores: eval::mean_scores(&scores),
        };
        self.loss_sum = 0.0;
        self.loss_n = 0;
        Ok(p)
    }

    /// Validates, then writes the checkpoint of the current step and the history into `dir`.
    pub fn save_checkpoint(&mut self, dir: &Path) -> Result<(ValPoint, Checkpoint)> {
        let point = self.validate()?;
        self.history.retain(|p| p.step < self.step);
        self.history.push(point);
        let yaml = self.cfg.to_yaml();
        let model = checkpoint::save_model(
            &checkpoint::model_path(dir, self.step),
            &self.net.state_dict()?,
            self.step,
            &yaml,
        )?;
        let (crop, noise) = self.data.state();
        let state = TrainingState {
            version: STATE_VERSION,
            step: self.step,
            sampler: SamplerState { crop, mask: noise },
            mask_radii: None,
            config_yaml: yaml,
        };
        let state = checkpoint::save_state(
            &checkpoint::state_path(dir, self.step),
            &self.opt.state_tensors(),
            &state,
        )?;
        let sample = match &self.last {
            Some((x, t, y)) => {
                let y = eval::tensor_to_image(y)?;
                let strip = eval::side_by_side(&[x, &y, t])?;
                Some(checkpoint::write_atomic(
                    &checkpoint::sample_path(dir, self.step),
                    &checkpoint::png_bytes(&strip)?,
                )?)
            }
            None => None,
        };
        let json = serde_json::to_vec_pretty(&self.history)
            .map_err(|e| TrainerError::Unsupported(format!("cannot encode history: {e}")))?;
        checkpoint::write_atomic(&history_path(dir), &json)?;
        Ok((
            point,
            Checkpoint {
                step: self.step,
                model,
                state,
                sample,
            },
        ))
    }
}

/// A resumed run must be the same run: only the length and print/save frequencies may change.
fn check_same_run(cfg: &FinetuneConfig, stored_yaml: &str, path: &Path) -> Result<()> {
    let stored: FinetuneConfig = serde_norway::from_str(stored_yaml).map_err(|e| {
        TrainerError::Resume(format!("{}: unreadable stored config: {e}", path.display()))
    })?;
    let normalise = |c: &FinetuneConfig| {
        let mut c = c.clone();
        c.train.steps = None;
        c.train.epochs = 0;
        c.print_freq = 1;
        c.save_freq = 1;
        c.to_yaml()
    };
    let (a, b) = (normalise(cfg), normalise(&stored));
    if a != b {
        let diff = a
            .lines()
            .zip(b.lines())
            .find(|(x, y)| x != y)
            .map(|(x, y)| format!(" (now `{}`, was `{}`)", x.trim(), y.trim()))
            .unwrap_or_default();
        return Err(TrainerError::Resume(format!(
            "the fine-tuning config differs from the one {} was written with{diff}; resume \
             with the same config (only the number of steps may change)",
            path.display()
        )));
    }
    Ok(())
}

/// Runs a whole fine-tuning job into `opts.out_dir` (resuming from its newest complete
/// checkpoint when `opts.resume`).
pub fn finetune(
    cfg: &FinetuneConfig,
    opts: &TrainOptions,
    mut on_event: impl FnMut(Event<'_>) -> Control,
) -> Result<FinetuneSummary> {
    std::fs::create_dir_all(&opts.out_dir).map_err(TrainerError::io(&opts.out_dir))?;
    let mut ft = Finetuner::new(cfg, &opts.device)?;
    let mut resumed_from = None;
    if opts.resume {
        if let Some(step) = checkpoint::latest_complete(&opts.out_dir) {
            ft.restore(&opts.out_dir, step)?;
            resumed_from = Some(step);
        }
    }
    let total = cfg.total_steps();
    on_event(Event::Started {
        start_step: ft.step(),
        total_steps: total,
        parameters: ft.network().num_parameters()?,
        train_images: ft.data.len(),
        val_images: ft.val.len(),
    });
    let mut final_loss = None;
    let mut stopped = false;
    let mut clock = crate::train::EtaClock::default();
    while ft.step() < total {
        let t0 = Instant::now();
        let (loss, lr, grad_norm) = ft.train_step()?;
        let dt = t0.elapsed();
        let done = ft.step();
        final_loss = Some(loss);
        let progress = Progress {
            step: done,
            total_steps: total,
            loss,
            lr,
            grad_norm,
            images_per_sec: cfg.data.batch_size as f64 / dt.as_secs_f64().max(1e-9),
            step_time: dt,
            eta: clock.eta(dt, total - done),
        };
        let control = on_event(Event::Step(&progress));
        if done % cfg.save_freq == 0 || done == total || control == Control::Stop {
            let (point, ck) = ft.save_checkpoint(&opts.out_dir)?;
            on_event(Event::Validated(&point));
            on_event(Event::Checkpoint(&ck));
        }
        if control == Control::Stop && done < total {
            stopped = true;
            break;
        }
    }
    Ok(FinetuneSummary {
        steps_done: ft.step(),
        final_loss,
        best: best_of(ft.history()),
        history: ft.history().to_vec(),
        stopped,
        resumed_from,
    })
}
