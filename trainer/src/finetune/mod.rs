//! Downstream fine-tuning: the pre-trained network (`net`: Restormer's encoder plus a
//! one-convolution task head, or Uformer's encoder and decoder end to end), trained with L1 on
//! crops of a restoration data set (`data`), with the pre-training machinery reused as is:
//! `optim::AdamW` (decay / no-decay groups), `optim::LrSchedule` (warmup + cosine, unscaled
//! rates), `optim::clip_scale`, `checkpoint`'s atomic, verified model and state files, exact
//! resumption, and `train::Progress`/`Control` for the callback.
//!
//! Every `SAVE_FREQ` steps (and at the end) the run validates on its held-out images and writes
//! `model-SSSSSS.safetensors` (`encoder.*` with `head.conv.*` or `decoder.*`),
//! `state-SSSSSS.safetensors` (the `TrainingState`'s `sampler.crop`/`sampler.mask` hold the crop
//! and noise streams; Uformer's stochastic depth is drawn from the seed and the step, so it needs
//! no state), `sample-SSSSSS.png` (degraded | restored | target) and `history.json` (validation
//! scores per checkpoint; the best checkpoint is the one with the highest validation PSNR).
//! A run that reaches its last step then scores that best checkpoint on its test images
//! (`test_set`: `test.json`).

pub mod compare;
pub mod config;
pub mod data;
pub mod evaluate;
pub mod net;
pub mod seeds;
pub mod test_set;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use config::{FinetuneConfig, HeadConfig, TaskData};
pub use net::FinetuneNet;
pub use test_set::TestReport;

use crate::config::ModelType;
use crate::models::uformer::DropPathRng;
use crate::models::WeightSource;

use crate::batch::SamplerState;
use crate::checkpoint::{self, Checkpoint, TrainingState, STATE_VERSION};
use crate::data::image::Image;
use crate::driver;
use crate::error::{Result, TrainerError};
use crate::eval::{self, metrics::Scores};
use crate::optim::LrSchedule;
use crate::train::{Control, Progress, Started, StepStats, TrainOptions};

