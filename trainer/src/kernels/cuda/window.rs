//! CUDA launch of Uformer's window partition / reverse (`window.cu`), float32 and bfloat16:
//! one permuting copy instead of two rolls (narrows and concatenations) and a contiguous
//! permute, and the same backward; and, float32 only, the reverse with the LeWin block's
//! residual added and its windows' gradient.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result};

use super::{err, f32_storage, f32_view, grid, view};
use crate::kernels::window::{WindowGrid, WindowShuffle};

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
    let [win, shift, h, w] = grid_args(&op.grid, "window shuffle")?;
    let args = [win, shift, h, w, i32::from(op.reverse)];
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

/// The grid's sizes as the kernels' `int` arguments.
fn grid_args(g: &WindowGrid, what: &str) -> Result<[i32; 4]> {
    let int = |v: usize| {
        i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what}: {v} above i32")))
    };
    Ok([int(g.win)?, int(g.shift)?, int(g.h)?, int(g.w)?])
}

/// Runs window.cu's scaled kernel `name` on `inputs` (float32 views, before the scales in its
/// arguments) with one scale per image: a new tensor of `total` values in rows of `c`.
fn launch_scaled(
    name: &str,
    inputs: &[CudaView<f32>],
    (dev, scales): (&CudaDevice, &[f32]),
    g: &WindowGrid,
    (total, c): (usize, usize),
) -> Result<CudaStorage> {
    let [win, shift, h, w] = grid_args(g, name)?;
    let s = dev.clone_htod(scales)?;
    let f = dev.get_or_load_custom_func(name, MODULE, PTX)?;
    // SAFETY: the kernel writes every output element.
    let out = unsafe { dev.alloc::<f32>(total)? };
    let (total64, c64) = (total as i64, c as i64);
    let mut b = f.builder();
    for v in inputs {
        b.arg(v);
    }
    b.arg(&s).arg(&out).arg(&total64).arg(&c64);
    b.arg(&win).arg(&shift).arg(&h).arg(&w);
    // SAFETY: argument types and order match ifp_window_reverse_add_f32 and
    // ifp_window_partition_scaled_f32 in window.cu (their inputs, the scales, the output, the
    // sizes).
    unsafe { b.launch(grid(total, 256)) }.w()?;
    Ok(f32_storage(dev.clone(), out))
}

/// `x + scale[b] * reverse(windows)` of `images` images of `c` channels (shapes checked by the
/// caller, `x` of the image's), scale 1 for all without `scales`.
pub(in crate::kernels) fn reverse_add(
    (windows, lw): (&CudaStorage, &Layout),
    (x, lx): (&CudaStorage, &Layout),
    scales: Option<&[f32]>,
    g: &WindowGrid,
    (images, c): (usize, usize),
) -> Result<CudaStorage> {
    const WHAT: &str = "window reverse with residual";
    let inputs = [f32_view(windows, lw, WHAT)?, f32_view(x, lx, WHAT)?];
    let ones = vec![1f32; images];
    let scales = (&x.device, scales.unwrap_or(&ones));
    let name = "ifp_window_reverse_add_f32";
    launch_scaled(name, &inputs, scales, g, (lx.shape().elem_count(), c))
}

/// `partition(dy * scale[b])` of images of `c` channels: the windows' gradient of
/// [`reverse_add`] with scales.
pub(in crate::kernels) fn partition_scaled(
    (dy, l): (&CudaStorage, &Layout),
    scales: &[f32],
    g: &WindowGrid,
    c: usize,
) -> Result<CudaStorage> {
    let inputs = [f32_view(dy, l, "scaled window partition")?];
    let name = "ifp_window_partition_scaled_f32";
    launch_scaled(
        name,
        &inputs,
        (&dy.device, scales),
        g,
        (l.shape().elem_count(), c),
    )
}
