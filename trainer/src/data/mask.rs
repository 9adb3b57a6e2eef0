//! Spectrum masks, in the fftshift-ed layout (zero frequency at `(S/2, S/2)`),
//! 1 = keep, 0 = remove.
//!
//! * IFP ("mMask"): square rings at randomly drawn radii, with the reference's half-open numpy
//!   slices reproduced exactly: ring r zeroes rows `mid - r` and `mid + r` over columns
//!   `[mid - r, mid + r)` and columns `mid - r` and `mid + r` over rows `[mid - r, mid + r)`,
//!   so r = 0 removes nothing.
//! * MFM: a disc (or annulus) low-pass mask or its complement, as `FreqMaskGenerator` in
//!   `Jiahao000/MFM` `data/data_mfm.py`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::DataError;

/// A `size x size` mask, row-major, values 0.0 or 1.0.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    pub size: usize,
    pub data: Vec<f32>,
}

impl Mask {
    /// A mask that keeps every frequency.
    pub fn ones(size: usize) -> Self {
        Self {
            size,
            data: vec![1.0; size * size],
        }
    }

    /// How many frequencies the mask removes.
    pub fn num_zeros(&self) -> usize {
        self.data.iter().filter(|&&v| v == 0.0).count()
    }

    pub fn get(&self, y: usize, x: usize) -> f32 {
        self.data[y * self.size + x]
    }

    /// `1 - mask`: swaps kept and removed frequencies.
    pub fn complement(&self) -> Self {
        Self {
            size: self.size,
            data: self.data.iter().map(|v| 1.0 - v).collect(),
        }
    }
}

/// Which mask family to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FilterType {
    Ifp,
    Mfm,
}

/// Whether a generator draws its IFP radii once (the reference) or for every sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MaskMode {
    Fixed,
    PerSample,
}

/// The IFP mask for the given radii. For each radius `r` (with `c = size / 2`) the reference
/// zeroes `mask[c-r, c-r..c+r]`, `mask[c+r, c-r..c+r]`, `mask[c-r..c+r, c-r]` and
/// `mask[c-r..c+r, c+r]`; the half-open slices leave `r = 0` without effect and keep the
/// bottom-right corner `(c+r, c+r)` of every ring. Radii must be `< size / 2`.
pub fn ifp_mask_from_radii(size: usize, radii: &[usize]) -> Result<Mask, DataError> {
    let c = size / 2;
    if let Some(&bad) = radii.iter().find(|&&r| r >= c) {
        return Err(DataError::invalid(
            "IFP mask radius",
            bad,
            format!("below size/2 = {c} for mask size {size}"),
        ));
    }
    let mut mask = Mask::ones(size);
    for &r in radii {
        for k in c - r..c + r {
            mask.data[(c - r) * size + k] = 0.0;
            mask.data[(c + r) * size + k] = 0.0;
            mask.data[k * size + (c - r)] = 0.0;
            mask.data[k * size + (c + r)] = 0.0;
        }
    }
    Ok(mask)
}

/// The reference's `np.random.randint(0, S//2, size=int((S//2) * sample_ratio))`: radii
/// uniform in `[0, size/2)`, drawn with replacement, in draw order.
pub fn draw_ifp_radii(size: usize, sample_ratio: f64, rng: &mut impl Rng) -> Vec<usize> {
    let mid = size / 2;
    let n = ((mid as f64) * sample_ratio).floor();
    if mid == 0 || n.is_nan() || n < 1.0 {
        return Vec::new();
    }
    (0..n as usize).map(|_| rng.random_range(0..mid)).collect()
}

/// MFM's base mask, `low_pass = true`: 0 where `radius1^2 <= dx^2 + dy^2 < radius2^2`
/// (`dx, dy` from `size / 2`), 1 elsewhere, so 1 inside `radius1`; `low_pass = false` is its
/// complement (`1 - mask`), exactly as `FreqMaskGenerator.__call__` returns for high-pass.
pub fn mfm_mask(size: usize, radius1: usize, radius2: usize, low_pass: bool) -> Mask {
    let c = size as i128 / 2;
    // Saturating: absurd config radii must not overflow, they just cover the whole square.
    let (r1_sq, r2_sq) = (
        (radius1 as i128).saturating_mul(radius1 as i128),
        (radius2 as i128).saturating_mul(radius2 as i128),
    );
    let mut mask = Mask::ones(size);
    for y in 0..size {
        for x in 0..size {
            let (dy, dx) = (y as i128 - c, x as i128 - c);
            let d2 = dx * dx + dy * dy;
            if d2 >= r1_sq && d2 < r2_sq {
                mask.data[y * size + x] = 0.0;
            }
        }
    }
    if low_pass {
        mask
    } else {
        mask.complement()
    }
}

