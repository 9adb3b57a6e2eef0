//! Training batches: crops of the noise image, their spectrum masks and corruptions, turned into
//! the network input (normalised corrupted crop), the target (normalised clean crop) and the
//! mask tensor the loss needs (ARCHITECTURE.md, "The method"). All randomness comes from seeded
//! ChaCha streams whose positions are saved in the training state, so a resumed run draws the
//! same crops. A run draws its batches on a thread of its own, one ahead ([`Prefetcher`]).

use std::sync::mpsc;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::data::corrupt::{normalize_imagenet, CorruptionKind, Corruptor};
use crate::data::crop::{sample_crop, CropParams};
use crate::data::image::{load_image, Image};
use crate::data::mask::{FilterType, MaskGenerator, MaskMode, MaskRngState};
use crate::data::noise::{generate_noise, NoiseSpec};
use crate::error::Result;
use crate::loss::RecoverTarget;

/// Distinct seeds for the independent random streams of one run.
const CROP_STREAM: u64 = 0x1F9_C80F;
const MASK_STREAM: u64 = 0x1F9_3A5C;

/// One training batch.
pub struct Batch {
    /// ImageNet-normalised corrupted crops, (N, 3, S, S).
    pub input: Tensor,
    /// ImageNet-normalised clean crops, (N, 3, S, S).
    pub target: Tensor,
    /// Spectrum masks, (N, 1, S, S), 1 = kept frequency.
    pub mask: Tensor,
    /// The first sample's clean and corrupted crops in [0, 1], for the PNG strip.
    pub first_clean: Image,
    pub first_corrupted: Image,
}

/// Where the sampler's random streams stand (saved with each checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    pub crop: MaskRngState,
    pub mask: MaskRngState,
}

/// Draws batches for one run.
pub struct Sampler {
    noise: Image,
    crop: CropParams,
    masks: MaskGenerator,
    corruptor: Corruptor,
    kind: CorruptionKind,
    crop_seed: u64,
    rng: ChaCha8Rng,
}

/// The noise image of a config: the user's image, or the generated one.
pub fn noise_image(cfg: &Config) -> Result<Image> {
    if let Some(path) = &cfg.data.noise_image {
        return Ok(load_image(path)?);
    }
    let n = &cfg.data.noise;
    Ok(generate_noise(&NoiseSpec {
        width: n.width,
        height: n.height,
        mean: n.mean,
        std: n.std,
        seed: n.seed,
    })?)
}

impl Sampler {
    pub fn from_config(cfg: &Config) -> Result<Self> {
        let d = &cfg.data;
        let filter = if d.filter_type == "MFM" {
            FilterType::Mfm
        } else {
            FilterType::Ifp
        };
        let mode = if d.mask_mode == "per_sample" {
            MaskMode::PerSample
        } else {
            MaskMode::Fixed
        };
        let kind = match cfg.model.recover_target_type {
            RecoverTarget::Normal | RecoverTarget::Masked => CorruptionKind::Real,
            RecoverTarget::MMasked | RecoverTarget::MMMasked => CorruptionKind::Modulus,
        };
        let crop_seed = cfg.seed ^ CROP_STREAM;
        Ok(Sampler {
            noise: noise_image(cfg)?,
            crop: CropParams {
                size: d.img_size,
                min_scale: d.min_crop_scale,
            },
            masks: MaskGenerator::new(
                filter,
                d.img_size,
                d.sample_ratio,
                d.mask_radius1 as usize,
                d.mask_radius2.min(1e9) as usize,
                mode,
                cfg.seed ^ MASK_STREAM,
            )?,
            corruptor: Corruptor::new(d.img_size)?,
            kind,
            crop_seed,
            rng: ChaCha8Rng::seed_from_u64(crop_seed),
        })
    }

    /// The mask generator (its fixed radii are recorded in checkpoints).
    pub fn masks(&self) -> &MaskGenerator {
        &self.masks
    }

    pub fn state(&self) -> SamplerState {
        SamplerState {
            crop: MaskRngState {
                seed: self.crop_seed,
                word_pos: self.rng.get_word_pos(),
            },
            mask: self.masks.rng_state(),
        }
    }

    pub fn restore(&mut self, state: SamplerState) {
        self.crop_seed = state.crop.seed;
        self.rng = ChaCha8Rng::seed_from_u64(state.crop.seed);
        self.rng.set_word_pos(state.crop.word_pos);
        self.masks.set_rng_state(state.mask);
    }

    /// Draws `n` samples onto `device`.
    pub fn next_batch(&mut self, n: usize, device: &Device) -> Result<Batch> {
        self.draw(n)?.onto(device)
    }

