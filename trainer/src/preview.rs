//! A picture of what a config trains on, for the submission form: the noise image, then one
//! training example as the trainer draws it (clean crop, spectrum mask, corrupted crop), each
//! scaled into a square tile.

use candle_core::Device;

use crate::batch::{noise_image, Sampler};
use crate::config::Config;
use crate::data::crop::resize_bicubic;
use crate::data::image::Image;
use crate::data::panels;
use crate::error::Result;

/// Side of each tile in pixels.
pub const TILE: usize = 160;
/// The largest side of a generated noise image in the preview.
pub const PREVIEW_SIDE: usize = 1024;
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
    let cfg = &bounded(cfg);
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
    let cells: Vec<Image> = tiles
        .iter()
        .map(|t| panels::centred(t, TILE, TILE))
        .collect();
    Ok(panels::row(&cells.iter().collect::<Vec<_>>(), GAP))
}

/// The config the preview draws from. The web process renders a preview on every form change,
/// so a generated noise image is drawn at most [`PREVIEW_SIDE`] a side (same statistics and
/// seed; the run itself uses the full size): a huge `NOISE.WIDTH` costs the preview nothing.
fn bounded(cfg: &Config) -> Config {
    let mut cfg = cfg.clone();
    cfg.data.noise.width = cfg.data.noise.width.min(PREVIEW_SIDE);
    cfg.data.noise.height = cfg.data.noise.height.min(PREVIEW_SIDE);
    cfg
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
    panels::scale_nearest(img, w, h)
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

    #[test]
    fn a_huge_noise_image_is_previewed_at_a_bounded_size() {
        let mut cfg = crate::config::preset("tiny").expect("tiny preset");
        cfg.data.noise.width = 16384;
        cfg.data.noise.height = 300;
        // 16384 x 16384 float32 RGB would be 3 GiB in the web process.
        let b = bounded(&cfg);
        assert_eq!(
            (b.data.noise.width, b.data.noise.height),
            (PREVIEW_SIDE, 300)
        );
        let img = render(&cfg).expect("preview");
        assert_eq!((img.width, img.height), (4 * TILE + 3 * GAP, TILE));
    }
}
