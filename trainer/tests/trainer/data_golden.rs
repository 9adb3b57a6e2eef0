//! Golden checks of the data path against the PyTorch reference's vectors: IFP masks rebuilt
//! from their radii, and the two corruptions plus ImageNet normalisation. Also checks that the
//! generated noise matches the reference noise JPEG.

use std::path::{Path, PathBuf};

use ifp_trainer::data::corrupt::{
    frequency_m_transform, frequency_transform, normalize_imagenet, CorruptionKind, Corruptor,
};
use ifp_trainer::data::image::load_image;
use ifp_trainer::data::mask::{ifp_mask_from_radii, Mask};
use ifp_trainer::data::noise::NoiseSpec;
use safetensors::{Dtype, SafeTensors};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/golden");
const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/reference");
const TOL: f32 = 1e-5;

fn read_required(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}. The shared golden and reference folders ({GOLDEN}, \
             {REFERENCE}) are required for these tests; they must not be skipped",
            path.display()
        )
    })
}

fn golden(name: &str) -> Vec<u8> {
    read_required(&PathBuf::from(GOLDEN).join(name))
}

fn tensor<'a>(st: &'a SafeTensors<'a>, key: &str, dtype: Dtype) -> (Vec<usize>, &'a [u8]) {
    let t = st
        .tensor(key)
        .unwrap_or_else(|e| panic!("golden key {key} missing: {e}"));
    assert_eq!(t.dtype(), dtype, "dtype of {key}");
    (t.shape().to_vec(), t.data())
}

fn i64s(st: &SafeTensors, key: &str) -> (Vec<usize>, Vec<i64>) {
    let (shape, raw) = tensor(st, key, Dtype::I64);
    let v = raw
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    (shape, v)
}

fn f32s(st: &SafeTensors, key: &str) -> (Vec<usize>, Vec<f32>) {
    let (shape, raw) = tensor(st, key, Dtype::F32);
    let v = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    (shape, v)
}

fn f64s(st: &SafeTensors, key: &str) -> Vec<f64> {
    let (_, raw) = tensor(st, key, Dtype::F64);
    raw.chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect()
}

fn golden_mask(st: &SafeTensors, key: &str) -> Mask {
    let (shape, v) = i64s(st, key);
    assert_eq!(shape.len(), 2, "{key} shape");
    assert_eq!(shape[0], shape[1], "{key} shape");
    Mask {
        size: shape[0],
        data: v.iter().map(|&x| x as f32).collect(),
    }
}

