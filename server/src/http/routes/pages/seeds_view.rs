//! The job page's summary of a comparison over several seeds (`seeds.json`): each arm's mean
//! test scores with 95% confidence intervals, what the seeds say about IFP - scratch, the
//! paired difference of each seed and of each test image, and each seed's own result files.

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
    /// What the intervals cover: fine-tuning noise only when one pre-training is shared.
    pub scope: String,
    /// The differences' labels ("ifp − scratch"), the columns of the two tables below.
    pub columns: Vec<String>,
    /// Per seed: the seed and each difference's mean PSNR difference over the test images.
    pub per_seed: Vec<(String, Vec<String>)>,
    /// Per test image: its name and each difference averaged over the seeds.
    pub per_image: Vec<(String, Vec<String>)>,
    pub downloads: Vec<FileLink>,
    /// Each seed's own files (`seed-S-report.json`, its CSVs and showcases).
    pub seed_files: Vec<(String, Vec<FileLink>)>,
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
    let link = |f: &CheckpointFile| FileLink {
        name: f.name.clone(),
        url: format!("{base}/checkpoints/{}", f.name),
    };
    let downloads = files
        .iter()
        .filter(|f| matches!(f.name.as_str(), "seeds.json" | "seeds.csv"))
        .map(link)
        .collect();
    let deltas = r["deltas"].as_array()?;
    let columns = deltas
        .iter()
        .map(|d| {
            format!(
                "{} − {}",
                d["arm"].as_str().unwrap_or_default(),
                d["baseline"].as_str().unwrap_or_default()
            )
        })
        .collect();
    let signed_db =
        |v: &serde_json::Value| v.as_f64().map_or_else(String::new, |x| format!("{x:+.2}"));
    let per_seed = seeds
        .iter()
        .enumerate()
        .map(|(k, seed)| {
            let cells = deltas
                .iter()
                .map(|d| signed_db(&d["psnr"]["per_seed"][k]))
                .collect();
            (seed.clone(), cells)
        })
        .collect();
    // `per_image` holds [name, difference] pairs in the same image order for every difference.
    let images = deltas.first().and_then(|d| d["per_image"].as_array());
    let per_image = images
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, pair)| {
            let name = pair[0].as_str().unwrap_or_default().to_string();
            let cells = deltas
                .iter()
                .map(|d| signed_db(&d["per_image"][i][1]))
                .collect();
            (name, cells)
        })
        .collect();
    let seed_files = seeds
        .iter()
        .map(|seed| {
            let prefix = format!("seed-{seed}-");
            let links = files
                .iter()
                .filter(|f| f.name.starts_with(&prefix) && !f.name.contains("-model-"))
                .map(link)
                .collect();
            (seed.clone(), links)
        })
        .collect();
    let scope = if r["vary_pretrain"].as_bool() == Some(true) {
        "Each seed also ran its own IFP pre-training, so the intervals cover pre-training and \
         fine-tuning noise."
    } else {
        "All seeds fine-tune from one IFP pre-training, so the intervals cover fine-tuning noise \
         only: they say whether this pre-trained encoder helps, not whether IFP pre-training \
         in general does."
    }
    .to_string();
    Some(SeedsView {
        about: format!(
            "{} seeds ({}), {} test images",
            seeds.len(),
            seeds.join(", "),
            r["test_images"]
        ),
        rows,
        verdicts,
        scope,
        columns,
        per_seed,
        per_image,
        downloads,
        seed_files,
    })
}
