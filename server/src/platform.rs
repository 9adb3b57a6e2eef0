//! Assembling a running platform from settings: the database (a `DATABASE_URL` or the embedded
//! cluster), the admin token, the rescuer and in-process workers. `ifp serve` and `ifp worker`
//! are thin wrappers over these.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::db::pg::PgCluster;
use crate::error::{Error, Result};
use crate::queue;
use crate::worker::{self, TrainProcess, WorkerConfig};

/// How often each process runs the rescuer.
pub const RESCUE_INTERVAL: Duration = Duration::from_secs(15);

/// The database a process uses, and the embedded cluster behind it if there is one (dropping
/// it stops the cluster when this process started it).
pub struct Database {
    pub pool: PgPool,
    pub cluster: Option<PgCluster>,
}

/// Connects to `database_url`, or starts (or attaches to) the embedded cluster in
/// `data_dir/pg`, and runs the migrations.
pub async fn open_database(
    database_url: Option<&str>,
    data_dir: &Path,
    max_connections: u32,
) -> Result<Database> {
    let (pool, cluster) = match database_url {
        Some(url) => {
            let opts = PgConnectOptions::from_str(url)
                .map_err(|e| Error::Postgres(format!("DATABASE_URL is not usable: {e}")))?
                .disable_statement_logging();
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            (pool, None)
        }
        None => {
            let dir = data_dir.join("pg");
            // initdb and pg_ctl wait on child processes: keep them off the async threads.
            let cluster = tokio::task::spawn_blocking(move || PgCluster::open(&dir))
                .await
                .map_err(|e| Error::Internal(format!("starting PostgreSQL: {e}")))??;
            let pool = cluster.pool(max_connections).await?;
            (pool, Some(cluster))
        }
    };
    crate::db::pg::migrate(&pool).await?;
    Ok(Database { pool, cluster })
}

/// The admin token: `IFP_ADMIN_TOKEN` when given, else the one in `data_dir/admin-token`,
/// else a new one written there (mode 0600). The flag says whether it was just generated.
pub fn admin_token(configured: Option<&str>, data_dir: &Path) -> Result<(String, bool)> {
    check_admin_token(configured)?;
    if let Some(t) = configured.map(str::trim).filter(|t| !t.is_empty()) {
        return Ok((t.to_string(), false));
    }
    let path = admin_token_path(data_dir);
    if let Ok(t) = std::fs::read_to_string(&path) {
        let t = t.trim();
        if !t.is_empty() {
            // A token edited into the file by hand is held to the same minimum.
            if t.chars().count() < MIN_ADMIN_TOKEN_CHARS {
                return Err(Error::invalid(
                    Some("admin-token"),
                    format!(
                        "{} holds a token of {} characters; an admin token needs at least \
                         {MIN_ADMIN_TOKEN_CHARS} (delete the file and a random one is generated)",
                        path.display(),
                        t.chars().count()
                    ),
                ));
            }
            return Ok((t.to_string(), false));
        }
    }
    let token = crate::tokens::generate();
    std::fs::create_dir_all(data_dir)
        .map_err(Error::io(format!("create {}", data_dir.display())))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(Error::io(format!("write {}", path.display())))?;
    writeln!(f, "{token}").map_err(Error::io(format!("write {}", path.display())))?;
    Ok((token, true))
}

/// The fewest characters an admin token set by hand may have: it opens every user's jobs.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// Refuses an `IFP_ADMIN_TOKEN` too short to be a secret (unset or empty means "generate one").
pub fn check_admin_token(configured: Option<&str>) -> Result<()> {
    match configured.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) if t.chars().count() < MIN_ADMIN_TOKEN_CHARS => Err(Error::invalid(
            Some("IFP_ADMIN_TOKEN"),
            format!(
                "IFP_ADMIN_TOKEN is {} characters; an admin token needs at least \
                 {MIN_ADMIN_TOKEN_CHARS} (or leave it unset and a random one is generated)",
                t.chars().count()
            ),
        )),
        _ => Ok(()),
    }
}

pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin-token")
}

/// Runs the rescuer every `every` until shutdown.
pub fn spawn_rescuer(
    pool: PgPool,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        while !*shutdown.borrow() {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = queue::rescue(&pool).await {
                        tracing::warn!(error = %e, "rescuer");
                    }
                }
                _ = shutdown.changed() => {}
            }
        }
    })
}

/// Starts `count` worker slots on this process; with `train_process`, each attempt runs in a
/// process of its own.
#[allow(clippy::too_many_arguments)]
pub fn spawn_workers(
    pool: &PgPool,
    count: usize,
    artifacts: &Path,
    lease: Duration,
    device: &candle_core::Device,
    datasets: Option<&Path>,
    train_process: Option<&TrainProcess>,
    shutdown: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    (0..count)
        .map(|slot| {
            let mut cfg = WorkerConfig::new(worker::default_worker_id(slot), artifacts);
            cfg.lease = lease;
            cfg.device = device.clone();
            cfg.datasets = datasets.map(Path::to_path_buf);
            cfg.train_process = train_process.cloned();
            tokio::spawn(worker::run(pool.clone(), cfg, shutdown.clone()))
        })
        .collect()
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The admin token file is generated, read back, and refused when edited to a short token.
    #[test]
    fn the_admin_token_file_is_held_to_the_minimum_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (t, fresh) = admin_token(None, dir.path()).expect("generated");
        assert!(fresh && t.chars().count() >= MIN_ADMIN_TOKEN_CHARS);
        assert_eq!(
            admin_token(None, dir.path()).expect("read back"),
            (t, false)
        );
        std::fs::write(admin_token_path(dir.path()), "short\n").expect("edit");
        let e = admin_token(None, dir.path()).expect_err("5 characters");
        assert!(e.to_string().contains("5 characters"), "{e}");
    }
}