    /// Draws `n` samples into host memory.
    fn draw(&mut self, n: usize) -> Result<HostBatch> {
        let s = self.crop.size;
        let plane = 3 * s * s;
        let mut input = Vec::with_capacity(n * plane);
        let mut target = Vec::with_capacity(n * plane);
        let mut masks = Vec::with_capacity(n * s * s);
        let mut first = None;
        for _ in 0..n {
            let clean = sample_crop(&self.noise, &self.crop, &mut self.rng)?;
            let mask = self.masks.next();
            let corrupted = self.corruptor.apply_image(self.kind, &clean, &mask)?;
            if first.is_none() {
                first = Some((clean.clone(), corrupted.clone()));
            }
            let mut x = corrupted.data;
            normalize_imagenet(&mut x, 3, s * s)?;
            let mut t = clean.data;
            normalize_imagenet(&mut t, 3, s * s)?;
            input.extend_from_slice(&x);
            target.extend_from_slice(&t);
            masks.extend_from_slice(&mask.data);
        }
        let (first_clean, first_corrupted) =
            first.ok_or_else(|| crate::error::TrainerError::Unsupported("empty batch".into()))?;
        Ok(HostBatch {
            n,
            size: s,
            input,
            target,
            masks,
            first_clean,
            first_corrupted,
        })
    }
}

/// A batch in host memory, as the sampler draws it.
struct HostBatch {
    n: usize,
    size: usize,
    input: Vec<f32>,
    target: Vec<f32>,
    masks: Vec<f32>,
    first_clean: Image,
    first_corrupted: Image,
}

impl HostBatch {
    fn onto(self, device: &Device) -> Result<Batch> {
        let (n, s) = (self.n, self.size);
        Ok(Batch {
            input: Tensor::from_vec(self.input, (n, 3, s, s), device)?,
            target: Tensor::from_vec(self.target, (n, 3, s, s), device)?,
            mask: Tensor::from_vec(self.masks, (n, 1, s, s), device)?,
            first_clean: self.first_clean,
            first_corrupted: self.first_corrupted,
        })
    }
}

/// What the batch thread is asked to do, in order.
enum Request {
    /// Draw a batch of this many samples.
    Draw(usize),
    /// Put the sampler's streams here (a resumed run).
    Restore(SamplerState),
}

/// A run's batches, drawn on a thread of their own one batch ahead: while a step runs, the next
/// batch is drawn (on a GPU the host would otherwise draw it while the device waits). The
/// batches are the sampler's own, in its order; [`Prefetcher::state`] is the sampler's state
/// after the last batch handed out (what a checkpoint records and a resume restores), not after
/// the one drawn ahead. Where no thread can be started (a process near its memory limit), the
/// batches are drawn in the step itself, the same ones.
pub struct Prefetcher {
    size: usize,
    state: SamplerState,
    fixed_radii: Option<Vec<usize>>,
    source: Source,
}

/// Where the batches are drawn.
enum Source {
    Thread {
        /// `None` only while dropping.
        requests: Option<mpsc::Sender<Request>>,
        drawn: mpsc::Receiver<Result<(HostBatch, SamplerState)>>,
        /// Whether a batch has been asked for and not yet handed out.
        ahead: bool,
        worker: Option<std::thread::JoinHandle<()>>,
    },
    Inline(Box<Sampler>),
}

impl Prefetcher {
    /// Batches of `size` samples from `sampler`, drawn on a new thread where one can start.
    pub fn new(sampler: Sampler, size: usize) -> Result<Self> {
        let (state, fixed_radii) = (
            sampler.state(),
            sampler.masks().fixed_radii().map(<[usize]>::to_vec),
        );
        // The sampler goes to the thread once it runs, so that it stays here if none can start.
        let (give, take) = mpsc::channel::<Sampler>();
        let (requests, asked) = mpsc::channel::<Request>();
        let (send, drawn) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("ifp-batches".into())
            .spawn(move || {
                let Ok(mut sampler) = take.recv() else {
                    return;
                };
                for request in asked {
                    let out = match request {
                        Request::Draw(n) => sampler.draw(n).map(|b| (b, sampler.state())),
                        Request::Restore(state) => {
                            sampler.restore(state);
                            continue;
                        }
                    };
                    if send.send(out).is_err() {
                        break;
                    }
                }
            });
        let source = match spawned {
            Ok(worker) => {
                give.send(sampler).map_err(|_| stopped())?;
                Source::Thread {
                    requests: Some(requests),
                    drawn,
                    ahead: false,
                    worker: Some(worker),
                }
            }
            Err(_) => return Ok(Self::inline(sampler, size)),
        };
        Ok(Prefetcher {
            size,
            state,
            fixed_radii,
            source,
        })
    }

