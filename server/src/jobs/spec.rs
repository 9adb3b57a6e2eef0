//! [`JobSpec`]: one job as the platform runs it, typed by its kind. Everything that depends on
//! the kind lives here: the stored form and how it is read back (by the kind stored beside it,
//! never guessed from the JSON's shape), total steps, the device class, how a worker resolves
//! its paths, how many checkpoints it keeps, and how it runs. Each kind's constructor
//! (`CompareJob::new`, `FinetuneJob::new`, a parsed trainer `Config`) is its validation.

use std::path::Path;

use ifp_trainer::checkpoint::Checkpoint;
use ifp_trainer::config::DeviceClass;
use ifp_trainer::{Config, Control, Event, Progress, TrainOptions};
use serde_json::Value;

use super::compare::CompareJob;
use super::finetune::FinetuneJob;
use super::{datasets, uploads};
use crate::db::values::JobKind;
use crate::error::{Error, Result};

/// A validated job of one of the three kinds.
#[derive(Debug, Clone)]
pub enum JobSpec {
    /// IFP pre-training with a trainer config.
    Pretrain(Box<Config>),
    /// One fine-tuning run.
    Finetune(Box<FinetuneJob>),
    /// Pre-training, then fine-tuning from the IFP encoder and from scratch.
    Compare(Box<CompareJob>),
}

/// What a running job tells its worker.
#[derive(Debug)]
pub enum Report<'a> {
    /// A step done, numbered on the job's step axis (a comparison counts its phases on one
    /// axis: pre-training steps, then the IFP arm's, then the scratch arm's).
    Step(usize, &'a Progress),
    /// A checkpoint written (pre-training and fine-tuning jobs).
    Checkpoint(&'a Checkpoint),
}

/// A stretch of a job's step axis trained alike: steps `start + 1 ..= start + steps`, with
/// `batch` images a step; `arm` is the comparison arm it fine-tunes (an index into
/// `CompareJob::arms`), `None` for pre-training or a single fine-tuning run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPhase {
    pub start: usize,
    pub steps: usize,
    pub batch: usize,
    pub arm: Option<usize>,
}

impl JobSpec {
    /// The phases of its step axis (one, except for a comparison).
    pub fn step_phases(&self) -> Vec<StepPhase> {
        let one = |steps, batch| {
            vec![StepPhase {
                start: 0,
                steps,
                batch,
                arm: None,
            }]
        };
        match self {
            JobSpec::Pretrain(c) => one(c.total_steps(), c.data.batch_size),
            JobSpec::Finetune(j) => one(j.total_steps(), j.finetune.data.batch_size),
            JobSpec::Compare(j) => j.step_phases(),
        }
    }

    pub fn kind(&self) -> JobKind {
        match self {
            JobSpec::Pretrain(_) => JobKind::Pretrain,
            JobSpec::Finetune(_) => JobKind::Finetune,
            JobSpec::Compare(_) => JobKind::Compare,
        }
    }

    /// Steps on the job's step axis, what its progress counts up to.
    pub fn total_steps(&self) -> usize {
        match self {
            JobSpec::Pretrain(c) => c.total_steps(),
            JobSpec::Finetune(j) => j.total_steps(),
            JobSpec::Compare(j) => j.total_steps(),
        }
    }

    /// The run's estimated peak memory in bytes, and the key that most directly lowers it.
    pub fn peak_memory(&self) -> (u64, &'static str) {
        use ifp_trainer::memory::{finetune_peak_bytes, pretrain_peak_bytes};
        match self {
            JobSpec::Pretrain(c) => (pretrain_peak_bytes(c), "DATA.BATCH_SIZE"),
            JobSpec::Finetune(j) => (finetune_peak_bytes(&j.finetune), "FINETUNE.DATA.BATCH_SIZE"),
            JobSpec::Compare(j) => {
                let (pre, ft) = (
                    pretrain_peak_bytes(&j.pretrain),
                    finetune_peak_bytes(&j.finetune),
                );
                if pre >= ft {
                    (pre, "DATA.BATCH_SIZE")
                } else {
                    (ft, "FINETUNE.DATA.BATCH_SIZE")
                }
            }
        }
    }

    /// The workers that may claim it (`TRAIN.DEVICE` of the config that trains first).
    pub fn device_class(&self) -> DeviceClass {
        match self {
            JobSpec::Pretrain(c) => c.train.device,
            JobSpec::Finetune(j) => j.finetune.train.device,
            JobSpec::Compare(j) => j.pretrain.train.device,
        }
    }

