//! The state every HTTP handler gets through `State<AppState>`.

use std::path::PathBuf;
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// Root of the artifact store; checkpoint paths in the database are relative to it.
    pub artifacts: PathBuf,
    /// The folder fine-tuning data of `compare` jobs must come from (`IFP_DATASETS_DIR`);
    /// without it, `compare` jobs are refused.
    pub datasets: Option<PathBuf>,
    /// SHA-256 of the admin token (`IFP_ADMIN_TOKEN` or the generated one), if any.
    pub admin_token_hash: Option<String>,
    /// Ids of jobs that changed, fed by [`crate::http::hub::spawn_hub`] from `NOTIFY`; event
    /// streams also poll, so without a hub they are slower, not broken.
    pub job_changed: broadcast::Sender<Uuid>,
    pub http_metrics: Arc<crate::http::latency::HttpMetrics>,
    /// Turned true when the server shuts down, so long-lived responses (event streams) end
    /// and the graceful shutdown does not wait on them forever.
    pub closing: Arc<watch::Sender<bool>>,
    /// The limit on expensive requests in flight (see `gate.rs`).
    pub gate: crate::http::gate::Gate,
    /// Event streams each user may hold open at once (admins are not limited): each holds a
    /// connection, and the server takes a bounded number of those.
    pub event_streams: crate::http::gate::Quota,
}

impl AppState {
    pub fn new(pool: PgPool, artifacts: impl Into<PathBuf>, admin_token: Option<&str>) -> Self {
        AppState {
            pool,
            artifacts: artifacts.into(),
            datasets: None,
            admin_token_hash: admin_token.map(crate::tokens::hash),
            job_changed: broadcast::channel(1024).0,
            http_metrics: Arc::default(),
            closing: Arc::new(watch::channel(false).0),
            gate: Default::default(),
            event_streams: crate::http::gate::Quota::new(64),
        }
    }
}
