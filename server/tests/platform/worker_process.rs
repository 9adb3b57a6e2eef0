//! Issue 16, item 2: each training attempt in its own process (`ifp attempt`). A job runs there
//! as it does in-process (metrics, checkpoints, success); a cancel reaches it; an attempt whose
//! process is killed, as the kernel's out-of-memory killer would, fails alone with a reason
//! the job page shows, is not retried, and the same worker goes on to the next job. A process
//! over its memory limit fails at the allocation with "ran out of memory", and the worker
//! registers that limit as its memory for admission control.

use crate::common;
use crate::worker::submit;

use std::time::Duration;

use ifp_server::db::values::{AttemptOutcome, JobStatus};
use ifp_server::queue;
use ifp_server::worker::{self, TrainProcess, WorkerConfig};

/// The training processes this test process started (children of its worker), by pid.
fn attempt_processes() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string));
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if ppid.as_deref() == Some(me.as_str()) && cmd.split(|b| *b == 0).any(|a| a == b"attempt") {
            out.push(pid);
        }
    }
    out
}

/// A worker that runs each attempt in its own `ifp attempt` process, limited to `memory_limit`.
fn process_worker(
    id: &str,
    artifacts: &std::path::Path,
    memory_limit: Option<u64>,
) -> WorkerConfig {
    let mut cfg = WorkerConfig::new(id, artifacts);
    cfg.poll_interval = Duration::from_millis(300);
    cfg.train_process = Some(TrainProcess {
        exe: env!("CARGO_BIN_EXE_ifp").into(),
        memory_limit,
    });
    cfg
}

#[tokio::test]
async fn attempts_run_in_their_own_process_and_a_killed_one_fails_alone() {
    let pool = common::fresh_pool().await;
    let artifacts = tempfile::tempdir().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let mut cfg = process_worker("w-process", artifacts.path(), None);
    cfg.lease = Duration::from_secs(3);
    cfg.usage_every = Duration::from_millis(200);
    tokio::spawn(worker::run(pool.clone(), cfg, rx));

    // A job runs to the end in its process: every step's metric, its checkpoints listed.
    let job = submit(&pool, 6, 3).await;
    let done = common::wait_for(&pool, job.id, "the job", |j| !j.status.is_active()).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{:?}", done.error);
    let steps: i64 = sqlx::query_scalar("select count(*) from metric where job_id = $1")
        .bind(job.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(steps, 6);
    let models: Vec<String> = sqlx::query_scalar(
        "select name from checkpoint where job_id = $1 and kind = 'model' order by step",
    )
    .bind(job.id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        models,
        ["model-000003.safetensors", "model-000006.safetensors"]
    );

    // A long job whose process is killed (SIGKILL, what the OOM killer sends) fails with a
    // reason, once: the crash would recur, so it is not given to another attempt.
    let long = submit(&pool, 100_000, 1000).await;
    common::wait_for(&pool, long.id, "some steps", |j| j.step >= 2).await;

    // Issue 17, item 9: the worker samples the process's CPU and memory while it trains, the
    // first reading one period in; the job page charts them from the second reading on.
    // (readings, largest resident memory, GPU readings) of the attempt.
    let usage = || async {
        sqlx::query_as::<_, (i64, Option<i64>, i64)>(
            "select count(*), max(rss_bytes), count(gpu_percent) from usage_sample \
             where job_id = $1 and attempt = 1",
        )
        .bind(long.id)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let t0 = std::time::Instant::now();
    let (_, max_rss, gpu_samples) = loop {
        let u = usage().await;
        if u.0 >= 2 {
            break u;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "fewer than two usage samples"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        max_rss.unwrap_or(0) > 10 << 20,
        "{max_rss:?} bytes resident"
    );
    // An attempt on the CPU has no GPU readings (and so no GPU charts).
    assert_eq!(gpu_samples, 0);
    let site = ifp_server::app(ifp_server::AppState::new(
        pool.clone(),
        artifacts.path(),
        Some(crate::compare_support::ADMIN),
    ));
    let page = crate::compare_support::html_of(&site, &pool, &format!("/jobs/{}", long.id)).await;
    assert!(
        page.contains("Training process memory (MiB, resident)"),
        "{page}"
    );

    let pids = attempt_processes();
    assert_eq!(pids.len(), 1, "one training process: {pids:?}");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pids[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let failed = common::wait_for(&pool, long.id, "the failure", |j| !j.status.is_active()).await;
    assert_eq!(failed.status, JobStatus::Failed);
    let why = failed.error.clone().unwrap_or_default();
    assert!(
        why.contains("killed (SIGKILL") && why.contains("out-of-memory"),
        "{why}"
    );
    let attempts = queue::attempts(&pool, long.id).await.unwrap();
    assert_eq!(attempts.len(), 1, "not retried");
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Failed));

    // The same worker takes the next job, and a cancel reaches the training process.
    let next = submit(&pool, 100_000, 1000).await;
    common::wait_for(&pool, next.id, "the next job to run", |j| j.step >= 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // While it runs, /metrics adds up the training processes' latest samples.
    let api = ifp_server::app(ifp_server::AppState::new(
        pool.clone(),
        artifacts.path(),
        None,
    ));
    let resp = tower::ServiceExt::oneshot(
        api,
        axum::http::Request::get("/metrics")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    let rss: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ifp_training_resident_bytes "))
        .and_then(|v| v.parse().ok())
        .expect("the gauge");
    assert!(rss > 10e6, "{text}");
    queue::cancel(&pool, next.id).await.unwrap();
    let ended = common::wait_for(&pool, next.id, "the cancel", |j| !j.status.is_active()).await;
    assert_eq!(ended.status, JobStatus::Cancelled, "{:?}", ended.error);
    // The process has exited (the worker waited for it).
    for _ in 0..50 {
        if attempt_processes().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(attempt_processes().is_empty());
    stop.send(true).unwrap();
}

#[tokio::test]
async fn an_attempt_over_its_memory_limit_fails_alone_and_the_limit_is_registered() {
    let pool = common::fresh_pool().await;
    let artifacts = tempfile::tempdir().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    // The tiny preset trains in about 110 MB; 32 MiB cannot hold it.
    let limit = 32u64 << 20;
    let cfg = process_worker("w-limited", artifacts.path(), Some(limit));
    tokio::spawn(worker::run(pool.clone(), cfg, rx));

    let job = submit(&pool, 6, 3).await;
    let failed = common::wait_for(&pool, job.id, "the failure", |j| !j.status.is_active()).await;
    assert_eq!(failed.status, JobStatus::Failed);
    let why = failed.error.clone().unwrap_or_default();
    assert!(
        why.contains("ran out of memory: it needed more than its limit of 32 MiB"),
        "{why}"
    );
    assert_eq!(
        queue::attempts(&pool, job.id).await.unwrap().len(),
        1,
        "not retried"
    );

    let registered: Option<i64> =
        sqlx::query_scalar("select memory_bytes from worker where id = 'w-limited'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(registered, Some(limit as i64));
    stop.send(true).unwrap();
}
