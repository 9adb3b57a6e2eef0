//! Which version of an op runs: the per-thread switches (the CPU kernels on or off; the CUDA
//! kernels that wait for a GPU run, `IFP_CUDA_FUSED`, each by name), the settings that carry
//! them (and the autocast dtype) to the thread that builds an op, and the applicability checks
//! built on them.

use std::cell::Cell;

use candle_core::{DType, Device, Result, Tensor};

use super::amp;

/// The CUDA kernels (and the memory pool setting) that have not yet been shown equal to their
/// composed versions on a GPU, each named in `IFP_CUDA_FUSED` by its lower-case name, so that a
/// GPU run can turn on exactly those it has verified.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::IntoStaticStr, strum::VariantArray,
)]
#[strum(serialize_all = "lowercase")]
pub enum CudaKernel {
    /// The one-pass AdamW update (`cuda/optim.cu`).
    Optim,
    /// The memory pool keeps what a step frees (`prepare_device`).
    Pool,
    /// The GDFN's GELU gate (`cuda/gate.cu`).
    Gate,
    /// Restormer's channel LayerNorm (`cuda/norm.cu`).
    Norm,
    /// im2col and col2im of the dense convolutions (`cuda/conv.cu`).
    Im2col,
    /// A convolution's bias with its activation (`cuda/bias.cu`).
    Bias,
    /// Uformer's token ops (`cuda/token.cu`).
    Token,
    /// MDTA's row normalisation (`cuda/normalize.cu`).
    Normalize,
    /// The dense convolutions as cuBLAS products on the weight in place, a residual summed by
    /// the product and no stored columns (`cuda/dense.rs`; k x k ones gather with the im2col
    /// kernels).
    Dense,
    /// Uformer's window partition and reverse with their shift (`cuda/window.cu`).
    Window,
    /// The matrix products under bf16 autocast as one op: bfloat16 operands, float32 results
    /// (`cuda/mixed.rs`).
    Mixed,
    /// Uformer's window attention as one op from packed q, k, v (`cuda/attention.cu`).
    Attention,
    /// The LeFF's depthwise convolution on tokens, channels last, with its bias and GELU
    /// (`cuda/dwconv.cu`).
    Dwconv,
    /// Restormer's channel attention as one op: cuBLAS products of the raw rows and the small
    /// kernels around them (`cuda/mdta.rs`, `cuda/mdta.cu`).
    Mdta,
    /// Uformer's linear layers over tokens as one op, to and from the attention's head layout:
    /// cuBLAS products with the bias broadcast into the result (`cuda/linear.rs`).
    Linear,
}

/// The CUDA kernels on when `IFP_CUDA_FUSED` is unset: those a GPU run has shown equal to
/// their composed versions (`bench/gpu-check.sh`). None yet: no GPU run has verified them. A
/// kernel joins this set in the commit that cites the run.
pub const GPU_VERIFIED: CudaKernels = CudaKernels::NONE;

/// A set of [`CudaKernel`]s, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CudaKernels(u16);

impl CudaKernels {
    pub const NONE: CudaKernels = CudaKernels(0);
    pub const ALL: CudaKernels =
        CudaKernels((1 << <CudaKernel as strum::VariantArray>::VARIANTS.len()) - 1);

    fn bit(k: CudaKernel) -> u16 {
        1 << k as u16
    }

    pub fn contains(self, k: CudaKernel) -> bool {
        self.0 & Self::bit(k) != 0
    }

