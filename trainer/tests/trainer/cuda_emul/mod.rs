//! The CUDA kernels that wait for a GPU run (`IFP_CUDA_FUSED`), checked on the CPU: each `.cu`
//! source is compiled as plain C++ with the shim in this folder (`emul.h`, and `cuda_bf16.h`
//! for CUDA's header), loaded, and run one emulated thread at a time over a small grid, so its
//! indexing, grid-stride loop and conversions are exercised; the results are compared with the
//! CPU kernels. Float arithmetic is the host's (glibc's `erff`, no contraction), so the GELU
//! gate is compared within float32 rounding and the AdamW update exactly. What this cannot
//! show (launch limits, the PTX compiler's choices) is left to `bench/gpu-check.sh`. One test
//! file per `.cu` file; this one holds the harness.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor, Var};
use libloading::{Library, Symbol};

mod attention;
mod bias;
mod conv;
mod dwconv;
mod gate;
mod mdta;
mod norm;
mod normalize;
mod optim;
mod token;
mod window;

/// A small grid: 3 blocks of 5 threads, so every thread strides over many elements.
const GRID: u32 = 3;
const BLOCK: u32 = 5;

/// `trainer/src/kernels/cuda/<name>.cu` compiled with the shim into a shared library in `dir`.
fn build(name: &str, dir: &Path) -> Library {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = here.join(format!("src/kernels/cuda/{name}.cu"));
    let shim = here.join("tests/trainer/cuda_emul");
    let lib = dir.join(format!("{name}.so"));
    let cxx = std::env::var_os("CXX").map_or_else(|| PathBuf::from("c++"), PathBuf::from);
    let out = Command::new(&cxx)
        .args(["-O1", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off"])
        .arg("-I")
        .arg(&shim)
        .args(["-include", "emul.h", "-x", "c++"])
        .arg(&src)
        .arg("-o")
        .arg(&lib)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run the C++ compiler {} (set CXX): {e}",
                cxx.display()
            )
        });
    assert!(
        out.status.success(),
        "{} failed on {}:\n{}",
        cxx.display(),
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // SAFETY: a library just built from the kernel's source; its initialisers only zero globals.
    unsafe { Library::new(&lib) }.expect("load the emulated kernels")
}

/// Runs `call` once per thread of the emulated grid, telling the library which thread it is.
fn launch(lib: &Library, mut call: impl FnMut()) {
    // SAFETY: `ifp_emul_set` has this signature in emul.h.
    let set: Symbol<unsafe extern "C" fn(u32, u32, u32, u32)> =
        unsafe { lib.get(b"ifp_emul_set") }.expect("ifp_emul_set");
    for block in 0..GRID {
        for thread in 0..BLOCK {
            // SAFETY: plain values.
            unsafe { set(block, thread, BLOCK, GRID) };
            call();
        }
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().and_then(|t| t.to_vec1()).expect("values")
}

/// A CPU variable of normal values.
fn var(mean: f32, std: f32, shape: impl Into<candle_core::Shape>) -> Var {
    Var::from_tensor(&Tensor::randn(mean, std, shape, &Device::Cpu).expect("randn")).expect("var")
}

/// Relative L2 distance of `a` from `b`.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n.max(1e-30)).sqrt()
}

/// Panics unless `got` has `want`'s length, every element written (finite) and is within `tol`
/// of it (relative L2).
fn close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{what}: every element written"
    );
    let e = rel(got, want);
    assert!(e < tol, "{what}: relative error {e}");
}

/// Panics at the first element where `got` and `want` differ, naming it.
fn assert_same<T: PartialEq + std::fmt::Debug>(got: &[T], want: &[T], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: element {i} is {:?}, expected {:?}",
            got[i], want[i]
        );
    }
}
