//! The only training data of IFP: one i.i.d. Gaussian noise image, generated from a seed so that
//! no download is needed. Quantised to 8 bits like the reference JPEG.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::image::{Image, CHANNELS};
use super::DataError;

/// Parameters of the generated noise image.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NoiseSpec {
    pub width: usize,
    pub height: usize,
    pub mean: f64,
    pub std: f64,
    pub seed: u64,
}

impl Default for NoiseSpec {
    /// The statistics of the reference's `noise-0.jpg`.
    fn default() -> Self {
        Self {
            width: 640,
            height: 480,
            mean: 0.467,
            std: 0.075,
            seed: 0,
        }
    }
}

impl NoiseSpec {
    /// Rejects sizes and moments that cannot describe an image.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.width == 0 {
            return Err(DataError::invalid("noise width", self.width, "at least 1"));
        }
        if self.height == 0 {
            return Err(DataError::invalid(
                "noise height",
                self.height,
                "at least 1",
            ));
        }
        if !self.mean.is_finite() {
            return Err(DataError::invalid(
                "noise mean",
                self.mean,
                "a finite number",
            ));
        }
        if !(self.std.is_finite() && self.std >= 0.0) {
            return Err(DataError::invalid("noise std", self.std, "finite and >= 0"));
        }
        Ok(())
    }
}

/// Draws the noise image: one N(mean, std) value per pixel and channel from a `ChaCha8Rng`
/// seeded with `spec.seed` (drawn in CHW order), clipped to [0, 1] and rounded to `k/255`.
pub fn generate_noise(spec: &NoiseSpec) -> Result<Image, DataError> {
    spec.validate()?;
    let normal = Normal::new(spec.mean, spec.std)
        .map_err(|e| DataError::invalid("noise std", spec.std, e.to_string()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let n = CHANNELS * spec.width * spec.height;
    let data = (0..n)
        .map(|_| {
            let v: f64 = normal.sample(&mut rng);
            ((v.clamp(0.0, 1.0) * 255.0).round() / 255.0) as f32
        })
        .collect();
    Image::new(spec.width, spec.height, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_match_the_spec() {
        let spec = NoiseSpec::default();
        let img = generate_noise(&spec).expect("noise");
        assert_eq!(
            (img.width, img.height, img.data.len()),
            (640, 480, 3 * 640 * 480)
        );
        let (mean, std) = img.mean_std();
        println!("generated noise: mean {mean:.4}, std {std:.4}");
        assert!((mean - spec.mean).abs() < 0.005, "mean {mean}");
        assert!((std - spec.std).abs() < 0.005, "std {std}");
        for &v in &img.data {
            assert!((0.0..=1.0).contains(&v));
            let k = v * 255.0;
            assert!((k - k.round()).abs() < 1e-4, "not 8-bit: {v}");
        }
    }

    #[test]
    fn seed_determines_the_image() {
        let spec = NoiseSpec {
            width: 32,
            height: 24,
            ..NoiseSpec::default()
        };
        let a = generate_noise(&spec).expect("noise");
        let b = generate_noise(&spec).expect("noise");
        assert_eq!(a, b);
        let c = generate_noise(&NoiseSpec { seed: 1, ..spec }).expect("noise");
        assert_ne!(a, c);
    }

    #[test]
    fn impossible_parameters_are_rejected() {
        let bad = NoiseSpec {
            std: -1.0,
            ..NoiseSpec::default()
        };
        let err = generate_noise(&bad).expect_err("negative std");
        assert!(err.to_string().contains("-1"), "{err}");
        let zero = NoiseSpec {
            width: 0,
            ..NoiseSpec::default()
        };
        assert!(generate_noise(&zero).is_err());
    }
}
