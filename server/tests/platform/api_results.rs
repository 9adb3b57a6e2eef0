//! The REST API's read side through `app()` against a real PostgreSQL: metrics, checkpoint
//! lists and downloads, event streams, samples, `/metrics`, OpenAPI, visibility and presets.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use ifp_server::db::rows::Metric;
use ifp_server::queue;
use ifp_server::queue::record;
use ifp_server::{app, AppState};
use ifp_trainer::checkpoint::{Checkpoint, WrittenFile};
use serde_json::{json, Value};
use std::time::Duration;
use tower::ServiceExt;

use super::api_support::{setup, Api, ADMIN};

/// Gives job `id` a fake finished attempt with one metric row and a checkpoint file on disk.
async fn fake_progress(api: &Api, body: &[u8]) -> (uuid::Uuid, String) {
    let job = api.submit(&api.alice, "done").await;
    let id: uuid::Uuid = job["id"].as_str().unwrap().parse().unwrap();
    let c = queue::claim(&api.pool, "w", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.fence.job_id, id);
    let row = Metric {
        step: 1,
        attempt: 1,
        loss: 0.5,
        lr: 1e-3,
        grad_norm: 2.0,
        images_per_sec: 10.0,
    };
    record::metrics(&api.pool, &c.fence, &[row]).await.unwrap();
    let dir = ifp_server::worker::attempt_dir(api.artifacts.path(), id, 1);
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        use sha2::Digest;
        WrittenFile {
            path,
            bytes: bytes.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(bytes)),
        }
    };
    let ck = Checkpoint {
        step: 1,
        model: file("model-000001.safetensors", body),
        state: file("state-000001.safetensors", b"state"),
        sample: None,
    };
    record::checkpoint(&api.pool, api.artifacts.path(), &c.fence, &ck)
        .await
        .unwrap();
    queue::finish(&api.pool, &c.fence, &queue::Outcome::Succeeded)
        .await
        .unwrap();
    (id, ck.model.sha256)
}

