//! `/`: the signed-in user's jobs (every job for an admin), newest first, a page at a time,
//! with a status filter and a search by name; `/jobs/rows` is the same table body alone, which
//! the page's script re-fetches for live updates.

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

/// A page of the list shows this many jobs.
const LIMIT: i64 = 50;
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
    /// Running time so far (or in all, once ended); empty before it starts.
    pub duration: String,
    pub attempt: String,
    /// The finished job's key result (final loss, best validation PSNR, IFP - scratch).
    pub result: String,
    /// What `result` is, for its tooltip.
    pub result_title: &'static str,
}

/// A job's key result as the list shows it, and what it is.
pub(super) fn key_result(j: &crate::db::rows::Job) -> (String, &'static str) {
    use crate::db::values::{JobKind, JobStatus};
    match (j.kind, j.key_metric, j.loss) {
        (JobKind::Pretrain, _, Some(l)) if j.status == JobStatus::Succeeded => {
            (fmt::sig4(l), "final loss")
        }
        (JobKind::Finetune, Some(v), _) => (format!("{v:.2} dB"), "best validation PSNR"),
        (JobKind::Compare, Some(v), _) => (
            format!("{v:+.2} dB"),
            "test PSNR of IFP minus scratch (paired mean)",
        ),
        _ => ("—".into(), "no result yet"),
    }
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    layout: Layout,
    filter: String,
    /// The name search as typed.
    q: String,
    statuses: Vec<&'static str>,
    rows: Vec<Row>,
    limit: i64,
    /// 1-based.
    page: i64,
    /// The query string of this view without `page` (for the pages' links and the live rows).
    query: String,
    has_next: bool,
    /// A status, search or page narrows the list (an empty one is not "no jobs yet").
    filtered: bool,
    show_owner: bool,
}

impl JobsPage {
    fn is_filter(&self, s: &str) -> bool {
        self.filter == s
    }

    /// The URL of page `n` of this view.
    fn page_url(&self, n: i64) -> String {
        let sep = if self.query.is_empty() { "" } else { "&" };
        format!("/?{}{sep}page={n}", self.query)
    }

    /// The URL of this view's search with status `s` (empty: all).
    fn status_url(&self, s: &str) -> String {
        let q = Filter {
            status: (!s.is_empty()).then(|| s.to_string()),
            q: (!self.q.is_empty()).then(|| self.q.clone()),
            page: None,
        }
        .query();
        if q.is_empty() {
            "/".into()
        } else {
            format!("/?{q}")
        }
    }
}

#[derive(Template)]
#[template(path = "job_rows.html")]
struct RowsFragment {
    rows: Vec<Row>,
    filtered: bool,
    show_owner: bool,
}

/// The list's view: status, name search and page. Anything unreadable (an unknown status, a
/// page that is not a number) falls back to the whole list rather than an error page.
#[derive(Deserialize, Default)]
pub struct Filter {
    status: Option<String>,
    q: Option<String>,
    page: Option<String>,
}

impl Filter {
    fn status(&self) -> Option<JobStatus> {
        self.status.as_deref().and_then(|s| s.parse().ok())
    }

    /// The name search, trimmed, bounded, without control characters (empty: none).
    fn search(&self) -> String {
        let q = self.q.as_deref().unwrap_or_default().trim();
        q.chars().filter(|c| !c.is_control()).take(200).collect()
    }

    fn page(&self) -> i64 {
        self.page
            .as_deref()
            .and_then(|p| p.parse::<i64>().ok())
            .filter(|p| (1..=100_000).contains(p))
            .unwrap_or(1)
    }

    fn is_narrowed(&self) -> bool {
        self.status().is_some() || !self.search().is_empty() || self.page() > 1
    }

    /// This view's status and search as a query string (no page).
    fn query(&self) -> String {
        let search = self.search();
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = self.status() {
            pairs.push(("status", s.as_str()));
        }
        if !search.is_empty() {
            pairs.push(("q", &search));
        }
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    }
}

/// `GET /`.
pub async fn list(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(f): Query<Filter>,
) -> PageResult<Response> {
    let (rows, has_next) = rows_for(&state, &viewer, &f).await?;
    let page = JobsPage {
        layout: Layout::new("Jobs", Some(&viewer)),
        filter: f
            .status()
            .map(JobStatus::as_str)
            .unwrap_or_default()
            .to_string(),
        q: f.search(),
        statuses: JobStatus::VARIANTS.iter().map(|s| s.as_str()).collect(),
        rows,
        limit: LIMIT,
        page: f.page(),
        query: f.query(),
        has_next,
        filtered: f.is_narrowed(),
        show_owner: viewer.caller.is_admin,
    };
    Ok(render(&page))
}

/// `GET /jobs/rows`: the table body of `/` for the same view.
pub async fn rows(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(f): Query<Filter>,
) -> PageResult<Response> {
    let (rows, _) = rows_for(&state, &viewer, &f).await?;
    Ok(render(&RowsFragment {
        rows,
        filtered: f.is_narrowed(),
        show_owner: viewer.caller.is_admin,
    }))
}

/// The rows of the view's page, and whether a next page has any.
async fn rows_for(state: &AppState, viewer: &Viewer, f: &Filter) -> PageResult<(Vec<Row>, bool)> {
    let filter = service::JobFilter {
        status: f.status(),
        name: Some(f.search()).filter(|s| !s.is_empty()),
    };
    // One row more than a page says whether there is a next one.
    let offset = (f.page() - 1) * LIMIT;
    let mut jobs = service::list(&state.pool, &viewer.caller, &filter, LIMIT + 1, offset).await?;
    let has_next = jobs.len() as i64 > LIMIT;
    jobs.truncate(LIMIT as usize);
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
    let rows = jobs
        .into_iter()
        .map(|j| {
            let losses: Vec<f64> = points
                .iter()
                .filter(|(id, _)| *id == j.id)
                .map(|(_, l)| *l)
                .collect();
            let (result, result_title) = key_result(&j);
            Row {
                result,
                result_title,
                id: j.id,
                percent: format!("{:.0}", 100.0 * j.step as f64 / j.total_steps.max(1) as f64),
                loss: j.loss.map(fmt::sig4).unwrap_or_else(|| "—".into()),
                spark: chart::sparkline(&losses),
                age: fmt::age(j.created_at, now),
                created: fmt::timestamp(j.created_at),
                duration: j.started_at.map_or_else(String::new, |t0| {
                    let t1 = j.finished_at.unwrap_or(now);
                    fmt::duration((t1 - t0).num_milliseconds().max(0) as f64 / 1000.0)
                }),
                attempt: format!("{}/{}", j.attempt, j.max_attempts),
                kind: j.kind.to_string(),
                name: j.name,
                owner: j.owner,
                status: j.status.to_string(),
                step: j.step,
                total_steps: j.total_steps,
            }
        })
        .collect();
    Ok((rows, has_next))
}
