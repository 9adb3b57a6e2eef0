//! The HTTP application: the API under `/api/v1` (bearer token), `/healthz`, `/metrics`,
//! `/openapi.json`, and the web pages (`pages`).

mod checkpoints;
mod events;
mod health;
pub mod jobs;
pub mod openapi;
pub mod pages;
pub mod prometheus;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use tower_http::trace::TraceLayer;

use crate::error::Error;
use crate::http::gate::GateAt;
use crate::http::state::AppState;

/// Request bodies above this are refused with 413 (a config is a few KiB).
pub const BODY_LIMIT: usize = 1 << 20;

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let gate = |body_limit| {
        middleware::from_fn_with_state(GateAt::new(&state, body_limit), crate::http::gate::admit)
    };
    let api = Router::new()
        .route(
            "/jobs",
            post(jobs::create)
                .route_layer(gate(BODY_LIMIT))
                .get(jobs::list),
        )
        .route("/jobs/{id}", get(jobs::get))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/jobs/{id}/metrics", get(jobs::metrics))
        .route("/jobs/{id}/events", get(events::stream))
        .route("/jobs/{id}/checkpoints", get(checkpoints::list))
        .route("/jobs/{id}/checkpoints/{name}", get(checkpoints::download))
        .route("/jobs/{id}/samples/{step}", get(checkpoints::sample))
        .route(
            "/uploads",
            post(crate::jobs::uploads::create)
                .route_layer(gate(crate::jobs::uploads::MAX_BYTES + 1))
                .layer(DefaultBodyLimit::max(crate::jobs::uploads::MAX_BYTES + 1)),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            prometheus::track,
        ))
        .layer(middleware::map_response(json_errors));
    Router::new()
        .nest("/api/v1", api)
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(prometheus::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .merge(pages::router(&state))
        .fallback(|| async { Error::NotFound })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Gives the API's client errors that did not come from our handlers (axum's own rejections:
/// a path segment that is not UTF-8, a method the route lacks, a body over the limit; the
/// file server's 412 and 416) the documented JSON shape, keeping their status and headers
/// (`Allow`, `Content-Range`).
async fn json_errors(resp: axum::response::Response) -> axum::response::Response {
    use axum::http::header;
    use axum::response::IntoResponse;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !status.is_client_error() || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // axum's rejection texts are a line or two.
    let text = axum::body::to_bytes(body, 16 << 10)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("client error")
            .to_string()
    } else {
        text
    };
    let json = Error::Status { status, message }.into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    let (json_parts, json_body) = json.into_parts();
    parts.headers.extend(json_parts.headers);
    axum::response::Response::from_parts(parts, json_body)
}
