//! A job's result files as its page shows them: a comparison's report (arms, paired
//! differences, validation curves, showcase and downloads) and a fine-tuning run's validation
//! history and test scores, read from the JSON files the trainer wrote.

use crate::db::rows::CheckpointFile;
use crate::db::values::CheckpointKind;
use crate::http::state::AppState;
use crate::http::views::chart;

/// One arm of a comparison: its best validation checkpoint scored on the test set.
pub struct ArmRow {
    pub name: String,
    pub best_step: String,
    pub best_val_psnr: String,
    pub psnr: String,
    pub ssim: String,
    pub psnr_y: String,
    pub ssim_y: String,
    pub minutes: String,
}

/// An arm minus scratch, paired per test image.
pub struct DeltaRow {
    pub arm: String,
    pub psnr: String,
    pub ssim: String,
    pub psnr_y: String,
    pub wins: String,
}

pub struct FileLink {
    pub name: String,
    pub url: String,
}

/// A finished comparison's report.
pub struct ReportView {
    pub test_images: u64,
    pub arms: Vec<ArmRow>,
    pub deltas: Vec<DeltaRow>,
    pub val_chart: String,
    pub showcase: Vec<FileLink>,
    /// What a showcase strip shows, left to right: `degraded | <each arm> | target`.
    pub panels: String,
    pub downloads: Vec<FileLink>,
}

/// A fine-tuning run's validation: the best checkpoint and PSNR by step, and, once the run
/// has finished, that checkpoint's test scores.
pub struct ValidationView {
    pub best: String,
    pub chart: String,
    pub history: FileLink,
    pub test: Option<TestView>,
}

/// The best checkpoint's scores on the test images (`test.json`).
pub struct TestView {
    /// Means ± standard errors over the images, and how many.
    pub summary: String,
    pub rows: Vec<TestRow>,
    pub file: FileLink,
}

/// One test image's scores.
pub struct TestRow {
    pub name: String,
    pub psnr: String,
    pub ssim: String,
    pub psnr_y: String,
    pub ssim_y: String,
}

/// Reads a comparison's `report.json` into what the page shows; `None` if it is unreadable
/// (the page then still lists the files).
pub(super) async fn read_report(
    state: &AppState,
    file: &CheckpointFile,
    files: &[CheckpointFile],
    base: &str,
) -> Option<ReportView> {
    let r: serde_json::Value = read_json(state, file).await?;
    let pm = |v: &serde_json::Value, digits: usize| -> String {
        match (v["mean"].as_f64(), v["se"].as_f64()) {
            (Some(m), Some(se)) => format!("{m:.digits$} ± {se:.digits$}"),
            _ => "—".into(),
        }
    };
    let arms_json = r["arms"].as_array().cloned().unwrap_or_default();
    let arms: Vec<ArmRow> = arms_json
        .iter()
        .map(|a| ArmRow {
            name: a["name"].as_str().unwrap_or_default().to_string(),
            best_step: a["best_step"].to_string(),
            best_val_psnr: a["best_val"]["psnr"]
                .as_f64()
                .map_or("—".into(), |v| format!("{v:.2}")),
            psnr: pm(&a["test"]["psnr"], 2),
            ssim: pm(&a["test"]["ssim"], 4),
            psnr_y: pm(&a["test"]["psnr_y"], 2),
            ssim_y: pm(&a["test"]["ssim_y"], 4),
            minutes: a["finetune_seconds"]
                .as_f64()
                .map_or("—".into(), |s| format!("{:.1}", s / 60.0)),
        })
        .collect();
    let deltas = r["deltas"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|d| DeltaRow {
            arm: format!(
                "{} − {}",
                d["arm"].as_str().unwrap_or_default(),
                d["baseline"].as_str().unwrap_or_default()
            ),
            psnr: pm(&d["diff"]["psnr"], 3),
            ssim: pm(&d["diff"]["ssim"], 4),
            psnr_y: pm(&d["diff"]["psnr_y"], 3),
            wins: format!("{} of {}", d["psnr_wins"], d["images"]),
        })
        .collect();
    let curves: Vec<Vec<(f64, f64)>> = arms_json
        .iter()
        .map(|a| {
            a["val_curve"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|p| Some((p["step"].as_f64()?, p["psnr"].as_f64()?)))
                .collect()
        })
        .collect();
    let x_max = curves.iter().flatten().map(|p| p.0).fold(1.0, f64::max);
    let link = |f: &CheckpointFile| FileLink {
        name: f.name.clone(),
        url: format!("{base}/checkpoints/{}", f.name),
    };
    // The trainer draws one tile per arm, in the report's order, between input and target.
    let panels = std::iter::once("degraded")
        .chain(arms.iter().map(|a| a.name.as_str()))
        .chain(["target"])
        .collect::<Vec<_>>()
        .join(" | ");
    Some(ReportView {
        test_images: r["test_images"].as_u64().unwrap_or(0),
        panels,
        arms,
        deltas,
        val_chart: chart::multi_line_chart(
            &curves,
            x_max,
            false,
            "validation PSNR by fine-tuning step, one line per arm",
        ),
        showcase: files
            .iter()
            .filter(|f| f.kind == CheckpointKind::Report && f.name.ends_with(".png"))
            .map(link)
            .collect(),
        downloads: files
            .iter()
            .filter(|f| f.kind == CheckpointKind::Report && !f.name.ends_with(".png"))
            .map(link)
            .collect(),
    })
}

