//! The `compare` job kind end to end against a real PostgreSQL: submitted over the API with
//! fine-tuning data from `../shared/data`, run by a worker (tiny pre-training, then the IFP and
//! scratch arms), its report listed and shown on the job page; and what is refused.

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

pub(crate) const ADMIN: &str = "admin-secret";

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
    let uri = format!("/api/v1/jobs/{id}/checkpoints/report.json");
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

/// A `finetune` job's fine-tuning config: [`finetune`] without the test-set keys, which only a
/// comparison uses (a finetune job refuses them).
pub(crate) fn finetune_job(train_dir: &str, model: Option<Value>) -> Value {
    let mut v = finetune(train_dir);
    let data = v["DATA"].as_object_mut().unwrap();
    data.remove("TEST_DIR");
    data.remove("MAX_TEST_IMAGES");
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

#[tokio::test]
async fn compare_submissions_are_checked() {
    let pool = common::fresh_pool().await;
    let artifacts = tempfile::tempdir().unwrap();
    let no_data = app(AppState::new(pool.clone(), artifacts.path(), Some(ADMIN)));
    let body =
        json!({"kind": "compare", "config": pretrain(), "finetune": finetune("clean/CBSD68")});
    let (s, b) = call(&no_data, "POST", "/api/v1/jobs", Some(body.clone())).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(b.contains("--datasets-dir"), "{b}");

    let mut state = AppState::new(pool.clone(), artifacts.path(), Some(ADMIN));
    state.datasets = Some(common::datasets());
    let api = app(state);
    for (bad, key) in [
        (
            json!({"kind": "compare", "config": pretrain(), "finetune": finetune("/etc")}),
            "FINETUNE.DATA.TRAIN_DIR",
        ),
        (
            json!({"kind": "compare", "config": pretrain(), "finetune": finetune("../data")}),
            "FINETUNE.DATA.TRAIN_DIR",
        ),
        (
            json!({"kind": "compare", "config": pretrain(), "finetune": {"DATA": {"CROPP": 3}}}),
            "FINETUNE.DATA",
        ),
        (json!({"kind": "compare", "config": pretrain()}), "finetune"),
        (
            json!({"config": pretrain(), "finetune": finetune("clean/CBSD68")}),
            "kind",
        ),
        (json!({"kind": "nope", "config": pretrain()}), "kind"),
        (
            json!({"kind": "compare", "config": pretrain(), "finetune": finetune("clean/CBSD68"), "showcase": 11}),
            "showcase",
        ),
        // Clean images with no degradation: nothing to restore.
        (
            json!({"kind": "compare", "config": pretrain(),
                   "finetune": {"DATA": {"TRAIN_DIR": "clean/CBSD68", "TEST_DIR": "clean/Kodak24"}}}),
            "FINETUNE.DATA.TRAIN_DIR",
        ),
        // Noise on top of paired, already rainy inputs.
        (
            json!({"kind": "compare", "config": pretrain(), "finetune": finetune("rain/Rain100H")}),
            "FINETUNE.DATA.NOISE_SIGMA",
        ),
        // A finetune job scores no test set: the test keys would be ignored.
        (
            json!({"kind": "finetune", "finetune": finetune("clean/CBSD68")}),
            "FINETUNE.DATA.TEST_DIR",
        ),
        // Neither an initial job nor a MODEL: no silent paper-sized network.
        (
            json!({"kind": "finetune", "finetune": finetune_job("clean/CBSD68", None)}),
            "FINETUNE.MODEL",
        ),
    ] {
        let (s, b) = call(&api, "POST", "/api/v1/jobs", Some(bad.clone())).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {b}");
        let v: Value = serde_json::from_str(&b).unwrap();
        assert!(
            v["key_path"].as_str().unwrap_or_default().starts_with(key),
            "{bad}: {b}"
        );
    }
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

#[tokio::test]
async fn a_tiny_comparison_runs_and_reports() {
    let pool = common::fresh_pool().await;
    let artifacts = tempfile::tempdir().unwrap();
    let (api, job) = submit_tiny_comparison(&pool, artifacts.path(), 2).await;
    assert_eq!(job["kind"], "compare");
    assert_eq!(job["total_steps"], 6 + 2 * 4);
    let id = job["id"].as_str().unwrap().to_string();

    let job = run_to_end(&api, &pool, artifacts.path(), "w-compare", &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["step"], 14);

    // One step axis across the phases.
    let steps: Vec<i64> =
        sqlx::query_scalar("select step from metric where job_id = $1::uuid order by step")
            .bind(&id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(steps.first(), Some(&1));
    assert_eq!(steps.last(), Some(&14));

    let (_, b) = call(&api, "GET", &format!("/api/v1/jobs/{id}/checkpoints"), None).await;
    let files: Vec<Value> = serde_json::from_str(&b).unwrap();
    let reports: Vec<&str> = files
        .iter()
        .filter(|f| f["kind"] == "report")
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        reports.contains(&"report.json") && reports.contains(&"per_image.csv"),
        "{reports:?}"
    );
    assert_eq!(
        reports
            .iter()
            .filter(|n| n.starts_with("showcase-"))
            .count(),
        2
    );
    // Issue 17: the comparison keeps its models, the pre-training and each arm's best.
    let mut models: Vec<&str> = files
        .iter()
        .filter(|f| f["kind"] == "model")
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    models.sort();
    assert_eq!(models.len(), 3, "{models:?}");
    assert_eq!(models[1], "pretrain-model-000006.safetensors", "{models:?}");
    assert!(models[0].starts_with("ifp-best-model-0000"), "{models:?}");
    assert!(
        models[2].starts_with("scratch-best-model-0000"),
        "{models:?}"
    );
    let report = report_of(&api, &id).await;
    let arms: Vec<&str> = report["arms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(arms, ["ifp", "scratch"]);
    assert_eq!(report["test_images"], 2);
    for a in report["arms"].as_array().unwrap() {
        let psnr = a["test"]["psnr"]["mean"].as_f64().unwrap();
        assert!(psnr.is_finite() && psnr > 10.0, "{a}");
    }
    // The job's key result is the paired IFP - scratch difference, shown in the jobs list.
    let (_, b) = call(&api, "GET", &format!("/api/v1/jobs/{id}"), None).await;
    let key = serde_json::from_str::<Value>(&b).unwrap()["key_metric"].as_f64();
    let delta = report["deltas"][0]["diff"]["psnr"]["mean"].as_f64();
    assert_eq!(report["deltas"][0]["arm"], "ifp");
    assert!(key.is_some() && key == delta, "{key:?} vs {delta:?}");
    let list = html_of(&api, &pool, "/").await;
    assert!(
        list.contains(&format!("{:+.2} dB", delta.unwrap())),
        "{list}"
    );

    // The job page shows the report.
    let cookie = admin_session(&pool).await;
    let req = Request::get(format!("/jobs/{id}"))
        .header(header::COOKIE, format!("ifp_session={cookie}"))
        .body(Body::empty())
        .unwrap();
    let resp = api.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let html =
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    for needle in [
        "Does IFP help here?",
        "ifp − scratch",
        "report.json",
        "showcase-",
        "line s1",
        "IFP pre-training",
        // Issue 17: the pre-training loss has its own chart; the arms share a fine-tuning axis.
        "Pre-training loss (Fourier) by pre-training step",
        "Fine-tuning loss (L1) by fine-tuning step",
        // A finished job shows its run-average throughput.
        "(run average)",
    ] {
        assert!(html.contains(needle), "missing {needle}");
    }
}

#[tokio::test]
async fn the_compare_form_submits_and_shows_errors_in_place() {
    let pool = common::fresh_pool().await;
    let artifacts = tempfile::tempdir().unwrap();
    let mut state = AppState::new(pool.clone(), artifacts.path(), Some(ADMIN));
    state.datasets = Some(common::datasets());
    let site = app(state);
    let cookie = admin_session(&pool).await;
    let csrf =
        ifp_server::http::session::lookup(&pool, Some(&ifp_server::tokens::hash(ADMIN)), &cookie)
            .await
            .unwrap()
            .unwrap()
            .csrf;
    let send = |req: Request<Body>| {
        let site = site.clone();
        async move { send(&site, req).await }
    };
    let req = Request::get("/jobs/new/compare")
        .header(header::COOKIE, format!("ifp_session={cookie}"))
        .body(Body::empty())
        .unwrap();
    let (s, _, html) = send(req).await;
    assert_eq!(s, StatusCode::OK);
    assert!(html.contains("clean/CBSD68") && html.contains("rain/Rain100H"));
    assert!(!html.contains("has no datasets folder"));

    let post_seeds = |yaml: &str, seeds: &str| {
        let form = serde_urlencoded::to_string([
            ("csrf", csrf.as_str()),
            ("name", "form comparison"),
            ("preset", "tiny"),
            ("pretrain_steps", "5"),
            ("finetune_yaml", yaml),
            ("showcase", "1"),
            ("seeds", seeds),
            ("priority", "0"),
        ])
        .unwrap();
        Request::post("/jobs/new/compare")
            .header(header::COOKIE, format!("ifp_session={cookie}"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form))
            .unwrap()
    };
    let post = |yaml: &str| post_seeds(yaml, "1");
    let (s, _, html) = send(post("DATA: {TRAIN_DIR: clean/nothing-here}")).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("no folder `clean/nothing-here`"), "{html}");
    let (s, location, _) = send(post(
        "DATA: {TRAIN_DIR: rain/Rain100H}\nTRAIN: {STEPS: 3}\n",
    ))
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let id: uuid::Uuid = location
        .unwrap()
        .trim_start_matches("/jobs/")
        .parse()
        .unwrap();
    let job = ifp_server::queue::get(&pool, id).await.unwrap().unwrap();
    assert_eq!((job.kind.as_str(), job.total_steps), ("compare", 5 + 2 * 3));
    // Its clone's form: the same preset and pre-training steps, the job as the parent.
    let (s, _, clone) = send(
        Request::get(format!("/jobs/new/compare?from={id}"))
            .header(header::COOKIE, format!("ifp_session={cookie}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    for needle in [
        "<option value=\"tiny\" selected>".to_string(),
        "name=\"pretrain_steps\" type=\"number\" min=\"1\" step=\"1\" value=\"5\"".to_string(),
        format!("name=\"parent\" value=\"{id}\""),
        "form comparison (clone)".to_string(),
    ] {
        assert!(clone.contains(&needle), "clone form: missing {needle}");
    }
    // Seeds: refused in place when out of range, and each seed adds both arms.
    let yaml = "DATA: {TRAIN_DIR: rain/Rain100H}\nTRAIN: {STEPS: 3}\n";
    // The deblurring example, as the page shows it, is a valid comparison.
    let (_, _, page) = send(
        Request::get("/jobs/new/compare")
            .header(header::COOKIE, format!("ifp_session={cookie}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let at = page
        .find("Example: Deblurring (synthetic blur, CBSD68 → Kodak24)</summary><pre class=\"config\">")
        .expect("the deblurring example");
    let example = &page[at..];
    let example = &example[example.find("<pre class=\"config\">").unwrap() + 20..];
    let example = &example[..example.find("</pre>").unwrap()];
    assert!(example.contains("BLUR_SIGMA: 1.6"), "{example}");
    let (s, location, html) = send(post(example)).await;
    assert_eq!(s, StatusCode::SEE_OTHER, "{html}");
    let id: uuid::Uuid = location.unwrap()[6..].parse().unwrap();
    let job = ifp_server::queue::get(&pool, id).await.unwrap().unwrap();
    assert_eq!(job.config["FINETUNE"]["DATA"]["BLUR_SIGMA"], 1.6);
    let (s, _, html) = send(post_seeds(yaml, "11")).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("11 is outside 1 to 10"), "{html}");
    let (s, location, _) = send(post_seeds(yaml, "3")).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let id: uuid::Uuid = location.unwrap()[6..].parse().unwrap();
    let job = ifp_server::queue::get(&pool, id).await.unwrap().unwrap();
    assert_eq!(job.total_steps, 5 + 3 * 2 * 3);
}

#[tokio::test]
async fn a_finetune_job_starts_from_a_finished_pretraining_job() {
    let pool = common::fresh_pool().await;
    let artifacts = tempfile::tempdir().unwrap();
    let mut state = AppState::new(pool.clone(), artifacts.path(), Some(ADMIN));
    state.datasets = Some(common::datasets());
    let api = app(state);
    let (stop, rx) = tokio::sync::watch::channel(false);
    let mut cfg = WorkerConfig::new("w-finetune", artifacts.path());
    cfg.poll_interval = Duration::from_millis(300);
    cfg.datasets = Some(common::datasets());
    tokio::spawn(worker::run(pool.clone(), cfg, rx));
    let wait = |id: String| {
        let api = api.clone();
        async move {
            let t0 = Instant::now();
            loop {
                let (_, b) = call(&api, "GET", &format!("/api/v1/jobs/{id}"), None).await;
                let j: Value = serde_json::from_str(&b).unwrap();
                if !matches!(j["status"].as_str(), Some("queued" | "running")) {
                    return j;
                }
                assert!(t0.elapsed() < Duration::from_secs(300), "timed out: {j}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };

    // Only a succeeded pre-training job can be the starting point.
    let (s, b) = call(
        &api,
        "POST",
        "/api/v1/jobs",
        Some(json!({"config": pretrain()})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let pre: Value = serde_json::from_str(&b).unwrap();
    let pre_id = pre["id"].as_str().unwrap().to_string();
    let body = |init: &str| {
        json!({"kind": "finetune", "name": "ft", "init_job": init,
               "finetune": finetune_job("clean/CBSD68", None)})
    };
    let pre = wait(pre_id.clone()).await;
    assert_eq!(pre["status"], "succeeded", "{pre}");
    let (s, b) = call(
        &api,
        "POST",
        "/api/v1/jobs",
        Some(json!({"kind": "finetune",
        "preset": "tiny", "finetune": finetune_job("clean/CBSD68", None)})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let other = uuid::Uuid::new_v4().to_string();
    let (s, b) = call(&api, "POST", "/api/v1/jobs", Some(body(&other))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(b.contains("init_job"), "{b}");

    // A MODEL that is not the initial job's network is refused; the job inherits it instead.
    let mut paper = ifp_trainer::config::ModelConfig::default();
    paper.decoder.in_nc = paper.restormer.out_channels;
    let mut other_net = body(&pre_id);
    other_net["finetune"] =
        finetune_job("clean/CBSD68", Some(serde_json::to_value(paper).unwrap()));
    let (s, b) = call(&api, "POST", "/api/v1/jobs", Some(other_net)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(b.contains("FINETUNE.MODEL") && b.contains("inherit"), "{b}");

    let (s, b) = call(&api, "POST", "/api/v1/jobs", Some(body(&pre_id))).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let job: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(job["kind"], "finetune");
    let init = job["config"]["FINETUNE"]["INIT"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        init.starts_with(&pre_id) && init.ends_with("model-000006.safetensors"),
        "{init}"
    );
    assert_eq!(job["config"]["FINETUNE"]["MODEL"], pre["config"]["MODEL"]);
    let id = job["id"].as_str().unwrap().to_string();
    let job = wait(id.clone()).await;
    let _ = stop.send(true);
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["step"], 4);

    let (_, b) = call(&api, "GET", &format!("/api/v1/jobs/{id}/checkpoints"), None).await;
    let files: Vec<Value> = serde_json::from_str(&b).unwrap();
    let names: Vec<&str> = files.iter().map(|f| f["name"].as_str().unwrap()).collect();
    for n in [
        "model-000002.safetensors",
        "model-000004.safetensors",
        "history.json",
    ] {
        assert!(names.contains(&n), "{names:?}");
    }
    let (_, history) = call(
        &api,
        "GET",
        &format!("/api/v1/jobs/{id}/checkpoints/history.json"),
        None,
    )
    .await;
    let history: Vec<Value> = serde_json::from_str(&history).unwrap();
    assert_eq!(history.len(), 2, "validated at steps 2 and 4");
    // The job's key result is its best validation PSNR, shown in the jobs list.
    let best = history
        .iter()
        .map(|p| p["psnr"].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    let (_, b) = call(&api, "GET", &format!("/api/v1/jobs/{id}"), None).await;
    let key = serde_json::from_str::<Value>(&b).unwrap()["key_metric"].as_f64();
    assert_eq!(key, Some(best));
    let list = html_of(&api, &pool, "/").await;
    assert!(list.contains(&format!("{best:.2} dB")), "{list}");

    // Lineage: the initial job is the fine-tuning job's parent (issue 17).
    assert_eq!(job["parent_id"], pre_id.as_str());
    let cookie = admin_session(&pool).await;
    let selected = format!("<option value=\"{pre_id}\" selected>");
    for (uri, needle) in [
        (format!("/jobs/{id}"), "Best validation PSNR".to_string()),
        // A fine-tuning strip has three tiles, and its caption says which.
        (
            format!("/jobs/{id}"),
            "· degraded | restored | target".to_string(),
        ),
        // A pre-training strip's caption names its five tiles and the spectra row.
        (
            format!("/jobs/{pre_id}"),
            "· input | corrupted | reconstruction | target".to_string(),
        ),
        (
            format!("/jobs/{pre_id}"),
            "the frequencies the mask removed tinted red".to_string(),
        ),
        ("/jobs/new/finetune".to_string(), pre_id[..8].to_string()),
        (
            format!("/jobs/{id}"),
            format!("Derived from <a href=\"/jobs/{pre_id}\">"),
        ),
        (
            format!("/jobs/{pre_id}"),
            format!("<a href=\"/jobs/{id}\">ft</a>"),
        ),
        (
            format!("/jobs/{pre_id}"),
            format!("/jobs/new/finetune?init={pre_id}"),
        ),
        (
            format!("/jobs/new/finetune?init={pre_id}"),
            selected.clone(),
        ),
        // A clone of the fine-tuning job: same initial job, its settings, linked back.
        (format!("/jobs/new/finetune?from={id}"), selected.clone()),
        (format!("/jobs/new/finetune?from={id}"), "ft (clone)".into()),
        (
            format!("/jobs/new/finetune?from={id}"),
            format!("name=\"parent\" value=\"{id}\""),
        ),
        (
            format!("/jobs/new/finetune?from={id}"),
            "TRAIN_DIR: clean/CBSD68".into(),
        ),
    ] {
        let req = Request::get(&uri)
            .header(header::COOKIE, format!("ifp_session={cookie}"))
            .body(Body::empty())
            .unwrap();
        let resp = api.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{uri}");
        let html = String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes())
            .into_owned();
        assert!(html.contains(&needle), "{uri}: missing {needle}");
    }

    // Submitting the clone as the form holds it queues the same fine-tuning, linked back.
    let csrf =
        ifp_server::http::session::lookup(&pool, Some(&ifp_server::tokens::hash(ADMIN)), &cookie)
            .await
            .unwrap()
            .unwrap()
            .csrf;
    let stored = ifp_server::queue::get(&pool, id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let mut ft = ifp_server::jobs::finetune::stored_finetune(&stored.config).unwrap();
    ft.init = None;
    let yaml = serde_norway::to_string(&ft).unwrap();
    let form = serde_urlencoded::to_string([
        ("csrf", csrf.as_str()),
        ("name", "ft (clone)"),
        ("init_job", pre_id.as_str()),
        ("finetune_yaml", yaml.as_str()),
        ("priority", "0"),
        ("parent", id.as_str()),
    ])
    .unwrap();
    let req = Request::post("/jobs/new/finetune")
        .header(header::COOKIE, format!("ifp_session={cookie}"))
        .header(header::ORIGIN, "http://localhost")
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form))
        .unwrap();
    let resp = api.clone().oneshot(req).await.unwrap();
    let body = resp.headers().get(header::LOCATION).cloned();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{body:?}");
    let clone: uuid::Uuid = body.unwrap().to_str().unwrap()[6..].parse().unwrap();
    let clone = ifp_server::queue::get(&pool, clone).await.unwrap().unwrap();
    assert_eq!(clone.parent_id, Some(id.parse().unwrap()));
    assert_eq!(
        clone.config["FINETUNE"]["INIT"],
        stored.config["FINETUNE"]["INIT"]
    );
    assert_eq!(
        clone.config["FINETUNE"]["DATA"],
        stored.config["FINETUNE"]["DATA"]
    );
}

/// Issue 18: a comparison over two seeds through a real worker: one step axis over the shared
/// pre-training and both seeds' arms, seeds.json listed, the key result its mean difference,
/// the page's summary with intervals and the seeds favouring IFP. Bad seed counts are 422.
#[tokio::test]
async fn a_comparison_over_two_seeds_runs_and_summarises() {
    let pool = common::fresh_pool().await;
    let artifacts = tempfile::tempdir().unwrap();
    let mut state = AppState::new(pool.clone(), artifacts.path(), Some(ADMIN));
    state.datasets = Some(common::datasets());
    let api = app(state);
    let body = |seeds: Value| {
        json!({"kind": "compare", "name": "seeds", "config": pretrain(),
               "finetune": finetune("clean/CBSD68"), "showcase": 0, "seeds": seeds})
    };
    for bad in [json!(0), json!(11)] {
        let (s, b) = call(&api, "POST", "/api/v1/jobs", Some(body(bad))).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert!(b.contains("\"key_path\":\"seeds\""), "{b}");
    }
    let (s, b) = call(&api, "POST", "/api/v1/jobs", Some(body(json!(2)))).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let job: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(job["total_steps"], 6 + 2 * 2 * 4);
    assert_eq!(job["config"]["SEEDS"], 2);
    let id = job["id"].as_str().unwrap().to_string();

    let job = run_to_end(&api, &pool, artifacts.path(), "w-seeds", &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["step"], 22);

    let (s, seeds) = call(
        &api,
        "GET",
        &format!("/api/v1/jobs/{id}/checkpoints/seeds.json"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{seeds}");
    let seeds: Value = serde_json::from_str(&seeds).unwrap();
    assert_eq!(seeds["seeds"], json!([0, 1]));
    let d = &seeds["deltas"][0];
    assert_eq!(d["psnr"]["per_seed"].as_array().unwrap().len(), 2);
    assert_eq!(job["key_metric"].as_f64(), d["psnr"]["mean"].as_f64());

    let page = html_of(&api, &pool, &format!("/jobs/{id}")).await;
    for needle in [
        "Over seeds",
        "2 seeds (0, 1), 2 test images",
        "95% confidence intervals",
        "of 2 seeds and",
        "seeds.csv",
    ] {
        assert!(page.contains(needle), "missing {needle}");
    }
}