    /// Batches of `size` samples from `sampler`, drawn in the step itself.
    fn inline(sampler: Sampler, size: usize) -> Self {
        Prefetcher {
            size,
            state: sampler.state(),
            fixed_radii: sampler.masks().fixed_radii().map(<[usize]>::to_vec),
            source: Source::Inline(Box::new(sampler)),
        }
    }

    /// The next batch, on `device`; the one after it starts drawing at once.
    pub fn next(&mut self, device: &Device) -> Result<Batch> {
        let size = self.size;
        let batch = match &mut self.source {
            Source::Inline(sampler) => {
                let batch = sampler.draw(size)?;
                self.state = sampler.state();
                batch
            }
            Source::Thread {
                requests,
                drawn,
                ahead,
                ..
            } => {
                if !*ahead {
                    ask(requests, Request::Draw(size))?;
                }
                let (batch, state) = drawn.recv().map_err(|_| stopped())??;
                self.state = state;
                ask(requests, Request::Draw(size))?;
                *ahead = true;
                batch
            }
        };
        batch.onto(device)
    }

    /// The sampler's streams after the last batch handed out.
    pub fn state(&self) -> SamplerState {
        self.state
    }

    /// The mask generator's fixed radii, if it has them (recorded in checkpoints).
    pub fn fixed_radii(&self) -> Option<&[usize]> {
        self.fixed_radii.as_deref()
    }

    /// Continues from `state` (a resumed run): a batch drawn ahead is dropped.
    pub fn restore(&mut self, state: SamplerState) -> Result<()> {
        match &mut self.source {
            Source::Inline(sampler) => sampler.restore(state),
            Source::Thread {
                requests,
                drawn,
                ahead,
                ..
            } => {
                if *ahead {
                    drawn.recv().map_err(|_| stopped())??;
                    *ahead = false;
                }
                ask(requests, Request::Restore(state))?;
            }
        }
        self.state = state;
        Ok(())
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        if let Source::Thread {
            requests, worker, ..
        } = &mut self.source
        {
            // Closing the requests ends the thread after the batch it may be drawing.
            *requests = None;
            if let Some(worker) = worker.take() {
                let _ = worker.join();
            }
        }
    }
}

/// Sends `request` to the batch thread.
fn ask(requests: &Option<mpsc::Sender<Request>>, request: Request) -> Result<()> {
    requests
        .as_ref()
        .and_then(|r| r.send(request).ok())
        .ok_or_else(stopped)
}

/// The error when the batch thread is gone (it panicked).
fn stopped() -> crate::error::TrainerError {
    crate::error::TrainerError::Unsupported("the batch thread stopped".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler() -> Sampler {
        let mut cfg = crate::config::preset("tiny").expect("tiny preset");
        cfg.data.img_size = 16;
        Sampler::from_config(&cfg).expect("sampler")
    }

    fn values(b: &Batch) -> Vec<Vec<f32>> {
        [&b.input, &b.target, &b.mask]
            .map(|t| t.flatten_all().and_then(|t| t.to_vec1()).expect("values"))
            .to_vec()
    }

    /// The prefetched batches are the sampler's own, in order; the recorded state is the one
    /// after the last batch handed out; a restore with a batch drawn ahead continues from the
    /// restored state, as the sampler would.
    #[test]
    fn prefetched_batches_are_the_samplers_own() {
        let threaded = Prefetcher::new(sampler(), 2).expect("prefetcher");
        assert!(matches!(threaded.source, Source::Thread { .. }));
        same_as_the_sampler(threaded);
    }

    /// Where no thread could start, the batches are drawn in the step: the same ones.
    #[test]
    fn batches_drawn_inline_are_the_samplers_own() {
        same_as_the_sampler(Prefetcher::inline(sampler(), 2));
    }

    fn same_as_the_sampler(mut ahead: Prefetcher) {
        let cpu = Device::Cpu;
        let mut plain = sampler();
        let start = ahead.state();
        assert_eq!(start, plain.state());
        for k in 0..3 {
            let want = plain.next_batch(2, &cpu).expect("plain");
            let got = ahead.next(&cpu).expect("prefetched");
            assert_eq!(values(&got), values(&want), "batch {k}");
            assert_eq!(got.first_clean.data, want.first_clean.data, "batch {k}");
            assert_eq!(ahead.state(), plain.state(), "state after batch {k}");
        }
        assert_eq!(ahead.fixed_radii(), plain.masks().fixed_radii());
        // Back to the start with the fourth batch already drawn ahead.
        ahead.restore(start).expect("restore");
        plain.restore(start);
        assert_eq!(ahead.state(), start);
        for k in 0..2 {
            let want = plain.next_batch(2, &cpu).expect("plain");
            let got = ahead.next(&cpu).expect("prefetched");
            assert_eq!(values(&got), values(&want), "batch {k} after the restore");
        }
    }
}
