//! The IFP training loop: sample a batch, reconstruct, Fourier loss, backward, clip, AdamW with
//! the scheduled LR; report progress through a callback, checkpoint every `SAVE_FREQ` steps and
//! at the end, and resume exactly from the newest complete checkpoint.

use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::{Device, Tensor};

use crate::batch::{Batch, Prefetcher, Sampler};
use crate::checkpoint::{self, Checkpoint, TrainingState, STATE_VERSION};
use crate::config::Config;
use crate::data::image::Image;
use crate::data::panels;
use crate::driver;
use crate::error::Result;
use crate::loss::FreqLoss;
use crate::models::uformer::DropPathRng;
use crate::models::{load_weights, Network, WeightSource};
use crate::optim::LrSchedule;

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

/// What a run says as it starts training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// The step it trains from (after a resume, the checkpoint's).
    pub start_step: usize,
    pub total_steps: usize,
    /// Trainable scalars.
    pub parameters: usize,
}

/// What the loop reports.
#[derive(Debug)]
pub enum Event<'a> {
    Started(Started),
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

/// How a pre-training run ended.
pub type TrainSummary = driver::RunSummary;

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
    optimiser: driver::Optimiser,
    batches: Prefetcher,
    loss: FreqLoss,
    step: usize,
    last: Option<(Batch, Tensor)>,
}

impl Trainer {
    /// Device-synchronised phase times for each step (see `driver::Optimiser::sync_phases`).
    pub fn sync_phases(&mut self, on: bool) {
        self.optimiser.sync_phases(on);
    }

    /// A fresh run with weights drawn from `SEED`.
    pub fn new(cfg: &Config, device: &Device) -> Result<Self> {
        let net = Network::build(cfg, WeightSource::Init(cfg.seed ^ INIT_STREAM), device)?;
        Self::with_network(cfg, device, net)
    }

