//! CUDA runs of Uformer's linear layer over tokens, float32 (the products' operands float32,
//! or bfloat16 under mixed autocast): the steps `kernels/gemm_tokens/` plans (and its tests
//! run on the CPU), each issued here as candle's strided copy or cast, one cuBLAS call, or
//! `token.cu`'s fixed-order column sums. Composed, a linear layer was a reshape, a
//! product, a broadcast bias addition and a reshape (a transpose and a copy each way around
//! the attention's heads), candle zero-filling and adding a full-size gradient for each node;
//! its bias gradient was candle's strided reduction.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::{CudaStorage, DType, Layout, Result};

use super::token::column_sums_into;
use super::{blas, f32_storage};
use crate::kernels::gemm_tokens::{self as plan, Buf, Plan, Step};
use crate::kernels::token::{LinearGeom, Tokens};

const WHAT: &str = "token linear";

fn msg(m: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("{WHAT}: {m}"))
}

fn floats(s: &CudaStorage) -> Result<&CudaSlice<f32>> {
    <f32 as blas::Operand>::slice(&s.slice).ok_or_else(|| msg("float32 tensors only on CUDA"))
}

/// Both operands of a product as `T`, if both are.
fn pair<'a, T: blas::Operand>(
    a: &'a CudaStorage,
    b: &'a CudaStorage,
) -> Option<(&'a CudaSlice<T>, &'a CudaSlice<T>)> {
    T::slice(&a.slice).zip(T::slice(&b.slice))
}

fn floats_mut(s: &mut CudaStorage) -> Result<&mut CudaSlice<f32>> {
    match &mut s.slice {
        CudaStorageSlice::F32(v) => Ok(v),
        _ => Err(msg("float32 tensors only on CUDA")),
    }
}

/// Runs `plan` on `inputs` (offsets in the plan are from the start of each storage) and returns
/// its output.
fn run(plan: &Plan, inputs: [&CudaStorage; 3]) -> Result<CudaStorage> {
    let dev = inputs[0].device.clone();
    // The scratch buffers, then the output; each is taken out while a step writes it. A
    // bfloat16 scratch buffer is made by the cast that fills it.
    let out = plan::Temp {
        len: plan.out,
        dtype: DType::F32,
    };
    let bufs: Vec<plan::Temp> = plan.temps.iter().copied().chain([out]).collect();
    let mut owned = Vec::with_capacity(bufs.len());
    for t in &bufs {
        owned.push(match t.dtype {
            // SAFETY: each step reads only what earlier steps wrote: a plan writes every element
            // of a buffer (a copy, a broadcast, a product with beta 0) before reading or adding
            // to it.
            DType::F32 => Some(f32_storage(dev.clone(), unsafe {
                dev.alloc::<f32>(t.len)?
            })),
            _ => None,
        });
    }
    let slot = |b: Buf| match b {
        Buf::Input(_) => Err(msg("a step writes an input")),
        Buf::Temp(t) => Ok(t),
        Buf::Out => Ok(plan.temps.len()),
    };
    for step in &plan.steps {
        let dst = match step {
            Step::Copy { dst, .. } | Step::Cast { dst, .. } | Step::ColumnSums { dst, .. } => *dst,
            Step::Gemm { c, .. } => *c,
        };
        let i = slot(dst)?;
        // A cast makes its buffer; every other step writes into one made before it.
        let mut taken = match step {
            Step::Cast { .. } => None,
            _ => Some(owned[i].take().ok_or_else(|| msg("a missing buffer"))?),
        };
        let mut target = || taken.take().ok_or_else(|| msg("a missing buffer"));
        let read = |b: Buf| match b {
            Buf::Input(j) => inputs.get(j).copied().ok_or_else(|| msg("no such input")),
            other => owned[slot(other)?]
                .as_ref()
                .ok_or_else(|| msg("a step reads the buffer it writes")),
        };
        let written = match step {
            Step::Copy {
                src, layout, at, ..
            } => {
                let (src, mut out) = (read(*src)?, target()?);
                let (src_end, dst_end) = plan::copy_extents(layout, *at);
                if src_end > floats(src)?.len() || dst_end > floats(&out)?.len() {
                    return Err(msg("a copy outside its buffers"));
                }
                src.copy_strided_src(&mut out, *at, layout)?;
                out
            }
            Step::Cast { src, layout, .. } => {
                let src = read(*src)?;
                if plan::copy_extents(layout, 0).0 > floats(src)?.len() {
                    return Err(msg("a cast outside its buffer"));
                }
                if layout.shape().elem_count() != bufs[i].len {
                    return Err(msg("a cast that does not fill its buffer"));
                }
                src.to_dtype(layout, bufs[i].dtype)?
            }
            Step::Gemm { call, a, b, .. } => {
                let (a, b, mut out) = (read(*a)?, read(*b)?, target()?);
                let c = floats_mut(&mut out)?;
                if let Some((a, b)) = pair::<f32>(a, b) {
                    blas::issue(WHAT, &dev, call, &a.as_view(), &b.as_view(), c)?;
                } else if let Some((a, b)) = pair::<half::bf16>(a, b) {
                    blas::issue(WHAT, &dev, call, &a.as_view(), &b.as_view(), c)?;
                } else {
                    return Err(msg("a product of operands of two types"));
                }
                out
            }
            Step::ColumnSums {
                src,
                from,
                rows,
                cols,
                at,
                ..
            } => {
                let (src, out) = (floats(read(*src)?)?, target()?);
                let end = from + rows * cols;
                if end > src.len() || at + cols > floats(&out)?.len() {
                    return Err(msg("column sums outside their buffers"));
                }
                let rows_view = src.slice(*from..end);
                column_sums_into(&dev, &rows_view, (*rows, *cols), floats(&out)?, *at)?;
                out
            }
        };
        owned[i] = Some(written);
    }
    owned.pop().flatten().ok_or_else(|| msg("a missing output"))
}

/// `y = b + x W^T` of x (laid out as `sides.0`), W and b, y laid out as `sides.1`, the
/// products' operands in `products`.
pub(in crate::kernels) fn forward(
    g: LinearGeom,
    sides: (Tokens, Tokens),
    products: DType,
    [(x, lx), (w, lw), (b, lb)]: [(&CudaStorage, &Layout); 3],
) -> Result<CudaStorage> {
    run(&plan::forward(g, sides, products, [lx, lw, lb])?, [x, w, b])
}

/// `[dx, dW, db]` one after another, from x, W and the output gradient dy, the products'
/// operands in `products`.
pub(in crate::kernels) fn backward(
    g: LinearGeom,
    sides: (Tokens, Tokens),
    products: DType,
    [(x, lx), (w, lw), (dy, ldy)]: [(&CudaStorage, &Layout); 3],
) -> Result<CudaStorage> {
    run(
        &plan::backward(g, sides, products, [lx, lw, ldy])?,
        [x, w, dy],
    )
}
