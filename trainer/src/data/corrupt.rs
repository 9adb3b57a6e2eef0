//! The IFP corruption: remove masked frequencies from each channel's spectrum and
//! transform back, taking the real part (`normal`/`masked` targets) or the modulus
//! (`m_masked`/`m_m_masked`), clamped to [0, 1]; plus the ImageNet normalisation applied to the
//! network input and target. Computed in `f64` with reusable rustfft plans, since it runs on
//! every training sample.

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

use super::image::Image;
use super::mask::Mask;
use super::DataError;

/// ImageNet channel means (torchvision `Normalize`).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// How the masked spectrum is brought back to pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CorruptionKind {
    /// `IFP.frequency_transform`: real part of the inverse FFT.
    Real,
    /// `IFP.frequency_m_transform`: modulus of the inverse FFT. The reference rebuilds the
    /// spectrum as `|F| * mask * e^{i angle(F)}`, which is `F * mask`.
    Modulus,
}

/// FFT plans and buffers for `size x size` planes, built once and reused for every sample.
#[derive(Clone)]
pub struct Corruptor {
    size: usize,
    fft: Arc<dyn Fft<f64>>,
    ifft: Arc<dyn Fft<f64>>,
    buf: Vec<Complex<f64>>,
    tmp: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
    /// The mask moved to the unshifted layout and transposed, matching `tmp`.
    mask_t: Vec<f64>,
}

impl std::fmt::Debug for Corruptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Corruptor")
            .field("size", &self.size)
            .finish()
    }
}

fn transpose(src: &[Complex<f64>], dst: &mut [Complex<f64>], n: usize) {
    for r in 0..n {
        for c in 0..n {
            dst[c * n + r] = src[r * n + c];
        }
    }
}

