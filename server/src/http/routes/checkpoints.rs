//! `/api/v1/jobs/{id}/checkpoints`: the files a job's attempts recorded, and their download.
//! Only names listed in the database are served, from the path recorded there, so a request
//! cannot reach any other file; the file is streamed with `Range` support by tower-http.

use std::path::Component;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::db::rows::CheckpointFile;
use crate::error::{Error, ErrorBody, Result};
use crate::http::state::AppState;
use crate::jobs::service::{self, visible_job};
use crate::tokens::Caller;

/// One entry of the checkpoint list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckpointEntry {
    #[serde(flatten)]
    pub file: CheckpointFile,
    /// Where to download it.
    pub url: String,
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/checkpoints", tag = "checkpoints",
    params(("id" = uuid::Uuid, Path, description = "Job id")), security(("bearer" = [])),
    responses((status = 200, body = Vec<CheckpointEntry>),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<CheckpointEntry>>> {
    let job = visible_job(&state.pool, &caller, &id).await?;
    let files = service::checkpoints(&state.pool, job.id).await?;
    Ok(Json(
        files
            .into_iter()
            .map(|f| CheckpointEntry {
                url: format!("/api/v1/jobs/{}/checkpoints/{}", job.id, f.name),
                file: f,
            })
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/checkpoints/{name}", tag = "checkpoints",
    params(("id" = uuid::Uuid, Path, description = "Job id"),
        ("name" = String, Path, description = "A name from the checkpoint list")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The file; `ETag` is its SHA-256", content_type = "application/octet-stream"),
        (status = 206, description = "The requested `Range`"),
        (status = 304, description = "`If-None-Match` matched"),
        (status = 401, body = ErrorBody),
        (status = 404, description = "Not a checkpoint of this job", body = ErrorBody),
        (status = 416, description = "Unsatisfiable range")))]
pub async fn download(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, name)): Path<(String, String)>,
    req: Request,
) -> Result<Response> {
    let job = visible_job(&state.pool, &caller, &id).await?;
    let file = service::checkpoint(&state.pool, job.id, &name)
        .await?
        .ok_or(Error::NotFound)?;
    serve(&state, &file, req).await
}

/// `GET /jobs/{id}/samples/{step}`: the PNG written with the checkpoint of that step
/// (input | corrupted | reconstruction | target).
#[utoipa::path(get, path = "/api/v1/jobs/{id}/samples/{step}", tag = "checkpoints",
    params(("id" = uuid::Uuid, Path, description = "Job id"), ("step" = i64, Path)),
    security(("bearer" = [])),
    responses((status = 200, description = "PNG", content_type = "image/png"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn sample(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, step)): Path<(String, String)>,
    req: Request,
) -> Result<Response> {
    let job = visible_job(&state.pool, &caller, &id).await?;
    let step: i64 = step.parse().map_err(|_| Error::NotFound)?;
    let file = service::sample(&state.pool, job.id, step)
        .await?
        .ok_or(Error::NotFound)?;
    serve(&state, &file, req).await
}

/// Streams a listed file from the artifact store with `Range`, `ETag` (its SHA-256) and
/// `Content-Disposition`.
async fn serve(state: &AppState, file: &CheckpointFile, req: Request) -> Result<Response> {
    let rel = std::path::Path::new(&file.path);
    // Paths are written by workers, but a database is not a place to trust blindly.
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        tracing::error!(path = %file.path, "checkpoint path escapes the artifact store");
        return Err(Error::NotFound);
    }
    let etag = format!("\"{}\"", file.sha256);
    let etag_value =
        HeaderValue::from_str(&etag).map_err(|e| Error::Internal(format!("bad etag: {e}")))?;
    let if_none_match = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if if_none_match == Some(true) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    let served = ServeFile::new(state.artifacts.join(rel))
        .oneshot(req)
        .await
        .map_err(|e| Error::Internal(format!("serving {}: {e}", file.path)))?;
    if served.status() == StatusCode::NOT_FOUND {
        // Listed but gone from disk (e.g. removed by retention).
        return Err(Error::NotFound);
    }
    let mut resp = served.map(axum::body::Body::new);
    let h = resp.headers_mut();
    h.insert(header::ETAG, etag_value);
    // The name is `kind-SSSSSS.ext`, but only safe characters go into the header regardless.
    let safe: String = file
        .name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
