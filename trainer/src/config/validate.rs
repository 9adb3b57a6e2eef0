//! Checks on a parsed config that parsing alone cannot make: ranges, sizes the networks can
//! take, and consistency between keys. Every error names the full key path and the bad value.

use super::{Config, ConfigError, ModelType};

impl Config {
    /// Checks the values that parsing alone cannot (ranges, cross-key consistency).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_finite(self)?;
        super::limits::check_limits(self)?;
        let bad = |path: &str, msg: String| Err(ConfigError::invalid(path, msg));
        let m = &self.model;
        if !(0.0..1.0).contains(&m.drop_path_rate) {
            return bad(
                "MODEL.DROP_PATH_RATE",
                format!("{} is outside [0, 1)", m.drop_path_rate),
            );
        }
        match m.kind {
            ModelType::Restormer => self.validate_restormer()?,
            ModelType::Uformer => self.validate_uformer()?,
        }
        self.validate_data()?;
        self.validate_train()?;
        if self.print_freq == 0 {
            return bad("PRINT_FREQ", "must be at least 1, got 0".into());
        }
        if self.save_freq == 0 {
            return bad("SAVE_FREQ", "must be at least 1, got 0".into());
        }
        check_checkpoint_count(self.save_freq, self.total_steps())
    }

    fn validate_restormer(&self) -> Result<(), ConfigError> {
        let bad = |path: &str, msg: String| Err(ConfigError::invalid(path, msg));
        let r = &self.model.restormer;
        if r.inp_channels != 3 {
            return bad(
                "MODEL.RESTORMER.INP_CHANNELS",
                format!(
                    "{} is not supported: the noise image is RGB (3)",
                    r.inp_channels
                ),
            );
        }
        if r.dim == 0 || !r.dim.is_multiple_of(2) {
            return bad(
                "MODEL.RESTORMER.DIM",
                format!(
                    "{} must be a positive even number (downsampling halves it)",
                    r.dim
                ),
            );
        }
        if r.out_channels == 0 {
            return bad(
                "MODEL.RESTORMER.OUT_CHANNELS",
                "must be at least 1, got 0".into(),
            );
        }
        if r.num_blocks.len() != 4 || r.num_blocks.contains(&0) {
            return bad(
                "MODEL.RESTORMER.NUM_BLOCKS",
                format!(
                    "{:?} must be 4 positive counts (one per level)",
                    r.num_blocks
                ),
            );
        }
        if r.heads.len() != 4 || r.heads.contains(&0) {
            return bad(
                "MODEL.RESTORMER.HEADS",
                format!(
                    "{:?} must be 4 positive head counts (one per level)",
                    r.heads
                ),
            );
        }
        // Level i works at dim * 2^i channels (level 1 of the decoder and the refinement at 2*dim
        // with heads[0]); each must split evenly into heads.
        for (i, &h) in r.heads.iter().enumerate() {
            let ch = r.dim << i;
            if !ch.is_multiple_of(h) || (i == 0 && !(2 * r.dim).is_multiple_of(h)) {
                return bad(
                    "MODEL.RESTORMER.HEADS",
                    format!(
                        "{h} heads do not divide the {ch} channels of level {}",
                        i + 1
                    ),
                );
            }
        }
        if r.ffn_expansion_factor.is_nan() || (r.dim as f64 * r.ffn_expansion_factor) < 1.0 {
            return bad(
                "MODEL.RESTORMER.FFN_EXPANSION_FACTOR",
                format!(
                    "{} gives an empty feed-forward layer",
                    r.ffn_expansion_factor
                ),
            );
        }
        if !["WithBias", "BiasFree"].contains(&r.layernorm_type.as_str()) {
            return bad(
                "MODEL.RESTORMER.LAYERNORM_TYPE",
                format!(
                    "unknown value `{}` (expected WithBias or BiasFree)",
                    r.layernorm_type
                ),
            );
        }
        if r.dual_pixel_task {
            return bad(
                "MODEL.RESTORMER.DUAL_PIXEL_TASK",
                "true is not supported (IFP pre-trains on single images)".into(),
            );
        }
        if r.global_residual {
            return bad(
                "MODEL.RESTORMER.GLOBAL_RESIDUAL",
                "true is not supported (the encoder output feeds a head, not an image)".into(),
            );
        }
        if r.patch_size != 1 {
            return bad(
                "MODEL.RESTORMER.PATCH_SIZE",
                format!("{} is not supported (only 1)", r.patch_size),
            );
        }
        let d = &self.model.decoder;
        if d.in_nc != r.out_channels {
            return bad(
                "MODEL.DECODER.IN_NC",
                format!(
                    "{} must equal MODEL.RESTORMER.OUT_CHANNELS ({})",
                    d.in_nc, r.out_channels
                ),
            );
        }
        if d.out_nc != 3 {
            return bad(
                "MODEL.DECODER.OUT_NC",
                format!(
                    "{} must be 3 (the head reconstructs an RGB image)",
                    d.out_nc
                ),
            );
        }
        if d.upscale != 1 {
            return bad(
                "MODEL.DECODER.UPSCALE",
                format!("{} is not supported (only 1)", d.upscale),
            );
        }
        if d.nf == 0 {
            return bad("MODEL.DECODER.NF", "must be at least 1, got 0".into());
        }
        if self.data.img_size < 8 {
            return bad(
                "DATA.IMG_SIZE",
                format!("{} is too small for Restormer (at least 8: it reflect-pads to a multiple of 8)", self.data.img_size),
            );
        }
        Ok(())
    }

    fn validate_uformer(&self) -> Result<(), ConfigError> {
        let bad = |path: &str, msg: String| Err(ConfigError::invalid(path, msg));
        let u = &self.model.uformer;
        if u.inp_channels != 3 {
            return bad(
                "MODEL.UFORMER.INP_CHANNELS",
                format!(
                    "{} is not supported: the noise image is RGB (3)",
                    u.inp_channels
                ),
            );
        }
        if u.patch_size != 1 {
            return bad(
                "MODEL.UFORMER.PATCH_SIZE",
                format!("{} is not supported (only 1)", u.patch_size),
            );
        }
        if u.depths.len() != 9 {
            return bad(
                "MODEL.UFORMER.DEPTHS",
                format!("{:?} must list 9 depths", u.depths),
            );
        }
        if !(0.0..1.0).contains(&u.drop_path_rate) {
            return bad(
                "MODEL.UFORMER.DROP_PATH_RATE",
                format!("{} is outside [0, 1)", u.drop_path_rate),
            );
        }
        let (enc, dec) = (
            u.depths[..4].iter().sum::<usize>(),
            u.depths[5..].iter().sum::<usize>(),
        );
        if dec > enc {
            // The reference slices the decoder's drop-path rates out of the encoder's list
            // and fails (IndexError) when that list is too short.
            return bad(
                "MODEL.UFORMER.DEPTHS",
                format!(
                    "{:?}: the decoder depths (last four, sum {dec}) may not add up to more than \
                     the encoder depths (first four, sum {enc}); the reference Uformer cannot be \
                     built otherwise",
                    u.depths
                ),
            );
        }
        if u.embed_dim == 0 || u.win_size == 0 {
            return bad(
                "MODEL.UFORMER.EMBED_DIM",
                "EMBED_DIM and WIN_SIZE must be positive".into(),
            );
        }
        if !uformer_size_ok(self.data.img_size, u.win_size) {
            let works: Vec<String> = (1..=4096)
                .filter(|&s| uformer_size_ok(s, u.win_size))
                .take(6)
                .map(|s| s.to_string())
                .collect();
            return bad(
                "DATA.IMG_SIZE",
                format!(
                    "{} does not work with Uformer WIN_SIZE {}; sizes that do: {}, ...",
                    self.data.img_size,
                    u.win_size,
                    works.join(", ")
                ),
            );
        }
        if u.image_size != self.data.img_size {
            return bad(
                "MODEL.UFORMER.IMAGE_SIZE",
                format!(
                    "{} must equal DATA.IMG_SIZE ({})",
                    u.image_size, self.data.img_size
                ),
            );
        }
        Ok(())
    }

    fn validate_data(&self) -> Result<(), ConfigError> {
        let bad = |path: &str, msg: String| Err(ConfigError::invalid(path, msg));
        let d = &self.data;
        if d.img_size == 0 || d.img_size > 4096 {
            return bad(
                "DATA.IMG_SIZE",
                format!("{} is outside 1..=4096", d.img_size),
            );
        }
        if !["IFP", "MFM"].contains(&d.filter_type.as_str()) {
            return bad(
                "DATA.FILTER_TYPE",
                format!("unknown value `{}` (expected IFP or MFM)", d.filter_type),
            );
        }
        if !(0.0..=1.0).contains(&d.sample_ratio) {
            return bad(
                "DATA.SAMPLE_RATIO",
                format!("{} is outside [0, 1]", d.sample_ratio),
            );
        }
        if d.mask_radius1.is_nan() || d.mask_radius1 < 0.0 {
            return bad(
                "DATA.MASK_RADIUS1",
                format!("{} must not be negative", d.mask_radius1),
            );
        }
        if d.mask_radius2.is_nan() || d.mask_radius2 < d.mask_radius1 {
            return bad(
                "DATA.MASK_RADIUS2",
                format!(
                    "{} must not be below MASK_RADIUS1 ({})",
                    d.mask_radius2, d.mask_radius1
                ),
            );
        }
        if !(d.min_crop_scale > 0.0 && d.min_crop_scale <= 1.0) {
            return bad(
                "DATA.MIN_CROP_SCALE",
                format!("{} is outside (0, 1]", d.min_crop_scale),
            );
        }
        if d.batch_size == 0 {
            return bad("DATA.BATCH_SIZE", "must be at least 1, got 0".into());
        }
        if !["fixed", "per_sample"].contains(&d.mask_mode.as_str()) {
            return bad(
                "DATA.MASK_MODE",
                format!(
                    "unknown value `{}` (expected fixed or per_sample)",
                    d.mask_mode
                ),
            );
        }
        let n = &d.noise;
        if n.width == 0 || n.height == 0 {
            return bad(
                "DATA.NOISE.WIDTH",
                format!("noise image size {}x{} must be positive", n.width, n.height),
            );
        }
        // 16384 x 16384 RGB f32 is 3 GiB already: beyond that a typo, not a noise image.
        if n.width > 16384 || n.height > 16384 {
            return bad(
                "DATA.NOISE.WIDTH",
                format!(
                    "noise image size {}x{} is above 16384x16384",
                    n.width, n.height
                ),
            );
        }
        if !(0.0..=1.0).contains(&n.mean) {
            return bad("DATA.NOISE.MEAN", format!("{} is outside [0, 1]", n.mean));
        }
        if !(n.std >= 0.0 && n.std.is_finite()) {
            return bad(
                "DATA.NOISE.STD",
                format!("{} must be a non-negative number", n.std),
            );
        }
        Ok(())
    }

    fn validate_train(&self) -> Result<(), ConfigError> {
        let bad = |path: &str, msg: String| Err(ConfigError::invalid(path, msg));
        let t = &self.train;
        if t.total_steps() == 0 {
            let key = if t.steps.is_some() {
                "TRAIN.STEPS"
            } else {
                "TRAIN.EPOCHS"
            };
            return bad(key, "must be at least 1, got 0".into());
        }
        for (key, v) in [
            ("TRAIN.BASE_LR", t.base_lr),
            ("TRAIN.WARMUP_LR", t.warmup_lr),
            ("TRAIN.MIN_LR", t.min_lr),
            ("TRAIN.WEIGHT_DECAY", t.weight_decay),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(key, format!("{v} must be a non-negative number"));
            }
        }
        if t.base_lr <= 0.0 {
            return bad("TRAIN.BASE_LR", format!("{} must be positive", t.base_lr));
        }
        if t.clip_grad.is_nan() || t.clip_grad < 0.0 {
            return bad(
                "TRAIN.CLIP_GRAD",
                format!("{} must not be negative (0 disables clipping)", t.clip_grad),
            );
        }
        if t.keep_checkpoints == 0 {
            return bad("TRAIN.KEEP_CHECKPOINTS", "must be at least 1, got 0".into());
        }
        let o = &t.optimizer;
        if o.name.to_lowercase() != "adamw" {
            return bad(
                "TRAIN.OPTIMIZER.NAME",
                format!("unknown optimizer `{}` (only adamw)", o.name),
            );
        }
        let (b1, b2) = o.betas;
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
            return bad(
                "TRAIN.OPTIMIZER.BETAS",
                format!("({b1}, {b2}) must both be in [0, 1)"),
            );
        }
        if o.eps.is_nan() || o.eps <= 0.0 {
            return bad("TRAIN.OPTIMIZER.EPS", format!("{} must be positive", o.eps));
        }
        Ok(())
    }
}

