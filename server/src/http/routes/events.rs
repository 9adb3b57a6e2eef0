//! `GET /api/v1/jobs/{id}/events`: a job's changes as Server-Sent Events, woken by the event
//! hub (`crate::http::hub`) and backed by polling.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_core::Stream;
use tokio::sync::broadcast;

use crate::error::{ErrorBody, Result};
use crate::http::state::AppState;
use crate::jobs::service::{self, visible_job};
use crate::queue;
use crate::tokens::Caller;

/// Streams re-read the job at least this often, so a lost notification only delays an event.
const POLL: Duration = Duration::from_secs(2);

fn json_event(kind: &str, value: &impl serde::Serialize) -> Event {
    Event::default()
        .event(kind)
        .json_data(value)
        .unwrap_or_else(|_| Event::default().event(kind))
}

/// `GET /jobs/{id}/events`: `status` (the whole job, at start and on every status change),
/// `progress` (`step`, `total_steps`, `loss`) and `checkpoint` (one per new file) events; the
/// stream ends after the job reaches a final status.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "Job id")), security(("bearer" = [])),
    responses(
        (status = 200, description = "Server-Sent Events: `status` (the job), `progress` (step, total_steps, loss), `checkpoint` (a checkpoint entry)", content_type = "text/event-stream"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, description = "The user has the most event streams open a user may (64)", body = ErrorBody)))]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    let job = visible_job(&state.pool, &caller, &id).await?;
    let share =
        if caller.is_admin {
            None
        } else {
            let share = state.event_streams.take(&caller.name).ok_or_else(|| {
                crate::error::Error::Status {
                    status: axum::http::StatusCode::TOO_MANY_REQUESTS,
                    message: format!(
                        "{} has {} event streams open, the most a user may; close one first",
                        caller.name,
                        state.event_streams.limit()
                    ),
                }
            })?;
            Some(share)
        };
    let mut changed = state.job_changed.subscribe();
    let mut closing = state.closing.subscribe();
    let pool = state.pool.clone();
    let s = async_stream::stream! {
        // Held for as long as the stream lives: dropped when it ends or the client goes.
        let _share = share;
        let mut last_status = None;
        let mut last_step = -1i64;
        let mut seen: std::collections::HashSet<String> = Default::default();
        loop {
            if *closing.borrow() {
                break;
            }
            let Ok(Some(j)) = queue::get(&pool, job.id).await else { break };
            if j.step != last_step {
                last_step = j.step;
                yield Ok(json_event("progress", &serde_json::json!({
                    "step": j.step, "total_steps": j.total_steps, "loss": j.loss,
                })));
            }
            let files = service::checkpoints(&pool, job.id).await.unwrap_or_default();
            for f in files {
                if seen.insert(f.name.clone()) {
                    let url = format!("/api/v1/jobs/{}/checkpoints/{}", job.id, f.name);
                    let mut v = serde_json::to_value(&f).unwrap_or_default();
                    v["url"] = serde_json::Value::String(url);
                    yield Ok(json_event("checkpoint", &v));
                }
            }
            if last_status != Some(j.status) {
                last_status = Some(j.status);
                let done = !j.status.is_active();
                yield Ok(json_event("status", &j));
                if done {
                    break;
                }
            }
            // Wait for a change of this job, or the poll interval.
            let deadline = tokio::time::sleep(POLL);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    _ = closing.changed() => break,
                    r = changed.recv() => match r {
                        Ok(changed_id) if changed_id == job.id => break,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => {
                            deadline.as_mut().await;
                            break;
                        }
                    },
                }
            }
        }
    };
    Ok(Sse::new(s).keep_alive(KeepAlive::default()))
}
