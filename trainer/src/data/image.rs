//! In-memory RGB images for the data path: planar CHW `f32` in [0, 1], the layout the crop,
//! the FFT corruption and the network input all share, plus PNG/JPEG loading and PNG saving.

use std::path::Path;

use ::image::{ImageFormat, RgbImage};

use super::DataError;

/// Number of colour channels; the whole pipeline is RGB.
pub const CHANNELS: usize = 3;

/// A planar (CHW) RGB image with values in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    /// `CHANNELS * height * width` values, channel-major then row-major.
    pub data: Vec<f32>,
}

impl Image {
    /// Wraps a CHW buffer, checking that its length matches the dimensions.
    pub fn new(width: usize, height: usize, data: Vec<f32>) -> Result<Self, DataError> {
        let expected = CHANNELS * width * height;
        if data.len() != expected {
            return Err(DataError::shape(
                "image data",
                format!("{expected} values (3x{height}x{width})"),
                data.len(),
            ));
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// An image with every value equal to `value`.
    pub fn filled(width: usize, height: usize, value: f32) -> Self {
        Self {
            width,
            height,
            data: vec![value; CHANNELS * width * height],
        }
    }

    /// One channel plane (row-major `height x width`).
    pub fn plane(&self, channel: usize) -> &[f32] {
        let n = self.width * self.height;
        &self.data[channel * n..(channel + 1) * n]
    }

    /// Converts from 8-bit interleaved RGB.
    pub fn from_rgb8(rgb: &RgbImage) -> Self {
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        let n = w * h;
        let mut data = vec![0.0f32; CHANNELS * n];
        for (idx, px) in rgb.pixels().enumerate() {
            for c in 0..CHANNELS {
                data[c * n + idx] = f32::from(px.0[c]) / 255.0;
            }
        }
        Self {
            width: w,
            height: h,
            data,
        }
    }

    /// Converts to 8-bit interleaved RGB, rounding and clamping each value.
    pub fn to_rgb8(&self) -> Result<RgbImage, DataError> {
        let n = self.width * self.height;
        let w = u32::try_from(self.width)
            .map_err(|_| DataError::invalid("image width", self.width, "at most u32::MAX"))?;
        let h = u32::try_from(self.height)
            .map_err(|_| DataError::invalid("image height", self.height, "at most u32::MAX"))?;
        let mut raw = Vec::with_capacity(CHANNELS * n);
        for idx in 0..n {
            for c in 0..CHANNELS {
                raw.push(quantise_u8(self.data[c * n + idx]));
            }
        }
        RgbImage::from_raw(w, h, raw)
            .ok_or_else(|| DataError::shape("image data", CHANNELS * n, self.data.len()))
    }

    /// Writes the image as an 8-bit PNG.
    pub fn save_png(&self, path: &Path) -> Result<(), DataError> {
        self.to_rgb8()?
            .save_with_format(path, ImageFormat::Png)
            .map_err(|source| DataError::ImageWrite {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Mean and population standard deviation over all values.
    pub fn mean_std(&self) -> (f64, f64) {
        mean_std(&self.data)
    }

    /// Mean and population standard deviation of one channel.
    pub fn channel_mean_std(&self, channel: usize) -> (f64, f64) {
        mean_std(self.plane(channel))
    }

    /// Mirrors the image left-right in place.
    pub fn hflip(&mut self) {
        let w = self.width;
        if w == 0 {
            return;
        }
        for row in self.data.chunks_exact_mut(w) {
            row.reverse();
        }
    }
}

/// `round(clamp(v, 0, 1) * 255)`; NaN maps to 0 so a diverged tensor still saves.
pub fn quantise_u8(v: f32) -> u8 {
    let v = if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
    (v * 255.0).round() as u8
}

fn mean_std(values: &[f32]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

/// Loads a PNG or JPEG (any colour type is converted to RGB8) as values in [0, 1].
pub fn load_image(path: &Path) -> Result<Image, DataError> {
    let img = ::image::open(path).map_err(|source| DataError::ImageRead {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Image::from_rgb8(&img.to_rgb8()))
}

/// Saves a planar image as PNG (see [`Image::save_png`]).
pub fn save_png(img: &Image, path: &Path) -> Result<(), DataError> {
    img.save_png(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_roundtrip_is_exact_on_8bit_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.png");
        let data: Vec<f32> = (0..3 * 5 * 4)
            .map(|i| (i * 4 % 256) as f32 / 255.0)
            .collect();
        let img = Image::new(5, 4, data).expect("shape");
        img.save_png(&path).expect("save");
        let back = load_image(&path).expect("load");
        assert_eq!(back, img);
    }

    #[test]
    fn missing_file_error_names_the_path() {
        let err = load_image(Path::new("/nonexistent/noise.png")).expect_err("must fail");
        assert!(err.to_string().contains("/nonexistent/noise.png"), "{err}");
    }

    #[test]
    fn wrong_length_is_rejected() {
        assert!(Image::new(2, 2, vec![0.0; 11]).is_err());
    }

    #[test]
    fn hflip_mirrors_rows() {
        let mut img = Image::new(3, 1, (0..9).map(|v| v as f32).collect()).expect("shape");
        img.hflip();
        assert_eq!(img.data, vec![2., 1., 0., 5., 4., 3., 8., 7., 6.]);
    }
}
