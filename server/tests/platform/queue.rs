//! The queue protocol against a real PostgreSQL: claim order, SKIP LOCKED, fencing,
//! rescue, max attempts and cancel.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use ifp_server::db::values::{JobKind, JobStatus};
use ifp_server::queue::{self, Fence, NewJob, Outcome, WorkerDevice};
use ifp_trainer::config::DeviceClass;
use sqlx::PgPool;
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(30);

/// A tiny pre-training job of alice's with 10 steps.
pub(crate) fn job(name: &str, priority: i32) -> NewJob {
    NewJob {
        kind: JobKind::Pretrain,
        name: name.into(),
        owner: "alice".into(),
        priority,
        config: serde_json::json!({}),
        total_steps: 10,
        max_attempts: 3,
        device_class: DeviceClass::Any,
        parent_id: None,
        memory_need: None,
    }
}

fn job_on(name: &str, device_class: DeviceClass) -> NewJob {
    NewJob {
        device_class,
        parent_id: None,
        memory_need: None,
        ..job(name, 0)
    }
}

async fn expire(pool: &PgPool, id: Uuid) {
    sqlx::query("update job set lease_expires_at = now() - interval '1 second' where id = $1")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
}

async fn status(pool: &PgPool, id: Uuid) -> JobStatus {
    queue::get(pool, id).await.unwrap().unwrap().status
}

#[tokio::test]
async fn claim_takes_priority_then_age() {
    let pool = common::fresh_pool().await;
    let a = queue::enqueue(&pool, &job("a", 0)).await.unwrap();
    let b = queue::enqueue(&pool, &job("b", 5)).await.unwrap();
    let c = queue::enqueue(&pool, &job("c", 0)).await.unwrap();
    let d = queue::enqueue(&pool, &job("d", 5)).await.unwrap();
    let mut order = vec![];
    while let Some(cl) = queue::claim(&pool, "w1", LEASE).await.unwrap() {
        assert_eq!(cl.fence.attempt, 1);
        assert_eq!(cl.fence.worker_id, "w1");
        order.push(cl.fence.job_id);
    }
    assert_eq!(order, vec![b.id, d.id, a.id, c.id]);
    let j = queue::get(&pool, a.id).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Running);
    assert!(j.lease_expires_at.is_some() && j.started_at.is_some());
    let attempts: i64 = sqlx::query_scalar("select count(*) from attempt where worker_id = 'w1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(attempts, 4);
}

/// At one priority, the owner with fewer running jobs goes first: alice's older queued jobs
/// wait while she has one running and bob has none.
#[tokio::test]
async fn claim_shares_workers_between_owners() {
    let pool = common::fresh_pool().await;
    let first = queue::enqueue(&pool, &job("a1", 0)).await.unwrap();
    let a2 = queue::enqueue(&pool, &job("a2", 0)).await.unwrap();
    let a3 = queue::enqueue(&pool, &job("a3", 0)).await.unwrap();
    let bob = NewJob {
        owner: "bob".into(),
        ..job("b1", 0)
    };
    let b1 = queue::enqueue(&pool, &bob).await.unwrap();
    let mut order = vec![];
    while let Some(cl) = queue::claim(&pool, "w1", LEASE).await.unwrap() {
        order.push(cl.fence.job_id);
    }
    // a1 (both have none running, a1 is older), then b1 (bob has none, alice one), then
    // alice's in age order.
    assert_eq!(order, vec![first.id, b1.id, a2.id, a3.id]);
}

#[tokio::test]
async fn claim_skips_a_row_locked_by_another_claimer() {
    let pool = common::fresh_pool().await;
    let first = queue::enqueue(&pool, &job("first", 0)).await.unwrap();
    let second = queue::enqueue(&pool, &job("second", 0)).await.unwrap();
    // Another claimer is in the middle of taking `first`.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("select id from job where id = $1 for update")
        .bind(first.id)
        .execute(&mut *tx)
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), queue::claim(&pool, "w2", LEASE))
        .await
        .expect("claim must not wait on a locked row")
        .unwrap()
        .unwrap();
    assert_eq!(got.fence.job_id, second.id);
    tx.rollback().await.unwrap();
    let got = queue::claim(&pool, "w3", LEASE).await.unwrap().unwrap();
    assert_eq!(got.fence.job_id, first.id);
}

