//! CUDA launch of Uformer's window partition / reverse (`window.cu`), float32 and bfloat16:
//! one permuting copy instead of two rolls (narrows and concatenations) and a contiguous
//! permute, and the same backward.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result};

use super::{err, grid, view};
use crate::kernels::window::WindowShuffle;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/window.ptx"));
const MODULE: &str = "ifp_window";

/// `op` applied to x (rows of `c` channels; the caller checked the shape).
pub(in crate::kernels) fn window_shuffle(
    x: &CudaStorage,
    l: &Layout,
    op: &WindowShuffle,
    c: usize,
) -> Result<CudaStorage> {
    let total = l.shape().elem_count();
    let int = |v: usize| {
        i32::try_from(v)
            .map_err(|_| candle_core::Error::Msg(format!("window shuffle: {v} above i32")))
    };
    let args = [
        int(op.grid.win)?,
        int(op.grid.shift)?,
        int(op.grid.h)?,
        int(op.grid.w)?,
        i32::from(op.reverse),
    ];
    let dev = x.device.clone();
    fn run<T: DeviceRepr>(
        dev: &CudaDevice,
        name: &str,
        x: CudaView<T>,
        total: usize,
        c: usize,
        args: [i32; 5],
    ) -> Result<CudaSlice<T>> {
        let f = dev.get_or_load_custom_func(name, MODULE, PTX)?;
        // SAFETY: the kernel writes every output element.
        let out = unsafe { dev.alloc::<T>(total)? };
        let (total64, c64) = (total as i64, c as i64);
        let mut b = f.builder();
        b.arg(&x).arg(&out).arg(&total64).arg(&c64);
        for a in &args {
            b.arg(a);
        }
        // SAFETY: argument types and order match ifp_window_* in window.cu.
        unsafe { b.launch(grid(total, 256)) }.w()?;
        Ok(out)
    }
    let slice = match &x.slice {
        CudaStorageSlice::F32(s) => {
            let v = view(s, l, "window shuffle")?;
            CudaStorageSlice::F32(run(&dev, "ifp_window_f32", v, total, c, args)?)
        }
        CudaStorageSlice::BF16(s) => {
            let v = view(s, l, "window shuffle")?;
            CudaStorageSlice::BF16(run(&dev, "ifp_window_bf16", v, total, c, args)?)
        }
        _ => return Err(err("window shuffle")),
    };
    Ok(CudaStorage { slice, device: dev })
}
