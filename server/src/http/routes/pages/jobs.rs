//! `/`: the signed-in user's jobs (every job for an admin), newest first, with a status
//! filter; `/jobs/rows` is the same table body alone, which the page's script re-fetches for
//! live updates.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use chrono::Utc;
use serde::Deserialize;
use strum::VariantArray;
use uuid::Uuid;

use super::{render, Layout, PageResult, Viewer};
use crate::db::values::JobStatus;
use crate::http::state::AppState;
use crate::http::views::{chart, fmt};
use crate::jobs::service;

/// The list shows this many jobs.
const LIMIT: i64 = 100;
/// Points of each job's loss sparkline (bucket means over the run).
const SPARK_POINTS: i32 = 40;

/// One row of the table, formatted.
pub struct Row {
    pub id: Uuid,
    pub kind: String,
    pub name: String,
    pub owner: String,
    pub status: String,
    pub step: i64,
    pub total_steps: i64,
    pub percent: String,
    pub loss: String,
    pub spark: String,
    pub age: String,
    pub created: String,
    pub attempt: String,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    layout: Layout,
    filter: String,
    statuses: Vec<&'static str>,
    rows: Vec<Row>,
    limit: i64,
    show_owner: bool,
}

impl JobsPage {
    fn is_filter(&self, s: &str) -> bool {
        self.filter == s
    }
}

#[derive(Template)]
#[template(path = "job_rows.html")]
struct RowsFragment {
    rows: Vec<Row>,
    show_owner: bool,
}

#[derive(Deserialize)]
pub struct Filter {
    status: Option<String>,
}

/// `GET /`.
pub async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(f): Query<Filter>,
) -> PageResult<Response> {
    let filter = valid_filter(f.status);
    let rows = rows_for(&state, &viewer, filter).await?;
    let page = JobsPage {
        layout: Layout::new("Jobs", Some(&viewer)),
        filter: filter
            .map(JobStatus::as_str)
            .unwrap_or_default()
            .to_string(),
        statuses: JobStatus::VARIANTS.iter().map(|s| s.as_str()).collect(),
        rows,
        limit: LIMIT,
        show_owner: viewer.caller.is_admin,
    };
    Ok(render(&page))
}

/// `GET /jobs/rows`: the table body of `/` for the same filter.
pub async fn rows(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(f): Query<Filter>,
) -> PageResult<Response> {
    let filter = valid_filter(f.status);
    let rows = rows_for(&state, &viewer, filter).await?;
    Ok(render(&RowsFragment {
        rows,
        show_owner: viewer.caller.is_admin,
    }))
}

/// An unknown status shows all jobs rather than an error page.
fn valid_filter(s: Option<String>) -> Option<JobStatus> {
    s.and_then(|s| s.parse().ok())
}

async fn rows_for(
    state: &AppState,
    viewer: &Viewer,
    status: Option<JobStatus>,
) -> PageResult<Vec<Row>> {
    let jobs = service::list(&state.pool, &viewer.caller, status, LIMIT, 0).await?;
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
    // Bucket means over the whole run: a fixed-size sparkline however long the job is.
    let points: Vec<(Uuid, f64)> = sqlx::query_as(
        "select m.job_id, avg(m.loss)
         from metric m join job j on j.id = m.job_id
         where m.job_id = any($1)
         group by m.job_id, width_bucket(m.step, 0, j.total_steps + 1, $2)
         order by m.job_id, width_bucket(m.step, 0, j.total_steps + 1, $2)",
    )
    .bind(&ids)
    .bind(SPARK_POINTS)
    .fetch_all(&state.pool)
    .await?;
    let now = Utc::now();
    Ok(jobs
        .into_iter()
        .map(|j| {
            let losses: Vec<f64> = points
                .iter()
                .filter(|(id, _)| *id == j.id)
                .map(|(_, l)| *l)
                .collect();
            Row {
                id: j.id,
                percent: format!("{:.0}", 100.0 * j.step as f64 / j.total_steps.max(1) as f64),
                loss: j.loss.map(fmt::sig4).unwrap_or_else(|| "—".into()),
                spark: chart::sparkline(&losses),
                age: fmt::age(j.created_at, now),
                created: fmt::timestamp(j.created_at),
                attempt: format!("{}/{}", j.attempt, j.max_attempts),
                kind: j.kind.to_string(),
                name: j.name,
                owner: j.owner,
                status: j.status.to_string(),
                step: j.step,
                total_steps: j.total_steps,
            }
        })
        .collect())
}