#[tokio::test]
async fn metrics_checkpoints_and_downloads() {
    let api = setup().await;
    let content: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let (id, sha) = fake_progress(&api, &content).await;
    let t = Some(api.alice.as_str());

    let (_, detail) = api
        .call("GET", &format!("/api/v1/jobs/{id}"), t, None)
        .await;
    assert_eq!(detail["attempts"][0]["worker_id"], "w");
    assert_eq!(detail["attempts"][0]["outcome"], "succeeded");
    let (s, m) = api
        .call("GET", &format!("/api/v1/jobs/{id}/metrics"), t, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        m,
        json!([{"step": 1, "attempt": 1, "loss": 0.5, "lr": 1e-3, "grad_norm": 2.0, "images_per_sec": 10.0}])
    );
    // A misspelt `after` is refused in the error body's shape, not ignored (it would return
    // every row).
    let (s, e) = api
        .call("GET", &format!("/api/v1/jobs/{id}/metrics?afer=1"), t, None)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["error"], "invalid", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown field `afer`"),
        "{e}"
    );
    let (s, m) = api
        .call(
            "GET",
            &format!("/api/v1/jobs/{id}/metrics?after=1"),
            t,
            None,
        )
        .await;
    assert_eq!((s, m), (StatusCode::OK, json!([])));

    let (s, list) = api
        .call("GET", &format!("/api/v1/jobs/{id}/checkpoints"), t, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let model = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "model")
        .unwrap();
    assert_eq!(model["name"], "model-000001.safetensors");
    assert_eq!(
        (model["step"].as_i64(), model["bytes"].as_i64()),
        (Some(1), Some(10_000))
    );
    assert_eq!(model["sha256"], sha.as_str());
    assert!(model.get("path").is_none(), "server paths stay private");
    let url = model["url"].as_str().unwrap().to_string();
    assert_eq!(
        url,
        format!("/api/v1/jobs/{id}/checkpoints/model-000001.safetensors")
    );

    let get = |range: Option<&str>, inm: Option<&str>| {
        let mut b =
            Request::get(&url).header(header::AUTHORIZATION, format!("Bearer {}", api.alice));
        if let Some(r) = range {
            b = b.header(header::RANGE, r);
        }
        if let Some(e) = inm {
            b = b.header(header::IF_NONE_MATCH, e);
        }
        b.body(Body::empty()).unwrap()
    };
    let (s, h, body) = api.raw(get(None, None)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, content);
    let etag = format!("\"{sha}\"");
    assert_eq!(h[header::ETAG], etag.as_str());
    assert_eq!(
        h[header::CONTENT_DISPOSITION],
        "attachment; filename=\"model-000001.safetensors\""
    );
    assert_eq!(h[header::ACCEPT_RANGES], "bytes");

    let (s, h, body) = api.raw(get(Some("bytes=100-199"), None)).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &content[100..200]);
    assert_eq!(h[header::CONTENT_RANGE], "bytes 100-199/10000");
    let (s, _, body) = api.raw(get(Some("bytes=9990-"), None)).await;
    assert_eq!(
        (s, body.as_slice()),
        (StatusCode::PARTIAL_CONTENT, &content[9990..])
    );
    let (s, h, _) = api.raw(get(Some("bytes=20000-"), None)).await;
    assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(h[header::CONTENT_RANGE], "bytes */10000");
    // RFC 9110: a last position past the end is clamped (was 416); several ranges may be
    // answered whole (was 416); an If-Range that does not match the ETag means the whole file
    // (was 206).
    let (s, h, body) = api.raw(get(Some("bytes=9990-20000"), None)).await;
    assert_eq!(
        (s, body.as_slice()),
        (StatusCode::PARTIAL_CONTENT, &content[9990..])
    );
    assert_eq!(h[header::CONTENT_RANGE], "bytes 9990-9999/10000");
    let (s, _, body) = api.raw(get(Some("bytes=0-1,5-9"), None)).await;
    assert_eq!((s, body.len()), (StatusCode::OK, 10_000));
    let if_range = |value: &str| {
        Request::get(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", api.alice))
            .header(header::RANGE, "bytes=0-9")
            .header(header::IF_RANGE, value)
            .body(Body::empty())
            .unwrap()
    };
    let (s, _, body) = api.raw(if_range("\"stale\"")).await;
    assert_eq!((s, body.len()), (StatusCode::OK, 10_000));
    let (s, _, body) = api.raw(if_range(&etag)).await;
    assert_eq!(
        (s, body.as_slice()),
        (StatusCode::PARTIAL_CONTENT, &content[..10])
    );
    let (s, _, body) = api.raw(get(None, Some(&etag))).await;
    assert_eq!((s, body.len()), (StatusCode::NOT_MODIFIED, 0));
    // If-None-Match compares weakly (RFC 9110 13.1.2; was a full download).
    let (s, _, body) = api.raw(get(None, Some(&format!("\"x\", W/{etag}")))).await;
    assert_eq!((s, body.len()), (StatusCode::NOT_MODIFIED, 0));
    // The file server's own 416 has the documented error shape, its Content-Range kept.
    let (s, h, body) = api.raw(get(Some("bytes=20000-"), None)).await;
    assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(h[header::CONTENT_TYPE], "application/json");
    assert_eq!(h[header::CONTENT_RANGE], "bytes */10000");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "client_error", "{v}");

    // A NUL in the name was bound into SQL and gave a 500.
    for name in [
        "nope.safetensors",
        "..%2F..%2Fetc%2Fpasswd",
        "%2E%2E",
        "a%00b",
    ] {
        let (s, _) = api
            .call(
                "GET",
                &format!("/api/v1/jobs/{id}/checkpoints/{name}"),
                t,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{name}");
    }
}

