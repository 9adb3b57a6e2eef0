//! The arguments `ifp serve` and `ifp worker` share: where artifacts live and how this
//! process's worker slots run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use ifp_server::platform;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Args)]
pub struct SlotArgs {
    /// Data directory: artifacts (checkpoints) go to DATA_DIR/artifacts, shared by every
    /// worker of the platform; `serve` without DATABASE_URL also keeps its database in
    /// DATA_DIR/pg.
    #[arg(long, env = "IFP_DATA_DIR", default_value = "./ifp-data")]
    pub data_dir: PathBuf,
    /// Worker slots in this process (0 with `serve`: API only).
    #[arg(long, env = "IFP_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Job lease in seconds: a worker heartbeats every third of it, and a dead worker's job is
    /// requeued once it expires.
    #[arg(long, env = "IFP_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub lease_secs: u64,
    /// Where workers train: cpu, cuda or cuda:N.
    #[arg(long, env = "IFP_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Where fine-tuning data of `compare` and `finetune` jobs lives (their TRAIN_DIR/TEST_DIR
    /// are relative to it); without it, those jobs are refused.
    #[arg(long, env = "IFP_DATASETS_DIR", value_name = "DIR")]
    pub datasets_dir: Option<PathBuf>,
}

impl SlotArgs {
    /// Starts this process's worker slots on `device`; they stop when `shutdown` turns true.
    pub fn spawn_workers(
        &self,
        pool: &PgPool,
        artifacts: &Path,
        device: &candle_core::Device,
        datasets: Option<&Path>,
        shutdown: &watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        let lease = Duration::from_secs(self.lease_secs);
        platform::spawn_workers(
            pool,
            self.workers,
            artifacts,
            lease,
            device,
            datasets,
            shutdown,
        )
    }
}
