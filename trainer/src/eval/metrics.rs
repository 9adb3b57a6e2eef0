//! Full-reference image-quality metrics as restoration papers report them, matching
//! scikit-image (`peak_signal_noise_ratio`, `structural_similarity` with `gaussian_weights=True,
//! sigma=1.5, use_sample_covariance=False`) on the usual conventions:
//! - images are quantised to 8 bits first (a restored image is judged as the PNG it would be
//!   saved as) and compared as float64 on [0, 255] with `data_range = 255`;
//! - RGB metrics use all three channels (PSNR over every value, SSIM the mean of per-channel
//!   SSIMs, i.e. `channel_axis`);
//! - Y metrics use MATLAB `rgb2ycbcr`'s luma, `Y = 16 + 65.481 R + 128.553 G + 24.966 B` for
//!   R, G, B in [0, 1], unrounded (BasicSR's `to_y_channel`).
//!
//! Checked against `bench/skimage_reference.py` (`trainer/tests/trainer/eval_metrics.rs`).

use serde::{Deserialize, Serialize};

use crate::data::image::{quantise_u8, Image, CHANNELS};
use crate::data::DataError;

/// scikit-image's SSIM constants and Gaussian window (`truncate = 3.5`, so an 11-tap window).
const K1: f64 = 0.01;
const K2: f64 = 0.03;
const SIGMA: f64 = 1.5;
const TRUNCATE: f64 = 3.5;

/// The four numbers reported per image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub psnr: f64,
    pub ssim: f64,
    pub psnr_y: f64,
    pub ssim_y: f64,
}

/// `10 log10(range^2 / mse)` over all values; `inf` for identical inputs (as scikit-image).
pub fn psnr(a: &[f64], b: &[f64], data_range: f64) -> f64 {
    let n = a.len().min(b.len()).max(1) as f64;
    let mse: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>() / n;
    10.0 * (data_range * data_range / mse).log10()
}

/// The side length of scikit-image's Gaussian SSIM window.
pub fn ssim_window() -> usize {
    2 * gaussian_radius() + 1
}

fn gaussian_radius() -> usize {
    (TRUNCATE * SIGMA + 0.5) as usize
}

/// scipy's `gaussian_filter1d` taps: `exp(-x^2 / 2 sigma^2)` for |x| <= radius, normalised.
fn gaussian_taps() -> Vec<f64> {
    let r = gaussian_radius() as i64;
    let mut w: Vec<f64> = (-r..=r)
        .map(|x| (-0.5 * (x * x) as f64 / (SIGMA * SIGMA)).exp())
        .collect();
    let s: f64 = w.iter().sum();
    w.iter_mut().for_each(|v| *v /= s);
    w
}

/// scipy's `mode='reflect'` (d c b a | a b c d | d c b a) for any offset.
fn reflect(i: i64, n: i64) -> usize {
    let period = 2 * n;
    let mut m = i.rem_euclid(period);
    if m >= n {
        m = period - 1 - m;
    }
    m as usize
}

/// Separable Gaussian filter of a row-major `h x w` plane (rows first, then columns, as
/// `scipy.ndimage.gaussian_filter` goes axis by axis; the order does not change the result
/// beyond rounding).
fn gaussian_filter(x: &[f64], w: usize, h: usize, taps: &[f64]) -> Vec<f64> {
    let r = (taps.len() / 2) as i64;
    let mut tmp = vec![0.0; w * h];
    for y in 0..h {
        let row = &x[y * w..(y + 1) * w];
        for xx in 0..w {
            tmp[y * w + xx] = taps
                .iter()
                .enumerate()
                .map(|(k, t)| t * row[reflect(xx as i64 + k as i64 - r, w as i64)])
                .sum();
        }
    }
    let mut out = vec![0.0; w * h];
    for y in 0..h {
        for xx in 0..w {
            out[y * w + xx] = taps
                .iter()
                .enumerate()
                .map(|(k, t)| t * tmp[reflect(y as i64 + k as i64 - r, h as i64) * w + xx])
                .sum();
        }
    }
    out
}