/// The square sizes the reference Uformer can take: four exact
/// halvings; every level larger than the window is tiled by whole windows (smaller levels use
/// one window of their own size); and the decoder's smallest level (S/8) is at least a window,
/// since its modulator always has `win * win` rows.
pub(crate) fn uformer_size_ok(size: usize, win: usize) -> bool {
    size.is_multiple_of(16)
        && size / 8 >= win
        && (0..=4).all(|l| {
            let res = size >> l;
            res <= win || res.is_multiple_of(win)
        })
}

/// Every number of a config must be finite: YAML's `.nan` and `.inf` parse as floats, and a run
/// would only fail later, in a worker (or never, for a NaN bound that compares false). The
/// error names the key, as the config's own keys spell it.
pub(crate) fn check_finite<T: serde::Serialize>(cfg: &T) -> Result<(), ConfigError> {
    let Ok(tree) = serde_norway::to_value(cfg) else {
        return Ok(());
    };
    match first_non_finite(&tree, String::new()) {
        None => Ok(()),
        Some((path, x)) => Err(ConfigError::invalid(
            &path,
            format!("must be a finite number, got {x}"),
        )),
    }
}

/// The first number in `v` that is not finite, with its dotted key path under `path`.
pub(crate) fn first_non_finite(v: &serde_norway::Value, path: String) -> Option<(String, f64)> {
    use serde_norway::Value;
    match v {
        Value::Number(n) => n.as_f64().filter(|x| !x.is_finite()).map(|x| (path, x)),
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, x)| first_non_finite(x, format!("{path}[{i}]"))),
        Value::Mapping(m) => m.iter().find_map(|(k, x)| {
            let key = k.as_str().map_or_else(|| format!("{k:?}"), str::to_string);
            let p = if path.is_empty() {
                key
            } else {
                format!("{path}.{key}")
            };
            first_non_finite(x, p)
        }),
        Value::Tagged(t) => first_non_finite(&t.value, path),
        _ => None,
    }
}

/// The most checkpoints one run may write (each is a model file, a training state and a sample
/// strip, and a listed row): `SAVE_FREQ: 1` over ten million steps would fill any disk.
pub(crate) const MAX_CHECKPOINTS: usize = 10_000;

/// Refuses a `SAVE_FREQ` that writes more than [`MAX_CHECKPOINTS`] over `steps`, naming the
/// smallest that fits.
pub(crate) fn check_checkpoint_count(save_freq: usize, steps: usize) -> Result<(), ConfigError> {
    let count = steps / save_freq.max(1);
    if count > MAX_CHECKPOINTS {
        return Err(ConfigError::invalid(
            "SAVE_FREQ",
            format!(
                "{save_freq} writes {count} checkpoints over {steps} steps; at most \
                 {MAX_CHECKPOINTS} a run (SAVE_FREQ {} or more)",
                steps / (MAX_CHECKPOINTS + 1) + 1
            ),
        ));
    }
    Ok(())
}
