//! What the comparison and fine-tuning tests share: API calls through `app()`, an API whose
//! datasets folder is `../shared/data`, tiny configs, a browser session, and running a job with
//! a worker until it ends.

use crate::common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use ifp_server::worker::{self, WorkerConfig};
use ifp_server::{app, AppState};
use serde_json::{json, Value};
use tower::ServiceExt;

pub(crate) use common::ADMIN;

/// A fresh database, an artifacts folder, and the API over them with `../shared/data` as its
/// datasets folder.
pub(crate) async fn api_with_datasets() -> (sqlx::PgPool, tempfile::TempDir, Router) {
    let pool = common::fresh_pool().await;
    let artifacts = tempfile::tempdir().unwrap();
    let mut state = AppState::new(pool.clone(), artifacts.path(), Some(ADMIN));
    state.datasets = Some(common::datasets());
    (pool, artifacts, app(state))
}

pub(crate) async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, String) {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"));
    let req = match body {
        Some(v) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        None => {
            b = b.header(header::ACCEPT, "*/*");
            b.body(Body::empty()).unwrap()
        }
    };
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Sends `req` to the app: (status, `Location`, body as text).
pub(crate) async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Option<String>, String) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let location = resp
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        location,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Submits `body` over the API as the admin; it must be accepted. Returns the new job's id.
pub(crate) async fn submit_ok(app: &Router, body: Value) -> String {
    let (s, b) = call(app, "POST", "/api/v1/jobs", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    serde_json::from_str::<Value>(&b).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A finished comparison's `report.json`.
pub(crate) async fn report_of(app: &Router, id: &str) -> Value {
    result_json(app, id, "report.json").await
}

/// A JSON result file of a job (`report.json`, `seeds.json`, `history.json`, `test.json`).
pub(crate) async fn result_json(app: &Router, id: &str, name: &str) -> Value {
    let uri = format!("/api/v1/jobs/{id}/checkpoints/{name}");
    let (s, b) = call(app, "GET", &uri, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    serde_json::from_str(&b).unwrap()
}

pub(crate) fn pretrain() -> Value {
    let mut cfg = ifp_trainer::config::preset("tiny").unwrap();
    cfg.data.img_size = 16;
    cfg.train.steps = Some(6);
    cfg.save_freq = 3;
    serde_json::to_value(&cfg).unwrap()
}

pub(crate) fn finetune(train_dir: &str) -> Value {
    json!({
        "DATA": {"TRAIN_DIR": train_dir, "TEST_DIR": "clean/Kodak24", "NOISE_SIGMA": 25,
                 "CROP": 16, "BATCH_SIZE": 2, "VAL_IMAGES": 1, "VAL_CROP": 32,
                 "MAX_TEST_IMAGES": 2},
        "TRAIN": {"STEPS": 4, "WARMUP_EPOCHS": 1, "BASE_LR": 1e-3},
        "SAVE_FREQ": 2,
        "SEED": 0
    })
}

/// A `finetune` job's fine-tuning config: [`finetune`] testing on the first two of the training
/// folder's held-out images instead of a test folder.
pub(crate) fn finetune_job(train_dir: &str, model: Option<Value>) -> Value {
    let mut v = finetune(train_dir);
    let data = v["DATA"].as_object_mut().unwrap();
    data.remove("TEST_DIR");
    if let Some(m) = model {
        v["MODEL"] = m;
    }
    v
}

/// A page as the admin sees it.
pub(crate) async fn html_of(api: &axum::Router, pool: &sqlx::PgPool, uri: &str) -> String {
    let cookie = admin_session(pool).await;
    let req = Request::get(uri)
        .header(header::COOKIE, format!("ifp_session={cookie}"))
        .body(Body::empty())
        .unwrap();
    let resp = api.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{uri}");
    String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned()
}

/// A browser session of the admin (the cookie value).
pub(crate) async fn admin_session(pool: &sqlx::PgPool) -> String {
    let admin = ifp_server::tokens::Caller {
        name: "admin".into(),
        is_admin: true,
    };
    ifp_server::http::session::create(pool, &admin, &ifp_server::tokens::hash(ADMIN))
        .await
        .unwrap()
}

/// The API (with the test images as its datasets folder) and a tiny comparison submitted
/// through it with `showcase` images: (api, the job as returned).
pub(crate) async fn submit_tiny_comparison(
    pool: &sqlx::PgPool,
    artifacts: &std::path::Path,
    showcase: usize,
) -> (Router, Value) {
    let mut state = AppState::new(pool.clone(), artifacts, Some(ADMIN));
    state.datasets = Some(common::datasets());
    let api = app(state);
    let body = json!({"kind": "compare", "name": "cmp", "config": pretrain(),
                      "finetune": finetune("clean/CBSD68"), "showcase": showcase});
    let (s, b) = call(&api, "POST", "/api/v1/jobs", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    (api, serde_json::from_str(&b).unwrap())
}

/// Runs job `id` with one worker slot (datasets from `../shared/data`) until it leaves
/// `queued`/`running` (at most 400 s); returns the job as the API shows it.
pub(crate) async fn run_to_end(
    api: &Router,
    pool: &sqlx::PgPool,
    artifacts: &std::path::Path,
    worker_id: &str,
    id: &str,
) -> Value {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let mut cfg = WorkerConfig::new(worker_id, artifacts);
    cfg.poll_interval = Duration::from_millis(300);
    cfg.datasets = Some(common::datasets());
    tokio::spawn(worker::run(pool.clone(), cfg, rx));
    let t0 = Instant::now();
    let job = loop {
        let (_, b) = call(api, "GET", &format!("/api/v1/jobs/{id}"), None).await;
        let j: Value = serde_json::from_str(&b).unwrap();
        if !matches!(j["status"].as_str(), Some("queued" | "running")) {
            break j;
        }
        assert!(t0.elapsed() < Duration::from_secs(400), "timed out: {j}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let _ = stop.send(true);
    job
}

/// The admin's browser session: (cookie value, CSRF token).
pub(crate) async fn admin_form_session(pool: &sqlx::PgPool) -> (String, String) {
    let cookie = admin_session(pool).await;
    let csrf =
        ifp_server::http::session::lookup(pool, Some(&ifp_server::tokens::hash(ADMIN)), &cookie)
            .await
            .unwrap()
            .unwrap()
            .csrf;
    (cookie, csrf)
}

/// The names of a comparison report's arms, in order.
pub(crate) fn arm_names(report: &Value) -> Vec<String> {
    report["arms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect()
}