    fn with_network(cfg: &Config, device: &Device, net: Network) -> Result<Self> {
        let sched = LrSchedule::from_config(&cfg.train, cfg.data.batch_size);
        let kind = cfg.model.recover_target_type;
        Ok(Trainer {
            loss: FreqLoss::new(kind, cfg.data.img_size, 3, device)?,
            batches: Prefetcher::new(Sampler::from_config(cfg)?, cfg.data.batch_size)?,
            optimiser: driver::Optimiser::new(net.vars()?, &cfg.train, sched)?,
            cfg: cfg.clone(),
            device: device.clone(),
            net,
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
}

/// Only the length (`TRAIN.STEPS`/`EPOCHS`), the logging/saving frequencies and the retention
/// may change on a resume.
impl driver::SameRun for Config {
    fn from_stored(yaml: &str) -> std::result::Result<Self, String> {
        Config::from_yaml(yaml).map_err(|e| e.to_string())
    }

    fn same_run_form(&self) -> String {
        let mut c = self.clone();
        c.train.steps = None;
        c.train.epochs = 0;
        c.print_freq = 1;
        c.save_freq = 1;
        c.train.keep_checkpoints = 1;
        c.to_yaml()
    }
}

/// The batch's first sample as two rows. Top: input | corrupted | reconstruction | target, each
/// tile contrast-stretched to its own range (noise and its reconstruction span little of
/// [0, 1]), then the error map `|reconstruction - target|`. Bottom: the log-magnitude spectrum
/// of each tile above, with the frequencies the mask removed tinted red: the pretext task is to
/// bring those back. Tiles are enlarged (nearest neighbour) so small crops stay visible.
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
    let mask: Vec<f32> = batch
        .mask
        .get(0)?
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?;
    let zoom = (128 / s).max(1);
    let big = |img: &Image| panels::scale_nearest(img, s * zoom, s * zoom);
    let as_image = |data: Vec<f32>| Image {
        width: s,
        height: s,
        data,
    };
    // The spectrum row shows the signed error, which the loss measures on the removed
    // frequencies; the top row its magnitude.
    let error = as_image(rec.iter().zip(&tgt).map(|(r, t)| r - t).collect());
    let (rec, tgt) = (as_image(rec), as_image(tgt));
    let tiles = [&batch.first_clean, &batch.first_corrupted, &rec, &tgt];
    let mut top: Vec<Image> = tiles.iter().map(|i| big(&panels::stretch(i))).collect();
    top.push(big(&panels::error_map(&rec, &tgt)));
    let bottom: Vec<Image> = tiles
        .into_iter()
        .chain([&error])
        .map(|i| big(&panels::spectrum(i, Some(&mask))))
        .collect();
    let rows = [
        panels::row(&top.iter().collect::<Vec<_>>(), 2),
        panels::row(&bottom.iter().collect::<Vec<_>>(), 2),
    ];
    Ok(panels::column(&rows.iter().collect::<Vec<_>>(), 2))
}

/// Pre-training as the driver steps it.
impl driver::Run for Trainer {
    type Note = ();

    fn step(&self) -> usize {
        self.step
    }

    fn parameters(&self) -> Result<usize> {
        self.net.num_parameters()
    }

    /// One optimiser step.
    fn train_step(&mut self) -> Result<StepStats> {
        let k = self.step;
        let (batches, device) = (&mut self.batches, &self.device);
        let (batch, timer) = driver::timed_batch(|| batches.next(device))?;
        let mut drop_rng = DropPathRng::for_step(self.cfg.seed ^ DROP_PATH_STREAM, k as u64);
        let pred = self.net.forward_train(&batch.input, &mut drop_rng)?;
        let loss = self.loss.forward(&pred, &batch.target, &batch.mask)?;
        let stats = self.optimiser.step(&loss, k, timer)?;
        self.step += 1;
        self.last = Some((batch, pred.detach()));
        Ok(stats)
    }

    /// Writes the checkpoint of the current step into `dir`.
    fn save_checkpoint(&mut self, dir: &Path) -> Result<(Checkpoint, ())> {
        let state = TrainingState {
            version: STATE_VERSION,
            step: self.step,
            sampler: self.batches.state(),
            mask_radii: self.batches.fixed_radii().map(<[usize]>::to_vec),
            config_yaml: self.cfg.to_yaml(),
        };
        let strip = match &self.last {
            Some((batch, pred)) => Some(sample_strip(batch, pred)?),
            None => None,
        };
        let weights = self.net.state_dict()?;
        let ck = self
            .optimiser
            .write_checkpoint(dir, &weights, &state, strip.as_ref())?;
        Ok((ck, ()))
    }

    /// Restores weights, optimiser, data streams and step from the checkpoint at `step` in `dir`.
    fn restore(&mut self, dir: &Path, step: usize) -> Result<()> {
        let saved = driver::load_state_for_resume(dir, step, &self.device, &self.cfg)?;
        let weights = load_weights(&checkpoint::model_path(dir, step), &self.device)?;
        let net = Network::build(&self.cfg, WeightSource::Tensors(weights), &self.device)?;
        let mut fresh = Self::with_network(&self.cfg, &self.device, net)?;
        let state = fresh.optimiser.resume(saved, step)?;
        fresh.batches.restore(state.sampler)?;
        fresh.step = step;
        *self = fresh;
        Ok(())
    }
}

/// Runs a whole training job.
pub fn train(
    cfg: &Config,
    opts: &TrainOptions,
    mut on_event: impl FnMut(Event<'_>) -> Control,
) -> Result<TrainSummary> {
    let mut trainer = Trainer::new(cfg, &opts.device)?;
    let cadence = driver::Cadence::new(cfg.total_steps(), cfg.data.batch_size, cfg.save_freq);
    driver::drive(&mut trainer, cadence, opts, |tick| match tick {
        driver::Tick::Started(s) => on_event(Event::Started(s)),
        driver::Tick::Step(p) => on_event(Event::Step(p)),
        driver::Tick::Checkpoint(ck, ()) => on_event(Event::Checkpoint(ck)),
    })
}
