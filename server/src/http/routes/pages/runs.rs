//! `/runs?ids=A&ids=B…`: several of the viewer's jobs side by side, the view a researcher
//! compares runs in (and shares: the URL is the selection). Their training loss, learning rate
//! and validation PSNR overlaid on one step axis each, their final results in one table, and
//! their configs side by side with the settings that differ marked. The jobs list selects
//! them with checkboxes.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{render, Layout, PageResult, Viewer};
use crate::db::rows::Job;
use crate::db::values::CheckpointKind;
use crate::error::Error;
use crate::http::state::AppState;
use crate::http::views::{chart, config::applicable, fmt};
use crate::jobs::service;

/// Runs one view compares at most (the charts have as many line styles).
pub const MAX_RUNS: usize = 8;

/// One run's line of the results table.
pub struct RunRow {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub status: String,
    pub steps: String,
    pub final_loss: String,
    pub result: String,
    /// The best checkpoint's test PSNR: a fine-tuning run's, or each comparison arm's.
    pub test_psnr: String,
    pub images_per_sec: String,
    pub duration: String,
    /// The legend swatch's class (`key s<i>`).
    pub series: String,
}

/// One setting across the runs.
pub struct SettingRow {
    pub key: String,
    pub values: Vec<String>,
}

#[derive(Template)]
#[template(path = "runs.html")]
struct RunsPage {
    layout: Layout,
    runs: Vec<RunRow>,
    loss_chart: String,
    lr_chart: String,
    val_chart: Option<String>,
    /// Series of the validation chart and their swatch classes (a comparison has one per arm).
    val_legend: Vec<(String, String)>,
    differing: Vec<SettingRow>,
    same: Vec<SettingRow>,
    share: String,
}

/// The job ids of the query (`ids=A&ids=B`, or `ids=A,B`), in order, without repeats.
pub fn parse_ids(query: Option<&str>) -> Result<Vec<uuid::Uuid>, Error> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or_default())
        .map_err(|e| Error::invalid(Some("ids"), format!("unreadable query: {e}")))?;
    let mut ids = Vec::new();
    for (k, v) in pairs {
        if k != "ids" {
            return Err(Error::invalid(
                Some(&k),
                format!("unknown parameter `{k}` (this view takes `ids`)"),
            ));
        }
        for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let id: uuid::Uuid = part
                .parse()
                .map_err(|_| Error::invalid(Some("ids"), format!("`{part}` is not a job id")))?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    if ids.is_empty() || ids.len() > MAX_RUNS {
        return Err(Error::invalid(
            Some("ids"),
            format!(
                "select 1 to {MAX_RUNS} jobs to compare (got {}): tick them in the jobs list",
                ids.len()
            ),
        ));
    }
    Ok(ids)
}