#[tokio::test]
async fn racing_claimers_take_every_job_exactly_once() {
    let pool = common::fresh_pool().await;
    let mut ids = HashSet::new();
    for i in 0..40 {
        ids.insert(
            queue::enqueue(&pool, &job(&format!("j{i}"), i % 3))
                .await
                .unwrap()
                .id,
        );
    }
    let mut tasks = vec![];
    for w in 0..4 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = vec![];
            while let Some(c) = queue::claim(&pool, &format!("w{w}"), LEASE).await.unwrap() {
                got.push(c.fence.job_id);
            }
            got
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 40);
    assert_eq!(all.into_iter().collect::<HashSet<_>>(), ids);
}

#[tokio::test]
async fn heartbeat_renews_the_lease_and_stores_progress() {
    let pool = common::fresh_pool().await;
    let j = queue::enqueue(&pool, &job("hb", 0)).await.unwrap();
    let c = queue::claim(&pool, "w", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let before = queue::get(&pool, j.id).await.unwrap().unwrap();
    let cancel = queue::heartbeat(&pool, &c.fence, LEASE, 4, Some(0.5))
        .await
        .unwrap();
    assert_eq!(cancel, Some(false));
    let after = queue::get(&pool, j.id).await.unwrap().unwrap();
    assert!(after.lease_expires_at > before.lease_expires_at);
    assert_eq!((after.step, after.loss), (4, Some(0.5)));
    // A wrong worker or attempt matches nothing.
    let other = Fence {
        worker_id: "intruder".into(),
        ..c.fence.clone()
    };
    assert_eq!(
        queue::heartbeat(&pool, &other, LEASE, 9, None)
            .await
            .unwrap(),
        None
    );
    let old = Fence {
        attempt: 0,
        ..c.fence.clone()
    };
    assert_eq!(
        queue::heartbeat(&pool, &old, LEASE, 9, None).await.unwrap(),
        None
    );
    assert!(queue::finish(&pool, &c.fence, &Outcome::Succeeded)
        .await
        .unwrap());
    let done = queue::get(&pool, j.id).await.unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);
    assert!(done.finished_at.is_some() && done.worker_id.is_none());
    // Finished: the fence no longer holds.
    assert_eq!(
        queue::heartbeat(&pool, &c.fence, LEASE, 9, None)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn rescue_requeues_and_the_zombie_is_fenced_out() {
    let pool = common::fresh_pool().await;
    let j = queue::enqueue(&pool, &job("r", 0)).await.unwrap();
    let zombie = queue::claim(&pool, "dead", LEASE).await.unwrap().unwrap();
    // Not expired yet: nothing to do.
    assert!(queue::rescue(&pool).await.unwrap().is_empty());
    expire(&pool, j.id).await;
    let r = queue::rescue(&pool).await.unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].id, r[0].status, r[0].attempt),
        (j.id, JobStatus::Queued, 1)
    );
    assert!(queue::rescue(&pool).await.unwrap().is_empty(), "idempotent");
    // The dead worker's lease is gone.
    assert_eq!(
        queue::heartbeat(&pool, &zombie.fence, LEASE, 3, None)
            .await
            .unwrap(),
        None
    );

    let live = queue::claim(&pool, "live", LEASE).await.unwrap().unwrap();
    assert_eq!(live.fence.attempt, 2);
    // The zombie's late finish is dropped; the live attempt's stands.
    assert!(
        !queue::finish(&pool, &zombie.fence, &Outcome::Failed("late".into()))
            .await
            .unwrap()
    );
    assert_eq!(status(&pool, j.id).await, JobStatus::Running);
    assert!(queue::finish(&pool, &live.fence, &Outcome::Succeeded)
        .await
        .unwrap());
    let outcomes: Vec<(i32, String, Option<String>)> = sqlx::query_as(
        "select attempt, worker_id, outcome from attempt where job_id = $1 order by attempt",
    )
    .bind(j.id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        outcomes,
        vec![
            (1, "dead".into(), Some("lost".into())),
            (2, "live".into(), Some("succeeded".into()))
        ]
    );
}

