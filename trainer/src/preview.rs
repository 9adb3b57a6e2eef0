//! A picture of what a config trains on, for the submission form: the noise image, then one
//! training example as the trainer draws it (clean crop, spectrum mask, corrupted crop), each
//! scaled into a square tile.

use candle_core::Device;

use crate::batch::{noise_image, Sampler};
use crate::config::Config;
use crate::data::crop::resize_bicubic;
use crate::data::image::Image;
use crate::error::Result;

/// Side of each tile in pixels.
pub const TILE: usize = 160;
/// White space between tiles.
const GAP: usize = 6;
/// The tiles, left to right.
pub const CAPTIONS: [&str; 4] = [
    "noise image",
    "clean crop",
    "spectrum mask (centred)",
    "corrupted input",
];

/// The four tiles side by side (`CAPTIONS` order), as one RGB image in [0, 1].
pub fn render(cfg: &Config) -> Result<Image> {
    let noise = noise_image(cfg)?;
    let mut sampler = Sampler::from_config(cfg)?;
    let batch = sampler.next_batch(1, &Device::Cpu)?;
    let s = cfg.data.img_size;
    let mask: Vec<f32> = batch.mask.flatten_all()?.to_vec1()?;
    let mut mask_rgb = Vec::with_capacity(3 * s * s);
    for _ in 0..3 {
        mask_rgb.extend_from_slice(&mask);
    }
    let mask = Image::new(s, s, mask_rgb)?;
    let tiles = [
        fit(&noise, true),
        fit(&batch.first_clean, false),
        fit(&mask, false),
        fit(&batch.first_corrupted, false),
    ];
    let width = 4 * TILE + 3 * GAP;
    let mut out = Image::filled(width, TILE, 1.0);
    for (i, t) in tiles.iter().enumerate() {
        let x0 = i * (TILE + GAP) + (TILE - t.width) / 2;
        let y0 = (TILE - t.height) / 2;
        for c in 0..3 {
            for y in 0..t.height {
                for x in 0..t.width {
                    out.data[c * width * TILE + (y0 + y) * width + x0 + x] =
                        t.data[c * t.width * t.height + y * t.width + x].clamp(0.0, 1.0);
                }
            }
        }
    }
    Ok(out)
}

/// Scales `img` to fit a tile: smooth (bicubic) for photographs, nearest-neighbour for crops
/// and masks so their pixels stay visible.
fn fit(img: &Image, smooth: bool) -> Image {
    let scale = TILE as f64 / img.width.max(img.height) as f64;
    let w = ((img.width as f64 * scale).round() as usize).clamp(1, TILE);
    let h = ((img.height as f64 * scale).round() as usize).clamp(1, TILE);
    if smooth {
        return resize_bicubic(img, w, h, -0.5);
    }
    let mut data = Vec::with_capacity(3 * w * h);
    for c in 0..3 {
        let plane = img.plane(c);
        for y in 0..h {
            let sy = (y * img.height / h).min(img.height - 1);
            for x in 0..w {
                let sx = (x * img.width / w).min(img.width - 1);
                data.push(plane[sy * img.width + sx]);
            }
        }
    }
    Image {
        width: w,
        height: h,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_preset_preview_has_four_tiles_and_a_binary_mask() {
        let cfg = crate::config::preset("tiny").expect("tiny preset");
        let img = render(&cfg).expect("preview");
        assert_eq!((img.width, img.height), (4 * TILE + 3 * GAP, TILE));
        // The mask tile (third) holds only 0 and 1.
        let x0 = 2 * (TILE + GAP);
        for y in 0..TILE {
            for x in x0..x0 + TILE {
                let v = img.data[y * img.width + x];
                assert!(v == 0.0 || v == 1.0, "mask pixel {v}");
            }
        }
        // The corrupted tile differs from the clean one.
        let tile = |i: usize| -> Vec<f32> {
            let x0 = i * (TILE + GAP);
            (0..TILE)
                .flat_map(|y| (x0..x0 + TILE).map(move |x| (y, x)))
                .map(|(y, x)| img.data[y * img.width + x])
                .collect()
        };
        assert_ne!(tile(1), tile(3));
    }
}