impl Corruptor {
    pub fn new(size: usize) -> Result<Self, DataError> {
        if size == 0 {
            return Err(DataError::invalid("corruption size", size, "at least 1"));
        }
        let mut planner = FftPlanner::new();
        let fft = planner.plan_fft_forward(size);
        let ifft = planner.plan_fft_inverse(size);
        let scratch_len = fft
            .get_inplace_scratch_len()
            .max(ifft.get_inplace_scratch_len());
        let zero = Complex::new(0.0, 0.0);
        Ok(Self {
            size,
            fft,
            ifft,
            buf: vec![zero; size * size],
            tmp: vec![zero; size * size],
            scratch: vec![zero; scratch_len],
            mask_t: vec![1.0; size * size],
        })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Corrupts `channels` planes of `size x size` (CHW; any `N * C` planes work, all with the
    /// same mask) and returns the result in the same layout.
    pub fn apply(
        &mut self,
        kind: CorruptionKind,
        x: &[f32],
        channels: usize,
        mask: &Mask,
    ) -> Result<Vec<f32>, DataError> {
        let mut out = vec![0.0f32; x.len()];
        self.apply_into(kind, x, channels, mask, &mut out)?;
        Ok(out)
    }

    /// [`Corruptor::apply`] writing into a caller-owned buffer of the same length as `x`.
    pub fn apply_into(
        &mut self,
        kind: CorruptionKind,
        x: &[f32],
        channels: usize,
        mask: &Mask,
        out: &mut [f32],
    ) -> Result<(), DataError> {
        let s = self.size;
        let plane = s * s;
        if x.len() != channels * plane {
            return Err(DataError::shape(
                "corruption input",
                format!("{} values ({channels}x{s}x{s})", channels * plane),
                x.len(),
            ));
        }
        if out.len() != x.len() {
            return Err(DataError::shape("corruption output", x.len(), out.len()));
        }
        self.load_mask(mask)?;
        for (src, dst) in x.chunks_exact(plane).zip(out.chunks_exact_mut(plane)) {
            self.plane(kind, src, dst);
        }
        Ok(())
    }

    /// Corrupts a square image of this corruptor's size.
    pub fn apply_image(
        &mut self,
        kind: CorruptionKind,
        img: &Image,
        mask: &Mask,
    ) -> Result<Image, DataError> {
        if img.width != self.size || img.height != self.size {
            return Err(DataError::shape(
                "corruption image",
                format!("{0}x{0}", self.size),
                format!("{}x{}", img.width, img.height),
            ));
        }
        let data = self.apply(kind, &img.data, super::image::CHANNELS, mask)?;
        Image::new(img.width, img.height, data)
    }

    /// `fftshift(F) * mask` then `ifftshift` equals `F * M` with
    /// `M[ky][kx] = mask[(ky + S/2) % S][(kx + S/2) % S]`; stored transposed for the column pass.
    fn load_mask(&mut self, mask: &Mask) -> Result<(), DataError> {
        let s = self.size;
        if mask.size != s || mask.data.len() != s * s {
            return Err(DataError::shape(
                "spectrum mask",
                format!("{s}x{s}"),
                format!("size {} with {} values", mask.size, mask.data.len()),
            ));
        }
        let h = s / 2;
        for ky in 0..s {
            for kx in 0..s {
                self.mask_t[kx * s + ky] = f64::from(mask.data[((ky + h) % s) * s + (kx + h) % s]);
            }
        }
        Ok(())
    }

    fn plane(&mut self, kind: CorruptionKind, src: &[f32], dst: &mut [f32]) {
        let s = self.size;
        for (b, &v) in self.buf.iter_mut().zip(src) {
            *b = Complex::new(f64::from(v), 0.0);
        }
        // Rows, then columns on the transposed buffer; the mask is applied while transposed.
        self.fft
            .process_with_scratch(&mut self.buf, &mut self.scratch);
        transpose(&self.buf, &mut self.tmp, s);
        self.fft
            .process_with_scratch(&mut self.tmp, &mut self.scratch);
        for (t, &m) in self.tmp.iter_mut().zip(&self.mask_t) {
            *t *= m;
        }
        self.ifft
            .process_with_scratch(&mut self.tmp, &mut self.scratch);
        transpose(&self.tmp, &mut self.buf, s);
        self.ifft
            .process_with_scratch(&mut self.buf, &mut self.scratch);
        // rustfft is unnormalised; numpy/torch ifft2 divide by S*S.
        let norm = 1.0 / (s * s) as f64;
        for (d, b) in dst.iter_mut().zip(&self.buf) {
            let v = match kind {
                CorruptionKind::Real => b.re * norm,
                CorruptionKind::Modulus => b.norm() * norm,
            };
            *d = v.clamp(0.0, 1.0) as f32;
        }
    }
}

/// One-shot `IFP.frequency_transform` on `channels` planes of `size x size`.
pub fn frequency_transform(
    x: &[f32],
    channels: usize,
    size: usize,
    mask: &Mask,
) -> Result<Vec<f32>, DataError> {
    Corruptor::new(size)?.apply(CorruptionKind::Real, x, channels, mask)
}

/// One-shot `IFP.frequency_m_transform` on `channels` planes of `size x size`.
pub fn frequency_m_transform(
    x: &[f32],
    channels: usize,
    size: usize,
    mask: &Mask,
) -> Result<Vec<f32>, DataError> {
    Corruptor::new(size)?.apply(CorruptionKind::Modulus, x, channels, mask)
}

fn check_normalize(len: usize, channels: usize, hw: usize) -> Result<(), DataError> {
    if channels != 3 {
        return Err(DataError::invalid(
            "normalisation channels",
            channels,
            "3 (ImageNet statistics are RGB)",
        ));
    }
    if hw == 0 || !len.is_multiple_of(channels * hw) {
        return Err(DataError::shape(
            "normalisation input",
            format!("a multiple of {channels}x{hw} values"),
            len,
        ));
    }
    Ok(())
}

/// `(v - mean[c]) / std[c]` in place on `N` stacked CHW images of `hw` pixels each.
pub fn normalize_imagenet(x: &mut [f32], channels: usize, hw: usize) -> Result<(), DataError> {
    check_normalize(x.len(), channels, hw)?;
    for (p, plane) in x.chunks_exact_mut(hw).enumerate() {
        let (m, s) = (IMAGENET_MEAN[p % 3], IMAGENET_STD[p % 3]);
        plane
            .iter_mut()
            .for_each(|v| *v = ((f64::from(*v) - m) / s) as f32);
    }
    Ok(())
}

/// Inverse of [`normalize_imagenet`] (for previews of network outputs).
pub fn denormalize_imagenet(x: &mut [f32], channels: usize, hw: usize) -> Result<(), DataError> {
    check_normalize(x.len(), channels, hw)?;
    for (p, plane) in x.chunks_exact_mut(hw).enumerate() {
        let (m, s) = (IMAGENET_MEAN[p % 3], IMAGENET_STD[p % 3]);
        plane
            .iter_mut()
            .for_each(|v| *v = (f64::from(*v) * s + m) as f32);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::mask::ifp_mask_from_radii;

    fn input(channels: usize, s: usize) -> Vec<f32> {
        (0..channels * s * s)
            .map(|i| ((i * 7919) % 1000) as f32 / 999.0)
            .collect()
    }

    #[test]
    fn keep_all_mask_returns_the_input() {
        for s in [7usize, 8] {
            let x = input(3, s);
            for kind in [CorruptionKind::Real, CorruptionKind::Modulus] {
                let y = Corruptor::new(s)
                    .expect("plan")
                    .apply(kind, &x, 3, &Mask::ones(s))
                    .expect("apply");
                let err = x
                    .iter()
                    .zip(&y)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(err < 1e-6, "size {s}: {err}");
            }
        }
    }

    #[test]
    fn removing_only_dc_zero_means_the_real_part() {
        // Mask out (c, c) only: the real result is the input minus its mean, before the clamp.
        let s = 8;
        let mut m = Mask::ones(s);
        m.data[(s / 2) * s + s / 2] = 0.0;
        let x: Vec<f32> = (0..s * s).map(|i| 0.5 + 0.1 * ((i % 3) as f32)).collect();
        let mean = x.iter().sum::<f32>() / x.len() as f32;
        let y = frequency_transform(&x, 1, s, &m).expect("apply");
        for (a, b) in x.iter().zip(&y) {
            assert!(((a - mean).clamp(0.0, 1.0) - b).abs() < 1e-6);
        }
    }

    #[test]
    fn shape_errors() {
        let m = ifp_mask_from_radii(8, &[2]).expect("mask");
        assert!(frequency_transform(&[0.0; 10], 3, 8, &m).is_err());
        assert!(frequency_transform(&[0.0; 3 * 16 * 16], 3, 16, &m).is_err());
        let img = Image::filled(8, 6, 0.5);
        let mut c = Corruptor::new(8).expect("plan");
        assert!(c.apply_image(CorruptionKind::Real, &img, &m).is_err());
        assert!(normalize_imagenet(&mut [0.0; 8], 2, 4).is_err());
    }

    #[test]
    fn normalisation_roundtrip() {
        let mut x = input(6, 4);
        let orig = x.clone();
        normalize_imagenet(&mut x, 3, 16).expect("norm");
        assert!((x[16] - ((orig[16] as f64 - 0.456) / 0.224) as f32).abs() < 1e-7);
        assert!((x[3 * 16] - ((orig[3 * 16] as f64 - 0.485) / 0.229) as f32).abs() < 1e-7);
        denormalize_imagenet(&mut x, 3, 16).expect("denorm");
        assert!(x.iter().zip(&orig).all(|(a, b)| (a - b).abs() < 1e-6));
    }
}
