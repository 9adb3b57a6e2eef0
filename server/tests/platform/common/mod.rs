//! Test support: one real PostgreSQL per test binary (the embedded launcher in a temporary
//! folder, or the server named by `DATABASE_URL`), and a fresh migrated database per test.

use std::os::unix::fs::PermissionsExt;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use ifp_server::db::pg::PgCluster;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

struct Shared {
    cluster: Option<PgCluster>,
    _dir: Option<tempfile::TempDir>,
}

static SHARED: OnceLock<Mutex<Shared>> = OnceLock::new();

extern "C" fn stop_cluster() {
    if let Some(m) = SHARED.get() {
        if let Ok(mut s) = m.lock() {
            // The cluster first, then its folder.
            s.cluster.take();
            s._dir.take();
        }
    }
}

/// A temporary folder the unprivileged PostgreSQL user can enter.
pub fn open_tempdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn base_options() -> PgConnectOptions {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return PgConnectOptions::from_str(&url).expect("DATABASE_URL");
    }
    let shared = SHARED.get_or_init(|| {
        let dir = open_tempdir("ifp-test-pg-");
        let cluster = PgCluster::start(&dir.path().join("pg")).expect("start PostgreSQL");
        // Statics are never dropped: stop the cluster when the test binary exits.
        // SAFETY: registering a plain extern "C" function has no preconditions.
        unsafe { libc::atexit(stop_cluster) };
        Mutex::new(Shared {
            cluster: Some(cluster),
            _dir: Some(dir),
        })
    });
    let s = shared.lock().unwrap();
    s.cluster.as_ref().unwrap().connect_options("postgres")
}

/// A new, empty, migrated database and a pool on it.
pub async fn fresh_pool() -> PgPool {
    let base = base_options().disable_statement_logging();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect_with(&base).await.unwrap();
    sqlx::query(&format!("create database {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect_with(base.database(&name))
        .await
        .unwrap();
    ifp_server::db::pg::migrate(&pool).await.unwrap();
    pool
}
