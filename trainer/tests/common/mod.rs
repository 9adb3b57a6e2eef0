//! Shared helpers of the integration tests: the golden folder and error measures.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::Tensor;

/// `../shared/golden` next to the workspace; panics (never skips) when it is missing.
pub fn golden_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/golden"));
    assert!(
        dir.is_dir(),
        "the golden test vectors are required at {} (the shared/ folder beside the repository)",
        dir.display()
    );
    dir
}

/// ||a - b|| / ||b|| over all elements, computed in f64.
pub fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    let a = a
        .to_dtype(candle_core::DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .expect("a");
    let b = b
        .to_dtype(candle_core::DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .expect("b");
    assert_eq!(a.len(), b.len(), "element counts differ");
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}