const ENCODER_STREAM: u64 = 0xF17E_0E4C;
const HEAD_STREAM: u64 = 0xF17E_4EAD;
const DROP_PATH_STREAM: u64 = 0xF17E_D807;

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
        run: Started,
        train_images: usize,
        val_images: usize,
    },
    Step(&'a Progress),
    Validated(&'a ValPoint),
    Checkpoint(&'a Checkpoint),
    /// About to score test image `done` of `total` with the best checkpoint, after the last
    /// step; `Control::Stop` ends the run untested (a resume tests it).
    Testing {
        done: usize,
        total: usize,
    },
    /// The best checkpoint scored on the test images.
    Tested(&'a TestReport),
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct FinetuneSummary {
    /// Steps, final loss, whether it was stopped, where it resumed.
    pub run: driver::RunSummary,
    pub history: Vec<ValPoint>,
    pub best: Option<ValPoint>,
    /// The best checkpoint's test scores; `None` when the run was stopped before or while
    /// testing.
    pub test: Option<TestReport>,
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
    optimiser: driver::Optimiser,
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
        let fresh_head = WeightSource::Init(cfg.seed ^ HEAD_STREAM);
        let (enc, head) = match &cfg.init {
            // Uformer fine-tunes its pre-trained decoder too; Restormer's head is always new.
            Some(p) => {
                let w = net::load_all(p, device)?;
                match cfg.model.kind {
                    ModelType::Uformer => {
                        (WeightSource::Tensors(w.clone()), WeightSource::Tensors(w))
                    }
                    ModelType::Restormer => (WeightSource::Tensors(w), fresh_head),
                }
            }
            None => (WeightSource::Init(cfg.seed ^ ENCODER_STREAM), fresh_head),
        };
        let net = FinetuneNet::new(&cfg.model, enc, head, cfg.head.residual, device)?;
        Self::with_network(cfg, device, net)
    }

    fn with_network(cfg: &FinetuneConfig, device: &Device, net: FinetuneNet) -> Result<Self> {
        let t = &cfg.train;
        // Fine-tuning rates are used as written: no scaling by batch size.
        let sched = LrSchedule {
            base_lr: t.base_lr,
            warmup_lr: t.warmup_lr,
            min_lr: t.min_lr,
            warmup_steps: t.warmup_epochs,
            total_steps: t.total_steps(),
        };
        let (train, val, _) = data::split(&cfg.data)?;
        let deg = cfg.data.degradation();
        Ok(Finetuner {
            optimiser: driver::Optimiser::new(net.vars()?, t, sched)?,
            data: data::TrainSet::new(&train, &cfg.data, cfg.seed)?,
            val: data::load_eval(&val, &deg, cfg.seed, cfg.data.val_crop)?,
            cfg: cfg.clone(),
            device: device.clone(),
            net,
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
}

/// Only the length and the print/save frequencies may change on a resume. The initial weights
/// are compared by content, not by path: a platform job resumed in a new attempt finds its
/// pre-trained encoder in the new attempt's folder.
impl driver::SameRun for FinetuneConfig {
    fn from_stored(yaml: &str) -> std::result::Result<Self, String> {
        serde_norway::from_str(yaml).map_err(|e| e.to_string())
    }

    fn same_run_form(&self) -> String {
        let mut c = self.clone();
        c.init = c.init.map(|p| PathBuf::from(checkpoint::content_id(&p)));
        c.train.steps = None;
        c.train.epochs = 0;
        c.print_freq = 1;
        c.save_freq = 1;
        c.to_yaml()
    }
}

/// Fine-tuning as the driver steps it.
impl driver::Run for Finetuner {
    type Note = ValPoint;

    fn step(&self) -> usize {
        self.step
    }

    fn parameters(&self) -> Result<usize> {
        self.net.num_parameters()
    }

    /// One optimiser step of L1 loss on a fresh batch.
    fn train_step(&mut self) -> Result<StepStats> {
        let k = self.step;
        let (data, size) = (&mut self.data, self.cfg.data.batch_size);
        let (batch, timer) = driver::timed_batch(|| data.next_batch(size, &self.device))?;
        let mut drop_rng = DropPathRng::for_step(self.cfg.seed ^ DROP_PATH_STREAM, k as u64);
        let pred = self.net.forward_t(&batch.input, Some(&mut drop_rng))?;
        let loss = (&pred - &batch.target)?.abs()?.mean_all()?;
        let stats = self.optimiser.step(&loss, k, timer)?;
        self.step += 1;
        self.loss_sum += stats.loss;
        self.loss_n += 1;
        self.last = Some((batch.first_input, batch.first_target, pred.get(0)?.detach()));
        Ok(stats)
    }

    /// Validates, then writes the checkpoint of the current step and the history into `dir`.
    fn save_checkpoint(&mut self, dir: &Path) -> Result<(Checkpoint, ValPoint)> {
        let point = self.validate()?;
        self.history.retain(|p| p.step < self.step);
        self.history.push(point);
        let (crop, noise) = self.data.state();
        let state = TrainingState {
            version: STATE_VERSION,
            step: self.step,
            sampler: SamplerState { crop, mask: noise },
            mask_radii: None,
            config_yaml: self.cfg.to_yaml(),
        };
        let strip = match &self.last {
            Some((x, t, y)) => Some(crate::data::panels::row(
                &[x, &eval::tensor_to_image(y)?, t],
                2,
            )),
            None => None,
        };
        let weights = self.net.state_dict()?;
        let ck = self
            .optimiser
            .write_checkpoint(dir, &weights, &state, strip.as_ref())?;
        let json = serde_json::to_vec_pretty(&self.history)
            .map_err(|e| TrainerError::Unsupported(format!("cannot encode history: {e}")))?;
        checkpoint::write_atomic(&history_path(dir), &json)?;
        Ok((ck, point))
    }

    /// Restores weights, optimiser, data streams, step and history from `dir` at `step`.
    fn restore(&mut self, dir: &Path, step: usize) -> Result<()> {
        let saved = driver::load_state_for_resume(dir, step, &self.device, &self.cfg)?;
        let weights = net::load_all(&checkpoint::model_path(dir, step), &self.device)?;
        let net = FinetuneNet::new(
            &self.cfg.model,
            WeightSource::Tensors(weights.clone()),
            WeightSource::Tensors(weights),
            self.cfg.head.residual,
            &self.device,
        )?;
        let mut fresh = Self::with_network(&self.cfg, &self.device, net)?;
        let state = fresh.optimiser.resume(saved, step)?;
        fresh.data.restore(state.sampler.crop, state.sampler.mask);
        fresh.step = step;
        fresh.history = read_history(dir)?
            .into_iter()
            .filter(|p| p.step <= step)
            .collect();
        *self = fresh;
        Ok(())
    }
}

/// Runs a whole fine-tuning job into `opts.out_dir` (resuming from its newest complete
/// checkpoint when `opts.resume`), then scores its best checkpoint on the test images.
pub fn finetune(
    cfg: &FinetuneConfig,
    opts: &TrainOptions,
    mut on_event: impl FnMut(Event<'_>) -> Control,
) -> Result<FinetuneSummary> {
    let mut summary = train_run(cfg, opts, &mut on_event)?;
    if !summary.run.stopped {
        let go = |done, total| on_event(Event::Testing { done, total }) == Control::Continue;
        match test_set::score_run(cfg, &opts.out_dir, &opts.device, go)? {
            Some(report) => {
                on_event(Event::Tested(&report));
                summary.test = Some(report);
            }
            None => summary.run.stopped = true,
        }
    }
    Ok(summary)
}

/// The training part of [`finetune`]: a comparison scores its arms on one shared loading of
/// the test images instead.
fn train_run(
    cfg: &FinetuneConfig,
    opts: &TrainOptions,
    mut on_event: impl FnMut(Event<'_>) -> Control,
) -> Result<FinetuneSummary> {
    let mut ft = Finetuner::new(cfg, &opts.device)?;
    let (train_images, val_images) = (ft.data.len(), ft.val.len());
    let cadence = driver::Cadence::new(cfg.total_steps(), cfg.data.batch_size, cfg.save_freq);
    let run = driver::drive(&mut ft, cadence, opts, |tick| match tick {
        driver::Tick::Started(run) => on_event(Event::Started {
            run,
            train_images,
            val_images,
        }),
        driver::Tick::Step(p) => on_event(Event::Step(p)),
        driver::Tick::Checkpoint(ck, point) => {
            on_event(Event::Validated(point));
            on_event(Event::Checkpoint(ck))
        }
    })?;
    Ok(FinetuneSummary {
        run,
        best: best_of(ft.history()),
        history: ft.history().to_vec(),
        test: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resume reads `history.json` back and writes it again with the new point: every score
    /// must come back as the same float, or a resumed run's history differs from an
    /// uninterrupted run's in a last digit (serde_json parses floats exactly only with its
    /// `float_roundtrip` feature; this value came out one unit lower without it).
    #[test]
    fn a_history_read_back_is_written_byte_for_byte_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let point = ValPoint {
            step: 30,
            train_loss: 0.071_903_146_803_379,
            scores: Scores {
                psnr: 20.303_024_110_231_43,
                ssim: 0.371_7,
                psnr_y: 24.945_059_683_815_458,
                ssim_y: 0.546_8,
            },
        };
        let json = serde_json::to_vec_pretty(&[point]).expect("encode");
        std::fs::write(history_path(dir.path()), &json).expect("write");
        let back = read_history(dir.path()).expect("read");
        assert_eq!(back, [point]);
        assert_eq!(serde_json::to_vec_pretty(&back).expect("encode"), json);
    }
}