/// SSIM of one `h x w` plane, scikit-image style: Gaussian local statistics with population
/// (co)variances, the SSIM map averaged after cropping `(win - 1) / 2` pixels from every side.
pub fn ssim_plane(
    a: &[f64],
    b: &[f64],
    w: usize,
    h: usize,
    data_range: f64,
) -> Result<f64, DataError> {
    let win = ssim_window();
    if w < win || h < win {
        return Err(DataError::invalid(
            "SSIM image size",
            format!("{w}x{h}"),
            format!("at least {win}x{win} (scikit-image's Gaussian window)"),
        ));
    }
    if a.len() != w * h || b.len() != w * h {
        return Err(DataError::shape("SSIM plane", w * h, a.len().min(b.len())));
    }
    let taps = gaussian_taps();
    let f = |v: &[f64]| gaussian_filter(v, w, h, &taps);
    let prod = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(x, y)| x * y).collect::<Vec<f64>>();
    let (ux, uy) = (f(a), f(b));
    let (uxx, uyy, uxy) = (f(&prod(a, a)), f(&prod(b, b)), f(&prod(a, b)));
    let c1 = (K1 * data_range).powi(2);
    let c2 = (K2 * data_range).powi(2);
    let pad = (win - 1) / 2;
    let mut sum = 0.0;
    let mut count = 0usize;
    for y in pad..h - pad {
        for x in pad..w - pad {
            let i = y * w + x;
            let (mx, my) = (ux[i], uy[i]);
            let vx = uxx[i] - mx * mx;
            let vy = uyy[i] - my * my;
            let vxy = uxy[i] - mx * my;
            let s = ((2.0 * mx * my + c1) * (2.0 * vxy + c2))
                / ((mx * mx + my * my + c1) * (vx + vy + c2));
            sum += s;
            count += 1;
        }
    }
    Ok(sum / count as f64)
}

/// The image as 8-bit values in [0, 255] (planar CHW, float64).
pub fn to_255(img: &Image) -> Vec<f64> {
    img.data
        .iter()
        .map(|&v| f64::from(quantise_u8(v)))
        .collect()
}

/// MATLAB `rgb2ycbcr` luma of planar [0, 255] RGB, unrounded, on [16, 235].
pub fn y_channel(rgb255: &[f64], w: usize, h: usize) -> Vec<f64> {
    let n = w * h;
    (0..n)
        .map(|i| {
            16.0 + (65.481 * rgb255[i] + 128.553 * rgb255[n + i] + 24.966 * rgb255[2 * n + i])
                / 255.0
        })
        .collect()
}

/// PSNR and SSIM of `restored` against `target` (same size, at least 11x11), RGB and Y.
pub fn score(restored: &Image, target: &Image) -> Result<Scores, DataError> {
    if (restored.width, restored.height) != (target.width, target.height) {
        return Err(DataError::shape(
            "restored image",
            format!("{}x{}", target.width, target.height),
            format!("{}x{}", restored.width, restored.height),
        ));
    }
    let (w, h) = (target.width, target.height);
    let (a, b) = (to_255(restored), to_255(target));
    let n = w * h;
    let mut ssim = 0.0;
    for c in 0..CHANNELS {
        ssim += ssim_plane(&a[c * n..(c + 1) * n], &b[c * n..(c + 1) * n], w, h, 255.0)?;
    }
    let (ya, yb) = (y_channel(&a, w, h), y_channel(&b, w, h));
    Ok(Scores {
        psnr: psnr(&a, &b, 255.0),
        ssim: ssim / CHANNELS as f64,
        psnr_y: psnr(&ya, &yb, 255.0),
        ssim_y: ssim_plane(&ya, &yb, w, h, 255.0)?,
    })
}

/// Mean and standard error of the mean (sample standard deviation / sqrt(n); 0 for n < 2).
pub fn mean_se(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, (var / n as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_matches_scipy() {
        // n = 3: 0 1 2 | 2 1 0 | 0 1 2 | 2 1 0 | 0 1 (positions -6..8)
        let got: Vec<usize> = (-4..8).map(|i| reflect(i, 3)).collect();
        assert_eq!(got, vec![2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0, 1]);
    }

    #[test]
    fn identical_images_score_perfectly() {
        let img = Image::new(
            16,
            12,
            (0..3 * 16 * 12).map(|i| (i % 17) as f32 / 16.0).collect(),
        )
        .expect("shape");
        let s = score(&img, &img).expect("score");
        assert!(s.psnr.is_infinite() && s.psnr_y.is_infinite());
        assert!((s.ssim - 1.0).abs() < 1e-12 && (s.ssim_y - 1.0).abs() < 1e-12);
    }

    #[test]
    fn too_small_and_mismatched_images_are_errors() {
        let a = Image::filled(10, 10, 0.5);
        assert!(score(&a, &a).is_err());
        assert!(score(&Image::filled(12, 12, 0.5), &Image::filled(13, 12, 0.5)).is_err());
    }

    #[test]
    fn standard_error() {
        let (m, se) = mean_se(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((se - (1.6666666666666667f64 / 4.0).sqrt()).abs() < 1e-12);
    }
}
