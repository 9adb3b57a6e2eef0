//! The fine-tuning configs the fine-tuning and comparison forms offer as examples (denoising,
//! deraining, deblurring), each a valid config over the server's datasets folder.

/// The training settings the examples share, after their `DATA` folders. The first line keeps
/// its indentation (it continues the `DATA` block), so it starts on the quote's line: a `\`
/// line continuation would strip it.
macro_rules! example_tail {
    () => {
        "  CROP: 32  # a side both backbones take: a Uformer's windows must tile it (uformer-paper: 128)
  BATCH_SIZE: 8
  VAL_IMAGES: 4
TRAIN:
  STEPS: 500
  WARMUP_EPOCHS: 50
  BASE_LR: 1.0e-3
SAVE_FREQ: 100
SEED: 0
"
    };
}

/// The fine-tuning config the form starts with: sigma-25 denoising, CBSD68 crops, Kodak24 test.
pub(super) const DENOISE: &str = concat!(
    "\
# Denoising, sigma 25: train on CBSD68 crops, test on Kodak24.
# Folders are relative to the server's datasets folder.
DATA:
  TRAIN_DIR: clean/CBSD68
  TEST_DIR: clean/Kodak24
  NOISE_SIGMA: 25
",
    example_tail!()
);

/// The fine-tune form's example: the same denoising task tested on held-out CBSD68 images.
pub(super) const FINETUNE_DENOISE: &str = concat!(
    "\
# Denoising, sigma 25, on CBSD68 crops; every 5th image is held out and scored at the end.
# Folders are relative to the server's datasets folder. Without a pre-training job to start
# from, add the network's MODEL tree.
DATA:
  TRAIN_DIR: clean/CBSD68
  NOISE_SIGMA: 25
",
    example_tail!()
);

/// Deraining on Rain100H, every 5th pair held out for testing.
pub(super) const DERAIN: &str = concat!(
    "\
# Deraining: Rain100H pairs (input/ and target/), every 5th pair (name order) is a test pair.
DATA:
  TRAIN_DIR: rain/Rain100H
  SPLIT_EVERY: 5
",
    example_tail!()
);

/// The fine-tune form's deblurring example: the comparison's, tested on held-out CBSD68 images.
pub(super) const FINETUNE_DEBLUR: &str = concat!(
    "\
# Deblurring: Gaussian blur of 1.6 pixels, then light noise (sigma 2), on CBSD68 crops; every
# 5th image is held out and scored at the end. Synthetic, because the datasets folder holds
# only two GoPro pairs.
DATA:
  TRAIN_DIR: clean/CBSD68
  BLUR_SIGMA: 1.6
  NOISE_SIGMA: 2
",
    example_tail!()
);

pub(super) const DEBLUR: &str = concat!(
    "\
# Deblurring: Gaussian blur of 1.6 pixels, then light noise (sigma 2), on CBSD68 crops; test on
# Kodak24. Synthetic, because the datasets folder holds only two GoPro pairs (blur/).
DATA:
  TRAIN_DIR: clean/CBSD68
  TEST_DIR: clean/Kodak24
  BLUR_SIGMA: 1.6
  NOISE_SIGMA: 2
",
    example_tail!()
);

#[cfg(test)]
mod tests {
    use ifp_trainer::finetune::FinetuneConfig;

    /// Each example is valid as written and with either backbone's small network, which the
    /// forms offer (`tiny`, `tiny-uformer`): a crop the Uformer's windows do not tile fails here.
    #[test]
    fn every_example_is_a_valid_config_for_both_backbones() {
        for (name, text) in [
            ("denoise", super::DENOISE),
            ("derain", super::DERAIN),
            ("deblur", super::DEBLUR),
            ("finetune denoise", super::FINETUNE_DENOISE),
            ("finetune deblur", super::FINETUNE_DEBLUR),
        ] {
            let mut c = FinetuneConfig::from_yaml(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                (c.data.crop, c.data.batch_size, c.train.steps),
                (32, 8, Some(500)),
                "{name}"
            );
            for preset in ["tiny", "tiny-uformer"] {
                c.model = ifp_trainer::config::preset(preset).expect(preset).model;
                c.validate()
                    .unwrap_or_else(|e| panic!("{name} with {preset}: {e}"));
            }
        }
    }
}