/// Every leaf of a config as `PATH = value`, paths in upper-case dot notation.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, v, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// `GET /runs`.
pub async fn show(
    State(state): State<AppState>,
    viewer: Viewer,
    RawQuery(query): RawQuery,
) -> PageResult<Response> {
    let ids = parse_ids(query.as_deref())?;
    let mut jobs: Vec<Job> = Vec::new();
    for id in &ids {
        jobs.push(service::visible_job(&state.pool, &viewer.caller, &id.to_string()).await?);
    }
    let mut loss = Vec::new();
    let mut lr = Vec::new();
    let mut val: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut val_legend = Vec::new();
    let mut runs = Vec::new();
    let mut x_max = 1.0f64;
    for (i, job) in jobs.iter().enumerate() {
        let metrics = service::metric_rows(&state.pool, job.id).await?;
        x_max = x_max.max(job.total_steps as f64);
        loss.push(metrics.iter().map(|m| (m.0 as f64, m.1)).collect());
        lr.push(metrics.iter().map(|m| (m.0 as f64, m.2)).collect());
        let Results { curves, test_psnr } = results(&state, job).await?;
        for (label, curve) in curves {
            val_legend.push((label, format!("key s{}", val.len() % MAX_RUNS)));
            val.push(curve);
        }
        let rate: Vec<f64> = metrics.iter().map(|m| m.3).filter(|r| *r > 0.0).collect();
        let (result, _) = super::jobs::key_result(job);
        runs.push(RunRow {
            test_psnr,
            id: job.id.to_string(),
            name: job.name.clone(),
            kind: job.kind.to_string(),
            status: job.status.to_string(),
            steps: format!("{} / {}", job.step, job.total_steps),
            final_loss: job.loss.map(fmt::sig4).unwrap_or_else(|| "—".into()),
            result,
            images_per_sec: if rate.is_empty() {
                "—".into()
            } else {
                format!("{:.1}", rate.iter().sum::<f64>() / rate.len() as f64)
            },
            duration: match (job.started_at, job.finished_at) {
                (Some(a), Some(b)) => fmt::duration((b - a).num_milliseconds().max(0) as f64 / 1e3),
                _ => "—".into(),
            },
            series: format!("key s{i}"),
        });
    }
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    let label = |what: &str| format!("{what} by step: {}", names.join(", "));
    // Settings: every key any run has, the ones that differ first.
    let flat: Vec<BTreeMap<String, String>> = jobs
        .iter()
        .map(|j| {
            let mut m = BTreeMap::new();
            flatten("", &applicable(&j.config), &mut m);
            m
        })
        .collect();
    let keys: std::collections::BTreeSet<&String> = flat.iter().flat_map(|m| m.keys()).collect();
    let (mut differing, mut same) = (Vec::new(), Vec::new());
    for k in keys {
        let values: Vec<String> = flat
            .iter()
            .map(|m| m.get(k).cloned().unwrap_or_else(|| "—".into()))
            .collect();
        let differs = values.iter().any(|v| *v != values[0]);
        let row = SettingRow {
            key: k.clone(),
            values,
        };
        if differs {
            differing.push(row);
        } else {
            same.push(row);
        }
    }
    let val_max = val.iter().flatten().map(|p| p.0).fold(1.0, f64::max);
    let share = format!(
        "/runs?ids={}",
        ids.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let p = RunsPage {
        layout: Layout::new("Compare runs", Some(&viewer)),
        loss_chart: chart::multi_line_chart(&loss, x_max, true, &label("training loss")),
        lr_chart: chart::multi_line_chart(&lr, x_max, false, &label("learning rate")),
        val_chart: (!val.is_empty()).then(|| {
            chart::multi_line_chart(
                &val,
                val_max,
                false,
                "validation PSNR (dB) by fine-tuning step",
            )
        }),
        val_legend,
        runs,
        differing,
        same,
        share,
    };
    Ok((StatusCode::OK, render(&p)).into_response())
}

/// What the view shows from a run's result files, each listed and read once.
struct Results {
    /// Validation PSNR curves with their legend labels: a fine-tuning job's history, each arm
    /// of a (one-seed) comparison; none for pre-training.
    curves: Vec<(String, Vec<(f64, f64)>)>,
    /// The best checkpoint's test PSNR (dB): `test.json` of a fine-tuning run (mean ±
    /// standard error), each arm's mean in a one-seed comparison's `report.json`; "—" for
    /// pre-training, a run still going, or a comparison over several seeds (its page has the
    /// per-seed tables).
    test_psnr: String,
}

async fn results(state: &AppState, job: &Job) -> Result<Results, Error> {
    let files = service::checkpoints(&state.pool, job.id).await?;
    let json = |name: &str| {
        let file = files
            .iter()
            .find(|f| f.kind == CheckpointKind::Report && f.name == name);
        async move {
            match file {
                Some(f) => super::results::read_json::<Value>(state, f).await,
                None => None,
            }
        }
    };
    let points = |v: &Value| -> Vec<(f64, f64)> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p["step"].as_f64()?, p["psnr"].as_f64()?)))
            .collect()
    };
    let mut out = Results {
        curves: Vec::new(),
        test_psnr: "—".into(),
    };
    if let Some(history) = json("history.json").await {
        out.curves.push((job.name.clone(), points(&history)));
        if let Some(t) = json("test.json").await {
            if let (Some(mean), Some(se)) = (
                t["test"]["psnr"]["mean"].as_f64(),
                t["test"]["psnr"]["se"].as_f64(),
            ) {
                out.test_psnr = format!("{mean:.2} ± {se:.2}");
            }
        }
    } else if let Some(r) = json("report.json").await {
        let arms = r["arms"].as_array().into_iter().flatten();
        let mut tests = Vec::new();
        for a in arms {
            let arm = a["name"].as_str().unwrap_or("arm");
            out.curves
                .push((format!("{} · {arm}", job.name), points(&a["val_curve"])));
            if let Some(psnr) = a["test"]["psnr"]["mean"].as_f64() {
                tests.push(format!("{arm} {psnr:.2}"));
            }
        }
        if !tests.is_empty() {
            out.test_psnr = tests.join(" · ");
        }
    }
    Ok(out)
}
