//! The job page's summary of a comparison over several seeds (`seeds.json`): each arm's mean
//! test scores with 95% confidence intervals, and what the seeds say about IFP - scratch.

use super::results::{read_json, FileLink};
use crate::db::rows::CheckpointFile;
use crate::http::state::AppState;

pub struct SeedsRow {
    pub name: String,
    pub psnr: String,
    pub ssim: String,
}

pub struct SeedsView {
    /// "3 seeds (0, 1, 2), 24 test images".
    pub about: String,
    pub rows: Vec<SeedsRow>,
    /// One sentence per difference: its interval, the seeds and images favouring the arm,
    /// and whether it is significant.
    pub verdicts: Vec<String>,
    pub downloads: Vec<FileLink>,
}

/// `mean [low, high]` with `p` decimals (no interval from one seed).
fn interval(v: &serde_json::Value, p: usize) -> String {
    let mean = v["mean"].as_f64().unwrap_or(f64::NAN);
    match v["ci95"].as_array().map(|a| (a[0].as_f64(), a[1].as_f64())) {
        Some((Some(lo), Some(hi))) => format!("{mean:.p$} [{lo:.p$}, {hi:.p$}]"),
        _ => format!("{mean:.p$}"),
    }
}

/// Reads `seeds.json`; `None` if it is unreadable (the page still lists the files).
pub async fn read_seeds(
    state: &AppState,
    file: &CheckpointFile,
    files: &[CheckpointFile],
    base: &str,
) -> Option<SeedsView> {
    let r: serde_json::Value = read_json(state, file).await?;
    let seeds: Vec<String> = r["seeds"]
        .as_array()?
        .iter()
        .map(|s| s.to_string())
        .collect();
    let rows = r["arms"]
        .as_array()?
        .iter()
        .map(|a| SeedsRow {
            name: a["name"].as_str().unwrap_or_default().to_string(),
            psnr: interval(&a["psnr"], 2),
            ssim: interval(&a["ssim"], 4),
        })
        .collect();
    let verdicts = r["deltas"]
        .as_array()?
        .iter()
        .map(|d| {
            let arm = d["arm"].as_str().unwrap_or_default();
            format!(
                "{arm} − {}: {} dB PSNR. {} of {} seeds and {} of {} images favour {arm}; {}.",
                d["baseline"].as_str().unwrap_or_default(),
                interval(&d["psnr"], 2),
                d["seeds_favouring"],
                seeds.len(),
                d["images_favouring"],
                d["per_image"].as_array().map_or(0, Vec::len),
                if d["significant"].as_bool() == Some(true) {
                    "significant at 5% (the interval excludes 0)"
                } else {
                    "not significant at 5% (the interval includes 0)"
                }
            )
        })
        .collect();
    let downloads = files
        .iter()
        .filter(|f| matches!(f.name.as_str(), "seeds.json" | "seeds.csv"))
        .map(|f| FileLink {
            name: f.name.clone(),
            url: format!("{base}/checkpoints/{}", f.name),
        })
        .collect();
    Some(SeedsView {
        about: format!(
            "{} seeds ({}), {} test images",
            seeds.len(),
            seeds.join(", "),
            r["test_images"]
        ),
        rows,
        verdicts,
        downloads,
    })
}
