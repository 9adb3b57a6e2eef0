//! CUDA launches of the trainer's own kernels (`cuda/*.cu`, compiled to PTX by build.rs): the
//! depthwise convolution and its two gradients, float32 and bfloat16; and, used only where
//! `IFP_CUDA_FUSED` names them (`kernels::CudaKernel`) until a GPU run shows them equal to
//! their composed versions, the GDFN's GELU gate and its gradient (float32 and bfloat16), the
//! im2col gather of a dense convolution and its adjoint (float32 and bfloat16, `conv`),
//! Restormer's channel LayerNorm and its gradients (float32, `norm`), a convolution's bias with
//! its activation (float32, `bias`), Uformer's token ops (float32, `token`), MDTA's row
//! normalisation (float32, `normalize`), the dense convolutions' cuBLAS products (float32,
//! `dense`), the products under bf16 autocast (bfloat16 operands, float32 results, `mixed`),
//! Uformer's window partition and reverse (float32 and bfloat16, `window`), its window
//! attention from packed q, k, v (float32, `attention`), its LeFF's depthwise convolution on
//! tokens (float32, `dwconv`), its linear layers over tokens (float32, `linear`), Restormer's
//! whole channel attention (float32, `mdta`) and the
//! one-pass AdamW update (float32). Without the
//! depthwise kernels the composed fallback keeps 17 full-size intermediates per depthwise
//! convolution alive for the backward pass, which runs the paper Restormer at 224x224 out of
//! GPU memory.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result, Shape};

pub(super) mod attention;
mod bias;
mod blas;
mod conv;
mod dense;
pub(super) mod dwconv;
pub(super) mod linear;
pub(super) mod mdta;
mod mixed;
mod norm;
pub(super) mod normalize;
mod optim;
pub(super) mod token;
pub(super) mod window;
pub(super) use bias::{bias_act, bias_act_backward};
pub(super) use conv::{col2im, im2col};
pub(super) use dense::{dense_conv, dense_conv_backward};
pub(super) use mixed::mixed_matmul;
pub(super) use norm::{channel_norm, channel_norm_backward};
pub(super) use optim::{adamw_update, adamw_update_in_place, squared_norms};
pub(super) use window::window_shuffle;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/depthwise.ptx"));
const MODULE: &str = "ifp_depthwise";
const GATE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/gate.ptx"));
const GATE_MODULE: &str = "ifp_gate";
/// Threads per block of the weight-gradient kernel (its shared reduction buffer's size).
const WEIGHT_THREADS: u32 = 256;
/// Largest kernel the weight gradient handles (its per-thread accumulators).
pub(super) const MAX_K: usize = 7;

fn err(what: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "{what}: float32 or bfloat16 inputs of one dtype only"
    ))
}

/// The contiguous elements a layout covers.
fn view<'a, T>(s: &'a CudaSlice<T>, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.slice(a..b)),
        None => Err(candle_core::Error::Msg(format!(
            "{what}: needs a contiguous input"
        ))),
    }
}

/// The contiguous float32 elements of a storage, for the kernels that take float32 only.
fn f32_view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    match &s.slice {
        CudaStorageSlice::F32(x) => view(x, l, what),
        _ => Err(candle_core::Error::Msg(format!(
            "{what}: float32 tensors only on CUDA"
        ))),
    }
}

/// A new float32 storage on `dev` holding `y`.
pub(super) fn f32_storage(dev: CudaDevice, y: CudaSlice<f32>) -> CudaStorage {
    CudaStorage {
        slice: CudaStorageSlice::F32(y),
        device: dev,
    }
}

/// The float32 values of `parts` one after another in a new buffer: the several gradients a
/// backward op returns as its one output.
pub(super) fn pack(dev: &CudaDevice, parts: &[(&CudaStorage, &Layout)]) -> Result<CudaStorage> {
    let len = parts.iter().map(|(_, l)| l.shape().elem_count()).sum();
    // SAFETY: the copies below write every element.
    let mut out = unsafe { dev.alloc::<f32>(len)? };
    let mut at = 0;
    for (s, l) in parts {
        let n = l.shape().elem_count();
        let mut dst = out.slice_mut(at..at + n);
        dev.memcpy_dtod(&f32_view(s, l, "pack")?, &mut dst)?;
        at += n;
    }
    Ok(f32_storage(dev.clone(), out))
}

