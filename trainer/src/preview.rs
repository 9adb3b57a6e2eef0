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
/// The largest training crop the preview draws; a larger `DATA.IMG_SIZE` is drawn at this side
/// with the MFM radii scaled alike (IFP's rings scale with the side by themselves), so the
/// picture keeps its proportions and a 4096-pixel crop costs the web process nothing.
pub const PREVIEW_CROP: usize = 256;
/// White space between tiles.
const GAP: usize = 6;
/// The tiles, left to right.
pub const CAPTIONS: [&str; 4] = [
    "noise image",
    "clean crop",
    "spectrum mask (centred)",
    "corrupted input",
];

/// The four tiles side by side (`CAPTIONS` order), as one RGB image in [0, 1]. An MFM run draws
/// each crop low-pass or high-pass at random, so its preview shows one draw of each, low-pass
/// on top (the second row leaves the noise tile blank); IFP shows one draw.
pub fn render(cfg: &Config) -> Result<Image> {
    let cfg = &bounded(cfg);
    let noise = noise_image(cfg)?;
    let mut sampler = Sampler::from_config(cfg)?;
    let s = cfg.data.img_size;
    let mut examples = Vec::new();
    if cfg.data.filter_type.eq_ignore_ascii_case("MFM") {
        // The first low-pass and the first high-pass draw (the mask keeps the centre, zero
        // frequency, only when it is low-pass); SAMPLE_RATIO 0 or 1 only ever draws one kind.
        let (mut low, mut high) = (None, None);
        for _ in 0..64 {
            let b = sampler.next_batch(1, &Device::Cpu)?;
            let m: Vec<f32> = b.mask.flatten_all()?.to_vec1()?;
            let slot = if m[(s / 2) * s + s / 2] > 0.5 {
                &mut low
            } else {
                &mut high
            };
            if slot.is_none() {
                *slot = Some((b, m));
            }
            if low.is_some() && high.is_some() {
                break;
            }
        }
        examples.extend(low);
        examples.extend(high);
    } else {
        let b = sampler.next_batch(1, &Device::Cpu)?;
        let m: Vec<f32> = b.mask.flatten_all()?.to_vec1()?;
        examples.push((b, m));
    }
    let blank = Image::filled(TILE, TILE, 1.0);
    let mut rows = Vec::new();
    for (i, (batch, mask)) in examples.iter().enumerate() {
        let mut mask_rgb = Vec::with_capacity(3 * s * s);
        for _ in 0..3 {
            mask_rgb.extend_from_slice(mask);
        }
        let mask = Image::new(s, s, mask_rgb)?;
        let first = if i == 0 {
            fit(&noise, true)
        } else {
            blank.clone()
        };
        let tiles = [
            first,
            fit(&batch.first_clean, false),
            fit(&mask, false),
            fit(&batch.first_corrupted, false),
        ];
        let cells: Vec<Image> = tiles
            .iter()
            .map(|t| panels::centred(t, TILE, TILE))
            .collect();
        rows.push(panels::row(&cells.iter().collect::<Vec<_>>(), GAP));
    }
    Ok(panels::column(&rows.iter().collect::<Vec<_>>(), GAP))
}

/// The config the preview draws from. The web process renders a preview on every form change,
/// so a generated noise image is drawn at most [`PREVIEW_SIDE`] a side (same statistics and
/// seed; the run itself uses the full size) and the crop at most [`PREVIEW_CROP`]: a huge
/// `NOISE.WIDTH` or `IMG_SIZE` costs the preview nothing.
fn bounded(cfg: &Config) -> Config {
    let mut cfg = cfg.clone();
    cfg.data.noise.width = cfg.data.noise.width.min(PREVIEW_SIDE);
    cfg.data.noise.height = cfg.data.noise.height.min(PREVIEW_SIDE);
    if cfg.data.img_size > PREVIEW_CROP {
        let scale = PREVIEW_CROP as f64 / cfg.data.img_size as f64;
        cfg.data.img_size = PREVIEW_CROP;
        cfg.data.mask_radius1 *= scale;
        cfg.data.mask_radius2 *= scale;
    }
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
    fn a_huge_crop_is_previewed_at_a_bounded_side_in_proportion() {
        let mut cfg = crate::config::preset("tiny").expect("tiny preset");
        cfg.data.img_size = 4096;
        cfg.data.batch_size = 1000;
        cfg.data.mask_radius1 = 512.0;
        let b = bounded(&cfg);
        assert_eq!(b.data.img_size, PREVIEW_CROP);
        assert_eq!(b.data.mask_radius1, 32.0);
        let img = render(&cfg).expect("preview");
        assert_eq!((img.width, img.height), (4 * TILE + 3 * GAP, TILE));
        // Small crops are drawn as the run draws them.
        assert_eq!(
            bounded(&crate::config::preset("tiny").expect("tiny"))
                .data
                .img_size,
            32
        );
    }

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
    fn an_mfm_preview_shows_a_low_pass_and_a_high_pass_draw() {
        let mut cfg = crate::config::preset("tiny").expect("tiny preset");
        cfg.data.filter_type = "MFM".into();
        cfg.data.sample_ratio = 0.5;
        let img = render(&cfg).expect("preview");
        assert_eq!(
            (img.width, img.height),
            (4 * TILE + 3 * GAP, 2 * TILE + GAP)
        );
        // The mask tiles' centre pixels: kept (white) on top, removed (black) below.
        let x = 2 * (TILE + GAP) + TILE / 2;
        let at = |y: usize| img.data[y * img.width + x];
        assert_eq!(at(TILE / 2), 1.0, "low-pass on top keeps the centre");
        assert_eq!(at(TILE + GAP + TILE / 2), 0.0, "high-pass below removes it");
        // With SAMPLE_RATIO 1 every draw is low-pass: one row.
        cfg.data.sample_ratio = 1.0;
        assert_eq!(render(&cfg).expect("preview").height, TILE);
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
