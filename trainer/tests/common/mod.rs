//! Shared helpers of the integration tests: the golden folder and error measures.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{Device, Tensor};

/// `../shared/golden` next to the workspace, or `IFP_GOLDEN_DIR` (a test binary run on another
/// machine, e.g. by `bench/gpu-check.sh`); panics (never skips) when it is missing.
pub fn golden_dir() -> PathBuf {
    let dir = match std::env::var_os("IFP_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/golden")),
    };
    assert!(
        dir.is_dir(),
        "the golden test vectors are required at {} (the shared/ folder beside the repository)",
        dir.display()
    );
    dir
}

/// Where the parity tests run: `IFP_TEST_DEVICE` (`cpu`, `cuda` or `cuda:N`; default cpu), so
/// the same tests check the CUDA build on a GPU machine. Panics on anything else, and on
/// `cuda` in a build without the `cuda` feature, rather than silently testing the CPU.
pub fn test_device() -> Device {
    let want = std::env::var("IFP_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    let ordinal = match want.as_str() {
        "cpu" => return Device::Cpu,
        "cuda" => 0,
        s => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("IFP_TEST_DEVICE={s}: expected cpu, cuda or cuda:N")),
    };
    Device::new_cuda(ordinal).unwrap_or_else(|e| panic!("IFP_TEST_DEVICE={want}: {e}"))
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
