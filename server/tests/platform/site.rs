//! The signed-in browser the page tests act as: a site through `app()` (no socket) over a
//! fresh PostgreSQL, a user `alice` with a token, and requests that carry the origin and
//! cookies a browser would send.

use crate::common;

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use ifp_server::{app, AppState};
use tower::ServiceExt;

pub(crate) use common::{ADMIN, TINY};
pub(crate) const HOST: &str = "ifp.test";

pub(crate) struct Site {
    pub(crate) app: Router,
    pub(crate) pool: sqlx::PgPool,
    pub(crate) alice: String,
    pub(crate) artifacts: tempfile::TempDir,
}

pub(crate) struct Resp {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

impl Resp {
    pub(crate) fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .map_or("", |v| v.to_str().unwrap())
    }

    pub(crate) fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .find(|c| c.starts_with(&format!("{name}=")))
    }

    /// The value of the first `<input name=NAME value=...>`.
    pub(crate) fn input(&self, name: &str) -> String {
        let at = self
            .body
            .find(&format!("name=\"{name}\" value=\""))
            .unwrap_or_else(|| panic!("no input {name} in {}", self.body));
        let rest = &self.body[at + name.len() + 15..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

pub(crate) async fn setup() -> Site {
    let pool = common::fresh_pool().await;
    let artifacts = tempfile::tempdir().unwrap();
    let alice = ifp_server::tokens::create(&pool, "alice", false, None)
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
    pub(crate) async fn send(&self, req: Request<Body>) -> Resp {
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

    pub(crate) async fn get(&self, uri: &str, cookie: Option<&str>) -> Resp {
        let mut b = Request::get(uri).header(header::HOST, HOST);
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, c);
        }
        self.send(b.body(Body::empty()).unwrap()).await
    }

    pub(crate) async fn post_form(&self, uri: &str, cookie: &str, form: &[(&str, &str)]) -> Resp {
        let req = Request::post(uri)
            .header(header::HOST, HOST)
            .header(header::ORIGIN, format!("http://{HOST}"))
            .header(header::COOKIE, cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(serde_urlencoded::to_string(form).unwrap()))
            .unwrap();
        self.send(req).await
    }

    pub(crate) async fn post_multipart(
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

    /// [`Site::post_multipart`] of owned text fields (a form as a test assembles it).
    pub(crate) async fn post_fields(
        &self,
        uri: &str,
        cookie: &str,
        fields: &[(String, String)],
    ) -> Resp {
        let refs: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.post_multipart(uri, cookie, &refs, &[]).await
    }

    /// Signs in with `token`; returns the session cookie (`name=value`) and the CSRF token.
    pub(crate) async fn sign_in(&self, token: &str) -> (String, String) {
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

    pub(crate) async fn submit_api(&self, token: &str, name: &str) -> uuid::Uuid {
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
