//! What the new-job form shows about a config besides its fields: the preview of what the
//! network will learn from (rendered off the runtime threads) and the estimate of the run's
//! peak memory and duration.

use base64::Engine;
use ifp_trainer::Config;

use super::super::Viewer;
use crate::http::state::AppState;

pub(super) async fn preview_png(
    state: &AppState,
    viewer: &Viewer,
    cfg: &Config,
) -> Result<Vec<u8>, String> {
    crate::jobs::uploads::check(&state.pool, &state.artifacts, &viewer.caller, cfg)
        .await
        .map_err(|e| e.public().2)?;
    let mut cfg = cfg.clone();
    crate::jobs::uploads::resolve(&state.artifacts, &mut cfg);
    tokio::task::spawn_blocking(move || {
        let img = ifp_trainer::preview::render(&cfg)?;
        ifp_trainer::checkpoint::png_bytes(&img)
    })
    .await
    .map_err(|e| format!("preview: {e}"))?
    .map_err(|e| e.to_string())
}

pub(super) async fn preview_data_uri(
    state: &AppState,
    viewer: &Viewer,
    cfg: &Config,
) -> Result<String, String> {
    let png = preview_png(state, viewer, cfg).await?;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    ))
}

/// What the form shows about a config besides its fields: the preview image and the estimate
/// of the run's peak memory and duration.
#[derive(Default)]
pub(super) struct Shown {
    pub(super) preview: Option<String>,
    pub(super) estimate: Option<String>,
}

impl Shown {
    pub(super) async fn of(state: &AppState, viewer: &Viewer, cfg: &Config) -> Shown {
        Shown {
            preview: preview_data_uri(state, viewer, cfg).await.ok(),
            estimate: estimate_text(state, cfg).await,
        }
    }
}

/// The estimate in words, or `None` if the database cannot say.
pub(super) async fn estimate_text(state: &AppState, cfg: &Config) -> Option<String> {
    use ifp_trainer::memory::human;
    let e = match crate::jobs::service::estimate(&state.pool, cfg).await {
        Ok(e) => e,
        Err(err) => {
            tracing::warn!("estimating a run: {err}");
            return None;
        }
    };
    let memory = match e.largest_worker {
        Some(have) if e.refused => format!(
            "Peak memory about {}: more than 90% of the {} of the largest live worker, so this \
             run would be refused; lower the batch size or the crop size.",
            human(e.peak_bytes),
            human(have)
        ),
        Some(have) => format!(
            "Peak memory about {} (the largest live worker has {}).",
            human(e.peak_bytes),
            human(have)
        ),
        None => format!(
            "Peak memory about {} (no live worker has reported its memory).",
            human(e.peak_bytes)
        ),
    };
    let duration = match e.seconds {
        Some(s) => format!(
            " Training takes about {} at the median speed of {} finished run{} with this \
             network, crop size and batch size.",
            crate::http::views::fmt::duration(s),
            e.runs,
            if e.runs == 1 { "" } else { "s" }
        ),
        None => " No expected duration yet: no finished run has this network, crop size and \
                  batch size."
            .to_string(),
    };
    Some(memory + &duration)
}
