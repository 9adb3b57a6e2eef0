//! CUDA launches of the optimiser's kernels (`optim.cu`), float32: the one-pass AdamW update of
//! one parameter, the update of all of them in one launch (in place), and the squared 2-norms of
//! all the gradients in three launches whatever their number, added in a fixed order. The
//! multi-tensor kernels take tables of the tensors' addresses, copied to the device each call.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, DevicePtr, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, CudaStorage, Layout, Result};

use super::{f32_view, grid};
use crate::kernels::AdamWStep;

const OPTIM_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/optim.ptx"));
const OPTIM_MODULE: &str = "ifp_optim";
/// Partial sums per tensor of the squared norms.
const PARTS: usize = 256;

const ADAMW: &str = "adamw update";

/// The float32 elements of a parameter's `[w, g, m, v]`, checked to be one length.
fn param_views<'a>(tensors: [(&'a CudaStorage, &Layout); 4]) -> Result<[CudaView<'a, f32>; 4]> {
    let [w, g, m, v] = tensors.map(|(s, l)| f32_view(s, l, ADAMW));
    let views = [w?, g?, m?, v?];
    if views.iter().any(|v| v.len() != views[0].len()) {
        return Err(candle_core::Error::Msg(format!(
            "{ADAMW}: parameter, gradient and moments differ in size"
        )));
    }
    Ok(views)
}

/// One AdamW step `s` of a float32 parameter: `[(w), (g), (m), (v)]` (one shape, contiguous)
/// -> fresh `[w', m', v']`, in one launch.
pub(in crate::kernels) fn adamw_update(
    inputs: [(&CudaStorage, &Layout); 4],
    s: &AdamWStep,
) -> Result<[CudaStorage; 3]> {
    let [wv, gv, mv, vv] = param_views(inputs)?;
    let n = wv.len();
    let dev = inputs[0].0.device().clone();
    let f = dev.get_or_load_custom_func("ifp_adamw_f32", OPTIM_MODULE, OPTIM_PTX)?;
    // SAFETY: the kernel writes every element of the three outputs.
    let (w2, m2, v2) = unsafe {
        (
            dev.alloc::<f32>(n)?,
            dev.alloc::<f32>(n)?,
            dev.alloc::<f32>(n)?,
        )
    };
    let n64 = n as i64;
    let (scale_grad, grad_scale) = (
        i32::from(s.grad_scale.is_some()),
        s.grad_scale.unwrap_or(1.0),
    );
    let (apply_decay, decay) = (i32::from(s.decay.is_some()), s.decay.unwrap_or(1.0));
    let mut b = f.builder();
    b.arg(&wv).arg(&gv).arg(&mv).arg(&vv);
    b.arg(&w2).arg(&m2).arg(&v2).arg(&n64);
    b.arg(&scale_grad)
        .arg(&grad_scale)
        .arg(&apply_decay)
        .arg(&decay);
    b.arg(&s.one_minus_beta1)
        .arg(&s.beta2)
        .arg(&s.one_minus_beta2);
    b.arg(&s.inv_bias_correction2).arg(&s.eps).arg(&s.step_size);
    // SAFETY: argument types and order match ifp_adamw_f32 in optim.cu.
    unsafe { b.launch(grid(n, 256)) }.w()?;
    Ok([w2, m2, v2].map(|x| CudaStorage {
        slice: CudaStorageSlice::F32(x),
        device: dev.clone(),
    }))
}

/// The squared 2-norm of all of `parts` (float32, contiguous, on `dev`), as one float64 on the
/// device: each tensor's sum in double from fixed-order partial sums, then their sum in order.
pub(in crate::kernels) fn squared_norms(
    dev: &CudaDevice,
    parts: &[(&CudaStorage, &Layout)],
) -> Result<CudaStorage> {
    const WHAT: &str = "squared norm";
    let stream = dev.cuda_stream();
    let views = parts
        .iter()
        .map(|(s, l)| f32_view(s, l, WHAT))
        .collect::<Result<Vec<_>>>()?;
    let lens: Vec<i64> = views.iter().map(|v| v.len() as i64).collect();
    let (ptrs, _in_use): (Vec<u64>, Vec<_>) = views.iter().map(|v| v.device_ptr(&stream)).unzip();
    let (ptrs, lens) = (dev.clone_htod(&ptrs)?, dev.clone_htod(&lens)?);
    let (t, j) = (parts.len(), PARTS);
    // SAFETY: each kernel below writes every element of its output.
    let (partial, per_tensor, out) = unsafe {
        (
            dev.alloc::<f64>(t * j)?,
            dev.alloc::<f64>(t)?,
            dev.alloc::<f64>(1)?,
        )
    };
    let (t32, j32) = (t as i32, j as i32);
    let f = dev.get_or_load_custom_func("ifp_sumsq_partial_f32", OPTIM_MODULE, OPTIM_PTX)?;
    let mut args = f.builder();
    args.arg(&ptrs).arg(&lens).arg(&partial).arg(&t32).arg(&j32);
    // SAFETY: argument types and order match ifp_sumsq_partial_f32 in optim.cu; every address
    // in the table is a live float32 buffer of its length (the views, held until here).
    unsafe { args.launch(grid(t * j, 256)) }.w()?;
    let sum_rows = dev.get_or_load_custom_func("ifp_sum_rows_f64", OPTIM_MODULE, OPTIM_PTX)?;
    for (from, to, rows, len) in [(&partial, &per_tensor, t, j32), (&per_tensor, &out, 1, t32)] {
        let rows64 = rows as i64;
        let mut args = sum_rows.builder();
        args.arg(from).arg(to).arg(&rows64).arg(&len);
        // SAFETY: argument types and order match ifp_sum_rows_f64 in optim.cu; `from` holds
        // rows * len values and `to` rows.
        unsafe { args.launch(grid(rows, 64)) }.w()?;
    }
    Ok(CudaStorage {
        slice: CudaStorageSlice::F64(out),
        device: dev.clone(),
    })
}

