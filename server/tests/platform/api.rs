//! The REST API through `app()` (no socket) against a real PostgreSQL.

use crate::common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use ifp_server::{app, AppState};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::api_support::{setup, ADMIN, TINY};

#[tokio::test]
async fn healthz_checks_the_database() {
    let api = setup().await;
    let (s, v) = api.call("GET", "/healthz", None, None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"status": "ok"})));
    api.pool.close().await;
    let (s, _) = api.call("GET", "/healthz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn missing_or_bad_tokens_get_401() {
    let api = setup().await;
    for token in [None, Some("nope"), Some("")] {
        let (s, v) = api.call("GET", "/api/v1/jobs", token, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(v["error"], "unauthorized");
    }
    let req = Request::get("/api/v1/jobs")
        .header(header::AUTHORIZATION, format!("Basic {}", api.alice))
        .body(Body::empty())
        .unwrap();
    assert_eq!(api.raw(req).await.0, StatusCode::UNAUTHORIZED);
    let (s, _) = api
        .call("GET", "/api/v1/jobs", Some(&api.alice), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api.call("GET", "/api/v1/jobs", Some(ADMIN), None).await;
    assert_eq!(s, StatusCode::OK);
    // Tokens are stored hashed only.
    let stored: Vec<String> = sqlx::query_scalar("select token_hash from api_token")
        .fetch_all(&api.pool)
        .await
        .unwrap();
    assert!(!stored.contains(&api.alice));
    assert!(stored.contains(&ifp_server::tokens::hash(&api.alice)));
}

#[tokio::test]
async fn create_get_and_list_jobs() {
    let api = setup().await;
    let mut cfg = serde_json::to_value(ifp_trainer::Config::load("tiny").unwrap()).unwrap();
    cfg["TRAIN"]["STEPS"] = json!(7);
    let (s, a) = api
        .call(
            "POST",
            "/api/v1/jobs",
            Some(&api.alice),
            Some(json!({"name": "a", "config": cfg, "priority": -3})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{a}");
    assert_eq!(a["status"], "queued");
    assert_eq!(a["total_steps"], 7);
    assert_eq!(a["priority"], -3);
    assert_eq!(a["owner"], "alice");
    assert!(a["id"].as_str().unwrap().parse::<uuid::Uuid>().is_ok());
    let b = api.submit(&api.alice, "b").await;
    assert_eq!(b["total_steps"], 4);
    let c = api.submit(&api.alice, "c").await;

    let (s, got) = api
        .call(
            "GET",
            &format!("/api/v1/jobs/{}", a["id"].as_str().unwrap()),
            Some(&api.alice),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["name"], "a");
    assert_eq!(got["attempts"], json!([]));
    for key in [
        "attempt",
        "step",
        "total_steps",
        "loss",
        "created_at",
        "started_at",
        "error",
    ] {
        assert!(got.get(key).is_some(), "{key}");
    }

    let (_, list) = api
        .call("GET", "/api/v1/jobs", Some(&api.alice), None)
        .await;
    let names: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c", "b", "a"], "newest first");
    let (_, page) = api
        .call("GET", "/api/v1/jobs?limit=2", Some(&api.alice), None)
        .await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_offset"], 2);
    let (_, page2) = api
        .call(
            "GET",
            "/api/v1/jobs?limit=2&offset=2",
            Some(&api.alice),
            None,
        )
        .await;
    assert_eq!(page2["jobs"][0]["name"], "a");
    assert_eq!(page2["next_offset"], Value::Null);

    let (s, _) = api
        .call(
            "POST",
            &format!("/api/v1/jobs/{}/cancel", c["id"].as_str().unwrap()),
            Some(&api.alice),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, cancelled) = api
        .call(
            "GET",
            "/api/v1/jobs?status=cancelled",
            Some(&api.alice),
            None,
        )
        .await;
    assert_eq!(cancelled["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(cancelled["jobs"][0]["name"], "c");
    let (s, v) = api
        .call("GET", "/api/v1/jobs?status=bogus", Some(&api.alice), None)
        .await;
    assert_eq!(
        (s, v["key_path"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("status"))
    );
    let (s, _) = api
        .call("GET", "/api/v1/jobs?limit=abc", Some(&api.alice), None)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    // By name: a part of it, any case; `%` and `_` are literal characters, not wildcards.
    let names_for = |uri: &'static str| {
        let api = &api;
        async move {
            let (s, v) = api.call("GET", uri, Some(&api.alice), None).await;
            assert_eq!(s, StatusCode::OK, "{uri}: {v}");
            let names: Vec<String> = v["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["name"].as_str().unwrap().to_string())
                .collect();
            names
        }
    };
    assert_eq!(names_for("/api/v1/jobs?name=B").await, ["b"]);
    assert_eq!(
        names_for("/api/v1/jobs?name=%25").await,
        Vec::<String>::new()
    );
    assert_eq!(names_for("/api/v1/jobs?name=_").await, Vec::<String>::new());
    assert_eq!(
        names_for("/api/v1/jobs?name=c&status=cancelled").await,
        ["c"]
    );
    assert_eq!(names_for("/api/v1/jobs?name=").await, ["c", "b", "a"]);
    // An unknown or misspelt parameter is refused, not ignored (it would list everything).
    for uri in ["/api/v1/jobs?staus=queued", "/api/v1/jobs?name=a&page=2"] {
        let (s, v) = api.call("GET", uri, Some(&api.alice), None).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{uri}: {v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap_or_default()
                .contains("unknown field"),
            "{v}"
        );
    }
    let long = format!("/api/v1/jobs?name={}", "x".repeat(201));
    let (s, v) = api.call("GET", &long, Some(&api.alice), None).await;
    assert_eq!(
        (s, v["key_path"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("name"))
    );
}

#[tokio::test]
async fn bad_input_gets_clear_4xx_and_writes_nothing() {
    let api = setup().await;
    let t = Some(api.alice.as_str());
    let cases = [
        (
            json!({"config": {"TRAIN": {"BASE_LR": "fast"}}}),
            Some("TRAIN.BASE_LR"),
        ),
        (json!({"config": {"DATA": {"NOPE": 1}}}), Some("DATA")),
        (
            json!({"config": {"TRAIN": {"STEPS": -5}}}),
            Some("TRAIN.STEPS"),
        ),
        (
            json!({"config_yaml": "TRAIN: {STEPS: 0}"}),
            Some("TRAIN.STEPS"),
        ),
        (
            json!({"config_yaml": "TRAIN: [unclosed"}),
            Some("config_yaml"),
        ),
        (json!({"name": "x"}), Some("config")),
        (json!({"config": {}, "config_yaml": ""}), Some("config")),
        (json!({"config": {}, "preset": "tiny"}), Some("config")),
        (json!({"preset": "huge"}), Some("preset")),
        (
            json!({"config": {}, "priority": 1_000_000}),
            Some("priority"),
        ),
        (json!({"config": {}, "name": ""}), Some("name")),
        (json!({"config": {}, "surprise": 1}), None),
        (json!({"config": {}, "priority": "high"}), None),
    ];
    for (body, key) in cases {
        let (s, v) = api
            .call("POST", "/api/v1/jobs", t, Some(body.clone()))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        if let Some(k) = key {
            let got = v["key_path"].as_str().unwrap_or_default();
            assert!(
                got.starts_with(k),
                "{body}: key_path {got:?}, want {k}: {v}"
            );
        }
        assert!(!v["message"].as_str().unwrap().is_empty());
    }
    // Unknown config keys are named.
    let (_, v) = api
        .call(
            "POST",
            "/api/v1/jobs",
            t,
            Some(json!({"config": {"DATA": {"NOPE": 1}}})),
        )
        .await;
    assert!(v["message"].as_str().unwrap().contains("NOPE"), "{v}");

    let bad_json = Request::post("/api/v1/jobs")
        .header(header::AUTHORIZATION, format!("Bearer {}", api.alice))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"config\": "))
        .unwrap();
    let (s, _, body) = api.raw(bad_json).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"],
        "bad_request"
    );
    let no_type = Request::post("/api/v1/jobs")
        .header(header::AUTHORIZATION, format!("Bearer {}", api.alice))
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(api.raw(no_type).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = json!({"config": {}, "name": "x".repeat(2 << 20)});
    let (s, v) = api.call("POST", "/api/v1/jobs", t, Some(huge)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");

    let n: i64 = sqlx::query_scalar("select count(*) from job")
        .fetch_one(&api.pool)
        .await
        .unwrap();
    assert_eq!(n, 0, "nothing half-written");
    let (s, _) = api.call("GET", "/api/v1/nope", t, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api.call("GET", "/api/v1/jobs/not-a-uuid", t, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn queue_limits_control_characters_aliases_sizes_and_non_finite_numbers_are_refused() {
    let api = setup().await;
    let nan_lr =
        "MODEL: {TYPE: restormer}\nDATA: {IMG_SIZE: 16}\nTRAIN: {STEPS: 4, BASE_LR: .nan}\n";
    let inf_clip =
        "MODEL: {TYPE: restormer}\nDATA: {IMG_SIZE: 16}\nTRAIN: {STEPS: 4, CLIP_GRAD: .inf}\n";
    let nul_tag = format!("{TINY}TAG: \"a\\0b\"\n");
    for (body, key) in [
        // Users may not queue ahead of everyone else's default.
        (json!({"config_yaml": TINY, "priority": 1}), "priority"),
        (json!({"config_yaml": TINY, "priority": -101}), "priority"),
        (
            json!({"config_yaml": TINY, "max_attempts": 6}),
            "max_attempts",
        ),
        (json!({"config_yaml": TINY, "name": "a\u{0}b"}), "name"),
        (json!({"config_yaml": TINY, "name": "two\nlines"}), "name"),
        (json!({"config_yaml": nan_lr}), "TRAIN.BASE_LR"),
        (json!({"config_yaml": inf_clip}), "TRAIN.CLIP_GRAD"),
        // An optional key's infinity once read as "not set" and the job was queued (201).
        (
            json!({"config_yaml": "TRAIN:\n  STEPS: .inf\n"}),
            "TRAIN.STEPS",
        ),
        (json!({"config_yaml": nul_tag}), "TAG"),
        (
            json!({"config_yaml": "a: &a [x, x]\nTAG: *a\n"}),
            "config_yaml",
        ),
        // Forms of alias the first scan missed: after a tag, and after a JSON-style key.
        (
            json!({"config_yaml": "a: !!seq &a [x, x]\nTAG: *a\n"}),
            "config_yaml",
        ),
        (
            json!({"config_yaml": "{\"a\":&a [1, 2], \"b\":*a}\n"}),
            "config_yaml",
        ),
        // YAML past the config size cap (inside the body limit).
        (
            json!({"config_yaml": format!("{TINY}{}", "# pad\n".repeat(60_000))}),
            "config_yaml",
        ),
        // Sizes and counts beyond any sane run (the campaign's examples).
        (
            json!({"config": {"MODEL": {"RESTORMER": {"DIM": 1_000_000}}}}),
            "MODEL.RESTORMER.DIM",
        ),
        (
            json!({"config": {"DATA": {"IMG_SIZE": 4096, "BATCH_SIZE": 1000}}}),
            "DATA.IMG_SIZE",
        ),
        (
            json!({"config": {"DATA": {"BATCH_SIZE": 4_611_686_018_427_387_904_u64}}}),
            "DATA.BATCH_SIZE",
        ),
        (
            json!({"config": {"TRAIN": {"STEPS": 1_000_000_000_000_u64}}}),
            "TRAIN.STEPS",
        ),
    ] {
        let (s, v) = api
            .call("POST", "/api/v1/jobs", Some(&api.alice), Some(body.clone()))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert_eq!(v["key_path"], key, "{body}: {v}");
    }
    // The limits are the user's: an admin may queue further ahead and retry more.
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/jobs",
            Some(ADMIN),
            Some(json!({"config_yaml": TINY, "priority": 500, "max_attempts": 10})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        (v["priority"].clone(), v["max_attempts"].clone()),
        (json!(500), json!(10))
    );
    // Nothing refused was queued.
    let (_, list) = api.call("GET", "/api/v1/jobs", Some(ADMIN), None).await;
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(1), "{list}");
}

/// Issue 16: a place is held for a bounded time and by a bounded share. A signed-in client that
/// announces a body and never finishes it gets 408 once the gate's deadline passes, and its
/// place is free again; meanwhile the same caller cannot take a second place (their share of a
/// two-place gate is one) but another caller can; a request without a valid token is refused
/// from its headers, without waiting for its body. Before, the slow body held its place for as
/// long as the client liked.
#[tokio::test]
async fn a_slow_body_holds_a_place_only_until_the_deadline_and_a_caller_only_their_share() {
    let mut api = setup().await;
    let mut state = AppState::new(api.pool.clone(), api.artifacts.path(), Some(ADMIN));
    let deadline = std::time::Duration::from_millis(600);
    state.gate = ifp_server::http::gate::Gate::new(2, std::time::Duration::from_millis(200))
        .with_deadline(deadline);
    api.app = app(state);
    let post = |token: &str, body: Body| {
        Request::builder()
            .method("POST")
            .uri("/api/v1/jobs")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .unwrap()
    };
    // The first bytes of a body whose rest never comes.
    let stalled = || {
        Body::from_stream(async_stream::stream! {
            yield Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"{\"name\": "));
            std::future::pending::<()>().await;
        })
    };
    let job = || Body::from(json!({"name": "gated", "preset": "tiny"}).to_string());

    let t0 = std::time::Instant::now();
    let slow = tokio::spawn({
        let app = api.app.clone();
        let req = post(&api.alice, stalled());
        async move { app.oneshot(req).await.unwrap() }
    });
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let (s, h, body) = api.raw(post(&api.alice, job())).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "alice's second place");
    assert!(h.contains_key(header::RETRY_AFTER));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "busy", "{v}");
    let (s, _, body) = api.raw(post(&api.bob, job())).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
    let t1 = std::time::Instant::now();
    let (s, _, _) = api.raw(post("ifp_not-a-token", stalled())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        t1.elapsed() < deadline,
        "refused without waiting for its body"
    );

    let resp = slow.await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    assert!(t0.elapsed() >= deadline);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["message"].as_str().unwrap().contains("did not arrive"),
        "{v}"
    );
    // Its place and alice's share are free again.
    let (s, _, body) = api.raw(post(&api.alice, job())).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
}

/// Issue 16: the API's client errors that axum itself answers (a path that is not UTF-8, a
/// method the route lacks, an upload over the size limit) have the documented JSON shape like
/// every other error, keeping their headers; they were text/plain or empty.
#[tokio::test]
async fn axums_own_client_errors_have_the_json_shape() {
    let api = setup().await;
    let auth = format!("Bearer {}", api.alice);
    let cases = [
        (
            "GET",
            "/api/v1/jobs/%FF",
            Body::empty(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "DELETE",
            "/api/v1/jobs",
            Body::empty(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "POST",
            "/api/v1/uploads",
            Body::from(vec![0u8; ifp_server::jobs::uploads::MAX_BYTES + 2]),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (method, uri, body, want) in cases {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, &auth)
            .body(body)
            .unwrap();
        let (s, h, body) = api.raw(req).await;
        assert_eq!(s, want, "{method} {uri}");
        assert_eq!(
            h[header::CONTENT_TYPE],
            "application/json",
            "{method} {uri}"
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            v["error"].is_string() && !v["message"].as_str().unwrap().is_empty(),
            "{method} {uri}: {v}"
        );
        if s == StatusCode::METHOD_NOT_ALLOWED {
            assert!(h.contains_key(header::ALLOW), "405 keeps Allow");
        }
    }
}

/// Issue 16: each event stream holds a connection, and the server takes a bounded number of
/// those, so one user may hold only so many streams at once (429 past it; admins are not
/// limited); a closed stream frees its place.
#[tokio::test]
async fn a_user_holds_a_bounded_number_of_event_streams() {
    let mut api = setup().await;
    let mut state = AppState::new(api.pool.clone(), api.artifacts.path(), Some(ADMIN));
    state.event_streams = ifp_server::http::gate::Quota::new(2);
    api.app = app(state);
    let job = api.submit(&api.alice, "watched").await;
    let id = job["id"].as_str().unwrap().to_string();
    let open = |token: &str| {
        let req = Request::get(format!("/api/v1/jobs/{id}/events"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        api.app.clone().oneshot(req)
    };
    let first = open(&api.alice).await.unwrap();
    let second = open(&api.alice).await.unwrap();
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    let third = open(&api.alice).await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    let body = third.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["message"].as_str().unwrap().contains("2 event streams"),
        "{v}"
    );
    // The admin may watch too.
    assert_eq!(open(ADMIN).await.unwrap().status(), StatusCode::OK);
    drop(first);
    assert_eq!(open(&api.alice).await.unwrap().status(), StatusCode::OK);
    drop(second);
}

#[tokio::test]
async fn a_run_too_big_for_every_live_worker_is_refused_with_its_estimate() {
    let api = setup().await;
    // Without a registered worker there is nothing to check against: it queues.
    let big = json!({"config": {"MODEL": {"RESTORMER": {"DIM": 8}}, "DATA": {"IMG_SIZE": 256, "BATCH_SIZE": 64}}});
    let (s, v) = api
        .call("POST", "/api/v1/jobs", Some(&api.alice), Some(big.clone()))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // A 4 GiB CPU worker cannot take a 256x256 x 64 step (about 40 GiB); a tiny job still fits.
    let small = ifp_server::queue::WorkerDevice {
        class: ifp_trainer::config::DeviceClass::Cpu,
        name: Some("small".into()),
        memory: Some(4 << 30),
    };
    ifp_server::queue::register_worker(&api.pool, "w-small", &small)
        .await
        .unwrap();
    let (s, v) = api
        .call("POST", "/api/v1/jobs", Some(&api.alice), Some(big))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["key_path"], "DATA.BATCH_SIZE", "{v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("GiB at its peak") && msg.contains("4.0 GiB"),
        "{msg}"
    );
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/jobs",
            Some(&api.alice),
            Some(json!({"config_yaml": TINY})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

/// Issue 16: a burst of expensive requests (submissions, uploads, the form and its preview)
/// waits briefly for a place, then gets 503 with `Retry-After` in the documented error shape;
/// cheap requests never wait on it.
#[tokio::test]
async fn expensive_requests_past_the_gate_get_503_with_retry_after() {
    let pool = common::fresh_pool().await;
    let artifacts = tempfile::tempdir().unwrap();
    let mut state = AppState::new(pool.clone(), artifacts.path(), Some(ADMIN));
    state.gate = ifp_server::http::gate::Gate::new(1, std::time::Duration::from_millis(300));
    let gate = state.gate.clone();
    let app = app(state);
    let send = |method: &str, uri: &str, body: Option<Value>| {
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"));
        if body.is_some() {
            b = b.header(header::CONTENT_TYPE, "application/json");
        }
        let req = b
            .body(body.map_or(Body::empty(), |v| Body::from(v.to_string())))
            .unwrap();
        let app = app.clone();
        async move {
            let resp = app.oneshot(req).await.unwrap();
            let (status, headers) = (resp.status(), resp.headers().clone());
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, headers, bytes)
        }
    };
    let job = json!({"name": "gated", "preset": "tiny"});

    let held = gate.try_enter().expect("a free place");
    let t0 = std::time::Instant::now();
    let (s, h, body) = send("POST", "/api/v1/jobs", Some(job.clone())).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(250),
        "it waited first"
    );
    assert_eq!(h[header::RETRY_AFTER], "1");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "busy", "{v}");
    let (s, _, _) = send("POST", "/api/v1/uploads", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    for cheap in ["/healthz", "/api/v1/jobs", "/metrics"] {
        let t0 = std::time::Instant::now();
        let (s, _, _) = send("GET", cheap, None).await;
        assert_eq!(s, StatusCode::OK, "{cheap}");
        assert!(
            t0.elapsed() < std::time::Duration::from_millis(250),
            "{cheap} waited"
        );
    }

    drop(held);
    let (s, _, body) = send("POST", "/api/v1/jobs", Some(job)).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
}
