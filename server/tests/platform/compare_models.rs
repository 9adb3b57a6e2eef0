//! Issue 17, item 1: a comparison's models are kept and reusable. A `compare` job can start
//! from a finished pre-training job (`init_job`) instead of pre-training again and take a third
//! arm from another (`extra_arm_job`); when it finishes it lists each arm's best checkpoint as a
//! model file that downloads and loads. The comparison form offers the same (*Start from*,
//! *Extra arm*, and *Compare from this* on a pre-training job's page). What cannot work is
//! refused naming the field. A comparison over several seeds summarises them.

use crate::common;
use crate::compare_support::{
    admin_form_session, admin_session, api_with_datasets, arm_names, call, finetune, html_of,
    pretrain, report_of, result_json, run_to_end, send, ADMIN,
};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use ifp_server::{app, AppState};
use serde_json::{json, Value};
use tower::ServiceExt;

/// Posts a form as the admin's browser does: (status, Location, body).
async fn post_form(
    api: &axum::Router,
    cookie: &str,
    uri: &str,
    fields: &[(&str, &str)],
) -> (StatusCode, Option<String>, String) {
    let req = Request::post(uri)
        .header(header::COOKIE, format!("ifp_session={cookie}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(serde_urlencoded::to_string(fields).unwrap()))
        .unwrap();
    send(api, req).await
}

#[tokio::test]
async fn a_comparison_starts_from_finished_jobs_and_keeps_its_models() {
    let (pool, artifacts, api) = api_with_datasets().await;
    let submit = |body: Value| {
        let api = api.clone();
        async move {
            let (s, b) = call(&api, "POST", "/api/v1/jobs", Some(body)).await;
            (
                s,
                serde_json::from_str::<Value>(&b).unwrap_or(Value::String(b)),
            )
        }
    };

    // Two finished pre-training jobs: the IFP weights and the extra arm's.
    let mut ids = Vec::new();
    for seed in [0, 1] {
        let mut cfg = pretrain();
        cfg["SEED"] = json!(seed);
        let (s, job) = submit(json!({"name": format!("pre-{seed}"), "config": cfg})).await;
        assert_eq!(s, StatusCode::CREATED, "{job}");
        let id = job["id"].as_str().unwrap().to_string();
        let done = run_to_end(&api, &pool, artifacts.path(), &format!("w-pre-{seed}"), &id).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        ids.push(id);
    }
    let (pre, other) = (ids[0].clone(), ids[1].clone());

    // Refused, naming the field: a pre-training config beside init_job, an unknown extra arm,
    // extra_arm_job on another kind.
    for (body, key) in [
        (
            json!({"kind": "compare", "init_job": pre, "preset": "tiny",
                   "finetune": finetune("clean/CBSD68")}),
            "config",
        ),
        (
            json!({"kind": "compare", "init_job": pre, "finetune": finetune("clean/CBSD68"),
                   "extra_arm_job": uuid::Uuid::new_v4()}),
            "extra_arm_job",
        ),
        (
            json!({"config": pretrain(), "extra_arm_job": other}),
            "extra_arm_job",
        ),
    ] {
        let (s, b) = submit(body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {b}");
        assert_eq!(b["key_path"], key, "{body}: {b}");
    }

    let (s, job) = submit(
        json!({"kind": "compare", "name": "from-jobs", "init_job": pre,
                                 "extra_arm_job": other, "finetune": finetune("clean/CBSD68")}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{job}");
    // No pre-training: three arms of 4 steps; the pre-training job is the parent.
    assert_eq!(job["total_steps"], 3 * 4);
    assert_eq!(job["parent_id"], json!(pre));
    let id = job["id"].as_str().unwrap().to_string();
    let done = run_to_end(&api, &pool, artifacts.path(), "w-cmp", &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["step"], 12);

    let report = report_of(&api, &id).await;
    assert_eq!(arm_names(&report), ["ifp", "scratch", "checkpoint"]);
    assert_eq!(report["deltas"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        report["pretrain"]["steps"],
        Value::Null,
        "no pre-training ran"
    );

    // Each arm's best checkpoint is listed and downloads; the pre-training job's file is not
    // listed again here.
    let (_, b) = call(&api, "GET", &format!("/api/v1/jobs/{id}/checkpoints"), None).await;
    let files: Vec<Value> = serde_json::from_str(&b).unwrap();
    let models: Vec<&Value> = files.iter().filter(|f| f["kind"] == "model").collect();
    assert_eq!(models.len(), 3, "{files:?}");
    for (arm, m) in ["ifp", "scratch", "checkpoint"].iter().zip(&models) {
        let name = m["name"].as_str().unwrap();
        let best = report["arms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == *arm)
            .unwrap()["best_step"]
            .as_u64()
            .unwrap();
        let want = format!("{arm}-best-model-{best:06}.safetensors");
        // Listed at the arm's own step, not the job's last (12, counting all three arms).
        assert!(
            models
                .iter()
                .any(|m| m["name"] == want && m["step"] == json!(best)),
            "{want} at step {best} in {models:?}"
        );
        let req = Request::get(format!("/api/v1/jobs/{id}/checkpoints/{name}"))
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
            .body(Body::empty())
            .unwrap();
        let resp = api.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{name}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len() as u64, m["bytes"].as_u64().unwrap(), "{name}");
        let t = candle_core::safetensors::load_buffer(&body, &candle_core::Device::Cpu)
            .expect("a model file");
        assert!(t.contains_key("head.conv.weight"), "{name}");
    }

    // The job page says which steps are which arm.
    let page = html_of(&api, &pool, &format!("/jobs/{id}")).await;
    // Its PyTorch snippet loads every arm's model, and restores with a fine-tuned one; its
    // Samples card says where a comparison's images are instead of promising strips.
    for m in &models {
        let name = m["name"].as_str().unwrap();
        let var = name.split_once("-best-").unwrap().0;
        assert!(
            page.contains(&format!("{var} = ifp_models.load(\"{name}\")")),
            "snippet for {name}: {page}"
        );
    }
    assert!(page.contains("y = ifp(x.permute"), "{page}");
    assert!(
        page.contains("A comparison reports no checkpoints")
            && !page.contains("Sample strips appear"),
        "{page}"
    );
    assert!(
        page.contains("fine-tuning from the extra arm") && !page.contains("IFP pre-training ·"),
        "{page}"
    );
    // Its showcase captions and validation legend name every arm, the extra one included,
    // in the order the strips and curves draw them.
    assert!(
        page.contains("degraded | ifp | scratch | checkpoint | target"),
        "{page}"
    );
    assert!(
        page.contains(r#"<span class="key s2">checkpoint</span></figcaption>"#),
        "{page}"
    );

    // *Clone* on a comparison: its form holds the same start, extra arm and settings, and
    // the comparison as the parent.
    let page = html_of(&api, &pool, &format!("/jobs/{id}")).await;
    assert!(page.contains(&format!("/jobs/new?from={id}")), "Clone");
    let clone = html_of(&api, &pool, &format!("/jobs/new/compare?from={id}")).await;
    for needle in [
        "from-jobs (clone)".to_string(),
        format!("name=\"parent\" value=\"{id}\""),
        format!("<option value=\"{pre}\" selected>"),
        format!("<option value=\"{other}\" selected>"),
        "TRAIN_DIR: clean/CBSD68".to_string(),
    ] {
        assert!(clone.contains(&needle), "clone form: missing {needle}");
    }

    // The form: *Compare from this* preselects the job; a bad extra arm is refused in place;
    // a valid choice submits a comparison without pre-training, parented to the job.
    let page = html_of(&api, &pool, &format!("/jobs/{pre}")).await;
    assert!(
        page.contains(&format!("/jobs/new/compare?init={pre}")),
        "Compare from this"
    );
    let form = html_of(&api, &pool, &format!("/jobs/new/compare?init={pre}")).await;
    assert!(
        form.contains(&format!("<option value=\"{pre}\" selected>")),
        "{form}"
    );
    let (cookie, csrf) = admin_form_session(&pool).await;
    // A clone URL naming a job of another kind goes to that kind's form (it was a 500).
    for (uri, to) in [
        (
            format!("/jobs/new/compare?from={pre}"),
            format!("/jobs/new?from={pre}"),
        ),
        (
            format!("/jobs/new/finetune?from={id}"),
            format!("/jobs/new/compare?from={id}"),
        ),
    ] {
        let req = Request::get(&uri)
            .header(header::COOKIE, format!("ifp_session={cookie}"))
            .body(Body::empty())
            .unwrap();
        let (s, location, _) = send(&api, req).await;
        assert_eq!((s, location), (StatusCode::SEE_OTHER, Some(to)), "{uri}");
    }

    let yaml = "DATA: {TRAIN_DIR: rain/Rain100H}\nTRAIN: {STEPS: 3}\n";
    // `moot`: the preset and steps are sent too, as without the page's script (with it they
    // are disabled, so not sent, while a job is chosen).
    let post = |extra: String, moot: bool| {
        let (api, cookie, csrf, pre) = (api.clone(), cookie.clone(), csrf.clone(), pre.clone());
        async move {
            let mut fields = vec![
                ("csrf", csrf.as_str()),
                ("name", "form comparison"),
                ("init_job", pre.as_str()),
                ("extra_arm_job", extra.as_str()),
                ("finetune_yaml", yaml),
                ("showcase", "1"),
                ("seeds", "1"),
                ("priority", "0"),
            ];
            if moot {
                fields.extend([("preset", "tiny"), ("pretrain_steps", "5")]);
            }
            post_form(&api, &cookie, "/jobs/new/compare", &fields).await
        }
    };
    let (s, _, html) = post(id.clone(), true).await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a compare job is no extra arm"
    );
    assert!(html.contains("not a succeeded pre-training job"), "{html}");
    let (s, location, html) = post(other.clone(), false).await;
    assert_eq!(s, StatusCode::SEE_OTHER, "{html}");
    let new: uuid::Uuid = location.unwrap()[6..].parse().unwrap();
    let job = ifp_server::queue::get(&pool, new).await.unwrap().unwrap();
    assert_eq!(job.total_steps, 3 * 3, "no pre-training, three arms");
    assert_eq!(job.parent_id.map(|p| p.to_string()), Some(pre.clone()));
    assert!(job.config["PRETRAINED"]
        .as_str()
        .unwrap()
        .ends_with(".safetensors"));
}

/// Issue 17, item 2: the runs view. Two finished jobs of different settings, selected in the
/// jobs list, overlaid (one line each), their results in one table and the differing settings
/// marked; the URL is the selection; bad selections are refused naming `ids`.
#[tokio::test]
async fn the_runs_view_overlays_jobs_and_marks_differing_settings() {
    let pool = common::fresh_pool().await;
    let artifacts = tempfile::tempdir().unwrap();
    let api = app(AppState::new(pool.clone(), artifacts.path(), Some(ADMIN)));
    let mut ids = Vec::new();
    for (seed, lr) in [(0, 0.128), (1, 0.256)] {
        let mut cfg = pretrain();
        cfg["SEED"] = json!(seed);
        cfg["TRAIN"]["BASE_LR"] = json!(lr);
        let body = json!({"name": format!("run-{seed}"), "config": cfg});
        let (s, b) = call(&api, "POST", "/api/v1/jobs", Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let id = serde_json::from_str::<Value>(&b).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let done = run_to_end(&api, &pool, artifacts.path(), &format!("w-run-{seed}"), &id).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        ids.push(id);
    }
    // The list offers the selection.
    let list = html_of(&api, &pool, "/").await;
    assert!(list.contains("id=\"runs-form\"") && list.contains("action=\"/runs\""));
    for id in &ids {
        assert!(
            list.contains(&format!("name=\"ids\" value=\"{id}\"")),
            "{list}"
        );
    }
    let page = html_of(&api, &pool, &format!("/runs?ids={}&ids={}", ids[0], ids[1])).await;
    for name in ["run-0", "run-1"] {
        assert!(page.contains(name), "{name}");
    }
    // One line per run on the loss and learning-rate charts.
    assert_eq!(page.matches("class=\"line s0\"").count(), 2, "loss and LR");
    assert_eq!(page.matches("class=\"line s1\"").count(), 2, "loss and LR");
    // The settings that differ are marked and listed first; shared ones are folded away.
    let differs: Vec<&str> = page
        .split("<tr class=\"differs\"><th scope=\"row\">")
        .skip(1)
        .map(|r| &r[..r.find('<').unwrap()])
        .collect();
    assert_eq!(differs, ["SEED", "TRAIN.BASE_LR"], "{page}");
    assert!(page.contains("Settings they share"));
    // The shareable URL holds the selection.
    assert!(page.contains(&format!("/runs?ids={},{}", ids[0], ids[1])));
    let again = html_of(&api, &pool, &format!("/runs?ids={},{}", ids[0], ids[1])).await;
    assert_eq!(again.matches("class=\"line s1\"").count(), 2);

    // Refused: no selection, an unknown parameter, a job that is not there.
    let cookie = admin_session(&pool).await;
    for (uri, status) in [
        ("/runs".to_string(), StatusCode::UNPROCESSABLE_ENTITY),
        (
            format!("/runs?id={}", ids[0]),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/runs?ids=nope".to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            format!("/runs?ids={}", uuid::Uuid::new_v4()),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let req = Request::get(&uri)
            .header(header::COOKIE, format!("ifp_session={cookie}"))
            .body(Body::empty())
            .unwrap();
        let resp = api.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), status, "{uri}");
    }
}

/// Issue 17, item 10: the fine-tune and comparison forms list the data sets the server knows
/// (with their kind), the chosen one replaces the YAML's TRAIN_DIR, and a refused folder is
/// shown beside the picker; the fine-tune form's examples include deblurring.
#[tokio::test]
async fn the_forms_pick_a_data_set() {
    let (pool, _artifacts, api) = api_with_datasets().await;
    let form = html_of(&api, &pool, "/jobs/new/finetune").await;
    for needle in [
        "<option value=\"clean/CBSD68\">clean/CBSD68 (68 clean images",
        "<option value=\"rain/Rain100H\">rain/Rain100H (100 pairs",
        "Example: Deblurring (synthetic blur on CBSD68)",
        "BLUR_SIGMA: 1.6",
    ] {
        assert!(form.contains(needle), "missing {needle}");
    }
    let (cookie, csrf) = admin_form_session(&pool).await;
    let post = |train_dir: &'static str, yaml: String| {
        let (api, cookie, csrf) = (api.clone(), cookie.clone(), csrf.clone());
        async move {
            let fields = [
                ("csrf", csrf.as_str()),
                ("name", "picked"),
                ("init_job", ""),
                ("train_dir", train_dir),
                ("finetune_yaml", yaml.as_str()),
                ("priority", "0"),
            ];
            post_form(&api, &cookie, "/jobs/new/finetune", &fields).await
        }
    };
    let tiny = serde_json::to_string(&ifp_trainer::config::preset("tiny").unwrap().model).unwrap();
    // The YAML names clean CBSD68 with noise; picking the paired Rain100H replaces it, and
    // the noise is then refused (the pairs are already degraded), naming the key.
    let yaml = format!("MODEL: {tiny}\nDATA: {{TRAIN_DIR: clean/CBSD68, NOISE_SIGMA: 25}}\n");
    let (s, _, html) = post("rain/Rain100H", yaml).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("NOISE_SIGMA"), "{html}");
    let yaml = format!("MODEL: {tiny}\nDATA: {{TRAIN_DIR: clean/CBSD68}}\nTRAIN: {{STEPS: 3}}\n");
    let (s, location, html) = post("rain/Rain100H", yaml.clone()).await;
    assert_eq!(s, StatusCode::SEE_OTHER, "{html}");
    let id: uuid::Uuid = location.unwrap()[6..].parse().unwrap();
    let job = ifp_server::queue::get(&pool, id).await.unwrap().unwrap();
    assert_eq!(job.config["FINETUNE"]["DATA"]["TRAIN_DIR"], "rain/Rain100H");
    // A refused training folder is shown beside the picker, where a data set is chosen, not
    // under the YAML box.
    let (s, _, html) = post("clean/nothing-here", yaml).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_beside_picker(&html, "no folder `clean/nothing-here`");

    // The comparison form has the same picker, and its choice replaces the YAML's folder.
    let form = html_of(&api, &pool, "/jobs/new/compare").await;
    assert!(
        form.contains("<option value=\"rain/Rain100H\">rain/Rain100H (100 pairs"),
        "{form}"
    );
    let post = |train_dir: &'static str| {
        let (api, cookie, csrf) = (api.clone(), cookie.clone(), csrf.clone());
        async move {
            let fields = [
                ("csrf", csrf.as_str()),
                ("name", "picked comparison"),
                ("preset", "tiny"),
                ("pretrain_steps", "5"),
                ("train_dir", train_dir),
                ("finetune_yaml", "TRAIN: {STEPS: 3}\n"),
                ("showcase", "1"),
                ("priority", "0"),
            ];
            post_form(&api, &cookie, "/jobs/new/compare", &fields).await
        }
    };
    let (s, _, html) = post("clean/nothing-here").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_beside_picker(&html, "no folder `clean/nothing-here`");
    let (s, location, html) = post("rain/Rain100H").await;
    assert_eq!(s, StatusCode::SEE_OTHER, "{html}");
    let id: uuid::Uuid = location.unwrap()[6..].parse().unwrap();
    let job = ifp_server::queue::get(&pool, id).await.unwrap().unwrap();
    assert_eq!(job.config["FINETUNE"]["DATA"]["TRAIN_DIR"], "rain/Rain100H");
}

/// `message` is shown in the *Training data* picker's field: after the picker, before the YAML
/// box.
fn assert_beside_picker(html: &str, message: &str) {
    let at = |needle: &str| {
        html.find(needle)
            .unwrap_or_else(|| panic!("no {needle}: {html}"))
    };
    let (picker, error, yaml) = (at("id=\"ft-data\""), at(message), at("id=\"ft-yaml\""));
    assert!(
        picker < error && error < yaml,
        "`{message}` is not beside the picker: {html}"
    );
}

/// Issue 18: a comparison over two seeds through a real worker: one step axis over the shared
/// pre-training and both seeds' arms, seeds.json listed, the key result its mean difference,
/// the page's summary with intervals and the seeds favouring IFP. Bad seed counts are 422.
#[tokio::test]
async fn a_comparison_over_two_seeds_runs_and_summarises() {
    let (pool, artifacts, api) = api_with_datasets().await;
    let body = |seeds: Value| {
        json!({"kind": "compare", "name": "seeds", "config": pretrain(),
               "finetune": finetune("clean/CBSD68"), "showcase": 1, "seeds": seeds})
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

    let seeds = result_json(&api, &id, "seeds.json").await;
    assert_eq!(seeds["seeds"], json!([0, 1]));
    let d = &seeds["deltas"][0];
    assert_eq!(d["psnr"]["per_seed"].as_array().unwrap().len(), 2);
    assert_eq!(job["key_metric"].as_f64(), d["psnr"]["mean"].as_f64());

    // Each seed's own results are listed and served beside the summary (they stayed in the
    // seed folders, unlisted, before).
    let (s, list) = call(&api, "GET", &format!("/api/v1/jobs/{id}/checkpoints"), None).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let list: Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for seed in [0, 1] {
        for file in ["report.json", "per_image.csv", "val_curve.csv"] {
            let name = format!("seed-{seed}-{file}");
            assert!(names.contains(&name.as_str()), "{name} not in {names:?}");
        }
        let showcase = format!("seed-{seed}-showcase-");
        assert!(
            names
                .iter()
                .any(|n| n.starts_with(&showcase) && n.ends_with(".png")),
            "no {showcase}*.png in {names:?}"
        );
    }
    let (s, r) = call(
        &api,
        "GET",
        &format!("/api/v1/jobs/{id}/checkpoints/seed-1-report.json"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");

    let page = html_of(&api, &pool, &format!("/jobs/{id}")).await;
    let per_seed = format!("{:+.2}", d["psnr"]["per_seed"][1].as_f64().unwrap());
    let image = d["per_image"][0][0].as_str().unwrap().to_string();
    for needle in [
        "Over seeds",
        "2 seeds (0, 1), 2 test images",
        "95% confidence intervals",
        "of 2 seeds and",
        "seeds.csv",
        "Paired PSNR difference per seed",
        per_seed.as_str(),
        "Paired PSNR difference per test image",
        image.as_str(),
        "fine-tuning noise only",
        "seed-1-per_image.csv",
    ] {
        assert!(page.contains(needle), "missing {needle}");
    }
}

/// Issue 18: a comparison over seeds may pre-train once per seed (`vary_pretrain_seed`), as
/// the CLI's `--vary-pretrain-seed` does: each seed's pre-training runs before its arms on the
/// job's step axis, each is listed with its seed, and the page says what the intervals then
/// cover. It needs two or more seeds, and belongs to comparisons.
#[tokio::test]
async fn a_comparison_may_pre_train_once_per_seed() {
    let (pool, artifacts, api) = api_with_datasets().await;
    let body = |seeds: u64, kind: &str| {
        json!({"kind": kind, "name": "vary", "config": pretrain(),
               "finetune": finetune("clean/CBSD68"), "showcase": 0, "seeds": seeds,
               "vary_pretrain_seed": true})
    };
    let (s, b) = call(&api, "POST", "/api/v1/jobs", Some(body(1, "compare"))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(b.contains("\"key_path\":\"vary_pretrain_seed\""), "{b}");
    let mut ft = body(2, "finetune");
    for k in ["config", "showcase", "seeds"] {
        ft.as_object_mut().unwrap().remove(k);
    }
    let (s, b) = call(&api, "POST", "/api/v1/jobs", Some(ft)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(b.contains("vary_pretrain_seed"), "{b}");

    let (s, b) = call(&api, "POST", "/api/v1/jobs", Some(body(2, "compare"))).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let job: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(job["total_steps"], 2 * (6 + 2 * 4));
    let id = job["id"].as_str().unwrap().to_string();
    let job = run_to_end(&api, &pool, artifacts.path(), "w-vary", &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["step"], 28);

    let seeds = result_json(&api, &id, "seeds.json").await;
    assert_eq!(seeds["vary_pretrain"], true);
    let (_, list) = call(&api, "GET", &format!("/api/v1/jobs/{id}/checkpoints"), None).await;
    for seed in [0, 1] {
        let name = format!("seed-{seed}-pretrain-model-000006.safetensors");
        assert!(list.contains(&name), "{name} not listed: {list}");
    }
    let page = html_of(&api, &pool, &format!("/jobs/{id}")).await;
    for needle in [
        "15–20: IFP pre-training (seed 1)",
        "pre-training and fine-tuning noise",
    ] {
        assert!(page.contains(needle), "missing {needle}");
    }
}