    pub fn with(self, k: CudaKernel) -> Self {
        CudaKernels(self.0 | Self::bit(k))
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// The names of the kernels in the set, as `IFP_CUDA_FUSED` lists them (`none` for none).
impl std::fmt::Display for CudaKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = <CudaKernel as strum::VariantArray>::VARIANTS
            .iter()
            .filter(|k| self.contains(**k))
            .map(|k| k.into())
            .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

thread_local! {
    /// Off: every op this thread builds takes its composed fallback, the path that runs on
    /// CUDA (and in bf16), so the tests can compare the two on a CPU-only machine. Per thread,
    /// so a test that turns it off does not change the tests running beside it.
    static ENABLED: Cell<bool> = const { Cell::new(true) };
    /// The CUDA kernels that have not yet been shown equal to their composed version on a GPU
    /// run that this thread uses (`IFP_CUDA_FUSED`).
    static CUDA_FUSED: Cell<CudaKernels> = Cell::new(cuda_fused_from_env());
}

/// `IFP_CUDA_FUSED` (read once per process): the not yet GPU-verified CUDA kernels that are on.
/// A value [`cuda_fused_setting`] refuses counts as none here; `ifp` refuses it at start-up.
fn cuda_fused_from_env() -> CudaKernels {
    static ON: std::sync::OnceLock<CudaKernels> = std::sync::OnceLock::new();
    *ON.get_or_init(|| cuda_fused_setting().unwrap_or(CudaKernels::NONE))
}

/// The value of `IFP_CUDA_FUSED` (see [`parse_cuda_fused`]).
pub fn cuda_fused_setting() -> std::result::Result<CudaKernels, String> {
    parse_cuda_fused(std::env::var("IFP_CUDA_FUSED").ok().as_deref())
}

/// `IFP_CUDA_FUSED`: unset or empty is [`GPU_VERIFIED`], `0` none, `1` all; otherwise a
/// comma-separated list of [`CudaKernel`] names (`optim,norm`). Anything else is an error naming
/// the value (a `true` or `yes` meant as on must not silently leave the kernels off).
pub fn parse_cuda_fused(value: Option<&str>) -> std::result::Result<CudaKernels, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(GPU_VERIFIED),
        Some("0") => Ok(CudaKernels::NONE),
        Some("1") => Ok(CudaKernels::ALL),
        Some(list) => list.split(',').try_fold(CudaKernels::NONE, |set, name| {
            name.trim()
                .parse::<CudaKernel>()
                .map(|k| set.with(k))
                .map_err(|_| {
                    let names: Vec<&str> = <CudaKernel as strum::VariantArray>::VARIANTS
                        .iter()
                        .map(|k| k.into())
                        .collect();
                    format!(
                        "IFP_CUDA_FUSED={list:?}: expected 0, 1 or a comma-separated list of {}",
                        names.join(", ")
                    )
                })
        }),
    }
}

/// Turns all the not yet GPU-verified CUDA kernels on or off for ops built on the calling
/// thread (the GPU check compares them with the composed path in one process).
pub fn set_cuda_fused(on: bool) {
    set_cuda_kernels(if on {
        CudaKernels::ALL
    } else {
        CudaKernels::NONE
    });
}

/// Sets exactly which of those kernels ops built on the calling thread use.
pub fn set_cuda_kernels(set: CudaKernels) {
    CUDA_FUSED.with(|e| e.set(set));
}

/// Which of the CUDA kernels that wait for a GPU run this thread uses.
pub fn cuda_kernels() -> CudaKernels {
    CUDA_FUSED.with(Cell::get)
}

/// Whether this thread uses any of the CUDA kernels that wait for a GPU run.
pub fn cuda_fused() -> bool {
    !cuda_kernels().is_empty()
}

/// Readies `device` for training: on CUDA, where [`CudaKernel::Pool`] is on, its memory pool
/// keeps the memory a step frees for the next step. Nothing elsewhere.
pub fn prepare_device(device: &candle_core::Device) -> Result<()> {
    match device {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(d) if cuda_kernels().contains(CudaKernel::Pool) => {
            super::cuda::keep_freed_memory(d)
        }
        _ => Ok(()),
    }
}

/// Whether a kernel runs for `x`: float32 on the CPU with the kernels on, or on CUDA (with the
/// `cuda` feature) in one of `cuda_dtypes` when `kernel` is among [`cuda_kernels`] as well
/// (`None`: the kernel has no CUDA version).
pub fn kernel_applies(x: &Tensor, kernel: Option<CudaKernel>, cuda_dtypes: &[DType]) -> bool {
    if !enabled() {
        return false;
    }
    match x.device() {
        Device::Cpu => x.dtype() == DType::F32,
        Device::Cuda(_) => {
            cfg!(feature = "cuda")
                && kernel.is_some_and(|k| cuda_kernels().contains(k))
                && cuda_dtypes.contains(&x.dtype())
        }
        _ => false,
    }
}

