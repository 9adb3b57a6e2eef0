//! The `compare` job kind end to end against a real PostgreSQL: submitted over the API with
//! fine-tuning data from `../shared/data`, run by a worker (tiny pre-training, then the IFP and
//! scratch arms), its report listed and shown on the job page; and what is refused.

use crate::common;
use crate::compare_support::{
    admin_form_session, admin_session, api_with_datasets, arm_names, call, finetune, finetune_job,
    html_of, pretrain, report_of, result_json, run_to_end, send, submit_tiny_comparison, ADMIN,
};

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use ifp_server::worker::{self, WorkerConfig};
use ifp_server::{app, AppState};
use serde_json::{json, Value};
use tower::ServiceExt;

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
        // A finetune job scores its test set at the end: the folder must be a data set.
        (
            json!({"kind": "finetune", "finetune": with(finetune("../data"), "MODEL", tiny())}),
            "FINETUNE.DATA.TRAIN_DIR",
        ),
        (
            json!({"kind": "finetune", "finetune": test_dir(with(finetune("clean/CBSD68"), "MODEL", tiny()), "clean/nowhere")}),
            "FINETUNE.DATA.TEST_DIR",
        ),
        // Neither an initial job nor a MODEL: no silent paper-sized network.
        (
            json!({"kind": "finetune", "finetune": finetune_job("clean/CBSD68", None)}),
            "FINETUNE.MODEL",
        ),
        // Issue 18: what a job kind would ignore is refused, naming the key. Every arm
        // fine-tunes the pre-training's network (the paper Restormer here is not `tiny`).
        (
            json!({"kind": "compare", "config": pretrain(),
                   "finetune": with(finetune("clean/CBSD68"), "MODEL", json!({"TYPE": "restormer"}))}),
            "FINETUNE.MODEL",
        ),
        // The worker is chosen by the pre-training's TRAIN.DEVICE (`any` here).
        (
            json!({"kind": "compare", "config": pretrain(),
                   "finetune": with_train(finetune("clean/CBSD68"), "DEVICE", json!("cpu"))}),
            "FINETUNE.TRAIN.DEVICE",
        ),
        // Fine-tuning trains in float32 and keeps every checkpoint.
        (
            json!({"kind": "compare", "config": pretrain(),
                   "finetune": with_train(finetune("clean/CBSD68"), "AMP", json!("bf16"))}),
            "FINETUNE.TRAIN.AMP",
        ),
        (
            json!({"kind": "finetune", "finetune": with_train(finetune_job("clean/CBSD68", Some(tiny())),
                   "KEEP_CHECKPOINTS", json!(2))}),
            "FINETUNE.TRAIN.KEEP_CHECKPOINTS",
        ),
        // A finetune job renders no showcase.
        (
            json!({"kind": "finetune", "finetune": finetune_job("clean/CBSD68", Some(tiny())),
                   "showcase": 2}),
            "showcase",
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
    // Stating the network a comparison fine-tunes anyway, or the worker class it runs on, is
    // accepted.
    let same = with_train(
        with(finetune("clean/CBSD68"), "MODEL", tiny()),
        "DEVICE",
        json!("any"),
    );
    let body = json!({"kind": "compare", "config": pretrain(), "finetune": same});
    let (s, b) = call(&api, "POST", "/api/v1/jobs", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

/// The `tiny` preset's network, as a fine-tuning config's MODEL tree.
fn tiny() -> Value {
    serde_json::to_value(ifp_trainer::config::preset("tiny").unwrap().model).unwrap()
}

/// A fine-tuning config `v` testing on `dir`.
fn test_dir(mut v: Value, dir: &str) -> Value {
    v["DATA"]["TEST_DIR"] = json!(dir);
    v
}

/// `v` with its top-level `key` replaced by `value`.
fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

/// `v` with `TRAIN.<key>` set to `value`.
fn with_train(mut v: Value, key: &str, value: Value) -> Value {
    v["TRAIN"][key] = value;
    v
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
    assert_eq!(arm_names(&report), ["ifp", "scratch"]);
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
    // The runs view's Test PSNR column gives each arm's mean test PSNR.
    let runs = html_of(&api, &pool, &format!("/runs?ids={id}")).await;
    let arms = report["arms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let psnr = a["test"]["psnr"]["mean"].as_f64().unwrap();
            format!("{} {psnr:.2}", a["name"].as_str().unwrap())
        })
        .collect::<Vec<_>>()
        .join(" · ");
    assert!(
        runs.contains(&format!("<td class=\"num\">{arms}</td>")),
        "{arms}: {runs}"
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
    let (pool, _artifacts, site) = api_with_datasets().await;
    let (cookie, csrf) = admin_form_session(&pool).await;
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
    let (pool, artifacts, api) = api_with_datasets().await;
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
        "test.json",
    ] {
        assert!(names.contains(&n), "{names:?}");
    }
    let history = result_json(&api, &id, "history.json").await;
    let history = history.as_array().unwrap();
    assert_eq!(history.len(), 2, "validated at steps 2 and 4");
    // At the end the best checkpoint is scored on the held-out test images (two of them here).
    let test = result_json(&api, &id, "test.json").await;
    assert_eq!(test["test_images"], 2, "{test}");
    assert_eq!(
        test["per_image"].as_array().map(Vec::len),
        Some(2),
        "{test}"
    );
    let best_step = history
        .iter()
        .max_by(|a, b| {
            a["psnr"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["psnr"].as_f64().unwrap())
        })
        .unwrap()["step"]
        .clone();
    assert_eq!(test["best_step"], best_step, "{test}");
    let test_psnr = test["test"]["psnr"]["mean"].as_f64().unwrap();
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
    let (cookie, csrf) = admin_form_session(&pool).await;
    let selected = format!("<option value=\"{pre_id}\" selected>");
    for (uri, needle) in [
        (format!("/jobs/{id}"), "Best validation PSNR".to_string()),
        (
            format!("/jobs/{id}"),
            format!("Test PSNR {test_psnr:.2} ± "),
        ),
        // The runs view's Test PSNR column.
        (
            format!("/runs?ids={id}"),
            format!("<td class=\"num\">{test_psnr:.2} ± "),
        ),
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

    // Issue 16: *Estimate* checks a fine-tuning or comparison form as a submission would and
    // shows the run's peak memory and training time instead of queueing it. The time comes from
    // the finished fine-tuning job's logged speed (its median images/s, interpolated as
    // PostgreSQL's percentile_cont does): 4 steps of 2 images, once per comparison arm.
    let mut speeds: Vec<f64> = sqlx::query_scalar(
        "select images_per_sec from metric where job_id = $1 and images_per_sec > 0",
    )
    .bind(uuid::Uuid::parse_str(&id).unwrap())
    .fetch_all(&pool)
    .await
    .unwrap();
    speeds.sort_by(f64::total_cmp);
    let n = speeds.len();
    assert!(n > 0, "the finished job logged its speed");
    let median = (speeds[(n - 1) / 2] + speeds[n / 2]) / 2.0;
    let pre_cfg = ifp_trainer::Config::from_value(pre["config"].clone()).unwrap();
    let human = ifp_trainer::memory::human;
    let ft_peak = ifp_trainer::memory::finetune_peak_bytes(&ft);
    let cmp_peak = ft_peak.max(ifp_trainer::memory::pretrain_peak_bytes(&pre_cfg));
    let jobs = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from job")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = jobs().await;
    let duration = |images: f64| ifp_server::http::views::fmt::duration(images / median);
    for (uri, extra, peak, time) in [
        (
            "/jobs/new/finetune",
            vec![],
            ft_peak,
            format!(
                "Training (validation and testing not counted) takes about {} at the median \
                 speed of 1 finished fine-tuning run with",
                duration(8.0)
            ),
        ),
        (
            "/jobs/new/compare",
            vec![("showcase", "1"), ("seeds", "1")],
            cmp_peak,
            format!(
                "Training all phases (validation and testing not counted) takes about {} at the \
                 median speeds",
                duration(16.0)
            ),
        ),
    ] {
        let mut fields = vec![
            ("csrf", csrf.as_str()),
            ("name", "estimated"),
            ("init_job", pre_id.as_str()),
            ("finetune_yaml", yaml.as_str()),
            ("priority", "0"),
            ("action", "estimate"),
        ];
        fields.extend(extra);
        let req = Request::post(uri)
            .header(header::COOKIE, format!("ifp_session={cookie}"))
            .header(header::ORIGIN, "http://localhost")
            .header(header::HOST, "localhost")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(serde_urlencoded::to_string(&fields).unwrap()))
            .unwrap();
        let resp = api.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{uri}");
        let html = String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes())
            .into_owned();
        let memory = format!("Peak memory about {}", human(peak));
        assert!(html.contains(&memory), "{uri}: missing {memory}: {html}");
        assert!(html.contains(&time), "{uri}: missing {time}: {html}");
    }
    assert_eq!(jobs().await, before, "an estimate submits nothing");
}