fn grid(n: usize, threads: u32) -> LaunchConfig {
    // Grid-stride loops: a capped grid covers any size.
    let blocks = n.div_ceil(threads as usize).clamp(1, 65_535 * 8) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `y = depthwise(x, w)` (`mirrored: false`) or the input gradient `g -> dx` (`mirrored: true`,
/// the taps applied at negated offsets). x (B, C, H, W), w (C, 1, k, k).
pub(super) fn depthwise_apply(
    x: &CudaStorage,
    lx: &Layout,
    w: &CudaStorage,
    lw: &Layout,
    k: usize,
    mirrored: bool,
) -> Result<(CudaStorage, Shape)> {
    let (_, c, h, wd) = lx.shape().dims4()?;
    let total = lx.shape().elem_count();
    let dev = x.device().clone();
    fn run<T: DeviceRepr>(
        dev: &CudaDevice,
        name: &str,
        x: CudaView<T>,
        w: CudaView<T>,
        total: usize,
        dims: (usize, usize, usize, usize),
        sign: i32,
    ) -> Result<CudaSlice<T>> {
        let f = dev.get_or_load_custom_func(name, MODULE, PTX)?;
        // SAFETY: every element is written by the kernel.
        let y = unsafe { dev.alloc::<T>(total)? };
        let (c, h, w_, k) = (dims.0 as i32, dims.1 as i32, dims.2 as i32, dims.3 as i32);
        let total64 = total as i64;
        let mut b = f.builder();
        b.arg(&x).arg(&w).arg(&y).arg(&total64);
        b.arg(&c).arg(&h).arg(&w_).arg(&k).arg(&sign);
        // SAFETY: argument types and order match ifp_dw_apply_* in depthwise.cu.
        unsafe { b.launch(grid(total, 256)) }.w()?;
        Ok(y)
    }
    let sign = if mirrored { -1 } else { 1 };
    let dims = (c, h, wd, k);
    let slice = match (&x.slice, &w.slice) {
        (CudaStorageSlice::F32(xs), CudaStorageSlice::F32(ws)) => {
            let (xv, wv) = (view(xs, lx, "depthwise")?, view(ws, lw, "depthwise")?);
            CudaStorageSlice::F32(run(&dev, "ifp_dw_apply_f32", xv, wv, total, dims, sign)?)
        }
        (CudaStorageSlice::BF16(xs), CudaStorageSlice::BF16(ws)) => {
            let (xv, wv) = (view(xs, lx, "depthwise")?, view(ws, lw, "depthwise")?);
            CudaStorageSlice::BF16(run(&dev, "ifp_dw_apply_bf16", xv, wv, total, dims, sign)?)
        }
        _ => return Err(err("depthwise")),
    };
    Ok((CudaStorage { slice, device: dev }, lx.shape().clone()))
}

/// The weight gradient `(C, 1, k, k)` of a depthwise convolution from its input `x` and output
/// gradient `g` (both (B, C, H, W)): per-block partial sums, then a fixed-order reduction, so
/// the result does not depend on scheduling.
pub(super) fn depthwise_weight_grad(
    x: &CudaStorage,
    lx: &Layout,
    g: &CudaStorage,
    lg: &Layout,
    k: usize,
) -> Result<(CudaStorage, Shape)> {
    let (b, c, h, wd) = lx.shape().dims4()?;
    if k > MAX_K {
        return Err(candle_core::Error::Msg(format!(
            "depthwise weight gradient: kernel {k} above {MAX_K}"
        )));
    }
    let dev = x.device().clone();
    // About 4 blocks' worth of threads per chunk: enough blocks to fill the GPU for every
    // channel count used here, few partial sums to add.
    let chunks = (b * h * wd)
        .div_ceil(WEIGHT_THREADS as usize * 16)
        .clamp(1, 512);
    fn run<T: DeviceRepr>(
        dev: &CudaDevice,
        suffix: &str,
        x: CudaView<T>,
        g: CudaView<T>,
        dims: (usize, usize, usize, usize, usize),
        chunks: usize,
    ) -> Result<CudaSlice<T>> {
        let (b, c, h, w, k) = dims;
        let kk = k * k;
        let part = dev.alloc_zeros::<f32>(c * chunks * kk)?;
        let f =
            dev.get_or_load_custom_func(&format!("ifp_dw_weight_partial_{suffix}"), MODULE, PTX)?;
        let (b32, c32, h32, w32, k32, ch32) = (
            b as i32,
            c as i32,
            h as i32,
            w as i32,
            k as i32,
            chunks as i32,
        );
        let mut args = f.builder();
        args.arg(&x).arg(&g).arg(&part);
        args.arg(&b32)
            .arg(&c32)
            .arg(&h32)
            .arg(&w32)
            .arg(&k32)
            .arg(&ch32);
        let cfg = LaunchConfig {
            grid_dim: (c as u32, chunks as u32, 1),
            block_dim: (WEIGHT_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: argument types and order match ifp_dw_weight_partial_* in depthwise.cu.
        unsafe { args.launch(cfg) }.w()?;
        // SAFETY: every element is written by the reduction.
        let gw = unsafe { dev.alloc::<T>(c * kk)? };
        let f =
            dev.get_or_load_custom_func(&format!("ifp_dw_weight_reduce_{suffix}"), MODULE, PTX)?;
        let kk32 = kk as i32;
        let mut args = f.builder();
        args.arg(&part).arg(&gw).arg(&c32).arg(&kk32).arg(&ch32);
        // SAFETY: argument types and order match ifp_dw_weight_reduce_* in depthwise.cu.
        unsafe { args.launch(grid(c * kk, 128)) }.w()?;
        Ok(gw)
    }
    let dims = (b, c, h, wd, k);
    let slice = match (&x.slice, &g.slice) {
        (CudaStorageSlice::F32(xs), CudaStorageSlice::F32(gs)) => {
            let (xv, gv) = (view(xs, lx, "depthwise")?, view(gs, lg, "depthwise")?);
            CudaStorageSlice::F32(run(&dev, "f32", xv, gv, dims, chunks)?)
        }
        (CudaStorageSlice::BF16(xs), CudaStorageSlice::BF16(gs)) => {
            let (xv, gv) = (view(xs, lx, "depthwise")?, view(gs, lg, "depthwise")?);
            CudaStorageSlice::BF16(run(&dev, "bf16", xv, gv, dims, chunks)?)
        }
        _ => return Err(err("depthwise weight gradient")),
    };
    Ok((
        CudaStorage { slice, device: dev },
        Shape::from((c, 1, k, k)),
    ))
}

/// Raises the release threshold of the device's default memory pool (which cudarc allocates
/// from, stream-ordered) to its maximum, so memory freed in one step is reused by the next
/// instead of going back to the driver at each synchronisation, as the default threshold of 0
/// allows.
pub(super) fn keep_freed_memory(dev: &CudaDevice) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    let ctx = dev.cuda_stream().context().clone();
    if !ctx.has_async_alloc() {
        return Ok(());
    }
    ctx.bind_to_thread().w()?;
    let mut threshold = u64::MAX;
    // SAFETY: the device comes from a live context, and the release threshold is a u64
    // attribute, written from a u64.
    unsafe {
        let pool = result::device::get_default_mem_pool(ctx.cu_device()).w()?;
        result::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .w()?;
    }
    Ok(())
}

/// The GDFN gate `gelu(x1) * x2` of the channel halves of x (B, 2h, H, W) -> (B, h, H, W),
/// float32 or bfloat16 (computed in float32).
pub(super) fn gelu_gate(x: &CudaStorage, lx: &Layout) -> Result<(CudaStorage, Shape)> {
    let (b, c2, h, w) = lx.shape().dims4()?;
    let half = c2 / 2 * h * w;
    let dev = x.device().clone();
    fn run<T: DeviceRepr>(
        dev: &CudaDevice,
        name: &str,
        x: CudaView<T>,
        total: usize,
        half: usize,
    ) -> Result<CudaSlice<T>> {
        let f = dev.get_or_load_custom_func(name, GATE_MODULE, GATE_PTX)?;
        // SAFETY: every element is written by the kernel.
        let y = unsafe { dev.alloc::<T>(total)? };
        let (total64, half64) = (total as i64, half as i64);
        let mut args = f.builder();
        args.arg(&x).arg(&y).arg(&total64).arg(&half64);
        // SAFETY: argument types and order match ifp_gate_fwd_* in gate.cu.
        unsafe { args.launch(grid(total, 256)) }.w()?;
        Ok(y)
    }
    let total = b * half;
    let slice = match &x.slice {
        CudaStorageSlice::F32(xs) => {
            let xv = view(xs, lx, "gelu gate")?;
            CudaStorageSlice::F32(run(&dev, "ifp_gate_fwd_f32", xv, total, half)?)
        }
        CudaStorageSlice::BF16(xs) => {
            let xv = view(xs, lx, "gelu gate")?;
            CudaStorageSlice::BF16(run(&dev, "ifp_gate_fwd_bf16", xv, total, half)?)
        }
        _ => return Err(err("gelu gate")),
    };
    Ok((
        CudaStorage { slice, device: dev },
        Shape::from((b, c2 / 2, h, w)),
    ))
}

/// The gradient (B, 2h, H, W) of [`gelu_gate`] at x from the output gradient dy (B, h, H, W).
pub(super) fn gelu_gate_backward(
    x: &CudaStorage,
    lx: &Layout,
    dy: &CudaStorage,
    ldy: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let (b, c2, h, w) = lx.shape().dims4()?;
    let half = c2 / 2 * h * w;
    let dev = x.device().clone();
    fn run<T: DeviceRepr>(
        dev: &CudaDevice,
        name: &str,
        x: CudaView<T>,
        dy: CudaView<T>,
        total: usize,
        half: usize,
    ) -> Result<CudaSlice<T>> {
        let f = dev.get_or_load_custom_func(name, GATE_MODULE, GATE_PTX)?;
        // SAFETY: the kernel writes both halves of every image, every element.
        let dx = unsafe { dev.alloc::<T>(2 * total)? };
        let (total64, half64) = (total as i64, half as i64);
        let mut args = f.builder();
        args.arg(&x).arg(&dy).arg(&dx).arg(&total64).arg(&half64);
        // SAFETY: argument types and order match ifp_gate_bwd_* in gate.cu.
        unsafe { args.launch(grid(total, 256)) }.w()?;
        Ok(dx)
    }
    let total = b * half;
    if ldy.shape().elem_count() != total {
        return Err(candle_core::Error::Msg(format!(
            "gelu gate backward: output gradient {:?} for input {:?}",
            ldy.shape(),
            lx.shape()
        )));
    }
    let slice = match (&x.slice, &dy.slice) {
        (CudaStorageSlice::F32(xs), CudaStorageSlice::F32(gs)) => {
            let (xv, gv) = (view(xs, lx, "gelu gate")?, view(gs, ldy, "gelu gate")?);
            CudaStorageSlice::F32(run(&dev, "ifp_gate_bwd_f32", xv, gv, total, half)?)
        }
        (CudaStorageSlice::BF16(xs), CudaStorageSlice::BF16(gs)) => {
            let (xv, gv) = (view(xs, lx, "gelu gate")?, view(gs, ldy, "gelu gate")?);
            CudaStorageSlice::BF16(run(&dev, "ifp_gate_bwd_bf16", xv, gv, total, half)?)
        }
        _ => return Err(err("gelu gate backward")),
    };
    Ok((CudaStorage { slice, device: dev }, lx.shape().clone()))
}
