//! Upper bounds on every size and count a config may ask for, so that no submission can ask a
//! worker for an unbounded network, batch, image or run. The bounds sit well above the paper's
//! settings (Restormer: DIM 48, blocks [4, 6, 6, 8], 224-pixel crops, 60,000 steps; Uformer:
//! EMBED_DIM 32, 256-pixel crops) and far below what would overflow or exhaust a machine in
//! one tensor. Pre-training and fine-tuning configs share the key names, and so the table.

use serde::Serialize;

use super::ConfigError;

/// (key path, largest value accepted). A list value (`NUM_BLOCKS`, `HEADS`, `DEPTHS`) is
/// checked item by item.
const LIMITS: &[(&str, f64)] = &[
    ("MODEL.BATCH_SIZE", 4096.0),
    ("MODEL.RESTORMER.INP_CHANNELS", 64.0),
    ("MODEL.RESTORMER.OUT_CHANNELS", 1024.0),
    ("MODEL.RESTORMER.DIM", 512.0),
    ("MODEL.RESTORMER.NUM_BLOCKS", 64.0),
    ("MODEL.RESTORMER.NUM_REFINEMENT_BLOCKS", 64.0),
    ("MODEL.RESTORMER.HEADS", 64.0),
    ("MODEL.RESTORMER.FFN_EXPANSION_FACTOR", 16.0),
    ("MODEL.DECODER.IN_NC", 1024.0),
    ("MODEL.DECODER.OUT_NC", 64.0),
    ("MODEL.DECODER.UPSCALE", 8.0),
    ("MODEL.DECODER.NF", 1024.0),
    ("MODEL.DECODER.MODUL_CHANNELS", 1024.0),
    ("MODEL.UFORMER.INP_CHANNELS", 64.0),
    ("MODEL.UFORMER.IMAGE_SIZE", 2048.0),
    ("MODEL.UFORMER.PATCH_SIZE", 64.0),
    ("MODEL.UFORMER.EMBED_DIM", 512.0),
    ("MODEL.UFORMER.DEPTHS", 64.0),
    ("MODEL.UFORMER.WIN_SIZE", 64.0),
    ("DATA.IMG_SIZE", 2048.0),
    ("DATA.BATCH_SIZE", 1024.0),
    ("DATA.NOISE.WIDTH", 8192.0),
    ("DATA.NOISE.HEIGHT", 8192.0),
    ("DATA.CROP", 2048.0),
    ("DATA.SPLIT_EVERY", 1000.0),
    ("DATA.VAL_IMAGES", 1000.0),
    ("DATA.VAL_CROP", 4096.0),
    ("DATA.MAX_TEST_IMAGES", 100_000.0),
    ("DATA.NOISE_SIGMA", 255.0),
    ("DATA.BLUR_SIGMA", 64.0),
    ("TRAIN.EPOCHS", 10_000_000.0),
    ("TRAIN.STEPS", 10_000_000.0),
    ("TRAIN.WARMUP_EPOCHS", 10_000_000.0),
    ("TRAIN.KEEP_CHECKPOINTS", 1000.0),
    ("PRINT_FREQ", 10_000_000.0),
    ("SAVE_FREQ", 10_000_000.0),
];

/// Refuses the first value above its bound in [`LIMITS`], naming the key, the value and the
/// bound.
pub(crate) fn check_limits<T: Serialize>(cfg: &T) -> Result<(), ConfigError> {
    let Ok(tree) = serde_json::to_value(cfg) else {
        return Ok(());
    };
    for &(path, max) in LIMITS {
        let Some(v) = path.split('.').try_fold(&tree, |v, k| v.get(k)) else {
            continue;
        };
        let items: Vec<&serde_json::Value> = match v {
            serde_json::Value::Array(a) => a.iter().collect(),
            one => vec![one],
        };
        for x in items {
            if x.as_f64().is_some_and(|x| x > max) {
                return Err(ConfigError::invalid(
                    path,
                    format!("{x} is above the limit of {max} for this key"),
                ));
            }
        }
    }
    Ok(())
}
