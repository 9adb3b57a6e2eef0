//! What a run will cost before it is submitted: its estimated peak memory against the largest
//! live worker that may run it (what admission control refuses, and what the new-job forms
//! show), and its expected training time from the speeds that finished runs logged.

use ifp_trainer::config::DeviceClass;
use ifp_trainer::finetune::FinetuneConfig;
use ifp_trainer::Config;
use serde_json::{json, Value};
use sqlx::PgPool;

use super::spec::JobSpec;
use crate::db::values::JobKind;
use crate::error::{Error, Result};
use crate::queue;

/// A run's estimated peak memory against the largest live worker that may run it: what
/// admission control refuses and what the new-job forms show, from one computation.
pub(super) struct MemoryFit {
    pub(super) need: u64,
    /// The key that most directly lowers `need`.
    pub(super) key: &'static str,
    pub(super) class: DeviceClass,
    /// `None` when no live worker of the class has reported its memory.
    pub(super) have: Option<u64>,
}

impl MemoryFit {
    pub(super) async fn of(pool: &PgPool, spec: &JobSpec) -> Result<MemoryFit> {
        let (need, key) = spec.peak_memory();
        let class = spec.device_class();
        let have = queue::largest_worker_memory(pool, class)
            .await?
            .map(|b| u64::try_from(b).unwrap_or(0));
        Ok(MemoryFit {
            need,
            key,
            class,
            have,
        })
    }

    /// More than the headroom of the largest worker; never without a worker to compare with.
    pub(super) fn refused(&self) -> bool {
        self.have
            .is_some_and(|have| self.need as f64 > queue::MEMORY_HEADROOM * have as f64)
    }
}

/// What the new-job forms tell a user before they submit a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// The run's estimated peak memory (`ifp_trainer::memory`).
    pub peak_bytes: u64,
    /// The memory of the largest live worker that may run it, if any worker reported one.
    pub largest_worker: Option<u64>,
    /// Whether admission control would refuse it for memory.
    pub refused: bool,
    /// Expected training time in seconds, summed over the run's phases: each phase's images
    /// divided by the median images/s that finished runs of its kind (pre-training or
    /// fine-tuning) with the same network, crop size, batch size and device class logged (the
    /// last 20 of them); `None` if a phase has no such run. Validation and testing are not
    /// counted.
    pub seconds: Option<f64>,
    /// How many finished runs the duration is based on (the fewest of any phase).
    pub runs: i64,
}

/// Whose logged speed a phase of a run is expected to train at.
#[derive(Clone, Copy)]
enum Peers<'a> {
    Pretrain(&'a Config),
    Finetune(&'a FinetuneConfig),
}

impl Peers<'_> {
    /// The job kind, and the network, crop side and batch size the peers must share, each with
    /// its path in a stored job config.
    fn filter(&self) -> Result<(JobKind, [(&'static str, Value); 3])> {
        let model = |m| serde_json::to_value(m).map_err(|e| Error::Internal(e.to_string()));
        Ok(match self {
            Peers::Pretrain(c) => (
                JobKind::Pretrain,
                [
                    ("{MODEL}", model(&c.model)?),
                    ("{DATA,IMG_SIZE}", json!(c.data.img_size)),
                    ("{DATA,BATCH_SIZE}", json!(c.data.batch_size)),
                ],
            ),
            Peers::Finetune(f) => (
                JobKind::Finetune,
                [
                    ("{FINETUNE,MODEL}", model(&f.model)?),
                    ("{FINETUNE,DATA,CROP}", json!(f.data.crop)),
                    ("{FINETUNE,DATA,BATCH_SIZE}", json!(f.data.batch_size)),
                ],
            ),
        })
    }

    /// The median images/s of the last 20 such runs that succeeded, and how many there were.
    async fn speed(self, pool: &PgPool, class: DeviceClass) -> Result<(Option<f64>, i64)> {
        let (kind, [(model_at, model), (side_at, side), (batch_at, batch)]) = self.filter()?;
        // Only the constant paths above go into the text; every value is bound.
        let sql = format!(
            "with peer as (
                 select id from job
                 where kind = $5 and status = 'succeeded' and device_class = $4
                   and config #> '{model_at}' = $1 and config #> '{side_at}' = $2
                   and config #> '{batch_at}' = $3
                 order by finished_at desc limit 20)
             select percentile_cont(0.5) within group (order by m.images_per_sec),
                    count(distinct m.job_id)
             from metric m join peer p on p.id = m.job_id
             where m.images_per_sec > 0"
        );
        Ok(sqlx::query_as(&sql)
            .bind(model)
            .bind(side)
            .bind(batch)
            .bind(class.as_str())
            .bind(kind)
            .fetch_one(pool)
            .await?)
    }
}

/// The estimate the new-job forms show for `spec`.
pub async fn estimate(pool: &PgPool, spec: &JobSpec) -> Result<Estimate> {
    let fit = MemoryFit::of(pool, spec).await?;
    let mut seconds = Some(0.0);
    let mut runs = i64::MAX;
    // A comparison's phases share two kinds of peers: ask once for each.
    let mut speeds: [Option<(Option<f64>, i64)>; 2] = [None, None];
    for phase in spec.step_phases() {
        let (slot, peers) = match (spec, phase.arm) {
            (JobSpec::Pretrain(c), _) => (0, Peers::Pretrain(c)),
            (JobSpec::Compare(j), None) => (0, Peers::Pretrain(&j.pretrain)),
            (JobSpec::Finetune(j), _) => (1, Peers::Finetune(&j.finetune)),
            (JobSpec::Compare(j), Some(_)) => (1, Peers::Finetune(&j.finetune)),
        };
        let (ips, n) = match speeds[slot] {
            Some(known) => known,
            None => *speeds[slot].insert(peers.speed(pool, fit.class).await?),
        };
        runs = runs.min(n);
        let images = phase.steps as f64 * phase.batch as f64;
        seconds = match (seconds, ips) {
            (Some(s), Some(v)) if v > 0.0 => Some(s + images / v),
            _ => None,
        };
    }
    Ok(Estimate {
        peak_bytes: fit.need,
        largest_worker: fit.have,
        refused: fit.refused(),
        seconds,
        runs: if runs == i64::MAX { 0 } else { runs },
    })
}