/// One parameter of the multi-tensor update: `[w, g, m, v]` and its decay (`None`: none).
pub(in crate::kernels) type Param<'a> = ([(&'a CudaStorage, &'a Layout); 4], Option<f32>);

/// Elements per thread of the multi-tensor update (each parameter gets enough threads).
const ELEMENTS_PER_THREAD: usize = 16;

/// AdamW steps of many float32 parameters in one launch, in place: each `[w, g, m, v]`
/// (contiguous, one length, on `dev`) with its decay (`None`: not decayed); `s` holds the
/// scalars they share (its own decay is ignored). w, m and v are overwritten.
pub(in crate::kernels) fn adamw_update_in_place(
    dev: &CudaDevice,
    params: &[Param],
    s: &AdamWStep,
) -> Result<()> {
    let stream = dev.cuda_stream();
    let mut tables: [Vec<u64>; 4] = Default::default();
    let (mut lens, mut first) = (Vec::with_capacity(params.len()), vec![0i64]);
    let (mut apply_decay, mut decay) = (Vec::new(), Vec::new());
    let mut views = Vec::with_capacity(4 * params.len());
    for (tensors, d) in params {
        let four = param_views(*tensors)?;
        let n = four[0].len();
        views.extend(four);
        lens.push(n as i64);
        let last = first.last().copied().unwrap_or(0);
        first.push(last + n.div_ceil(ELEMENTS_PER_THREAD) as i64);
        apply_decay.push(i32::from(d.is_some()));
        decay.push(d.unwrap_or(1.0));
    }
    // Each address stays valid while its view (and the caller's storage guard) lives.
    let mut in_use = Vec::with_capacity(views.len());
    for (k, v) in views.iter().enumerate() {
        let (ptr, guard) = v.device_ptr(&stream);
        tables[k % 4].push(ptr);
        in_use.push(guard);
    }
    let [w, g, m, v] = tables.map(|t| dev.clone_htod(&t));
    let (w, g, m, v) = (w?, g?, m?, v?);
    let threads = first.last().copied().unwrap_or(0);
    let (lens, first) = (dev.clone_htod(&lens)?, dev.clone_htod(&first)?);
    let (apply_decay, decay) = (dev.clone_htod(&apply_decay)?, dev.clone_htod(&decay)?);
    let t = params.len() as i32;
    let (scale_grad, grad_scale) = (
        i32::from(s.grad_scale.is_some()),
        s.grad_scale.unwrap_or(1.0),
    );
    let f = dev.get_or_load_custom_func("ifp_adamw_multi_f32", OPTIM_MODULE, OPTIM_PTX)?;
    let mut b = f.builder();
    b.arg(&w).arg(&g).arg(&m).arg(&v);
    b.arg(&lens)
        .arg(&first)
        .arg(&apply_decay)
        .arg(&decay)
        .arg(&t);
    b.arg(&scale_grad).arg(&grad_scale);
    b.arg(&s.one_minus_beta1)
        .arg(&s.beta2)
        .arg(&s.one_minus_beta2);
    b.arg(&s.inv_bias_correction2).arg(&s.eps).arg(&s.step_size);
    // SAFETY: argument types and order match ifp_adamw_multi_f32 in optim.cu; every address in
    // the tables is a live float32 buffer of its parameter's length, and each element is read
    // and written by one thread only.
    unsafe { b.launch(grid(threads.max(1) as usize, 256)) }.w()?;
    drop(in_use);
    Ok(())
}
