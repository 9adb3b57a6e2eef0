//! Mixed precision (`TRAIN.AMP: bf16`), in the manner of PyTorch's autocast: while a network's
//! forward runs inside [`autocast`], every matrix product and convolution casts its float32
//! operands to the low dtype, multiplies there and hands back float32. Everything else (norms,
//! softmax, GELU, the loss) stays float32, and so do the parameters (the master weights), their
//! gradients (the cast's backward converts them back) and the optimiser state.
//!
//! Results go back to float32 right after each product (PyTorch keeps them in bf16 until the
//! next float32-only op): one more cast per product, but no bf16 rounding of the elementwise ops
//! in between. The setting is per thread because a forward builds its graph on one thread;
//! `threads::on_workers` carries it (with `kernels::Settings`) to the worker that runs a step.

use std::cell::Cell;

use candle_core::{DType, Result, Tensor};

thread_local! {
    static LOW: Cell<Option<DType>> = const { Cell::new(None) };
}

/// Restores the previous setting when dropped, so a panic or an early `?` cannot leak it.
struct Restore(Option<DType>);

impl Drop for Restore {
    fn drop(&mut self) {
        LOW.with(|l| l.set(self.0));
    }
}

/// Runs `f` with products and convolutions in `low` (`None`: full float32).
pub fn autocast<T>(low: Option<DType>, f: impl FnOnce() -> T) -> T {
    let _restore = Restore(LOW.with(|l| l.replace(low)));
    f()
}

/// The dtype products run in right now, if lowered.
pub fn low_dtype() -> Option<DType> {
    LOW.with(|l| l.get())
}

/// `x` in the autocast dtype when one is set and `x` is float32; `x` itself otherwise.
pub fn lower(x: &Tensor) -> Result<Tensor> {
    match low_dtype() {
        Some(dt) if x.dtype() == DType::F32 => x.to_dtype(dt),
        _ => Ok(x.clone()),
    }
}

/// Back to float32 if `y` was computed in a lowered dtype.
pub fn raise(y: Tensor) -> Result<Tensor> {
    if low_dtype().is_some() && y.dtype() != DType::F32 {
        y.to_dtype(DType::F32)
    } else {
        Ok(y)
    }
}

/// `a.matmul(b)` under the current autocast setting: one op with float32 results where
/// [`super::mixed_applicable`] (CUDA), else [`matmul_composed`].
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if super::mixed_applicable(a, b) {
        return super::mixed::mixed_matmul(a, b);
    }
    matmul_composed(a, b)
}

/// [`matmul`] from tensor ops: both operands cast, the product in the low dtype, its result
/// cast back.
pub fn matmul_composed(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    raise(lower(a)?.matmul(&lower(b)?)?)
}

/// `a.broadcast_matmul(b)` under the current autocast setting.
pub fn broadcast_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    raise(lower(a)?.broadcast_matmul(&lower(b)?)?)
}