/// Reads a fine-tuning run's `history.json` (validation scores by step) and, when listed, its
/// `test.json`.
pub(super) async fn read_history(
    state: &AppState,
    file: &CheckpointFile,
    test: Option<&CheckpointFile>,
    base: &str,
) -> Option<ValidationView> {
    let points: Vec<serde_json::Value> = read_json(state, file).await?;
    let curve: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| Some((p["step"].as_f64()?, p["psnr"].as_f64()?)))
        .collect();
    let best = points
        .iter()
        .filter(|p| p["psnr"].as_f64().is_some())
        .max_by(|a, b| {
            let (x, y) = (
                a["psnr"].as_f64().unwrap_or(0.0),
                b["psnr"].as_f64().unwrap_or(0.0),
            );
            x.total_cmp(&y)
        })
        .map(|p| {
            format!(
                "Best validation PSNR {:.2} dB (SSIM {:.4}) at step {}: model-{:06}.safetensors",
                p["psnr"].as_f64().unwrap_or(f64::NAN),
                p["ssim"].as_f64().unwrap_or(f64::NAN),
                p["step"],
                p["step"].as_u64().unwrap_or(0)
            )
        })
        .unwrap_or_else(|| "No validation yet".into());
    let x_max = curve.iter().map(|p| p.0).fold(1.0, f64::max);
    Some(ValidationView {
        best,
        chart: chart::line_chart(&curve, x_max, false, "validation PSNR by step"),
        history: FileLink {
            name: file.name.clone(),
            url: format!("{base}/checkpoints/{}", file.name),
        },
        test: match test {
            Some(f) => read_test(state, f, base).await,
            None => None,
        },
    })
}

/// Reads `test.json` (`ifp_trainer::finetune::TestReport`); `None` if it is unreadable.
async fn read_test(state: &AppState, file: &CheckpointFile, base: &str) -> Option<TestView> {
    let r: ifp_trainer::finetune::TestReport = read_json(state, file).await?;
    let t = &r.test;
    let summary = format!(
        "Test PSNR {:.2} ± {:.2} dB, SSIM {:.4} ± {:.4} (Y: {:.2} dB, {:.4}) on {} images, \
         scored with the best checkpoint (step {})",
        t.psnr.mean,
        t.psnr.se,
        t.ssim.mean,
        t.ssim.se,
        t.psnr_y.mean,
        t.ssim_y.mean,
        r.test_images,
        r.best_step
    );
    let rows = r
        .per_image
        .iter()
        .map(|p| TestRow {
            name: p.name.clone(),
            psnr: format!("{:.2}", p.scores.psnr),
            ssim: format!("{:.4}", p.scores.ssim),
            psnr_y: format!("{:.2}", p.scores.psnr_y),
            ssim_y: format!("{:.4}", p.scores.ssim_y),
        })
        .collect();
    Some(TestView {
        summary,
        rows,
        file: FileLink {
            name: file.name.clone(),
            url: format!("{base}/checkpoints/{}", file.name),
        },
    })
}

/// A listed JSON result file of the job, parsed; `None` if it is gone or unreadable (the page
/// then still lists the files).
pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    file: &CheckpointFile,
) -> Option<T> {
    let bytes = tokio::fs::read(state.artifacts.join(&file.path))
        .await
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}