#[test]
fn ifp_masks_match_reference() {
    let bytes = golden("ifp_mask.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("ifp_mask.safetensors parses");
    let json: serde_json::Value =
        serde_json::from_slice(&golden("ifp_mask.json")).expect("ifp_mask.json parses");
    for name in ["a", "b", "r0", "seeded"] {
        let expected = golden_mask(&st, &format!("mask_{name}"));
        let (_, radii) = i64s(&st, &format!("radii_{name}"));
        let radii: Vec<usize> = radii.iter().map(|&r| r as usize).collect();
        let meta = &json["masks"][format!("mask_{name}")];
        let json_radii: Vec<usize> = meta["radii"]
            .as_array()
            .expect("radii list")
            .iter()
            .map(|r| r.as_u64().expect("radius") as usize)
            .collect();
        assert_eq!(radii, json_radii, "radii of mask_{name}");
        assert_eq!(meta["size"].as_u64(), Some(expected.size as u64));
        let got = ifp_mask_from_radii(expected.size, &radii).expect("valid radii");
        assert_eq!(got, expected, "mask_{name}");
        assert_eq!(
            Some(got.num_zeros() as u64),
            meta["num_zeros"].as_u64(),
            "num_zeros of mask_{name}"
        );
    }
}

fn max_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn max_err64(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn corruption_matches_reference() {
    let bytes = golden("corruption.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("corruption.safetensors parses");
    let (shape, x) = f32s(&st, "x");
    assert_eq!(shape, vec![2, 3, 32, 32]);
    let (n, c, s) = (shape[0], shape[1], shape[2]);
    let mask = golden_mask(&st, "mask");
    assert_eq!(
        mask,
        ifp_mask_from_radii(32, &[1, 2, 7, 11, 15]).expect("mask_b")
    );

    let per_image = c * s * s;
    let mut real = Vec::with_capacity(x.len());
    let mut modulus = Vec::with_capacity(x.len());
    for img in x.chunks_exact(per_image) {
        real.extend(frequency_transform(img, c, s, &mask).expect("frequency_transform"));
        modulus.extend(frequency_m_transform(img, c, s, &mask).expect("frequency_m_transform"));
    }
    // The reusable corruptor must agree with the one-shot functions on the whole batch.
    let mut corruptor = Corruptor::new(s).expect("plans");
    assert_eq!(
        corruptor
            .apply(CorruptionKind::Real, &x, n * c, &mask)
            .expect("batch"),
        real
    );

    let mut norm_x = x.clone();
    let mut norm_real = real.clone();
    let mut norm_mod = modulus.clone();
    for v in [&mut norm_x, &mut norm_real, &mut norm_mod] {
        normalize_imagenet(v, c, s * s).expect("normalise");
    }

    for (key, got) in [
        ("frequency_transform", &real),
        ("frequency_m_transform", &modulus),
        ("normalized_x", &norm_x),
        ("normalized_frequency_transform", &norm_real),
        ("normalized_frequency_m_transform", &norm_mod),
    ] {
        let (shape_k, want) = f32s(&st, key);
        assert_eq!(shape_k, shape, "{key} shape");
        let err = max_err(got, &want);
        let err64 = max_err64(got, &f64s(&st, &format!("f64.{key}")));
        println!("{key}: max abs error {err:.3e} (float32 key), {err64:.3e} (float64 key)");
        assert!(err <= TOL, "{key}: max abs error {err} > {TOL}");
        // Against the exact (float64) reference too: a float32 computation that matched a
        // float32 golden by sharing its rounding would not get this close.
        assert!(
            err64 <= f64::from(TOL),
            "{key}: max abs error {err64} > {TOL} against the float64 golden"
        );
    }
}

#[test]
fn nothing_masked_leaves_the_clamped_input() {
    let bytes = golden("corruption.safetensors");
    let st = SafeTensors::deserialize(&bytes).expect("corruption.safetensors parses");
    let (shape, x) = f32s(&st, "x");
    let s = shape[2];
    let keep_all = ifp_mask_from_radii(s, &[0]).expect("r0");
    assert_eq!(keep_all.num_zeros(), 0);
    let clamped: Vec<f32> = x.iter().map(|v| v.clamp(0.0, 1.0)).collect();
    let mut corruptor = Corruptor::new(s).expect("plans");
    for kind in [CorruptionKind::Real, CorruptionKind::Modulus] {
        let y = corruptor
            .apply(kind, &x, shape[0] * shape[1], &keep_all)
            .expect("apply");
        let err = max_err(&y, &clamped);
        println!("{kind:?} with nothing masked: max abs error {err:.3e}");
        assert!(err < 1e-6, "{kind:?}: {err}");
    }
}

#[test]
fn reference_noise_jpeg_matches_default_spec() {
    let path = PathBuf::from(REFERENCE).join("noise-0.jpg");
    read_required(&path);
    let img = load_image(&path).expect("reference noise JPEG decodes");
    let spec = NoiseSpec::default();
    assert_eq!((img.width, img.height), (spec.width, spec.height));
    for ch in 0..3 {
        let (mean, std) = img.channel_mean_std(ch);
        println!("noise-0.jpg channel {ch}: mean {mean:.4}, std {std:.4}");
        assert!((mean - spec.mean).abs() < 0.01, "channel {ch} mean {mean}");
        assert!((std - spec.std).abs() < 0.01, "channel {ch} std {std}");
    }
}
