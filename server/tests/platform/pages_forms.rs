//! The new-job form, uploads, static assets and presets through `app()` against a real
//! PostgreSQL.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use ifp_server::queue;

use super::site::{setup, ADMIN};

#[tokio::test]
async fn new_job_form_previews_validates_and_submits() {
    let site = setup().await;
    let (cookie, csrf) = site.sign_in(&site.alice).await;
    let page = site.get("/jobs/new", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("data:image/png;base64,"),
        "inline preview"
    );
    assert_eq!(page.input("loaded_from"), "preset:tiny");
    assert!(page.body.contains("restormer-paper"));
    // Issue 17: the learning rate the run steps at (0.128 x 4 / 512), and what the mask and
    // loss settings mean, where they are set.
    assert!(
        page.body.contains("with batch 4 the run steps at 1.00e-3"),
        "effective LR"
    );
    for needle in [
        "What the mask and loss settings mean",
        "<code>m_m_masked</code>:",
        "MASK_MODE",
    ] {
        assert!(page.body.contains(needle), "{needle}");
    }

    let mut values: Vec<(String, String)> = ifp_server::http::routes::pages::form::values_of(
        &ifp_trainer::config::preset("tiny").unwrap(),
    )
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let base = |action: &'static str| -> Vec<(String, String)> {
        [
            ("csrf", csrf.as_str()),
            ("action", action),
            ("name", "from the form"),
            ("source", "preset"),
            ("preset", "tiny"),
            ("loaded_from", "preset:tiny"),
            ("priority", "0"),
            ("noise_source", "generate"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    let set = |values: &mut Vec<(String, String)>, k: &str, v: &str| {
        values.iter_mut().find(|(n, _)| n == k).unwrap().1 = v.into();
    };
    let send = |fields: Vec<(String, String)>| {
        let site = &site;
        let cookie = cookie.clone();
        async move {
            let refs: Vec<(&str, &str)> = fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            site.post_multipart("/jobs/new", &cookie, &refs, &[]).await
        }
    };

    // A bad value is shown next to its field, and nothing is queued.
    set(&mut values, "batch_size", "four");
    let r = send([base("submit"), values.clone()].concat()).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("id=\"e-batch_size\""), "{}", r.body);
    assert!(r.body.contains("`four` is not a whole number"));
    set(&mut values, "batch_size", "2");

    // A value the config validation refuses is attached to its field too.
    set(&mut values, "sample_ratio", "1.5");
    let r = send([base("submit"), values.clone()].concat()).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("id=\"e-sample_ratio\""), "{}", r.body);
    set(&mut values, "sample_ratio", "0.5");

    // Preview re-renders the form with the picture.
    let r = send([base("preview"), values.clone()].concat()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("data:image/png;base64,"));

    // Choosing another preset reloads the fields from it instead of mixing.
    let mut other = base("submit");
    set(&mut other, "preset", "restormer-paper");
    let r = send([other, values.clone()].concat()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("restormer-paper"));
    assert!(r
        .body
        .contains("name=\"img_size\" type=\"number\" step=\"1\" min=\"0\" value=\"224\""));
    assert_eq!(r.input("loaded_from"), "preset:restormer-paper");

    // A forged form is refused.
    let mut forged = base("submit");
    set(&mut forged, "csrf", "nope");
    let r = send([forged, values.clone()].concat()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // Submitting queues exactly what the fields say.
    set(&mut values, "steps", "20");
    let r = send([base("submit"), values.clone()].concat()).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let id: uuid::Uuid = r.location().trim_start_matches("/jobs/").parse().unwrap();
    let job = queue::get(&site.pool, id).await.unwrap().unwrap();
    assert_eq!(job.name, "from the form");
    assert_eq!(job.owner, "alice");
    assert_eq!(job.total_steps, 20);
    assert_eq!(job.config["DATA"]["BATCH_SIZE"], 2);
}

#[tokio::test]
async fn yaml_and_noise_image_uploads() {
    let site = setup().await;
    let (cookie, csrf) = site.sign_in(&site.alice).await;
    let yaml = "MODEL: {TYPE: restormer}\nDATA: {IMG_SIZE: 24, BATCH_SIZE: 3}\nTRAIN: {STEPS: 7}\n";
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 8) as u8, 90])
    })
    .write_to(&mut png, image::ImageFormat::Png)
    .unwrap();
    let png = png.into_inner();
    // An uploaded YAML file replaces the text box and loads its values into the fields.
    let r = site
        .post_multipart(
            "/jobs/new",
            &cookie,
            &[
                ("csrf", &csrf),
                ("action", "submit"),
                ("name", "yaml job"),
                ("source", "yaml"),
                ("loaded_from", "preset:tiny"),
                ("priority", "0"),
                ("noise_source", "upload"),
            ],
            &[
                ("config_file", "c.yaml", yaml.as_bytes()),
                ("noise_file", "n.png", &png),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("your YAML"), "{}", r.body);
    // A YAML file with an alias after a JSON-style key is refused in the form, naming the line.
    let aliased = "TAG: x\n{\"a\": [1, 2],\n \"b\":*a}\n";
    let refused = site
        .post_multipart(
            "/jobs/new",
            &cookie,
            &[
                ("csrf", &csrf),
                ("action", "submit"),
                ("name", "alias job"),
                ("source", "yaml"),
                ("loaded_from", "preset:tiny"),
                ("priority", "0"),
            ],
            &[("config_file", "c.yaml", aliased.as_bytes())],
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        refused.body.contains("line 3: YAML anchors and aliases"),
        "{}",
        refused.body
    );
    let upload = r.input("noise_upload");
    assert!(
        upload.starts_with("uploads/") && upload.ends_with(".png"),
        "{upload}"
    );
    assert!(
        r.body.contains("IMG_SIZE: 24"),
        "YAML moved into the text box"
    );

    let mut fields: Vec<(String, String)> = ifp_server::http::routes::pages::form::values_of(
        &ifp_trainer::Config::from_yaml(yaml).unwrap(),
    )
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in [
        ("csrf", csrf.as_str()),
        ("action", "submit"),
        ("name", "yaml job"),
        ("source", "yaml"),
        ("config_yaml", yaml),
        ("loaded_from", &r.input("loaded_from")),
        ("priority", "-5"),
        ("noise_source", "upload"),
        ("noise_upload", &upload),
    ] {
        fields.push((k.into(), v.into()));
    }
    let r = site.post_fields("/jobs/new", &cookie, &fields).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let id: uuid::Uuid = r.location().trim_start_matches("/jobs/").parse().unwrap();
    let job = queue::get(&site.pool, id).await.unwrap().unwrap();
    assert_eq!(job.total_steps, 7);
    assert_eq!(job.priority, -5);
    assert_eq!(job.config["DATA"]["NOISE_IMAGE"], upload.as_str());
    assert!(site.artifacts.path().join(&upload).is_file());

    // The preview endpoint answers with a PNG.
    let mut preview = fields.clone();
    preview.iter_mut().find(|(k, _)| k == "action").unwrap().1 = "preview".into();
    let r = site
        .post_fields("/jobs/new/preview", &cookie, &preview)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers[header::CONTENT_TYPE], "image/png");

    // Through the API: uploads return a reference; arbitrary server paths are refused.
    let req = Request::post("/api/v1/uploads")
        .header(header::AUTHORIZATION, format!("Bearer {}", site.alice))
        .body(Body::from(png.clone()))
        .unwrap();
    let r = site.send(req).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert!(r.body.contains(&upload));
    for path in ["/etc/passwd", "uploads/../../x.png"] {
        let body =
            serde_json::json!({"config": {"DATA": {"NOISE_IMAGE": path}, "TRAIN": {"STEPS": 2}}});
        let req = Request::post("/api/v1/jobs")
            .header(header::AUTHORIZATION, format!("Bearer {}", site.alice))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let r = site.send(req).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        assert!(r.body.contains("DATA.NOISE_IMAGE"), "{}", r.body);
    }

    // Uploads belong to their uploader: Bob cannot name Alice's, and is told exactly what he
    // would be told for a missing one; once he uploads the same bytes himself, he can. Admins
    // may name any upload.
    let bob = ifp_server::tokens::create(&site.pool, "bob", false, None)
        .await
        .unwrap();
    let submit = |token: String| {
        let body = serde_json::json!({"name": "noise", "config":
            {"DATA": {"NOISE_IMAGE": upload, "IMG_SIZE": 16}, "TRAIN": {"STEPS": 2},
             "MODEL": {"TYPE": "restormer"}}});
        let req = Request::post("/api/v1/jobs")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let site = &site;
        async move { site.send(req).await }
    };
    let r = submit(bob.clone()).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(
        r.body.contains(&format!("no upload `{upload}` of yours")),
        "{}",
        r.body
    );
    let missing = format!("uploads/{}.png", "0".repeat(64));
    let other = r.body.replace(&upload, &missing);
    let body = serde_json::json!({"name": "noise", "config":
        {"DATA": {"NOISE_IMAGE": missing, "IMG_SIZE": 16}, "TRAIN": {"STEPS": 2},
         "MODEL": {"TYPE": "restormer"}}});
    let req = Request::post("/api/v1/jobs")
        .header(header::AUTHORIZATION, format!("Bearer {bob}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    assert_eq!(
        site.send(req).await.body,
        other,
        "a missing upload reads the same"
    );
    assert_eq!(submit(ADMIN.into()).await.status, StatusCode::CREATED);
    let req = Request::post("/api/v1/uploads")
        .header(header::AUTHORIZATION, format!("Bearer {bob}"))
        .body(Body::from(png.clone()))
        .unwrap();
    assert_eq!(site.send(req).await.status, StatusCode::CREATED);
    let r = submit(bob.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[tokio::test]
async fn static_assets_are_embedded_and_versioned() {
    let site = setup().await;
    let (cookie, _) = site.sign_in(&site.alice).await;
    let home = site.get("/", Some(&cookie)).await;
    let at = home.body.find("/static/style.css?v=").unwrap();
    let url = &home.body[at..];
    let url = &url[..url.find('"').unwrap()];
    let css = site.get(url, None).await;
    assert_eq!(css.status, StatusCode::OK);
    assert_eq!(css.headers[header::CONTENT_TYPE], "text/css; charset=utf-8");
    assert!(css.headers[header::CACHE_CONTROL]
        .to_str()
        .unwrap()
        .contains("immutable"));
    assert!(css.body.contains("prefers-color-scheme"));
    // The PyTorch module the job pages' snippet imports, byte for byte the repository's.
    let py = site.get("/static/ifp_models.py", None).await;
    assert_eq!(py.status, StatusCode::OK);
    assert_eq!(
        py.headers[header::CONTENT_TYPE],
        "text/x-python; charset=utf-8"
    );
    let repo = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../web/static/ifp_models.py"
    ))
    .unwrap();
    assert_eq!(py.body, repo);
    assert!(py.body.contains("def load(path"));
    let js = site.get("/static/app.js", None).await;
    assert_eq!(js.headers[header::CACHE_CONTROL], "no-cache");
    assert_eq!(
        site.get("/static/nope.js", None).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_form_takes_the_uformer_preset() {
    let site = setup().await;
    let (cookie, csrf) = site.sign_in(&site.alice).await;
    let page = site
        .get("/jobs/new?preset=uformer-paper", Some(&cookie))
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.input("loaded_from"), "preset:uformer-paper");
    assert!(page.body.contains("<option value=\"uformer\" selected>"));
    let base = ifp_trainer::config::preset("uformer-paper").unwrap();
    let mut fields: Vec<(String, String)> = ifp_server::http::routes::pages::form::values_of(&base)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    fields.iter_mut().find(|(k, _)| k == "steps").unwrap().1 = "3".into();
    // A size the Uformer cannot take is refused next to the field, saying which sizes work.
    fields.iter_mut().find(|(k, _)| k == "img_size").unwrap().1 = "100".into();
    let common = [
        ("csrf", csrf.as_str()),
        ("action", "submit"),
        ("name", "uformer from the form"),
        ("source", "preset"),
        ("preset", "uformer-paper"),
        ("loaded_from", "preset:uformer-paper"),
        ("priority", "0"),
        ("noise_source", "generate"),
    ];
    let send = |fields: &Vec<(String, String)>| {
        let mut all: Vec<(&str, &str)> = common.to_vec();
        all.extend(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let all: Vec<(String, String)> = all
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let site = &site;
        let cookie = cookie.clone();
        async move {
            let refs: Vec<(&str, &str)> =
                all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            site.post_multipart("/jobs/new", &cookie, &refs, &[]).await
        }
    };
    let r = send(&fields).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body.contains("id=\"e-img_size\""), "{}", r.body);
    fields.iter_mut().find(|(k, _)| k == "img_size").unwrap().1 = "128".into();
    let r = send(&fields).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let id: uuid::Uuid = r.location().trim_start_matches("/jobs/").parse().unwrap();
    let job = queue::get(&site.pool, id).await.unwrap().unwrap();
    assert_eq!(job.config["MODEL"]["TYPE"], "uformer");
    assert_eq!(job.config["MODEL"]["UFORMER"]["IMAGE_SIZE"], 128);
    assert_eq!(job.total_steps, 3);
}

/// Issue 16: the form shows the run's estimated peak memory against the largest live worker
/// and, once a run like it has finished, its expected duration from that run's speed.
#[tokio::test]
async fn the_form_shows_the_memory_and_duration_estimate() {
    use ifp_server::queue::{self as q, WorkerDevice};
    let site = setup().await;
    let (cookie, _) = site.sign_in(&site.alice).await;
    let tiny = ifp_trainer::config::preset("tiny").unwrap();
    let peak = ifp_trainer::memory::human(ifp_trainer::memory::pretrain_peak_bytes(&tiny));

    let form = site.get("/jobs/new", Some(&cookie)).await;
    assert!(
        form.body.contains(&format!("Peak memory about {peak}")),
        "{}",
        form.body
    );
    assert!(
        form.body.contains("no live worker has reported"),
        "{}",
        form.body
    );
    assert!(
        form.body.contains("No expected duration yet"),
        "{}",
        form.body
    );

    let worker = |name: &str, memory: i64| WorkerDevice {
        class: ifp_trainer::config::DeviceClass::Cpu,
        name: Some(name.into()),
        memory: Some(memory),
    };
    q::register_worker(&site.pool, "w1", &worker("w1", 8 << 30))
        .await
        .unwrap();
    // A tiny run like the form's finishes at 50 images/s.
    let body = serde_json::json!({"name": "done", "preset": "tiny"});
    let req = Request::post("/api/v1/jobs")
        .header(header::AUTHORIZATION, format!("Bearer {}", site.alice))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    assert_eq!(site.send(req).await.status, StatusCode::CREATED);
    let c = q::claim(&site.pool, "w1", std::time::Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let rows: Vec<ifp_server::db::rows::Metric> = (1..=3)
        .map(|s| ifp_server::db::rows::Metric {
            step: s,
            attempt: 1,
            loss: 0.5,
            lr: 1e-3,
            grad_norm: 1.0,
            images_per_sec: 50.0,
        })
        .collect();
    ifp_server::queue::record::metrics(&site.pool, &c.fence, &rows)
        .await
        .unwrap();
    assert!(q::finish(&site.pool, &c.fence, &q::Outcome::Succeeded)
        .await
        .unwrap());

    let form = site.get("/jobs/new", Some(&cookie)).await;
    let expected = ifp_server::http::views::fmt::duration(
        tiny.total_steps() as f64 * tiny.data.batch_size as f64 / 50.0,
    );
    assert!(
        form.body.contains("the largest live worker has 8.0 GiB"),
        "{}",
        form.body
    );
    assert!(
        form.body.contains(&format!(
            "Training takes about {expected} at the median speed of 1 finished run with"
        )),
        "{}",
        form.body
    );
    // Against a worker too small for it, the form says the run would be refused.
    sqlx::query("update worker set memory_bytes = 1048576")
        .execute(&site.pool)
        .await
        .unwrap();
    let form = site.get("/jobs/new", Some(&cookie)).await;
    assert!(
        form.body.contains("so this run would be refused"),
        "{}",
        form.body
    );
}