#[tokio::test]
async fn rescue_fails_the_job_after_max_attempts() {
    let pool = common::fresh_pool().await;
    let mut nj = job("m", 0);
    nj.max_attempts = 2;
    let j = queue::enqueue(&pool, &nj).await.unwrap();
    for attempt in 1..=2 {
        let c = queue::claim(&pool, "w", LEASE).await.unwrap().unwrap();
        assert_eq!(c.fence.attempt, attempt);
        expire(&pool, j.id).await;
        queue::rescue(&pool).await.unwrap();
    }
    let done = queue::get(&pool, j.id).await.unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Failed);
    assert!(done.error.unwrap().contains("attempt 2 of 2"));
    assert!(done.finished_at.is_some());
    assert!(queue::claim(&pool, "w", LEASE).await.unwrap().is_none());
}

#[tokio::test]
async fn cancel_a_queued_job_at_once() {
    let pool = common::fresh_pool().await;
    let j = queue::enqueue(&pool, &job("q", 0)).await.unwrap();
    assert_eq!(
        queue::cancel(&pool, j.id).await.unwrap(),
        Some(JobStatus::Cancelled)
    );
    assert!(queue::claim(&pool, "w", LEASE).await.unwrap().is_none());
    assert_eq!(queue::cancel(&pool, Uuid::new_v4()).await.unwrap(), None);
    // Cancelling a finished job changes nothing.
    assert_eq!(
        queue::cancel(&pool, j.id).await.unwrap(),
        Some(JobStatus::Cancelled)
    );
}

#[tokio::test]
async fn cancel_a_running_job_flags_it_and_notifies() {
    let pool = common::fresh_pool().await;
    let j = queue::enqueue(&pool, &job("c", 0)).await.unwrap();
    let c = queue::claim(&pool, "w", LEASE).await.unwrap().unwrap();
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen(queue::CHANNEL_CANCEL).await.unwrap();
    assert_eq!(
        queue::cancel(&pool, j.id).await.unwrap(),
        Some(JobStatus::Running)
    );
    let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.payload(), j.id.to_string());
    assert_eq!(
        queue::heartbeat(&pool, &c.fence, LEASE, 1, None)
            .await
            .unwrap(),
        Some(true)
    );
    assert!(queue::finish(&pool, &c.fence, &Outcome::Cancelled)
        .await
        .unwrap());
    assert_eq!(status(&pool, j.id).await, JobStatus::Cancelled);
}

#[tokio::test]
async fn rescue_of_a_cancelled_running_job_ends_it_cancelled() {
    let pool = common::fresh_pool().await;
    let j = queue::enqueue(&pool, &job("rc", 0)).await.unwrap();
    queue::claim(&pool, "w", LEASE).await.unwrap().unwrap();
    queue::cancel(&pool, j.id).await.unwrap();
    expire(&pool, j.id).await;
    let r = queue::rescue(&pool).await.unwrap();
    assert_eq!(r[0].status, JobStatus::Cancelled);
    assert!(queue::claim(&pool, "w", LEASE).await.unwrap().is_none());
}

#[tokio::test]
async fn release_requeues_for_the_next_attempt() {
    let pool = common::fresh_pool().await;
    let j = queue::enqueue(&pool, &job("rel", 0)).await.unwrap();
    let c = queue::claim(&pool, "w", LEASE).await.unwrap().unwrap();
    assert!(queue::release(&pool, &c.fence).await.unwrap());
    assert_eq!(status(&pool, j.id).await, JobStatus::Queued);
    let c2 = queue::claim(&pool, "w", LEASE).await.unwrap().unwrap();
    assert_eq!((c2.fence.attempt, c2.max_attempts), (2, 4));
}

