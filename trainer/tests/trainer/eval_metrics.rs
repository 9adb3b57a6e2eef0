//! PSNR/SSIM (RGB and Y) against scikit-image 0.26 numbers from `bench/skimage_reference.py`
//! (stored in `bench/skimage_reference.json`), on image pairs built from `../shared/data`.

use crate::common;

use ifp_trainer::data::crop::{crop, CropBox};
use ifp_trainer::data::image::{load_image, Image};
use ifp_trainer::eval::metrics::score;

/// The reference script's perturbation: a + ((7x + 13y + 5c) mod 21) - 10, clipped, on 8 bits.
fn perturb(img: &Image) -> Image {
    let (w, h) = (img.width, img.height);
    let mut out = img.clone();
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let i = c * w * h + y * w + x;
                let a = (img.data[i] * 255.0).round() as i64;
                let d = ((7 * x + 13 * y + 5 * c) % 21) as i64 - 10;
                out.data[i] = (a + d).clamp(0, 255) as f32 / 255.0;
            }
        }
    }
    out
}

#[test]
fn metrics_match_scikit_image() {
    let data = common::data_dir();
    let json = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../bench/skimage_reference.json"
    ))
    .expect("bench/skimage_reference.json");
    let refs: serde_json::Value = serde_json::from_str(&json).expect("json");
    let cases = refs["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 4);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let get = |k: &str| case[k].as_u64().expect(k) as usize;
        let load = |k: &str| load_image(&data.join(case[k].as_str().expect(k))).expect(k);
        let (restored, target) = match case["kind"].as_str().expect("kind") {
            "files" => (load("restored"), load("target")),
            kind => {
                let b = CropBox {
                    top: get("top"),
                    left: get("left"),
                    height: get("h"),
                    width: get("w"),
                };
                let target = crop(&load("target"), &b);
                let restored = if kind == "crop" {
                    crop(&load("restored"), &b)
                } else {
                    perturb(&target)
                };
                (restored, target)
            }
        };
        let s = score(&restored, &target).expect("score");
        let want = |k: &str| case[k].as_f64().expect(k);
        for (k, got, tol) in [
            ("psnr", s.psnr, 0.01),
            ("psnr_y", s.psnr_y, 0.01),
            ("ssim", s.ssim, 1e-4),
            ("ssim_y", s.ssim_y, 1e-4),
        ] {
            eprintln!("{name} {k}: {got:.6} (scikit-image {:.6})", want(k));
            assert!(
                (got - want(k)).abs() < tol,
                "{name} {k}: {got} vs {}",
                want(k)
            );
        }
    }
}
