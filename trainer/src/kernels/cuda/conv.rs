//! CUDA launches of the im2col gather of a "same" k x k convolution and its adjoint col2im
//! (`conv.cu`), float32 and bfloat16: one launch each instead of padding, 2*k*k narrows and a
//! stack (and, backward, their zero-filled gradients).

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape};

use super::{err, grid, view};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/conv.ptx"));
const MODULE: &str = "ifp_conv";

/// Launches `ifp_<name>_<dtype>` over `total` outputs of `src` with the plane geometry.
fn gather(
    src: &CudaStorage,
    l: &Layout,
    name: &str,
    total: usize,
    (c, h, w, k): (usize, usize, usize, usize),
) -> Result<CudaStorageSlice> {
    let dev = src.device.clone();
    fn run<T: DeviceRepr>(
        dev: &CudaDevice,
        name: &str,
        src: CudaView<T>,
        total: usize,
        dims: [i32; 4],
    ) -> Result<CudaSlice<T>> {
        let f = dev.get_or_load_custom_func(name, MODULE, PTX)?;
        // SAFETY: the kernel writes every output element.
        let out = unsafe { dev.alloc::<T>(total)? };
        let total64 = total as i64;
        let mut args = f.builder();
        args.arg(&src).arg(&out).arg(&total64);
        args.arg(&dims[0]).arg(&dims[1]).arg(&dims[2]).arg(&dims[3]);
        // SAFETY: argument types and order match ifp_im2col_* / ifp_col2im_* in conv.cu.
        unsafe { args.launch(grid(total, 256)) }.w()?;
        Ok(out)
    }
    let dims = [c as i32, h as i32, w as i32, k as i32];
    Ok(match &src.slice {
        CudaStorageSlice::F32(s) => {
            let v = view(s, l, name)?;
            CudaStorageSlice::F32(run(&dev, &format!("ifp_{name}_f32"), v, total, dims)?)
        }
        CudaStorageSlice::BF16(s) => {
            let v = view(s, l, name)?;
            CudaStorageSlice::BF16(run(&dev, &format!("ifp_{name}_bf16"), v, total, dims)?)
        }
        _ => return Err(err(name)),
    })
}

/// x (B, C, H, W) -> columns (B, C*k*k, H*W).
pub(in crate::kernels) fn im2col(
    x: &CudaStorage,
    l: &Layout,
    k: usize,
) -> Result<(CudaStorage, Shape)> {
    let (b, c, h, w) = l.shape().dims4()?;
    let total = b * c * k * k * h * w;
    let slice = gather(x, l, "im2col", total, (c, h, w, k))?;
    let device = x.device.clone();
    Ok((
        CudaStorage { slice, device },
        Shape::from((b, c * k * k, h * w)),
    ))
}

/// Columns (B, C*k*k, H*W) -> (B, C, H, W), each input position the sum of its k*k taps.
pub(in crate::kernels) fn col2im(
    cols: &CudaStorage,
    l: &Layout,
    (k, h, w): (usize, usize, usize),
) -> Result<(CudaStorage, Shape)> {
    let (b, ckk, hw) = l.shape().dims3()?;
    if ckk % (k * k) != 0 || hw != h * w {
        return Err(candle_core::Error::Msg(format!(
            "col2im: columns {:?} for a {k}x{k} kernel on {h}x{w} planes",
            l.shape()
        )));
    }
    let c = ckk / (k * k);
    let slice = gather(cols, l, "col2im", b * c * hw, (c, h, w, k))?;
    let device = cols.device.clone();
    Ok((CudaStorage { slice, device }, Shape::from((b, c, h, w))))
}
