//! `GET /metrics`: Prometheus text format. Jobs by status, the oldest queued job's wait, steps
//! logged per second over the last minute, and an HTTP latency histogram per route. No auth:
//! nothing here names a user, a job or a secret.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::Result;
use crate::state::AppState;

const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Request latencies by (method, route template, status).
#[derive(Default)]
pub struct HttpMetrics {
    series: Mutex<BTreeMap<(String, String, u16), Histogram>>,
}

impl HttpMetrics {
    fn observe(&self, key: (String, String, u16), secs: f64) {
        // A poisoned lock only means another request panicked mid-update; counts stay usable.
        let mut m = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let h = m.entry(key).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    fn render(&self, out: &mut String) {
        let m = self.series.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str("# HELP ifp_http_request_duration_seconds HTTP request latency.\n");
        out.push_str("# TYPE ifp_http_request_duration_seconds histogram\n");
        for ((method, route, status), h) in m.iter() {
            let labels = format!("method=\"{method}\",route=\"{route}\",status=\"{status}\"");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "ifp_http_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "ifp_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "ifp_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "ifp_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
    }
}

/// Middleware timing each routed request under its route template (not its concrete path, so
/// job ids do not become label values).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let t0 = Instant::now();
    let resp = next.run(req).await;
    state.http_metrics.observe(
        (method, route, resp.status().as_u16()),
        t0.elapsed().as_secs_f64(),
    );
    resp
}

#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response> {
    let by_status: Vec<(String, i64)> =
        sqlx::query_as("select status, count(*) from job group by status")
            .fetch_all(&state.pool)
            .await?;
    let (oldest_wait, steps_last_minute): (Option<f64>, i64) = sqlx::query_as(
        "select (select extract(epoch from now() - min(created_at))::float8
                 from job where status = 'queued'),
                (select count(*) from metric where created_at > now() - interval '60 seconds')",
    )
    .fetch_one(&state.pool)
    .await?;
    let mut out = String::new();
    out.push_str("# HELP ifp_jobs Jobs by status.\n# TYPE ifp_jobs gauge\n");
    for s in ["queued", "running", "succeeded", "failed", "cancelled"] {
        let n = by_status
            .iter()
            .find(|(k, _)| k == s)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "ifp_jobs{{status=\"{s}\"}} {n}");
    }
    out.push_str(
        "# HELP ifp_queue_oldest_wait_seconds How long the oldest queued job has waited.\n\
         # TYPE ifp_queue_oldest_wait_seconds gauge\n",
    );
    let _ = writeln!(
        out,
        "ifp_queue_oldest_wait_seconds {}",
        oldest_wait.unwrap_or(0.0)
    );
    out.push_str(
        "# HELP ifp_training_steps_per_second Training steps logged per second, all jobs, \
         over the last minute.\n# TYPE ifp_training_steps_per_second gauge\n",
    );
    let _ = writeln!(
        out,
        "ifp_training_steps_per_second {}",
        steps_last_minute as f64 / 60.0
    );
    state.http_metrics.render(&mut out);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}
