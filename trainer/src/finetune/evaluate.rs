//! Scoring a fine-tuned model file (`ifp eval`): the network rebuilt from the file and the
//! config stored in its metadata, the test images degraded as its training data was.

use std::path::Path;

use candle_core::Device;

use super::data;
use super::net::{load_all, FinetuneNet};
use super::FinetuneConfig;
use crate::error::{Result, TrainerError};
use crate::eval::{evaluate, ImageScore};
use crate::models::WeightSource;

/// A network rebuilt from a fine-tuning model file, with the config stored in its metadata.
pub fn load_finetuned(path: &Path, device: &Device) -> Result<(FinetuneConfig, FinetuneNet)> {
    let bytes = std::fs::read(path).map_err(TrainerError::io(path))?;
    let bad = |message: String| TrainerError::Weights {
        path: path.to_path_buf(),
        message,
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let yaml = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("ifp_config"))
        .ok_or_else(|| bad("no `ifp_config` metadata: not an ifp model file".into()))?;
    let cfg: FinetuneConfig = serde_norway::from_str(yaml).map_err(|_| {
        bad("its config is not a fine-tuning config (a pre-training checkpoint? fine-tune it first)".into())
    })?;
    let weights = load_all(path, device)?;
    let head = FinetuneNet::head_prefix(&cfg.model);
    if !weights.keys().any(|k| k.starts_with(head)) {
        return Err(bad(format!("no `{head}*` tensors: not a fine-tuned model")));
    }
    let net = FinetuneNet::new(
        &cfg.model,
        WeightSource::Tensors(weights.clone()),
        WeightSource::Tensors(weights),
        cfg.head.residual,
        device,
    )?;
    Ok((cfg, net))
}

/// `ifp eval`: the test images of `dir` (paired, or clean with the model's own synthetic
/// degradation unless `noise_sigma`/`blur_sigma` override it), degraded with the model's seed.
pub struct EvalRequest<'a> {
    pub weights: &'a Path,
    pub dir: &'a Path,
    pub noise_sigma: Option<f64>,
    pub blur_sigma: Option<f64>,
    pub max_images: usize,
    pub tile: Option<usize>,
    /// Write each restored image here as `<image name stem>.png` (8-bit RGB).
    pub save_outputs: Option<&'a Path>,
}

/// Loads the network and the images, and scores every image.
pub fn evaluate_weights(req: &EvalRequest<'_>, device: &Device) -> Result<Vec<ImageScore>> {
    let (cfg, net) = load_finetuned(req.weights, device)?;
    let mut entries = data::list_set(req.dir)?;
    if req.max_images > 0 {
        entries.truncate(req.max_images);
    }
    let mut deg = cfg.data.degradation();
    if let Some(s) = req.noise_sigma {
        deg.noise_sigma = s;
    }
    if let Some(s) = req.blur_sigma {
        deg.blur_sigma = s;
    }
    let items = data::load_eval(&entries, &deg, cfg.seed, 0)?;
    let Some(out) = req.save_outputs else {
        return evaluate(&net, &items, req.tile);
    };
    std::fs::create_dir_all(out).map_err(TrainerError::io(out))?;
    crate::eval::evaluate_each(&net, &items, req.tile, |_, item, restored| {
        let name = Path::new(&item.name).with_extension("png");
        let path = out.join(name.file_name().unwrap_or(name.as_os_str()));
        Ok(restored.save_png(&path)?)
    })
}
