//! Training-example sampling: torchvision's `RandomResizedCrop` (area scale in
//! `[min_scale, 1]`, log-uniform aspect in `[3/4, 4/3]`, 10 tries then a centre crop), a PIL-style
//! antialiased bicubic resize, and a horizontal flip with p = 0.5.
//!
//! The reference applies these transforms to a *PIL* image, so the resize follows Pillow's
//! `Resample.c`: separable, horizontal pass first, pixel-centre sampling, support widened by the
//! downscale factor (antialias), window truncated at the border with the weights renormalised,
//! and Pillow's bicubic kernel, which uses `a = -0.5` ([`PIL_BICUBIC_A`]); PyTorch's tensor
//! bicubic uses `a = -0.75` ([`TORCH_BICUBIC_A`]), available through [`resize_bicubic`].
//! Unlike Pillow we stay in `f32` instead of rounding to 8 bits after each pass (a difference of
//! at most half a grey level).

use rand::Rng;

use super::image::{Image, CHANNELS};
use super::DataError;

/// Pillow's bicubic kernel parameter (`#define a -0.5` in `Resample.c`).
pub const PIL_BICUBIC_A: f64 = -0.5;
/// PyTorch's `interpolate(mode="bicubic")` kernel parameter.
pub const TORCH_BICUBIC_A: f64 = -0.75;
/// torchvision's default aspect-ratio range.
pub const RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
/// How many random boxes torchvision tries before falling back to a centre crop.
const TRIES: usize = 10;

/// `RandomResizedCrop(size, scale=(min_scale, 1))` parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropParams {
    pub size: usize,
    pub min_scale: f64,
}

impl CropParams {
    pub fn validate(&self) -> Result<(), DataError> {
        if self.size == 0 {
            return Err(DataError::invalid("crop size", self.size, "at least 1"));
        }
        if !(self.min_scale > 0.0 && self.min_scale <= 1.0) {
            return Err(DataError::invalid(
                "minimum crop scale",
                self.min_scale,
                "in (0, 1]",
            ));
        }
        Ok(())
    }
}

