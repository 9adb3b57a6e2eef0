//! `GET /metrics`: Prometheus text format. Jobs by status, the oldest queued job's wait, steps
//! logged per second over the last minute, the training processes' CPU and memory, and an HTTP
//! latency histogram per route. No auth:
//! nothing here names a user, a job or a secret.

use std::fmt::Write;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use strum::VariantArray;

use crate::db::values::JobStatus;
use crate::error::Result;
use crate::http::state::AppState;

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
    let by_status: Vec<(JobStatus, i64)> =
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
    for s in JobStatus::VARIANTS {
        let n = by_status
            .iter()
            .find(|(k, _)| k == s)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "ifp_jobs{{status=\"{s}\"}} {n}");
    }
    gauge(
        &mut out,
        "ifp_queue_oldest_wait_seconds",
        "How long the oldest queued job has waited.",
        oldest_wait.unwrap_or(0.0),
    );
    gauge(
        &mut out,
        "ifp_training_steps_per_second",
        "Training steps logged per second, all jobs, over the last minute.",
        steps_last_minute as f64 / 60.0,
    );
    // The latest sample of each training process heard from in the last minute.
    let (cpu, rss, gpu, gpu_mem): (Option<f64>, Option<f64>, Option<f64>, Option<f64>) =
        sqlx::query_as(
            "select sum(cpu_percent), sum(rss_bytes)::float8, sum(gpu_percent),
                    sum(gpu_memory_bytes)::float8 from (
             select distinct on (job_id, attempt) cpu_percent, rss_bytes, gpu_percent,
                    gpu_memory_bytes from usage_sample
             where created_at > now() - interval '60 seconds'
             order by job_id, attempt, created_at desc) latest",
        )
        .fetch_one(&state.pool)
        .await?;
    for (name, help, value) in [
        (
            "ifp_training_cpu_percent",
            "CPU use of all training processes, in percent of one core (latest samples).",
            cpu,
        ),
        (
            "ifp_training_resident_bytes",
            "Resident memory of all training processes (latest samples).",
            rss,
        ),
        (
            "ifp_training_gpu_percent",
            "Utilisation of the GPUs training processes run on, in percent of one GPU (latest \
             samples).",
            gpu,
        ),
        (
            "ifp_training_gpu_memory_bytes",
            "Memory in use on the GPUs training processes run on (latest samples).",
            gpu_mem,
        ),
    ] {
        gauge(&mut out, name, help, value.unwrap_or(0.0));
    }
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

/// One unlabelled gauge in the text exposition format: its help, its type, its value.
fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = write!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
    );
}