/// Whether an op on `x` takes its fused float32 version, `kernel` on CUDA (see
/// [`kernel_applies`]).
pub fn fused_applies(x: &Tensor, kernel: CudaKernel) -> bool {
    kernel_applies(x, Some(kernel), &[DType::F32])
}

/// Turns the CPU kernels on or off for ops built on the calling thread (tests of the fallback
/// path); the choice is made when an op is built, on the thread that runs the model.
pub fn set_enabled(on: bool) {
    ENABLED.with(|e| e.set(on));
}

pub(super) fn enabled() -> bool {
    ENABLED.with(Cell::get)
}

/// The per-thread settings that ops are built under: the autocast dtype and the kernel switch.
/// They must travel with work handed to another thread: a rayon worker that runs a step or a
/// forward may have stolen it while waiting inside another job's work, under that job's
/// settings (say, another run's bf16 autocast).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    low: Option<candle_core::DType>,
    kernels: bool,
    cuda_kernels: CudaKernels,
}

impl Settings {
    /// This thread's settings.
    pub fn current() -> Self {
        Settings {
            low: amp::low_dtype(),
            kernels: enabled(),
            cuda_kernels: cuda_kernels(),
        }
    }

    /// Runs `f` under these settings on this thread, restoring the thread's own afterwards.
    pub fn apply<T>(self, f: impl FnOnce() -> T) -> T {
        struct Restore(bool, CudaKernels);
        impl Drop for Restore {
            fn drop(&mut self) {
                ENABLED.with(|e| e.set(self.0));
                CUDA_FUSED.with(|e| e.set(self.1));
            }
        }
        let _restore = Restore(
            ENABLED.with(|e| e.replace(self.kernels)),
            CUDA_FUSED.with(|e| e.replace(self.cuda_kernels)),
        );
        amp::autocast(self.low, f)
    }
}

/// Whether the CPU-only kernels apply to this tensor: [`kernel_applies`] with no CUDA version.
pub fn applicable(x: &Tensor) -> bool {
    kernel_applies(x, None, &[])
}

#[cfg(test)]
mod tests {
    use super::{parse_cuda_fused, CudaKernel, CudaKernels, GPU_VERIFIED};

    #[test]
    fn the_cuda_switch_takes_0_1_or_kernel_names_and_names_anything_else() {
        let some = CudaKernels::NONE
            .with(CudaKernel::Optim)
            .with(CudaKernel::Im2col);
        for (value, want) in [
            (None, GPU_VERIFIED),
            (Some(""), GPU_VERIFIED),
            (Some("0"), CudaKernels::NONE),
            (Some(" 1 "), CudaKernels::ALL),
            (Some("optim, im2col"), some),
            (Some("token"), CudaKernels::NONE.with(CudaKernel::Token)),
        ] {
            assert_eq!(parse_cuda_fused(value), Ok(want), "{value:?}");
        }
        assert!(some.contains(CudaKernel::Im2col) && !some.contains(CudaKernel::Norm));
        assert_eq!(some.to_string(), "optim,im2col");
        assert_eq!(CudaKernels::NONE.to_string(), "none");
        assert_eq!(
            parse_cuda_fused(Some(&CudaKernels::ALL.to_string())),
            Ok(CudaKernels::ALL)
        );
        assert!([CudaKernel::Pool, CudaKernel::Normalize]
            .iter()
            .all(|k| CudaKernels::ALL.contains(*k)));
        let list = "optim, pool, gate, norm, im2col, bias, token, normalize, dense, window, mixed, attention, dwconv, mdta, linear";
        for bad in ["yes", "norm,true", "norm,"] {
            let err = parse_cuda_fused(Some(bad)).expect_err(bad);
            assert_eq!(
                err,
                format!(
                    "IFP_CUDA_FUSED={bad:?}: expected 0, 1 or a comma-separated list of {list}"
                )
            );
        }
    }
}
