//! cuBLAS products with float32 results for the trainer's own ops (`dense`, `mixed`): one
//! strided-batched call as `kernels::gemm` plans it, its reach checked against its buffers
//! first, with float32 or bfloat16 operands.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublas::{result as cublas, sys as blas};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DevicePtr, DevicePtrMut, DeviceRepr,
};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result};

use super::view;
use crate::kernels::gemm::Gemm;

fn msg(what: &str, m: String) -> candle_core::Error {
    candle_core::Error::Msg(format!("{what}: {m}"))
}

/// The element type of the products' operands (their results are float32 either way).
pub(super) trait Operand: DeviceRepr + Sized {
    const DATA: blas::cudaDataType_t;
    const DTYPE: DType;
    fn compute() -> blas::cublasComputeType_t;
    fn slice(s: &CudaStorageSlice) -> Option<&CudaSlice<Self>>;
}

impl Operand for f32 {
    const DATA: blas::cudaDataType_t = blas::cudaDataType_t::CUDA_R_32F;
    const DTYPE: DType = DType::F32;
    /// As candle's own float32 products: TF32 only where candle is told to use it.
    fn compute() -> blas::cublasComputeType_t {
        if candle_core::cuda_backend::gemm_reduced_precision_f32() {
            blas::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            blas::cublasComputeType_t::CUBLAS_COMPUTE_32F
        }
    }
    fn slice(s: &CudaStorageSlice) -> Option<&CudaSlice<Self>> {
        match s {
            CudaStorageSlice::F32(v) => Some(v),
            _ => None,
        }
    }
}

impl Operand for half::bf16 {
    const DATA: blas::cudaDataType_t = blas::cudaDataType_t::CUDA_R_16BF;
    const DTYPE: DType = DType::BF16;
    /// bfloat16 products accumulated in float32 (the combination with float32 results).
    fn compute() -> blas::cublasComputeType_t {
        blas::cublasComputeType_t::CUBLAS_COMPUTE_32F
    }
    fn slice(s: &CudaStorageSlice) -> Option<&CudaSlice<Self>> {
        match s {
            CudaStorageSlice::BF16(v) => Some(v),
            _ => None,
        }
    }
}

/// The contiguous `T` elements of a storage (`what` names the op in errors).
pub(super) fn typed<'a, T: Operand>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    match T::slice(&s.slice) {
        Some(v) => view(v, l, what),
        None => Err(msg(what, format!("{:?} operands expected", T::DTYPE))),
    }
}

/// x in the operands' type `T`: itself (None), or a contiguous copy in `T` with its layout.
pub(super) fn operand<T: Operand>(
    x: &CudaStorage,
    l: &Layout,
) -> Result<(Option<CudaStorage>, Layout)> {
    if x.dtype() == T::DTYPE {
        return Ok((None, l.clone()));
    }
    Ok((
        Some(x.to_dtype(l, T::DTYPE)?),
        Layout::contiguous(l.shape()),
    ))
}

/// Issues `call` with A, B and C from these buffers, on the device's stream, after checking
/// that it stays inside them.
pub(super) fn issue<T: Operand, C: DevicePtrMut<f32>>(
    what: &str,
    dev: &CudaDevice,
    call: &Gemm,
    a: &CudaView<T>,
    b: &CudaView<T>,
    c: &mut C,
) -> Result<()> {
    let [ea, eb, ec] = call.extents().map_err(|e| msg(what, e))?;
    if ea > a.len() || eb > b.len() || ec > c.len() {
        return Err(msg(
            what,
            format!(
                "a product reaching {ea}, {eb} and {ec} elements of buffers of {}, {} and {}",
                a.len(),
                b.len(),
                c.len()
            ),
        ));
    }
    let range = |v: usize| msg(what, format!("{v} above cuBLAS's range"));
    let int = |v: usize| i32::try_from(v).map_err(|_| range(v));
    let long = |v: usize| i64::try_from(v).map_err(|_| range(v));
    let op = |t: bool| {
        if t {
            blas::cublasOperation_t::CUBLAS_OP_T
        } else {
            blas::cublasOperation_t::CUBLAS_OP_N
        }
    };
    let (alpha, beta) = (1f32, if call.accumulate { 1f32 } else { 0f32 });
    let (a_bytes, c_bytes) = (size_of::<T>() as u64, size_of::<f32>() as u64);
    let stream = dev.cuda_stream();
    let blas = dev.cublas_handle();
    let (pa, _ga) = a.device_ptr(&stream);
    let (pb, _gb) = b.device_ptr(&stream);
    let (pc, _gc) = c.device_ptr_mut(&stream);
    let (pa, pb, pc) = (
        pa + call.offset_a as u64 * a_bytes,
        pb + call.offset_b as u64 * a_bytes,
        pc + call.offset_c as u64 * c_bytes,
    );
    // SAFETY: the handle is the device's (bound to its stream); the pointers are live device
    // buffers (A and B of T, C of float32) whose extents were checked above against the call's
    // reach; alpha and beta are float32 host scalars, as the 32F compute types read them.
    unsafe {
        cublas::gemm_strided_batched_ex(
            *blas.handle(),
            op(call.trans_a),
            op(call.trans_b),
            int(call.m)?,
            int(call.n)?,
            int(call.k)?,
            (&alpha as *const f32).cast(),
            pa as *const _,
            T::DATA,
            int(call.lda)?,
            long(call.stride_a)?,
            pb as *const _,
            T::DATA,
            int(call.ldb)?,
            long(call.stride_b)?,
            (&beta as *const f32).cast(),
            pc as *mut _,
            blas::cudaDataType_t::CUDA_R_32F,
            int(call.ldc)?,
            long(call.stride_c)?,
            int(call.batch)?,
            T::compute(),
            blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
        )
    }
    .w()
}
