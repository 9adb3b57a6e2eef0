//! The end-of-job webhook against a real receiver on loopback: what it POSTs, that a failed
//! delivery is retried only after its wait and a delivered one never again, and that the
//! server's notifier reports a job as soon as it ends.

use crate::common;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use ifp_server::queue::{self, Outcome};
use ifp_server::webhook::{self, Webhook};
use sqlx::PgPool;
use uuid::Uuid;

/// A webhook receiver: keeps every body and answers with the status set in `answer`.
#[derive(Clone, Default)]
struct Receiver {
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    answer: Arc<AtomicU16>,
}

impl Receiver {
    async fn start(answer: u16) -> (Receiver, String) {
        let r = Receiver::default();
        r.answer.store(answer, Ordering::SeqCst);
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (r, url)
    }

    fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().unwrap().clone()
    }
}

async fn receive(State(r): State<Receiver>, Json(body): Json<serde_json::Value>) -> StatusCode {
    r.bodies.lock().unwrap().push(body);
    StatusCode::from_u16(r.answer.load(Ordering::SeqCst)).unwrap()
}

/// Queues a job and, with `outcome`, runs it to that end through the queue protocol.
async fn job(pool: &PgPool, name: &str, outcome: Option<Outcome>) -> Uuid {
    let id = queue::enqueue(pool, &crate::queue::job(name, 0))
        .await
        .unwrap()
        .id;
    if let Some(outcome) = outcome {
        let c = queue::claim(pool, "w1", Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.fence.job_id, id);
        assert!(queue::finish(pool, &c.fence, &outcome).await.unwrap());
    }
    id
}

async fn delivery(pool: &PgPool, id: Uuid) -> (i32, Option<String>, bool) {
    sqlx::query_as(
        "select tries, last_error, sent_at is not null from webhook_delivery where job_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn ended_jobs_are_posted_once_and_failures_retried_after_a_wait() {
    let pool = common::fresh_pool().await;
    let (rx, url) = Receiver::start(500).await;
    let hook = Webhook::new(&url)
        .unwrap()
        .linking_to("http://ifp.example/");
    let ended = job(&pool, "demo", Some(Outcome::Failed("out of memory".into()))).await;
    let old = job(&pool, "old", Some(Outcome::Succeeded)).await;
    let queued = job(&pool, "waiting", None).await;
    sqlx::query("update job set finished_at = now() - interval '2 days' where id = $1")
        .bind(old)
        .execute(&pool)
        .await
        .unwrap();

    // The receiver fails: nothing counts as delivered, the reason is kept.
    assert_eq!(webhook::deliver_due(&pool, &hook).await.unwrap(), 0);
    assert_eq!(
        rx.bodies().len(),
        1,
        "only the recently ended job is posted"
    );
    let (tries, error, sent) = delivery(&pool, ended).await;
    assert_eq!((tries, sent), (1, false));
    assert!(error.unwrap().contains("500"));

    // Not again before the retry wait is over.
    rx.answer.store(200, Ordering::SeqCst);
    assert_eq!(webhook::deliver_due(&pool, &hook).await.unwrap(), 0);
    assert_eq!(rx.bodies().len(), 1);

    // Once it is over, the retry is delivered, and then never sent again.
    sqlx::query("update webhook_delivery set updated_at = now() - interval '1 minute'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(webhook::deliver_due(&pool, &hook).await.unwrap(), 1);
    assert_eq!(delivery(&pool, ended).await, (2, None, true));
    assert_eq!(webhook::deliver_due(&pool, &hook).await.unwrap(), 0);
    let bodies = rx.bodies();
    assert_eq!(bodies.len(), 2);
    let body = &bodies[1];
    assert_eq!(body["event"], "job.ended");
    assert_eq!(body["job"]["id"], ended.to_string());
    assert_eq!(body["job"]["status"], "failed");
    assert_eq!(body["job"]["error"], "out of memory");
    assert_eq!(
        body["job"]["url"],
        format!("http://ifp.example/jobs/{ended}")
    );
    assert_eq!(
        body["text"],
        format!(
            "IFP pretrain job \"demo\" failed: out of memory (0/10 steps): \
             http://ifp.example/jobs/{ended}"
        )
    );
    for id in [queued, old] {
        let rows: i64 =
            sqlx::query_scalar("select count(*) from webhook_delivery where job_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(rows, 0);
    }
}

#[tokio::test]
async fn the_notifier_reports_a_job_when_it_ends() {
    let pool = common::fresh_pool().await;
    let (rx, url) = Receiver::start(200).await;
    let (changed, _) = tokio::sync::broadcast::channel(16);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let notifier = webhook::spawn(
        pool.clone(),
        Webhook::new(&url).unwrap(),
        changed.subscribe(),
        stop_rx,
    );
    let id = job(&pool, "done", Some(Outcome::Succeeded)).await;
    changed.send(id).unwrap();
    let t0 = std::time::Instant::now();
    while rx.bodies().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(20), "no webhook call");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rx.bodies()[0]["job"]["status"], "succeeded");
    stop.send(true).unwrap();
    notifier.await.unwrap();
    assert_eq!(rx.bodies().len(), 1);
}