#[tokio::test]
async fn another_user_cannot_see_a_job() {
    let api = setup().await;
    let (id, _) = fake_progress(&api, b"weights").await;
    let bob = Some(api.bob.as_str());
    for (method, path) in [
        ("GET", format!("/api/v1/jobs/{id}")),
        ("POST", format!("/api/v1/jobs/{id}/cancel")),
        ("GET", format!("/api/v1/jobs/{id}/metrics")),
        ("GET", format!("/api/v1/jobs/{id}/checkpoints")),
        (
            "GET",
            format!("/api/v1/jobs/{id}/checkpoints/model-000001.safetensors"),
        ),
    ] {
        let (s, v) = api.call(method, &path, bob, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(v["error"], "not_found");
        let (s, _) = api.call(method, &path, Some(ADMIN), None).await;
        assert_eq!(s, StatusCode::OK, "admin: {method} {path}");
    }
    let (_, list) = api.call("GET", "/api/v1/jobs", bob, None).await;
    assert_eq!(list["jobs"], json!([]));
    let (_, list) = api.call("GET", "/api/v1/jobs", Some(ADMIN), None).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
}

/// Reads SSE frames until `n` events arrived or the stream ended; returns (event, data) pairs.
async fn sse_events(body: &mut Body, n: usize) -> Vec<(String, Value)> {
    let mut text = String::new();
    let mut out = vec![];
    while out.len() < n {
        let frame = tokio::time::timeout(Duration::from_secs(20), body.frame())
            .await
            .expect("an SSE event in time");
        let Some(frame) = frame else { break };
        let Ok(data) = frame.unwrap().into_data() else {
            continue;
        };
        text.push_str(std::str::from_utf8(&data).unwrap());
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut ev = String::new();
            let mut d = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    ev = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    d.push_str(v);
                }
            }
            if !ev.is_empty() {
                out.push((ev, serde_json::from_str(&d).unwrap()));
            }
        }
    }
    out
}