/// Enough to restart a generator's random stream exactly where it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MaskRngState {
    pub seed: u64,
    /// `ChaCha8Rng::get_word_pos` (32-bit words consumed).
    pub word_pos: u128,
}

/// Produces one mask per training sample.
///
/// * IFP, fixed: radii drawn once in [`MaskGenerator::new`] and the same mask returned forever,
///   as the reference (its transform is built once per run).
/// * IFP, per-sample: fresh radii on every call.
/// * MFM: the disc is fixed by the radii; every call (in both modes, as MFM itself does)
///   draws the low-pass (probability `sample_ratio`) / high-pass coin.
#[derive(Debug, Clone)]
pub struct MaskGenerator {
    filter: FilterType,
    size: usize,
    sample_ratio: f64,
    mode: MaskMode,
    seed: u64,
    rng: ChaCha8Rng,
    fixed_radii: Option<Vec<usize>>,
    /// The IFP fixed mask or the MFM low-pass mask, built once.
    cached: Option<Mask>,
}

impl MaskGenerator {
    /// Validates the parameters and, for IFP in fixed mode, draws the run's radii.
    pub fn new(
        filter: FilterType,
        size: usize,
        sample_ratio: f64,
        radius1: usize,
        radius2: usize,
        mode: MaskMode,
        seed: u64,
    ) -> Result<Self, DataError> {
        if size == 0 {
            return Err(DataError::invalid("mask size", size, "at least 1"));
        }
        let ratio_ok = match filter {
            FilterType::Ifp => sample_ratio.is_finite() && sample_ratio >= 0.0,
            FilterType::Mfm => (0.0..=1.0).contains(&sample_ratio),
        };
        if !ratio_ok {
            let expected = match filter {
                FilterType::Ifp => "finite and >= 0 (IFP: radii drawn = size/2 * ratio)",
                FilterType::Mfm => "in [0, 1] (MFM: low-pass probability)",
            };
            return Err(DataError::invalid(
                "mask sample ratio",
                sample_ratio,
                expected,
            ));
        }
        // More radii than this cannot add anything new and would only cost memory and time.
        let max_ratio = 1_000.0;
        if filter == FilterType::Ifp && sample_ratio > max_ratio {
            return Err(DataError::invalid(
                "mask sample ratio",
                sample_ratio,
                format!("at most {max_ratio}"),
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (fixed_radii, cached) = match (filter, mode) {
            (FilterType::Ifp, MaskMode::Fixed) => {
                let radii = draw_ifp_radii(size, sample_ratio, &mut rng);
                let mask = ifp_mask_from_radii(size, &radii)?;
                (Some(radii), Some(mask))
            }
            (FilterType::Ifp, MaskMode::PerSample) => (None, None),
            (FilterType::Mfm, _) => (None, Some(mfm_mask(size, radius1, radius2, true))),
        };
        Ok(Self {
            filter,
            size,
            sample_ratio,
            mode,
            seed,
            rng,
            fixed_radii,
            cached,
        })
    }

    /// The mask for the next sample.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Mask {
        match (self.filter, &self.cached) {
            (FilterType::Ifp, Some(mask)) => mask.clone(),
            (FilterType::Mfm, Some(low)) => {
                if self.rng.random_bool(self.sample_ratio) {
                    low.clone()
                } else {
                    low.complement()
                }
            }
            _ => {
                let radii = draw_ifp_radii(self.size, self.sample_ratio, &mut self.rng);
                // Radii come from `[0, size/2)`, so this cannot fail; fall back to keep-all
                // rather than panic in a training step.
                ifp_mask_from_radii(self.size, &radii).unwrap_or_else(|_| Mask::ones(self.size))
            }
        }
    }

    /// The IFP radii drawn at construction (fixed mode only).
    pub fn fixed_radii(&self) -> Option<&[usize]> {
        self.fixed_radii.as_deref()
    }

    pub fn filter(&self) -> FilterType {
        self.filter
    }

    pub fn mode(&self) -> MaskMode {
        self.mode
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn rng_state(&self) -> MaskRngState {
        MaskRngState {
            seed: self.seed,
            word_pos: self.rng.get_word_pos(),
        }
    }

    /// Restores a state from [`MaskGenerator::rng_state`]. The fixed radii are not redrawn:
    /// a generator rebuilt with the same seed already has them.
    pub fn set_rng_state(&mut self, state: MaskRngState) {
        self.seed = state.seed;
        self.rng = ChaCha8Rng::seed_from_u64(state.seed);
        self.rng.set_word_pos(state.word_pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IFP rule restated without slices: a pixel is removed when its Chebyshev distance
    /// from the centre is a drawn radius r > 0, except the ring's bottom-right corner, which
    /// the half-open slices never reach.
    fn rule(size: usize, radii: &[usize]) -> Mask {
        let c = size as i64 / 2;
        let mut m = Mask::ones(size);
        for y in 0..size as i64 {
            for x in 0..size as i64 {
                let (dy, dx) = (y - c, x - c);
                let d = dy.abs().max(dx.abs());
                if d >= 1 && radii.contains(&(d as usize)) && !(dy == d && dx == d) {
                    m.data[(y * size as i64 + x) as usize] = 0.0;
                }
            }
        }
        m
    }

    #[test]
    fn slices_match_the_rule() {
        for size in [2usize, 5, 16, 17, 32] {
            let radii: Vec<usize> = (0..size / 2).step_by(2).collect();
            let m = ifp_mask_from_radii(size, &radii).expect("valid radii");
            assert_eq!(m, rule(size, &radii), "size {size}");
        }
        assert_eq!(ifp_mask_from_radii(16, &[0]).expect("r0").num_zeros(), 0);
        let err = ifp_mask_from_radii(16, &[8]).expect_err("r = S/2");
        assert!(err.to_string().contains('8'), "{err}");
    }

    #[test]
    fn radii_count_and_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let r = draw_ifp_radii(224, 0.5, &mut rng);
        assert_eq!(r.len(), 56);
        assert!(r.iter().all(|&v| v < 112));
        assert!(draw_ifp_radii(1, 0.5, &mut rng).is_empty());
    }

    #[test]
    fn mfm_low_and_high_pass() {
        let low = mfm_mask(32, 4, 999, true);
        assert_eq!(low.get(16, 16), 1.0);
        assert_eq!(low.get(16, 19), 1.0);
        assert_eq!(low.get(16, 20), 0.0);
        assert_eq!(low.get(0, 0), 0.0);
        let high = mfm_mask(32, 4, 999, false);
        assert_eq!(high, low.complement());
        let ring = mfm_mask(32, 2, 4, true);
        assert_eq!(
            (ring.get(16, 17), ring.get(16, 18), ring.get(16, 20)),
            (1.0, 0.0, 1.0)
        );
    }

    #[test]
    fn fixed_ifp_generator_repeats_its_mask() {
        let mut g =
            MaskGenerator::new(FilterType::Ifp, 32, 0.5, 16, 999, MaskMode::Fixed, 9).expect("ok");
        let radii = g.fixed_radii().expect("fixed").to_vec();
        assert_eq!(radii.len(), 8);
        let first = g.next();
        assert_eq!(first, ifp_mask_from_radii(32, &radii).expect("mask"));
        assert_eq!(g.next(), first);
    }

    #[test]
    fn per_sample_generator_resumes_exactly() {
        let new = || {
            MaskGenerator::new(FilterType::Ifp, 32, 0.5, 0, 0, MaskMode::PerSample, 5).expect("ok")
        };
        let mut a = new();
        a.next();
        let state = a.rng_state();
        let expected: Vec<Mask> = (0..3).map(|_| a.next()).collect();
        let mut b = new();
        b.set_rng_state(state);
        let got: Vec<Mask> = (0..3).map(|_| b.next()).collect();
        assert_eq!(got, expected);
        assert_ne!(expected[0], expected[1]);
    }

    #[test]
    fn mfm_generator_mixes_low_and_high_pass() {
        let mut g =
            MaskGenerator::new(FilterType::Mfm, 16, 0.5, 4, 999, MaskMode::Fixed, 1).expect("ok");
        let low = mfm_mask(16, 4, 999, true);
        let lows = (0..200).filter(|_| g.next() == low).count();
        assert!((60..140).contains(&lows), "{lows}");
        assert!(MaskGenerator::new(FilterType::Mfm, 16, 1.5, 4, 9, MaskMode::Fixed, 1).is_err());
    }
}
