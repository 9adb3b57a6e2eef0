//! Resuming a `compare` job on the platform: a worker that dies mid-arm leaves checkpoints the
//! next attempt resumes from, phase by phase.

use crate::common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ifp_server::jobs::spec::{JobSpec, Report};
use ifp_server::worker::{self, WorkerConfig};
use serde_json::{json, Value};

use super::compare_support::submit_tiny_comparison;

/// A comparison whose worker dies in the IFP arm resumes there on the next attempt (the
/// pre-training is not run again) and ends with the results of an uninterrupted run.
#[tokio::test]
async fn a_comparison_whose_worker_dies_mid_arm_resumes_in_that_arm() {
    let pool = common::fresh_pool().await;
    let artifacts = tempfile::tempdir().unwrap();
    let (_api, job) = submit_tiny_comparison(&pool, artifacts.path(), 1).await;
    let id: uuid::Uuid = job["id"].as_str().unwrap().parse().unwrap();

    // Attempt 1 pre-trains (6 steps), trains the IFP arm for 2 of its 4 steps, and dies.
    let dead = ifp_server::queue::claim(&pool, "dead", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let mut spec = JobSpec::from_stored(dead.kind, &dead.config).unwrap();
    spec.resolve(artifacts.path(), Some(&common::datasets()))
        .unwrap();
    assert!(matches!(spec, JobSpec::Compare(_)));
    let opts = ifp_trainer::TrainOptions {
        out_dir: worker::attempt_dir(artifacts.path(), id, 1),
        device: candle_core::Device::Cpu,
        resume: true,
    };
    let straight_spec = spec.clone();
    let stopped = tokio::task::spawn_blocking(move || {
        let reached = Arc::new(AtomicUsize::new(0));
        let seen = reached.clone();
        spec.run(
            &opts,
            move |r| {
                if let Report::Step(step, _) = r {
                    seen.store(step, Ordering::SeqCst);
                }
            },
            || reached.load(Ordering::SeqCst) >= 8,
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert!(stopped, "the first attempt was stopped mid-arm");
    sqlx::query("update job set lease_expires_at = now() - interval '1 second' where id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    ifp_server::queue::rescue(&pool).await.unwrap();

    let (stop, rx) = tokio::sync::watch::channel(false);
    let mut cfg = WorkerConfig::new("w-live", artifacts.path());
    cfg.poll_interval = Duration::from_millis(300);
    cfg.datasets = Some(common::datasets());
    tokio::spawn(worker::run(pool.clone(), cfg, rx));
    let job = common::wait_for(&pool, id, "the resumed comparison", |j| {
        !j.status.is_active()
    })
    .await;
    let _ = stop.send(true);
    assert_eq!(job.status.as_str(), "succeeded", "{:?}", job.error);
    assert_eq!((job.attempt, job.step), (2, 14));
    // Attempt 2 logged only steps 9..=14: the rest of the IFP arm, then the scratch arm.
    let steps: Vec<i64> = sqlx::query_scalar(
        "select step from metric where job_id = $1 and attempt = 2 order by step",
    )
    .bind(id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(steps, (9..=14).collect::<Vec<i64>>());
    let resumed = common::resumed_in_attempt_2(&pool, id).await;
    assert_eq!(resumed, Some(8));

    // The same numbers as a comparison that was never interrupted.
    let straight = tempfile::tempdir().unwrap();
    let opts = ifp_trainer::TrainOptions {
        out_dir: straight.path().to_path_buf(),
        device: candle_core::Device::Cpu,
        resume: false,
    };
    tokio::task::spawn_blocking(move || straight_spec.run(&opts, |_| {}, || false))
        .await
        .unwrap()
        .unwrap();
    let read = |p: PathBuf| -> Value {
        serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"))).unwrap()
    };
    let resumed_report = read(worker::attempt_dir(artifacts.path(), id, 2).join("report.json"));
    let straight_report = read(straight.path().join("report.json"));
    let arms = |r: &Value| -> Vec<Value> {
        // The results, without where the files were and how long it took.
        r["arms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                json!([
                    a["name"],
                    a["best_step"],
                    a["best_val"],
                    a["test"],
                    a["val_curve"]
                ])
            })
            .collect()
    };
    assert_eq!(arms(&resumed_report).len(), 2);
    assert_eq!(arms(&resumed_report), arms(&straight_report));
    assert_eq!(resumed_report["per_image"], straight_report["per_image"]);
    assert_eq!(resumed_report["deltas"], straight_report["deltas"]);
}
