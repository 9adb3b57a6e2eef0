//! With the `cuda` feature, compiles the trainer's own CUDA kernels
//! (`src/kernels/cuda/*.cu`) to PTX with nvcc, as candle-kernels does for candle's; the
//! PTX is embedded in the library and loaded on the first launch. Without the feature it does
//! nothing, so CPU builds need no CUDA toolkit.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const KERNELS: &[&str] = &[
    "attention",
    "bias",
    "conv",
    "depthwise",
    "dwconv",
    "gate",
    "mdta",
    "norm",
    "normalize",
    "optim",
    "token",
    "window",
];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // nvcc from CUDA_HOME (docker/build-cuda.sh sets it), else from PATH.
    let nvcc = env::var_os("CUDA_HOME")
        .map(|h| PathBuf::from(h).join("bin/nvcc"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    // PTX for the lowest architecture the kernels need (bf16 arithmetic: 8.0) unless a compute
    // capability is named; the driver compiles it for the GPU it runs on.
    let cap = env::var("CUDA_COMPUTE_CAP")
        .ok()
        .and_then(|c| c.trim().parse::<u32>().ok())
        .unwrap_or(80)
        .max(80);
    // Included by the kernels that read float32 or bfloat16.
    println!("cargo::rerun-if-changed=src/kernels/cuda/dtype.cuh");
    for name in KERNELS {
        let src = format!("src/kernels/cuda/{name}.cu");
        println!("cargo::rerun-if-changed={src}");
        let ptx = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", &format!("-arch=compute_{cap}"), "-O3", "-o"])
            .arg(&ptx)
            .arg(&src)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{} failed on {src} ({s})", nvcc.display()),
            Err(e) => panic!(
                "cannot run {} for {src}: {e} (the cuda feature needs nvcc: run docker/build-cuda.sh)",
                nvcc.display()
            ),
        }
    }
}
