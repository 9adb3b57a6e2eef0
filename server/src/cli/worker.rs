//! `ifp worker`: worker slots (and the rescuer) against a shared PostgreSQL and artifact
//! directory, for machines other than the one running `ifp serve`.

use anyhow::Context;
use clap::Args;
use ifp_server::platform::{self, RESCUE_INTERVAL};
use tokio::sync::watch;

use super::slots::SlotArgs;
use super::{parse_device, Failure};

#[derive(Args)]
pub struct WorkerArgs {
    /// The platform's PostgreSQL (the one `ifp serve` uses).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    slots: SlotArgs,
}

pub fn run(a: WorkerArgs) -> Result<(), Failure> {
    let device = parse_device(&a.slots.device)?;
    let datasets = super::serve::datasets_dir(a.slots.datasets_dir.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::runtime)?;
    rt.block_on(async move {
        let artifacts = a.slots.data_dir.join("artifacts");
        std::fs::create_dir_all(&artifacts)
            .with_context(|| format!("cannot create {}", artifacts.display()))
            .map_err(Failure::usage)?;
        let connections = 4 + 4 * a.slots.workers as u32;
        let db = platform::open_database(Some(&a.database_url), &a.slots.data_dir, connections)
            .await
            .map_err(Failure::runtime)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let rescuer = platform::spawn_rescuer(db.pool.clone(), RESCUE_INTERVAL, stop_rx.clone());
        let workers =
            a.slots
                .spawn_workers(&db.pool, &artifacts, &device, datasets.as_deref(), &stop_rx);
        println!(
            "ifp worker: {} slot(s), artifacts in {}",
            a.slots.workers,
            artifacts.display()
        );
        platform::shutdown_signal().await;
        println!("ifp worker: shutting down (running jobs are checkpointed and requeued)");
        let _ = stop_tx.send(true);
        for w in workers {
            let _ = w.await;
        }
        let _ = rescuer.await;
        db.pool.close().await;
        Ok(())
    })
}
