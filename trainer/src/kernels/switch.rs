//! Which version of an op runs: the per-thread switches (the CPU kernels on or off; the CUDA
//! kernels that wait for a GPU run, `IFP_CUDA_FUSED=1`), the settings that carry them (and the
//! autocast dtype) to the thread that builds an op, and the applicability checks built on them.

use std::cell::Cell;

use candle_core::{DType, Device, Result, Tensor};

use super::amp;

thread_local! {
    /// Off: every op this thread builds takes its composed fallback, the path that runs on
    /// CUDA (and in bf16), so the tests can compare the two on a CPU-only machine. Per thread,
    /// so a test that turns it off does not change the tests running beside it.
    static ENABLED: Cell<bool> = const { Cell::new(true) };
    /// Whether the CUDA kernels that have not yet been shown equal to their composed version
    /// on a GPU run (the fused AdamW update) are used; `IFP_CUDA_FUSED=1` turns them on.
    static CUDA_FUSED: Cell<bool> = Cell::new(cuda_fused_from_env());
}

/// `IFP_CUDA_FUSED=1` (read once per process): the not yet GPU-verified CUDA kernels are on.
/// A value [`cuda_fused_setting`] refuses counts as off here; `ifp` refuses it at start-up.
fn cuda_fused_from_env() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| cuda_fused_setting().unwrap_or(false))
}

/// The value of `IFP_CUDA_FUSED` (see [`parse_cuda_fused`]).
pub fn cuda_fused_setting() -> std::result::Result<bool, String> {
    parse_cuda_fused(std::env::var("IFP_CUDA_FUSED").ok().as_deref())
}

/// `IFP_CUDA_FUSED`: unset, empty or `0` is off, `1` on; anything else is an error naming the
/// value (a `true` or `yes` meant as on must not silently leave the kernels off).
pub fn parse_cuda_fused(value: Option<&str>) -> std::result::Result<bool, String> {
    match value.map(str::trim) {
        None | Some("" | "0") => Ok(false),
        Some("1") => Ok(true),
        Some(other) => Err(format!("IFP_CUDA_FUSED={other:?}: expected 0 or 1")),
    }
}

/// Turns the not yet GPU-verified CUDA kernels on or off for ops built on the calling thread
/// (the GPU check compares them with the composed path in one process).
pub fn set_cuda_fused(on: bool) {
    CUDA_FUSED.with(|e| e.set(on));
}

/// Whether this thread uses the CUDA kernels that wait for a GPU run (see `set_cuda_fused`).
pub fn cuda_fused() -> bool {
    CUDA_FUSED.with(Cell::get)
}

/// Readies `device` for training: on CUDA, where [`cuda_fused`] is on, its memory pool keeps
/// the memory a step frees for the next step. Nothing elsewhere.
pub fn prepare_device(device: &candle_core::Device) -> Result<()> {
    match device {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(d) if cuda_fused() => super::cuda::keep_freed_memory(d),
        _ => Ok(()),
    }
}

/// Whether a kernel runs for `x`: float32 on the CPU with the kernels on, or on CUDA (with the
/// `cuda` feature) in one of `cuda_dtypes` when [`cuda_fused`] is on as well.
pub fn kernel_applies(x: &Tensor, cuda_dtypes: &[DType]) -> bool {
    if !enabled() {
        return false;
    }
    match x.device() {
        Device::Cpu => x.dtype() == DType::F32,
        Device::Cuda(_) => {
            cfg!(feature = "cuda") && cuda_fused() && cuda_dtypes.contains(&x.dtype())
        }
        _ => false,
    }
}

/// Whether an op on `x` takes its fused float32 version (see [`kernel_applies`]).
pub fn fused_applies(x: &Tensor) -> bool {
    kernel_applies(x, &[DType::F32])
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
    cuda_fused: bool,
}

impl Settings {
    /// This thread's settings.
    pub fn current() -> Self {
        Settings {
            low: amp::low_dtype(),
            kernels: enabled(),
            cuda_fused: cuda_fused(),
        }
    }

    /// Runs `f` under these settings on this thread, restoring the thread's own afterwards.
    pub fn apply<T>(self, f: impl FnOnce() -> T) -> T {
        struct Restore(bool, bool);
        impl Drop for Restore {
            fn drop(&mut self) {
                ENABLED.with(|e| e.set(self.0));
                CUDA_FUSED.with(|e| e.set(self.1));
            }
        }
        let _restore = Restore(
            ENABLED.with(|e| e.replace(self.kernels)),
            CUDA_FUSED.with(|e| e.replace(self.cuda_fused)),
        );
        amp::autocast(self.low, f)
    }
}

/// Whether the CPU-only kernels apply to this tensor: [`kernel_applies`] with no CUDA version.
pub fn applicable(x: &Tensor) -> bool {
    kernel_applies(x, &[])
}

#[cfg(test)]
mod tests {
    use super::parse_cuda_fused;

    #[test]
    fn the_cuda_switch_takes_0_or_1_and_names_anything_else() {
        for (value, want) in [
            (None, false),
            (Some(""), false),
            (Some("0"), false),
            (Some(" 1 "), true),
        ] {
            assert_eq!(parse_cuda_fused(value), Ok(want), "{value:?}");
        }
        let err = parse_cuda_fused(Some("yes")).expect_err("yes");
        assert_eq!(err, "IFP_CUDA_FUSED=\"yes\": expected 0 or 1");
    }
}