    /// The config stored with the job: normalised (defaults filled in), so a later change of
    /// defaults does not change a queued job.
    pub fn stored(&self) -> Result<Value> {
        match self {
            JobSpec::Pretrain(c) => serde_json::to_value(c)
                .map_err(|e| Error::Internal(format!("serialising a config: {e}"))),
            JobSpec::Finetune(j) => Ok(j.to_value()),
            JobSpec::Compare(j) => Ok(j.to_value()),
        }
    }

    /// Reads a stored config back as the stored kind says.
    pub fn from_stored(kind: JobKind, config: &Value) -> std::result::Result<Self, String> {
        Ok(match kind {
            JobKind::Pretrain => JobSpec::Pretrain(Box::new(
                Config::from_value(config.clone()).map_err(|e| e.to_string())?,
            )),
            JobKind::Finetune => JobSpec::Finetune(Box::new(FinetuneJob::from_value(config)?)),
            JobKind::Compare => JobSpec::Compare(Box::new(CompareJob::from_value(config)?)),
        })
    }

    /// At submission: the noise image a pre-training names must be an existing upload of the
    /// submitter's.
    pub async fn check_uploads(
        &self,
        pool: &sqlx::PgPool,
        artifacts: &Path,
        caller: &crate::tokens::Caller,
    ) -> Result<()> {
        match self {
            JobSpec::Pretrain(c) => uploads::check(pool, artifacts, caller, c).await,
            JobSpec::Compare(j) => uploads::check(pool, artifacts, caller, &j.pretrain).await,
            JobSpec::Finetune(_) => Ok(()),
        }
    }

    /// On a worker: points uploads and the initial encoder at this machine's artifact store and
    /// data folders at its datasets folder (which fine-tuning kinds need).
    pub fn resolve(
        &mut self,
        artifacts: &Path,
        datasets: Option<&Path>,
    ) -> std::result::Result<(), String> {
        match self {
            JobSpec::Pretrain(c) => uploads::resolve(artifacts, c),
            JobSpec::Finetune(j) => {
                j.resolve(artifacts, datasets.ok_or(datasets::WORKER_HAS_NONE)?)?;
            }
            JobSpec::Compare(j) => {
                j.resolve(artifacts, datasets.ok_or(datasets::WORKER_HAS_NONE)?)?;
                uploads::resolve(artifacts, &mut j.pretrain);
            }
        }
        Ok(())
    }

    /// Model checkpoints kept while it runs, newest first.
    pub fn keep_checkpoints(&self) -> i64 {
        match self {
            JobSpec::Pretrain(c) => i64::try_from(c.train.keep_checkpoints).unwrap_or(i64::MAX),
            // Retention could remove the best checkpoint, chosen by validation at the end.
            JobSpec::Finetune(_) | JobSpec::Compare(_) => i64::MAX,
        }
    }

    /// Whether it ends by writing result files (a report, a validation history) to list.
    pub fn writes_results(&self) -> bool {
        !matches!(self, JobSpec::Pretrain(_))
    }

    /// Runs the job into `opts.out_dir` on a blocking thread, reporting steps and checkpoints
    /// and asking `stop` after each step. Returns whether `stop` ended it early.
    pub fn run(
        &self,
        opts: &TrainOptions,
        mut report: impl FnMut(Report<'_>),
        stop: impl Fn() -> bool,
    ) -> ifp_trainer::Result<bool> {
        let control = || {
            if stop() {
                Control::Stop
            } else {
                Control::Continue
            }
        };
        match self {
            JobSpec::Pretrain(cfg) => ifp_trainer::train(cfg, opts, |ev| {
                match ev {
                    Event::Step(p) => report(Report::Step(p.step, p)),
                    Event::Checkpoint(c) => report(Report::Checkpoint(c)),
                    Event::Started { .. } => {}
                }
                control()
            })
            .map(|s| s.stopped),
            JobSpec::Finetune(job) => ifp_trainer::finetune::finetune(&job.finetune, opts, |ev| {
                match ev {
                    ifp_trainer::finetune::Event::Step(p) => report(Report::Step(p.step, p)),
                    ifp_trainer::finetune::Event::Checkpoint(c) => report(Report::Checkpoint(c)),
                    _ => {}
                }
                control()
            })
            .map(|s| s.run.stopped),
            JobSpec::Compare(job) => job.run(
                &opts.out_dir,
                &opts.device,
                |step, p| report(Report::Step(step, p)),
                &stop,
            ),
        }
    }
}
