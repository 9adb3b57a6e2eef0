//! The web pages through `app()` (no socket) against a real PostgreSQL: sign-in and sessions,
//! anti-forgery checks, what each page shows, escaping, and the new-job form's rules.

use crate::common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use ifp_server::queue;
use ifp_server::queue::record::{self, MetricRow};
use ifp_server::{app, AppState};
use ifp_trainer::checkpoint::{Checkpoint, WrittenFile};
use tower::ServiceExt;

const ADMIN: &str = "admin-secret";
const HOST: &str = "ifp.test";

struct Site {
    app: Router,
    pool: sqlx::PgPool,
    alice: String,
    artifacts: tempfile::TempDir,
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Resp {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .map_or("", |v| v.to_str().unwrap())
    }

    fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .find(|c| c.starts_with(&format!("{name}=")))
    }

    /// The value of the first `<input name=NAME value=...>`.
    fn input(&self, name: &str) -> String {
        let at = self
            .body
            .find(&format!("name=\"{name}\" value=\""))
            .unwrap_or_else(|| panic!("no input {name} in {}", self.body));
        let rest = &self.body[at + name.len() + 15..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

async fn setup() -> Site {
    let pool = common::fresh_pool().await;
    let artifacts = tempfile::tempdir().unwrap();
    let alice = ifp_server::tokens::create(&pool, "alice", false)
        .await
        .unwrap();
    let state = AppState::new(pool.clone(), artifacts.path(), Some(ADMIN));
    Site {
        app: app(state),
        pool,
        alice,
        artifacts,
    }
}

impl Site {
    async fn send(&self, req: Request<Body>) -> Resp {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, uri: &str, cookie: Option<&str>) -> Resp {
        let mut b = Request::get(uri).header(header::HOST, HOST);
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, c);
        }
        self.send(b.body(Body::empty()).unwrap()).await
    }

    async fn post_form(&self, uri: &str, cookie: &str, form: &[(&str, &str)]) -> Resp {
        let req = Request::post(uri)
            .header(header::HOST, HOST)
            .header(header::ORIGIN, format!("http://{HOST}"))
            .header(header::COOKIE, cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(serde_urlencoded::to_string(form).unwrap()))
            .unwrap();
        self.send(req).await
    }

    async fn post_multipart(
        &self,
        uri: &str,
        cookie: &str,
        fields: &[(&str, &str)],
        files: &[(&str, &str, &[u8])],
    ) -> Resp {
        const B: &str = "----ifp-test-boundary";
        let mut body = Vec::new();
        for (k, v) in fields {
            body.extend_from_slice(
                format!("--{B}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                    .as_bytes(),
            );
        }
        for (k, filename, bytes) in files {
            body.extend_from_slice(
                format!(
                    "--{B}\r\nContent-Disposition: form-data; name=\"{k}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{B}--\r\n").as_bytes());
        let req = Request::post(uri)
            .header(header::HOST, HOST)
            .header(header::ORIGIN, format!("http://{HOST}"))
            .header(header::COOKIE, cookie)
            .header(
                header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={B}"),
            )
            .body(Body::from(body))
            .unwrap();
        self.send(req).await
    }

    /// Signs in with `token`; returns the session cookie (`name=value`) and the CSRF token.
    async fn sign_in(&self, token: &str) -> (String, String) {
        let page = self.get("/signin", None).await;
        let pre = page.cookie("ifp_signin").expect("sign-in cookie");
        let pre = pre.split(';').next().unwrap().to_string();
        let csrf = page.input("csrf");
        let r = self
            .post_form(
                "/signin",
                &pre,
                &[("token", token), ("csrf", &csrf), ("next", "/")],
            )
            .await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
        let session = r.cookie("ifp_session").expect("session cookie");
        let cookie = session.split(';').next().unwrap().to_string();
        let home = self.get("/", Some(&cookie)).await;
        assert_eq!(home.status, StatusCode::OK);
        let csrf = home.input("csrf");
        (cookie, csrf)
    }

    async fn submit_api(&self, token: &str, name: &str) -> uuid::Uuid {
        let body = serde_json::json!({"name": name, "config_yaml": TINY});
        let req = Request::post("/api/v1/jobs")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let r = self.send(req).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v["id"].as_str().unwrap().parse().unwrap()
    }
}

const TINY: &str = "MODEL: {TYPE: restormer}\nDATA: {IMG_SIZE: 16}\nTRAIN: {STEPS: 4}\n";

#[tokio::test]
async fn pages_need_a_session_and_sign_in_sets_a_strict_cookie() {
    let site = setup().await;
    let r = site.get("/jobs/new", None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/signin?next=%2Fjobs%2Fnew");

    let page = site.get("/signin?next=/jobs/new", None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("API token"));
    let pre = page.cookie("ifp_signin").unwrap();
    assert!(
        pre.contains("HttpOnly") && pre.contains("SameSite=Strict"),
        "{pre}"
    );
    let pre = pre.split(';').next().unwrap().to_string();
    let csrf = page.input("csrf");

    // A wrong anti-forgery token, or a foreign origin, is refused before the token is looked at.
    let r = site
        .post_form("/signin", &pre, &[("token", &site.alice), ("csrf", "x")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let req = Request::post("/signin")
        .header(header::HOST, HOST)
        .header(header::ORIGIN, "http://evil.example")
        .header(header::COOKIE, &pre)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(
            serde_urlencoded::to_string([("token", site.alice.as_str()), ("csrf", &csrf)]).unwrap(),
        ))
        .unwrap();
    assert_eq!(site.send(req).await.status, StatusCode::FORBIDDEN);

    // A bad token re-shows the form with a message.
    let r = site
        .post_form("/signin", &pre, &[("token", "nope"), ("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.contains("not valid"), "{}", r.body);

    let r = site
        .post_form(
            "/signin",
            &pre,
            &[
                ("token", &site.alice),
                ("csrf", &csrf),
                ("next", "/jobs/new"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/jobs/new");
    let session = r.cookie("ifp_session").unwrap();
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    assert!(!session.contains("Secure"), "plain HTTP: {session}");
    let cookie = session.split(';').next().unwrap().to_string();
    assert_eq!(
        site.get("/jobs/new", Some(&cookie)).await.status,
        StatusCode::OK
    );

    // Behind an HTTPS proxy the cookie is Secure.
    let req = Request::post("/signin")
        .header(header::HOST, HOST)
        .header("x-forwarded-proto", "https")
        .header(header::COOKIE, &pre)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(
            serde_urlencoded::to_string([("token", ADMIN), ("csrf", &csrf)]).unwrap(),
        ))
        .unwrap();
    let r = site.send(req).await;
    assert!(r.cookie("ifp_session").unwrap().contains("Secure"));

    // An open redirect through `next` is not possible.
    let r = site
        .post_form(
            "/signin",
            &pre,
            &[
                ("token", &site.alice),
                ("csrf", &csrf),
                ("next", "//evil.example/"),
            ],
        )
        .await;
    assert_eq!(r.location(), "/");

    // The database keeps only the cookie's hash.
    let value = cookie.split_once('=').unwrap().1;
    let stored: i64 = sqlx::query_scalar("select count(*) from session where id = $1")
        .bind(value)
        .fetch_one(&site.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn sign_out_and_token_revocation_end_the_session() {
    let site = setup().await;
    let (cookie, csrf) = site.sign_in(&site.alice).await;
    // Signing out needs the form's token.
    let r = site
        .post_form("/signout", &cookie, &[("csrf", "bad")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = site
        .post_form("/signout", &cookie, &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        site.get("/", Some(&cookie)).await.status,
        StatusCode::SEE_OTHER
    );

    let (cookie, _) = site.sign_in(&site.alice).await;
    sqlx::query("delete from api_token where name = 'alice'")
        .execute(&site.pool)
        .await
        .unwrap();
    assert_eq!(
        site.get("/", Some(&cookie)).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn jobs_list_shows_own_jobs_escaped_and_admins_see_all() {
    let site = setup().await;
    let bob = ifp_server::tokens::create(&site.pool, "bob", false)
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
    assert!(none.body.contains("No jobs yet"), "{}", none.body);

    let (admin, _) = site.sign_in(ADMIN).await;
    let r = site.get("/", Some(&admin)).await;
    assert!(r.body.contains("bobs-secret-job") && r.body.contains("alert(1)"));
}

#[tokio::test]
async fn job_page_shows_progress_checkpoints_and_cancels_with_a_token() {
    let site = setup().await;
    let id = site.submit_api(&site.alice, "watched").await;
    let c = queue::claim(&site.pool, "worker-1", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let rows: Vec<MetricRow> = (1..=3)
        .map(|s| MetricRow {
            step: s,
            attempt: 1,
            loss: 1.0 / s as f64,
            lr: 1e-3,
            grad_norm: 1.0,
            images_per_sec: 50.0,
        })
        .collect();
    record::metrics(&site.pool, &c.fence, &rows).await.unwrap();
    let dir = ifp_server::worker::attempt_dir(site.artifacts.path(), id, 1);
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str| {
        let path = dir.join(name);
        std::fs::write(&path, name.as_bytes()).unwrap();
        use sha2::Digest;
        WrittenFile {
            path,
            bytes: name.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(name.as_bytes())),
        }
    };
    let ck = Checkpoint {
        step: 3,
        model: file("model-000003.safetensors"),
        state: file("state-000003.safetensors"),
        sample: Some(file("sample-000003.png")),
    };
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
    ] {
        assert!(page.body.contains(needle), "missing {needle}");
    }
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

    // Another user's job does not exist for alice.
    let bob = ifp_server::tokens::create(&site.pool, "bob", false)
        .await
        .unwrap();
    let other = site.submit_api(&bob, "bobs").await;
    let r = site.get(&format!("/jobs/{other}"), Some(&cookie)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.contains("404"));
}

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
        ("priority", "5"),
        ("noise_source", "upload"),
        ("noise_upload", &upload),
    ] {
        fields.push((k.into(), v.into()));
    }
    let refs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = site.post_multipart("/jobs/new", &cookie, &refs, &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let id: uuid::Uuid = r.location().trim_start_matches("/jobs/").parse().unwrap();
    let job = queue::get(&site.pool, id).await.unwrap().unwrap();
    assert_eq!(job.total_steps, 7);
    assert_eq!(job.priority, 5);
    assert_eq!(job.config["DATA"]["NOISE_IMAGE"], upload.as_str());
    assert!(site.artifacts.path().join(&upload).is_file());

    // The preview endpoint answers with a PNG.
    let mut preview = fields.clone();
    preview.iter_mut().find(|(k, _)| k == "action").unwrap().1 = "preview".into();
    let refs: Vec<(&str, &str)> = preview
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = site
        .post_multipart("/jobs/new/preview", &cookie, &refs, &[])
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