#[tokio::test]
async fn cpu_workers_never_claim_gpu_jobs_and_attempts_record_the_device() {
    let pool = common::fresh_pool().await;
    let gpu_job = queue::enqueue(&pool, &job_on("gpu", DeviceClass::Cuda))
        .await
        .unwrap();
    let cpu_job = queue::enqueue(&pool, &job_on("cpu", DeviceClass::Cpu))
        .await
        .unwrap();
    let any_job = queue::enqueue(&pool, &job_on("any", DeviceClass::Any))
        .await
        .unwrap();
    assert_eq!(gpu_job.device_class, DeviceClass::Cuda);
    let cpu = WorkerDevice {
        class: DeviceClass::Cpu,
        name: Some("Test CPU (2 threads)".into()),
        memory: Some(8 << 30),
    };
    let gpu = WorkerDevice {
        class: DeviceClass::Cuda,
        name: Some("NVIDIA H100 80GB HBM3".into()),
        memory: Some(85_000_000_000),
    };
    // The CPU worker drains what it may run (oldest first) and then finds nothing.
    let mut cpu_got = vec![];
    while let Some(c) = queue::claim_on(&pool, "c", LEASE, &cpu).await.unwrap() {
        cpu_got.push(c.fence.job_id);
    }
    assert_eq!(cpu_got, vec![cpu_job.id, any_job.id]);
    assert_eq!(status(&pool, gpu_job.id).await, JobStatus::Queued);
    // The plain `claim` is a CPU worker too.
    assert!(queue::claim(&pool, "c2", LEASE).await.unwrap().is_none());
    let g = queue::claim_on(&pool, "g", LEASE, &gpu)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(g.fence.job_id, gpu_job.id);
    let rows: Vec<(String, Option<String>, Option<i64>)> = sqlx::query_as(
        "select worker_id, device_name, device_memory from attempt order by worker_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("c".into(), cpu.name.clone(), cpu.memory),
            ("c".into(), cpu.name.clone(), cpu.memory),
            ("g".into(), gpu.name.clone(), gpu.memory),
        ]
    );
    // A GPU worker also takes `any` jobs (none is left here) but never `cpu` ones.
    let late_cpu = queue::enqueue(&pool, &job_on("cpu2", DeviceClass::Cpu))
        .await
        .unwrap();
    assert!(queue::claim_on(&pool, "g", LEASE, &gpu)
        .await
        .unwrap()
        .is_none());
    let late_any = queue::enqueue(&pool, &job_on("any2", DeviceClass::Any))
        .await
        .unwrap();
    let g2 = queue::claim_on(&pool, "g", LEASE, &gpu)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(g2.fence.job_id, late_any.id);
    assert_eq!(status(&pool, late_cpu.id).await, JobStatus::Queued);
    // The column refuses anything else, whoever writes it.
    let bad = sqlx::query(
        "insert into job (id, name, owner, config, total_steps, device_class)
         values ($1, 'bad', 'alice', '{}', 1, 'tpu')",
    )
    .bind(Uuid::new_v4())
    .execute(&pool)
    .await;
    assert!(bad.is_err(), "device_class tpu was accepted");
}

#[tokio::test]
async fn a_claim_returns_the_kind_stored_with_the_job() {
    let pool = common::fresh_pool().await;
    for kind in [JobKind::Compare, JobKind::Finetune, JobKind::Pretrain] {
        let j = queue::enqueue(
            &pool,
            &NewJob {
                kind,
                ..job("k", 0)
            },
        )
        .await
        .unwrap();
        assert_eq!(j.kind, kind);
        let c = queue::claim(&pool, "w", LEASE).await.unwrap().unwrap();
        assert_eq!((c.fence.job_id, c.kind), (j.id, kind));
    }
}

/// Issue 16: a job queued while no worker was live skipped admission's memory check; a worker
/// now claims only jobs whose estimate fits its memory, so the job waits for one it fits.
#[tokio::test]
async fn a_worker_claims_only_jobs_that_fit_its_memory() {
    let pool = common::fresh_pool().await;
    let big = queue::enqueue(
        &pool,
        &NewJob {
            memory_need: Some(6 << 30),
            ..job("big", 5)
        },
    )
    .await
    .unwrap();
    let small = queue::enqueue(&pool, &job("small", 0)).await.unwrap();
    let worker = |memory: Option<i64>| WorkerDevice {
        class: DeviceClass::Cpu,
        name: None,
        memory,
    };
    // 6 GiB is more than 90% of 4 GiB: the small job goes first despite its lower priority,
    // and then nothing is left for this worker.
    let c = queue::claim_on(&pool, "w4", LEASE, &worker(Some(4 << 30)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.fence.job_id, small.id);
    assert!(queue::claim_on(&pool, "w4", LEASE, &worker(Some(4 << 30)))
        .await
        .unwrap()
        .is_none());
    assert_eq!(status(&pool, big.id).await, JobStatus::Queued);
    // A worker it fits takes it.
    let c = queue::claim_on(&pool, "w16", LEASE, &worker(Some(16 << 30)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.fence.job_id, big.id);
}
