//! `/api/v1/jobs/{id}/checkpoints`: the files a job's attempts recorded, and their download.
//! Only names listed in the database are served, from the path recorded there, so a request
//! cannot reach any other file; the file is streamed with `Range` support by tower-http,
//! after `range_to_serve` has applied RFC 9110's rules that tower-http leaves out (`If-Range`
//! against the ETag, a last byte past the end clamped, several ranges answered whole).

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
use crate::http::routes::openapi::Binary;
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
        (status = 200, description = "The file; `ETag` is its SHA-256. Its type follows its name: \
            model and state files are binary safetensors, sample strips and showcases PNG, reports \
            JSON or CSV", content(
            (Binary = "application/octet-stream"), (Binary = "image/png"),
            (Binary = "application/json"), (Binary = "text/csv"))),
        (status = 206, description = "The requested `Range`"),
        (status = 304, description = "`If-None-Match` matched"),
        (status = 401, body = ErrorBody),
        (status = 404, description = "Not a checkpoint of this job", body = ErrorBody),
        (status = 412, description = "`If-Match` or `If-Unmodified-Since` failed", body = ErrorBody),
        (status = 416, description = "Unsatisfiable range", body = ErrorBody)))]
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
/// (pre-training: input | corrupted | reconstruction | target | error over their spectra;
/// fine-tuning: degraded | restored | target).
#[utoipa::path(get, path = "/api/v1/jobs/{id}/samples/{step}", tag = "checkpoints",
    params(("id" = uuid::Uuid, Path, description = "Job id"), ("step" = i64, Path)),
    security(("bearer" = [])),
    responses((status = 200, description = "PNG", content_type = "image/png"),
        (status = 206, description = "The requested `Range`"),
        (status = 304, description = "`If-None-Match` matched"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 412, description = "`If-Match` or `If-Unmodified-Since` failed", body = ErrorBody),
        (status = 416, description = "Unsatisfiable range", body = ErrorBody)))]
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
        // RFC 9110 13.1.2: If-None-Match compares weakly (`W/"x"` matches `"x"`).
        .map(|v| {
            v.split(',')
                .map(|t| t.trim())
                .any(|t| t.trim_start_matches("W/") == etag || t == "*")
        });
    if if_none_match == Some(true) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    let full = state.artifacts.join(rel);
    let Ok(meta) = tokio::fs::metadata(&full).await else {
        // Listed but gone from disk (e.g. removed by retention).
        return Err(Error::NotFound);
    };
    let mut req = req;
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok());
    let if_range = req
        .headers()
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok());
    match range_to_serve(range, if_range, &etag, meta.len()) {
        RangeToServe::AsAsked => {}
        RangeToServe::Whole => {
            req.headers_mut().remove(header::RANGE);
        }
        RangeToServe::Rewritten(r) => {
            if let Ok(v) = HeaderValue::from_str(&r) {
                req.headers_mut().insert(header::RANGE, v);
            }
        }
    }
    let served = ServeFile::new(full)
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

/// What to do with a request's `Range` before tower-http serves the file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeToServe {
    /// No range, or one tower-http answers as RFC 9110 says (including 416 when no range
    /// starts inside the file).
    AsAsked,
    /// Ignore the range and send the whole file (200).
    Whole,
    /// Serve this one range instead (the asked one, clamped to the file).
    Rewritten(String),
}

/// RFC 9110 section 14: a `Range` with an `If-Range` that does not strongly match `etag` (or
/// is a date, which cannot be a strong validator here) is ignored; so is a range unit other than
/// `bytes` or a malformed set. A last position at or past the end means the end. Of several
/// ranges, those that can be satisfied are answered with the whole file (allowed by the RFC,
/// and simpler for clients than multipart); when none can, tower-http's 416 stands.
pub(crate) fn range_to_serve(
    range: Option<&str>,
    if_range: Option<&str>,
    etag: &str,
    len: u64,
) -> RangeToServe {
    let Some(range) = range else {
        return RangeToServe::AsAsked;
    };
    if if_range.is_some_and(|v| v.trim() != etag) {
        return RangeToServe::Whole;
    }
    let Some((unit, set)) = range.split_once('=') else {
        return RangeToServe::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeToServe::Whole;
    }
    // Each spec as (first, last) with last clamped; None if malformed.
    let mut satisfiable = Vec::new();
    for spec in set.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((a, b)) = spec.split_once('-') else {
            return RangeToServe::Whole;
        };
        let parse = |t: &str| t.trim().parse::<u64>().ok();
        match (a.trim().is_empty(), b.trim().is_empty()) {
            // `-N`: the last N bytes.
            (true, false) => match parse(b) {
                Some(n) if n > 0 && len > 0 => satisfiable.push((len.saturating_sub(n), len - 1)),
                Some(_) => {}
                None => return RangeToServe::Whole,
            },
            // `A-`: from A to the end.
            (false, true) => match parse(a) {
                Some(first) if first < len => satisfiable.push((first, len - 1)),
                Some(_) => {}
                None => return RangeToServe::Whole,
            },
            (false, false) => match (parse(a), parse(b)) {
                (Some(first), Some(last)) if first > last => return RangeToServe::Whole,
                (Some(first), Some(last)) if first < len => {
                    satisfiable.push((first, last.min(len - 1)))
                }
                (Some(_), Some(_)) => {}
                _ => return RangeToServe::Whole,
            },
            (true, true) => return RangeToServe::Whole,
        }
    }
    match satisfiable.as_slice() {
        [] => RangeToServe::AsAsked,
        [(first, last)] => RangeToServe::Rewritten(format!("bytes={first}-{last}")),
        _ => RangeToServe::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::{range_to_serve, RangeToServe::*};

    #[test]
    fn ranges_follow_rfc_9110() {
        let e = "\"abc\"";
        let r = |range: &str, if_range: Option<&str>| range_to_serve(Some(range), if_range, e, 100);
        assert_eq!(range_to_serve(None, None, e, 100), AsAsked);
        assert_eq!(r("bytes=10-19", None), Rewritten("bytes=10-19".into()));
        assert_eq!(r("bytes=90-500", None), Rewritten("bytes=90-99".into()));
        assert_eq!(r("bytes=-500", None), Rewritten("bytes=0-99".into()));
        assert_eq!(r("bytes=95-", None), Rewritten("bytes=95-99".into()));
        assert_eq!(r("bytes=100-", None), AsAsked, "no byte there: 416");
        assert_eq!(r("bytes=200-300, 500-", None), AsAsked);
        assert_eq!(r("bytes=0-1, 5-9", None), Whole);
        assert_eq!(r("bytes=0-1, 200-", None), Rewritten("bytes=0-1".into()));
        assert_eq!(r("bytes=9-1", None), Whole);
        assert_eq!(r("items=0-1", None), Whole);
        assert_eq!(r("bytes=x-1", None), Whole);
        assert_eq!(r("bytes=0-9", Some(e)), Rewritten("bytes=0-9".into()));
        assert_eq!(r("bytes=0-9", Some("\"other\"")), Whole);
        assert_eq!(
            r("bytes=0-9", Some("W/\"abc\"")),
            Whole,
            "weak never matches"
        );
        assert_eq!(r("bytes=0-9", Some("Wed, 21 Oct 2026 07:28:00 GMT")), Whole);
    }
}