/// A crop rectangle in source pixels (torchvision's `i, j, h, w`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// `U[lo, hi)` the way `torch.empty(1).uniform_(lo, hi)` computes it; unlike
/// `Rng::random_range` it accepts `lo == hi` (e.g. `min_scale = 1`).
fn uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// torchvision's `RandomResizedCrop.get_params` for a `width x height` image (both >= 1).
/// Python's `round` is round-half-to-even, hence `round_ties_even`.
pub fn crop_params(
    width: usize,
    height: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut impl Rng,
) -> CropBox {
    let area = (width * height) as f64;
    let (log_r0, log_r1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..TRIES {
        let target_area = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, log_r0, log_r1).exp();
        let w = (target_area * aspect).sqrt().round_ties_even();
        let h = (target_area / aspect).sqrt().round_ties_even();
        if w > 0.0 && w <= width as f64 && h > 0.0 && h <= height as f64 {
            let (w, h) = (w as usize, h as usize);
            let top = rng.random_range(0..height - h + 1);
            let left = rng.random_range(0..width - w + 1);
            return CropBox {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (min_r, max_r) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let (w, h) = if in_ratio < min_r {
        (width, (width as f64 / min_r).round_ties_even() as usize)
    } else if in_ratio > max_r {
        ((height as f64 * max_r).round_ties_even() as usize, height)
    } else {
        (width, height)
    };
    // Rounding can only shrink past the image for degenerate 1-pixel sides; keep the box inside.
    let (w, h) = (w.clamp(1, width), h.clamp(1, height));
    CropBox {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

/// Copies a rectangle out of `img`; the box must lie inside the image.
pub fn crop(img: &Image, b: &CropBox) -> Image {
    let (sw, sh) = (img.width, img.height);
    let mut data = Vec::with_capacity(CHANNELS * b.width * b.height);
    for c in 0..CHANNELS {
        let plane = &img.data[c * sw * sh..(c + 1) * sw * sh];
        for y in b.top..b.top + b.height {
            data.extend_from_slice(&plane[y * sw + b.left..y * sw + b.left + b.width]);
        }
    }
    Image {
        width: b.width,
        height: b.height,
        data,
    }
}

/// The cubic convolution kernel with parameter `a` (support 2).
fn cubic(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Per output sample: first source index and normalised weights (Pillow's `precompute_coeffs`).
fn coefficients(in_size: usize, out_size: usize, a: f64) -> Vec<(usize, Vec<f64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // Pillow truncates toward zero then clamps, which equals clamping the float first.
            let xmin = (center - support + 0.5).max(0.0) as usize;
            let xmax = ((center + support + 0.5).max(0.0) as usize).min(in_size);
            let mut w: Vec<f64> = (xmin..xmax)
                .map(|x| cubic((x as f64 - center + 0.5) / filterscale, a))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (xmin, w)
        })
        .collect()
}

/// Resamples every row of a `rows x in_w` plane to `out_w` columns, clamped to [0, 1] as
/// Pillow's 8-bit clip does.
fn resample_rows(src: &[f32], rows: usize, in_w: usize, out_w: usize, a: f64) -> Vec<f32> {
    let coeffs = coefficients(in_w, out_w, a);
    let mut out = Vec::with_capacity(rows * out_w);
    for r in 0..rows {
        let row = &src[r * in_w..(r + 1) * in_w];
        for (start, w) in &coeffs {
            let v: f64 = w
                .iter()
                .zip(&row[*start..])
                .map(|(k, &p)| k * f64::from(p))
                .sum();
            out.push(v.clamp(0.0, 1.0) as f32);
        }
    }
    out
}

fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = src[r * cols + c];
        }
    }
    out
}

/// Pillow-style separable bicubic resize to `out_w x out_h` with kernel parameter `a`
/// (horizontal pass first; a pass whose size is unchanged is skipped, as Pillow does).
pub fn resize_bicubic(img: &Image, out_w: usize, out_h: usize, a: f64) -> Image {
    let (w, h) = (img.width, img.height);
    let mut data = Vec::with_capacity(CHANNELS * out_w * out_h);
    for c in 0..CHANNELS {
        let mut plane = img.data[c * w * h..(c + 1) * w * h].to_vec();
        if out_w != w {
            plane = resample_rows(&plane, h, w, out_w, a);
        }
        if out_h != h {
            let t = transpose(&plane, h, out_w);
            plane = transpose(&resample_rows(&t, out_w, h, out_h, a), out_w, out_h);
        }
        data.extend_from_slice(&plane);
    }
    Image {
        width: out_w,
        height: out_h,
        data,
    }
}

fn check_image(img: &Image) -> Result<(), DataError> {
    if img.width == 0 || img.height == 0 {
        return Err(DataError::invalid(
            "image size",
            format!("{}x{}", img.width, img.height),
            "non-empty",
        ));
    }
    if img.data.len() != CHANNELS * img.width * img.height {
        return Err(DataError::shape(
            "image data",
            CHANNELS * img.width * img.height,
            img.data.len(),
        ));
    }
    Ok(())
}

/// A random crop resized to `p.size x p.size` (no flip).
pub fn random_resized_crop(
    img: &Image,
    p: &CropParams,
    rng: &mut impl Rng,
) -> Result<Image, DataError> {
    p.validate()?;
    check_image(img)?;
    let b = crop_params(img.width, img.height, (p.min_scale, 1.0), RATIO, rng);
    Ok(resize_bicubic(
        &crop(img, &b),
        p.size,
        p.size,
        PIL_BICUBIC_A,
    ))
}

/// Mirrors the image left-right.
pub fn hflip(img: &mut Image) {
    img.hflip();
}

/// One training example: random resized crop, then a flip with p = 0.5 (drawn as
/// `torch.rand(1) < 0.5`, after the crop's draws).
pub fn sample_crop(img: &Image, p: &CropParams, rng: &mut impl Rng) -> Result<Image, DataError> {
    let mut out = random_resized_crop(img, p, rng)?;
    if rng.random::<f64>() < 0.5 {
        out.hflip();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn ramp(w: usize, h: usize) -> Image {
        let data = (0..CHANNELS * w * h)
            .map(|i| ((i * 37) % 101) as f32 / 100.0)
            .collect();
        Image::new(w, h, data).expect("shape")
    }

    #[test]
    fn shape_range_and_determinism() {
        let img = ramp(64, 48);
        let p = CropParams {
            size: 20,
            min_scale: 0.2,
        };
        let a = sample_crop(&img, &p, &mut ChaCha8Rng::seed_from_u64(7)).expect("crop");
        let b = sample_crop(&img, &p, &mut ChaCha8Rng::seed_from_u64(7)).expect("crop");
        assert_eq!((a.width, a.height, a.data.len()), (20, 20, 3 * 400));
        assert!(a.data.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(a, b);
        let c = sample_crop(&img, &p, &mut ChaCha8Rng::seed_from_u64(8)).expect("crop");
        assert_ne!(a, c);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = Image::filled(50, 30, 0.4);
        let p = CropParams {
            size: 17,
            min_scale: 0.2,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..20 {
            let out = sample_crop(&img, &p, &mut rng).expect("crop");
            assert!(out.data.iter().all(|v| (v - 0.4).abs() < 1e-6));
        }
    }

    #[test]
    fn identity_resize_is_exact() {
        let img = ramp(9, 7);
        assert_eq!(resize_bicubic(&img, 9, 7, PIL_BICUBIC_A), img);
        // A full-image crop of a square image at its own size: scale 1 and a square box.
        let sq = ramp(8, 8);
        let b = CropBox {
            top: 0,
            left: 0,
            height: 8,
            width: 8,
        };
        assert_eq!(resize_bicubic(&crop(&sq, &b), 8, 8, TORCH_BICUBIC_A), sq);
    }

    #[test]
    fn upsampling_reproduces_a_linear_ramp_inside() {
        // Cubic convolution is exact on linear functions away from the truncated border.
        let w = 8;
        let data: Vec<f32> = (0..CHANNELS)
            .flat_map(|_| (0..w).map(|x| x as f32 / 10.0))
            .collect();
        let img = Image::new(w, 1, data).expect("shape");
        let out = resize_bicubic(&img, 2 * w, 1, PIL_BICUBIC_A);
        for xx in 4..2 * w - 4 {
            let expect = ((xx as f32 + 0.5) / 2.0 - 0.5) / 10.0;
            assert!((out.data[xx] - expect).abs() < 1e-6, "{xx}");
        }
    }

    #[test]
    fn fallback_is_a_centre_crop() {
        // No 10-try box fits a 100x1 strip, so torchvision falls back to the centre.
        let b = crop_params(100, 1, (0.2, 1.0), RATIO, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(
            b,
            CropBox {
                top: 0,
                left: 49,
                height: 1,
                width: 1
            }
        );
    }

    #[test]
    fn bad_parameters_are_rejected() {
        let img = ramp(8, 8);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for p in [
            CropParams {
                size: 0,
                min_scale: 0.5,
            },
            CropParams {
                size: 4,
                min_scale: 0.0,
            },
            CropParams {
                size: 4,
                min_scale: 1.5,
            },
        ] {
            assert!(random_resized_crop(&img, &p, &mut rng).is_err());
        }
        let full = CropParams {
            size: 4,
            min_scale: 1.0,
        };
        assert!(random_resized_crop(&img, &full, &mut rng).is_ok());
    }
}
