//! A product under bf16 autocast (`kernels::mixed`): both operands cast to contiguous bfloat16
//! (which also lays out any transposed view), then one strided-batched cuBLAS call into a
//! float32 result.

use candle_core::{CudaStorage, Layout, Result, Shape};

use super::blas;
use crate::kernels::gemm;

const WHAT: &str = "mixed matmul";

/// a (..., m, k) times b (..., k, n), float32, with the same leading dimensions.
pub(in crate::kernels) fn mixed_matmul(
    (a, la): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let (da, db) = (la.dims(), lb.dims());
    let r = da.len();
    if r < 2 || db.len() != r || da[..r - 2] != db[..r - 2] || da[r - 1] != db[r - 2] {
        return Err(candle_core::Error::Msg(format!(
            "{WHAT}: {da:?} by {db:?}: not a product of the same batch"
        )));
    }
    let (m, k, n) = (da[r - 2], da[r - 1], db[r - 1]);
    let batch: usize = da[..r - 2].iter().product();
    let mut dims = da[..r - 2].to_vec();
    dims.extend([m, n]);
    let shape = Shape::from(dims);
    let dev = a.device.clone();
    let (ac, lac) = blas::operand::<half::bf16>(a, la)?;
    let (bc, lbc) = blas::operand::<half::bf16>(b, lb)?;
    let av = blas::typed::<half::bf16>(ac.as_ref().unwrap_or(a), &lac, WHAT)?;
    let bv = blas::typed::<half::bf16>(bc.as_ref().unwrap_or(b), &lbc, WHAT)?;
    // SAFETY: the product (beta 0) writes every element without reading it.
    let mut out = unsafe { dev.alloc::<f32>(shape.elem_count())? };
    // cuBLAS's A is the row-major right operand (see `gemm`).
    blas::issue(
        WHAT,
        &dev,
        &gemm::matmul(batch, (m, n, k)),
        &bv,
        &av,
        &mut out,
    )?;
    let slice = candle_core::cuda_backend::CudaStorageSlice::F32(out);
    Ok((CudaStorage { slice, device: dev }, shape))
}
