//! What the new-job form shows about a config besides its fields: the preview of what the
//! network will learn from (rendered off the runtime threads) and the estimate of the run's
//! peak memory and duration.

use base64::Engine;
use ifp_trainer::Config;

use super::super::{submission, Viewer};
use crate::http::state::AppState;
use crate::jobs::spec::JobSpec;

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
            estimate: submission::estimate_text(state, &JobSpec::Pretrain(Box::new(cfg.clone())))
                .await,
        }
    }
}
