//! The web pages through `app()` (no socket) against a real PostgreSQL: what each page shows,
//! escaping, paging, cloning and cancelling (sign-in and sessions: `pages_sessions`).

use crate::common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use ifp_server::db::rows::Metric;
use ifp_server::queue;
use ifp_server::queue::record;

use crate::site::{setup, ADMIN, TINY};

#[tokio::test]
async fn jobs_list_shows_own_jobs_escaped_and_admins_see_all() {
    let site = setup().await;
    let bob = ifp_server::tokens::create(&site.pool, "bob", false, None)
        .await
        .unwrap();
    site.submit_api(&site.alice, "<script>alert(1)</script>")
        .await;
    site.submit_api(&bob, "bobs-secret-job").await;
    let (cookie, _) = site.sign_in(&site.alice).await;
    let r = site.get("/", Some(&cookie)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("&#60;script&#62;alert(1)"), "{}", r.body);
    assert!(!r.body.contains("<script>alert(1)"));
    assert!(!r.body.contains("bobs-secret-job"));
    assert!(r.body.contains("badge queued"));
    assert!(r.body.contains("0 / 4"));
    let csp = r.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");

    // The live fragment and the filter.
    let rows = site.get("/jobs/rows", Some(&cookie)).await;
    assert!(rows.body.contains("alert(1)") && !rows.body.contains("<html"));
    let none = site.get("/?status=succeeded", Some(&cookie)).await;
    assert!(none.body.contains("No jobs match"), "{}", none.body);

    // Search by name (any case) keeps the status filter in its links and its live rows.
    site.submit_api(&site.alice, "Denoise sigma 25").await;
    let found = site.get("/?q=DENOISE", Some(&cookie)).await;
    assert!(found.body.contains("Denoise sigma 25"), "{}", found.body);
    assert!(!found.body.contains("alert(1)"), "{}", found.body);
    assert!(
        found
            .body
            .contains(r#"data-live="/jobs/rows?q=DENOISE&amp;page=1""#),
        "{}",
        found.body
    );
    assert!(
        found
            .body
            .contains(r#"href="/?status=queued&#38;q=DENOISE""#),
        "{}",
        found.body
    );
    let rows = site.get("/jobs/rows?q=denoise", Some(&cookie)).await;
    assert!(rows.body.contains("Denoise sigma 25") && !rows.body.contains("alert(1)"));
    // An unreadable page or status shows the first page of everything, not an error.
    let r = site.get("/?page=abc&status=nope", Some(&cookie)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("Denoise sigma 25") && r.body.contains("alert(1)"));

    let (admin, _) = site.sign_in(ADMIN).await;
    let r = site.get("/", Some(&admin)).await;
    assert!(r.body.contains("bobs-secret-job") && r.body.contains("alert(1)"));
}

#[tokio::test]
async fn jobs_list_pages_through_every_job() {
    let site = setup().await;
    // 51 jobs: a page holds 50, newest first.
    for k in 0..51 {
        site.submit_api(&site.alice, &format!("job-{k:02}")).await;
    }
    let (cookie, _) = site.sign_in(&site.alice).await;
    let first = site.get("/", Some(&cookie)).await;
    assert!(first.body.contains("job-50") && first.body.contains("job-01"));
    assert!(!first.body.contains("job-00<"), "the oldest is on page 2");
    assert!(
        first.body.contains(r#"href="/?page=2" rel="next""#),
        "{}",
        first.body
    );
    assert!(!first.body.contains(r#"rel="prev""#));
    let second = site.get("/?page=2", Some(&cookie)).await;
    assert!(second.body.contains("job-00<") && !second.body.contains("job-01<"));
    assert!(
        second.body.contains(r#"href="/?page=1" rel="prev""#),
        "{}",
        second.body
    );
    assert!(!second.body.contains(r#"rel="next""#));
}

#[tokio::test]
async fn job_page_shows_progress_checkpoints_and_cancels_with_a_token() {
    let site = setup().await;
    let id = site.submit_api(&site.alice, "watched").await;
    let c = queue::claim(&site.pool, "worker-1", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let rows: Vec<Metric> = (1..=3)
        .map(|s| Metric {
            step: s,
            attempt: 1,
            loss: 1.0 / s as f64,
            lr: 1e-3,
            grad_norm: 1.0,
            images_per_sec: 50.0,
        })
        .collect();
    record::metrics(&site.pool, &c.fence, &rows).await.unwrap();
    let ck = common::fake_checkpoint(site.artifacts.path(), id, 3);
    let sha = ck.model.sha256.clone();
    record::checkpoint(&site.pool, site.artifacts.path(), &c.fence, &ck)
        .await
        .unwrap();

    let (cookie, csrf) = site.sign_in(&site.alice).await;
    let page = site.get(&format!("/jobs/{id}"), Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    for needle in [
        "watched",
        "badge running",
        "model-000003.safetensors",
        &sha,
        &format!("/api/v1/jobs/{id}/checkpoints/model-000003.safetensors"),
        &format!("/api/v1/jobs/{id}/samples/3"),
        "worker-1",
        "<polyline",
        "Cancel job",
        "IMG_SIZE: 16",
        // The snippet that loads the newest model file in PyTorch.
        "ifp_models.load(\"model-000003.safetensors\")",
        "href=\"/static/ifp_models.py\"",
    ] {
        assert!(page.body.contains(needle), "missing {needle}");
    }
    // The config shows what applies to this Restormer run of a fixed number of steps.
    let config = &page.body[page.body.find("<h2>Config</h2>").unwrap()..];
    assert!(
        config.contains("RESTORMER:") && config.contains("STEPS: 4"),
        "{config}"
    );
    assert!(
        !config.contains("UFORMER:") && !config.contains(" EPOCHS:"),
        "{config}"
    );
    let live = site
        .get(&format!("/jobs/{id}/live?scale=log"), Some(&cookie))
        .await;
    assert!(live.body.contains("Linear scale") && !live.body.contains("<html"));

    // The browser session downloads through the API, but cannot change anything through it.
    let dl = site
        .get(
            &format!("/api/v1/jobs/{id}/checkpoints/model-000003.safetensors"),
            Some(&cookie),
        )
        .await;
    assert_eq!(dl.status, StatusCode::OK);
    assert_eq!(dl.body, "model-000003.safetensors");
    let req = Request::post(format!("/api/v1/jobs/{id}/cancel"))
        .header(header::COOKIE, &cookie)
        .body(Body::empty())
        .unwrap();
    assert_eq!(site.send(req).await.status, StatusCode::UNAUTHORIZED);

    // Cancelling from the page needs the form's token.
    let url = format!("/jobs/{id}/cancel");
    let r = site.post_form(&url, &cookie, &[("csrf", "forged")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("<html"), "errors are pages: {}", r.body);
    let r = site.post_form(&url, &cookie, &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let job = queue::get(&site.pool, id).await.unwrap().unwrap();
    assert!(job.cancel_requested);
    // The page says what a cancel does, including the race it can lose near the end
    // (issue 16: the page showed "Cancelling…" for a job that then succeeded).
    let live = site.get(&format!("/jobs/{id}/live"), Some(&cookie)).await;
    assert!(live.body.contains("Cancel requested"), "{}", live.body);
    assert!(live.body.contains("ends succeeded"), "{}", live.body);
    // The worker finishes the run before it hears of the cancel.
    let finished = queue::finish(&site.pool, &c.fence, &queue::Outcome::Succeeded).await;
    assert!(finished.unwrap());
    let live = site.get(&format!("/jobs/{id}/live"), Some(&cookie)).await;
    assert!(!live.body.contains("Cancelling"), "{}", live.body);
    assert!(
        live.body
            .contains("finished before the cancel request took effect"),
        "{}",
        live.body
    );

    // Another user's job does not exist for alice.
    let bob = ifp_server::tokens::create(&site.pool, "bob", false, None)
        .await
        .unwrap();
    let other = site.submit_api(&bob, "bobs").await;
    let r = site.get(&format!("/jobs/{other}"), Some(&cookie)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.contains("404"));
}

/// Issue 17: Clone opens the form with a job's settings and name, the new job records the
/// original as its parent, and each page links to the other. Another user's job cannot be
/// cloned.
#[tokio::test]
async fn clone_refills_the_form_and_links_parent_and_child() {
    let site = setup().await;
    let original = site.submit_api(&site.alice, "noisy run").await;
    let (cookie, _) = site.sign_in(&site.alice).await;
    let page = site.get(&format!("/jobs/{original}"), Some(&cookie)).await;
    assert!(
        page.body.contains(&format!("/jobs/new?from={original}")),
        "no Clone link"
    );
    assert!(
        !page.body.contains("Fine-tune this"),
        "only succeeded pre-training offers it"
    );

    let form = site
        .get(&format!("/jobs/new?from={original}"), Some(&cookie))
        .await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    assert_eq!(form.input("name"), "noisy run (clone)");
    assert_eq!(form.input("parent"), original.to_string());
    assert!(
        form.body.contains("A clone of “noisy run”"),
        "{}",
        form.body
    );
    assert!(form.body.contains("IMG_SIZE: 16"), "the original's YAML");
    let stored = queue::get(&site.pool, original)
        .await
        .unwrap()
        .unwrap()
        .config;
    let cfg = ifp_trainer::Config::from_value(stored).unwrap();
    let yaml = cfg.to_yaml();
    let mut fields: Vec<(String, String)> = ifp_server::http::routes::pages::form::values_of(&cfg)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    fields.iter_mut().find(|(k, _)| k == "steps").unwrap().1 = "6".into();
    for (k, v) in [
        ("csrf", form.input("csrf")),
        ("action", "submit".into()),
        ("name", form.input("name")),
        ("source", "yaml".into()),
        ("config_yaml", yaml),
        ("loaded_from", form.input("loaded_from")),
        ("priority", "0".into()),
        ("noise_source", "generate".into()),
        ("parent", form.input("parent")),
    ] {
        fields.push((k.into(), v));
    }
    // A parent that is not a job id is refused on the form, saying so.
    let mut forged = fields.clone();
    forged.iter_mut().find(|(k, _)| k == "parent").unwrap().1 = "not-a-job".into();
    let r = site.post_fields("/jobs/new", &cookie, &forged).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("`not-a-job` is not a job id"), "{}", r.body);
    let r = site.post_fields("/jobs/new", &cookie, &fields).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let clone: uuid::Uuid = r.location().trim_start_matches("/jobs/").parse().unwrap();
    let job = queue::get(&site.pool, clone).await.unwrap().unwrap();
    assert_eq!((job.parent_id, job.total_steps), (Some(original), 6));
    assert_eq!(job.config["DATA"]["IMG_SIZE"], 16);

    let child = site.get(&format!("/jobs/{clone}"), Some(&cookie)).await;
    assert!(
        child.body.contains(&format!(
            "Derived from <a href=\"/jobs/{original}\">noisy run</a>"
        )),
        "{}",
        child.body
    );
    let parent = site.get(&format!("/jobs/{original}"), Some(&cookie)).await;
    assert!(
        parent
            .body
            .contains(&format!("<a href=\"/jobs/{clone}\">noisy run (clone)</a>")),
        "{}",
        parent.body
    );

    // Bob sees neither Alice's job to clone nor can he name it as a parent through the API.
    let bob = ifp_server::tokens::create(&site.pool, "bob", false, None)
        .await
        .unwrap();
    let (bob_cookie, _) = site.sign_in(&bob).await;
    let r = site
        .get(&format!("/jobs/new?from={original}"), Some(&bob_cookie))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let body = serde_json::json!({"name": "x", "config_yaml": TINY, "parent": original});
    let req = Request::post("/api/v1/jobs")
        .header(header::AUTHORIZATION, format!("Bearer {bob}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let r = site.send(req).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(r.body.contains("\"key_path\":\"parent\""), "{}", r.body);
}
