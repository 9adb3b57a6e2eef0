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
    fresh_database().await.0
}

/// A new, empty, migrated database: a pool on it and a `DATABASE_URL` for `ifp` processes.
pub async fn fresh_database() -> (PgPool, String) {
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
    let url = match std::env::var("DATABASE_URL") {
        // postgres://user@host:port/DB?params: swap the database name.
        Ok(url) => {
            let (head, query) = url
                .split_once('?')
                .map_or((url.as_str(), ""), |(h, q)| (h, q));
            let cut = head
                .rfind('/')
                .filter(|&i| i > "postgres://".len())
                .unwrap_or(head.len());
            let q = if query.is_empty() {
                String::new()
            } else {
                format!("?{query}")
            };
            format!("{}/{name}{q}", &head[..cut])
        }
        Err(_) => SHARED
            .get()
            .unwrap()
            .lock()
            .unwrap()
            .cluster
            .as_ref()
            .unwrap()
            .url(&name),
    };
    (pool, url)
}

/// `../shared/golden` beside the workspace: the PyTorch reference's test vectors.
pub fn golden() -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/golden"));
    assert!(
        dir.is_dir(),
        "the golden test vectors are required at {}",
        dir.display()
    );
    dir
}

/// `../shared/data` beside the workspace, where the server's datasets folder points in tests.
pub fn datasets() -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"))
        .canonicalize()
        .expect("../shared/data (the fine-tuning test images) is missing")
}

/// A path as a command-line argument.
pub fn p(path: &std::path::Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// One worker slot with a 3 s lease, polling every 0.5 s; send `true` to stop it.
pub fn start_worker(
    pool: &PgPool,
    id: &str,
    artifacts: &std::path::Path,
) -> tokio::sync::watch::Sender<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut cfg = ifp_server::worker::WorkerConfig::new(id, artifacts);
    cfg.lease = std::time::Duration::from_secs(3);
    cfg.poll_interval = std::time::Duration::from_millis(500);
    tokio::spawn(ifp_server::worker::run(pool.clone(), cfg, rx));
    tx
}

/// Polls job `id` until `ok` holds (at most 5 minutes).
pub async fn wait_for(
    pool: &PgPool,
    id: uuid::Uuid,
    what: &str,
    ok: impl Fn(&ifp_server::db::rows::Job) -> bool,
) -> ifp_server::db::rows::Job {
    let t0 = std::time::Instant::now();
    loop {
        let j = ifp_server::queue::get(pool, id).await.unwrap().unwrap();
        if ok(&j) {
            return j;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(300),
            "timed out waiting for {what}: {j:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Runs the `ifp` binary with `args`.
pub fn ifp<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ifp"))
        .args(args)
        .output()
        .expect("run ifp")
}

/// The arguments written in `template`, split at spaces, with each `{}` replaced by the next of
/// `paths` (a path stays one argument, spaces and all).
pub fn argv(template: &str, paths: &[&std::path::Path]) -> Vec<std::ffi::OsString> {
    let mut next = paths.iter();
    let args: Vec<std::ffi::OsString> = template
        .split_whitespace()
        .map(|w| match w {
            "{}" => next.next().expect("a path for each {}").into(),
            _ => w.into(),
        })
        .collect();
    assert!(
        next.next().is_none(),
        "more paths than {{}} in `{template}`"
    );
    args
}

/// The median step time `ifp bench` printed as its last line, checked to be positive.
pub fn bench_median_ms(o: &std::process::Output) -> f64 {
    assert!(o.status.success(), "{}", stderr(o));
    let text = String::from_utf8_lossy(&o.stdout);
    let last = text.trim().lines().last().expect("output");
    let ms: f64 = last
        .strip_prefix("step_ms ")
        .expect("last line is step_ms")
        .parse()
        .expect("number");
    assert!(ms > 0.0, "{last}");
    ms
}

/// A finished command's standard error, as text.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fake checkpoint of `step` for attempt 1 of job `id`: small model, state and sample files
/// written into the attempt folder (their contents are their names), not yet listed.
pub fn fake_checkpoint(
    artifacts: &std::path::Path,
    id: uuid::Uuid,
    step: usize,
) -> ifp_trainer::checkpoint::Checkpoint {
    use sha2::Digest;
    let dir = ifp_server::worker::attempt_dir(artifacts, id, 1);
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: String| {
        let path = dir.join(&name);
        std::fs::write(&path, name.as_bytes()).unwrap();
        ifp_trainer::checkpoint::WrittenFile {
            path,
            bytes: name.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(name.as_bytes())),
        }
    };
    ifp_trainer::checkpoint::Checkpoint {
        step,
        model: file(format!("model-{step:06}.safetensors")),
        state: file(format!("state-{step:06}.safetensors")),
        sample: Some(file(format!("sample-{step:06}.png"))),
    }
}

/// The step attempt 2 of job `id` resumed from (`None`: it started over).
pub async fn resumed_in_attempt_2(pool: &sqlx::PgPool, id: uuid::Uuid) -> Option<i64> {
    sqlx::query_scalar("select resumed_from_step from attempt where job_id = $1 and attempt = 2")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("attempt 2")
}

/// The admin token every test server is started with.
pub const ADMIN: &str = "admin-secret";

/// A pre-training config small enough to train in a moment.
pub const TINY: &str = "MODEL: {TYPE: restormer}\nDATA: {IMG_SIZE: 16}\nTRAIN: {STEPS: 4}\n";
