//! The client the REST API tests act as: `app()` (no socket) over a fresh PostgreSQL, users
//! `alice` and `bob` with tokens, and JSON calls that return the status and the parsed body.

use crate::common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use ifp_server::{app, AppState};
use serde_json::{json, Value};
use tower::ServiceExt;

pub(crate) use common::{ADMIN, TINY};

pub(crate) struct Api {
    pub(crate) app: Router,
    pub(crate) pool: sqlx::PgPool,
    pub(crate) alice: String,
    pub(crate) bob: String,
    pub(crate) artifacts: tempfile::TempDir,
}

pub(crate) async fn setup() -> Api {
    let pool = common::fresh_pool().await;
    let artifacts = tempfile::tempdir().unwrap();
    let alice = ifp_server::tokens::create(&pool, "alice", false, None)
        .await
        .unwrap();
    let bob = ifp_server::tokens::create(&pool, "bob", false, None)
        .await
        .unwrap();
    let state = AppState::new(pool.clone(), artifacts.path(), Some(ADMIN));
    Api {
        app: app(state),
        pool,
        alice,
        bob,
        artifacts,
    }
}

impl Api {
    pub(crate) async fn raw(
        &self,
        req: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, headers, body)
    }

    pub(crate) async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        let (status, headers, bytes) = self.raw(req).await;
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(
                headers
                    .get(header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap()),
                Some("application/json"),
                "{method} {uri}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, v)
    }

    pub(crate) async fn submit(&self, token: &str, name: &str) -> Value {
        let (s, v) = self
            .call(
                "POST",
                "/api/v1/jobs",
                Some(token),
                Some(json!({"name": name, "config_yaml": TINY})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v
    }
}