#[tokio::test]
async fn events_stream_progress_checkpoints_and_status() {
    let api = setup().await;
    let hub_state = AppState::new(api.pool.clone(), api.artifacts.path(), Some(ADMIN));
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    ifp_server::http::hub::spawn_hub(api.pool.clone(), hub_state.job_changed.clone(), stop_rx);
    let app = app(hub_state);
    let req = |uri: &str, token: &str| {
        Request::get(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap()
    };

    // A finished job: everything at once, then the stream ends.
    let (id, _) = fake_progress(&api, b"w").await;
    let resp = app
        .clone()
        .oneshot(req(&format!("/api/v1/jobs/{id}/events"), &api.alice))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = resp.into_body();
    let evs = sse_events(&mut body, 100).await;
    let kinds: Vec<&str> = evs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["progress", "checkpoint", "checkpoint", "status"],
        "{evs:?}"
    );
    assert_eq!(evs[0].1["step"], 0);
    assert!(evs[1].1["url"]
        .as_str()
        .unwrap()
        .ends_with("model-000001.safetensors"));
    assert_eq!(evs[3].1["status"], "succeeded");

    // A queued job: its cancel arrives as a live event.
    let job = api.submit(&api.alice, "live").await;
    let id = job["id"].as_str().unwrap().to_string();
    let resp = app
        .clone()
        .oneshot(req(&format!("/api/v1/jobs/{id}/events"), &api.alice))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = sse_events(&mut body, 2).await;
    assert_eq!(first[1].1["status"], "queued");
    let (s, _) = api
        .call(
            "POST",
            &format!("/api/v1/jobs/{id}/cancel"),
            Some(&api.alice),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let rest = sse_events(&mut body, 100).await;
    assert_eq!(rest.last().unwrap().1["status"], "cancelled", "{rest:?}");

    // Another user's job does not exist for them.
    let resp = app
        .oneshot(req(&format!("/api/v1/jobs/{id}/events"), &api.bob))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn samples_are_served_by_step() {
    let api = setup().await;
    let job = api.submit(&api.alice, "s").await;
    let id: uuid::Uuid = job["id"].as_str().unwrap().parse().unwrap();
    let c = queue::claim(&api.pool, "w", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let ck = crate::common::fake_checkpoint(api.artifacts.path(), id, 2);
    record::checkpoint(&api.pool, api.artifacts.path(), &c.fence, &ck)
        .await
        .unwrap();
    let req = Request::get(format!("/api/v1/jobs/{id}/samples/2"))
        .header(header::AUTHORIZATION, format!("Bearer {}", api.alice))
        .body(Body::empty())
        .unwrap();
    let (s, h, body) = api.raw(req).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h[header::CONTENT_TYPE], "image/png");
    assert_eq!(body, b"sample-000002.png");
    for step in ["3", "x"] {
        let (s, _) = api
            .call(
                "GET",
                &format!("/api/v1/jobs/{id}/samples/{step}"),
                Some(&api.alice),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn prometheus_metrics_need_no_token_and_leak_nothing() {
    let api = setup().await;
    let (id, _) = fake_progress(&api, b"w").await;
    api.submit(&api.alice, "waiting").await;
    let (s, _) = api
        .call("GET", &format!("/api/v1/jobs/{id}"), Some(&api.alice), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, h, body) = api
        .raw(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(body).unwrap();
    for line in [
        "ifp_jobs{status=\"succeeded\"} 1",
        "ifp_jobs{status=\"queued\"} 1",
        "ifp_jobs{status=\"failed\"} 0",
        "ifp_training_steps_per_second 0.0166",
        "ifp_http_request_duration_seconds_count{method=\"GET\",route=\"/api/v1/jobs/{id}\",status=\"200\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    assert!(text.contains("ifp_queue_oldest_wait_seconds "));
    assert!(!text.contains(&id.to_string()) && !text.contains("alice") && !text.contains(ADMIN));
}

#[tokio::test]
async fn openapi_is_generated_from_the_handlers() {
    let api = setup().await;
    let (s, doc) = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/jobs",
        "/api/v1/jobs/{id}",
        "/api/v1/jobs/{id}/cancel",
        "/api/v1/jobs/{id}/metrics",
        "/api/v1/jobs/{id}/events",
        "/api/v1/jobs/{id}/checkpoints",
        "/api/v1/jobs/{id}/checkpoints/{name}",
        "/api/v1/jobs/{id}/samples/{step}",
        "/healthz",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "{p} missing: {:?}", paths.keys());
    }
    let post = &doc["paths"]["/api/v1/jobs"]["post"];
    assert!(post["responses"].get("201").is_some() && post["responses"].get("422").is_some());
    // The metrics' `limit` and parameter names are checked (`metrics?limit=0` and
    // `metrics?afer=1` are 422s), and the document says so.
    let metrics = &doc["paths"]["/api/v1/jobs/{id}/metrics"]["get"]["responses"];
    let refused = metrics["422"]["description"].as_str().unwrap_or_default();
    assert!(refused.contains("unknown parameter"), "{metrics}");
    // What the schemathesis campaign (bench/schemathesis.sh) found looser than the API:
    // the bounds of `limit`, the download's content types, the upload's binary body.
    let limit = |path: &str| {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .map(|p| {
                (
                    p["schema"]["minimum"].clone(),
                    p["schema"]["maximum"].clone(),
                )
            })
            .unwrap()
    };
    assert_eq!(limit("/api/v1/jobs"), (json!(1), json!(500)));
    assert_eq!(
        limit("/api/v1/jobs/{id}/metrics"),
        (json!(1), json!(100000))
    );
    let download =
        &doc["paths"]["/api/v1/jobs/{id}/checkpoints/{name}"]["get"]["responses"]["200"]["content"];
    for t in [
        "application/octet-stream",
        "image/png",
        "application/json",
        "text/csv",
    ] {
        assert!(download.get(t).is_some(), "{t}: {download}");
    }
    assert_eq!(doc["components"]["schemas"]["Binary"]["format"], "binary");
    let upload = &doc["paths"]["/api/v1/uploads"]["post"]["requestBody"]["content"]
        ["application/octet-stream"]["schema"];
    assert_eq!(upload["$ref"], "#/components/schemas/Binary", "{upload}");
    let schemas = &doc["components"]["schemas"];
    let job_props = schemas["Job"]["properties"].as_object().unwrap();
    for k in [
        "id",
        "status",
        "attempt",
        "step",
        "total_steps",
        "loss",
        "created_at",
        "error",
    ] {
        assert!(job_props.contains_key(k), "Job.{k}");
    }
    assert!(schemas["Job"]["properties"].get("path").is_none());
    assert!(schemas["CreateJob"]["properties"]
        .get("config_yaml")
        .is_some());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn a_job_from_a_preset_and_the_reserved_admin_name() {
    let api = setup().await;
    let (s, p) = api
        .call(
            "POST",
            "/api/v1/jobs",
            Some(&api.alice),
            Some(json!({"preset": "tiny"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    assert_eq!(
        (p["total_steps"].as_i64(), p["name"].as_str()),
        (Some(400), Some("job"))
    );
    assert_eq!(p["config"]["DATA"]["IMG_SIZE"], 32);
    let e = ifp_server::tokens::create(&api.pool, "admin", false, None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("reserved"));
    assert!(ifp_server::tokens::create(&api.pool, "admin", true, None)
        .await
        .is_ok());
}
