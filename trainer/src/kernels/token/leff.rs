//! The end of Uformer's LeFF as one op: GELU, the depthwise convolution over the
//! tokens with its bias, GELU, and the second linear layer. As two ops (`depthwise` with its
//! GELUs, then `linear`), the linear layer kept its input, the GELU of the convolution, for
//! its weight's gradient: a tensor at the LeFF's hidden width (four times the block's) per
//! block, alive from the forward to the backward pass, and a graph node between the two ops
//! whose gradient candle zero-fills and adds. This op keeps only its input (the first linear
//! layer's output): its backward recomputes the two GELUs and the convolution (which the
//! convolution's backward recomputed already, for its GELU's derivative), then runs the
//! linear layer's and the convolution's backward ops on them.
//!
//! A custom op takes three tensors, so the convolution's weight and bias and the linear
//! layer's bias travel packed in one small tensor (`cat`, its gradient split by `cat`'s own
//! backward). The arithmetic is the two ops', in their order, so the results are the same bits.
//!
//! On CUDA the op chains the kernels of those ops (`token`'s GELU, `dwconv`, `linear`), and
//! its backward pass, device-agnostic, runs their backward ops; it applies where the switch
//! turns on both `dwconv` and `linear`, which a GPU run must show equal to their composed
//! versions first.

use super::dwconv::{convolve, taps, DepthwiseGeom, TokenDepthwise, TokenDepthwiseBackward};
use super::gelu::{gelu_grad, gelu_of, gelu_values};
use super::linear::{TokenLinear, TokenLinearBackward};
use super::{depthwise, depthwise_applies, linear, linear_applies, Gelus, Tokens};
use crate::kernels::{f32_slice, unpack};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

/// `(x, weight, packed)`: tokens `(B, H*W, C)` in rows of `w` pixels, the linear layer's
/// weight `(O, C)`, and `[depthwise weight (C * k * k), depthwise bias (C), bias (O)]`.
struct LeffTail {
    w: usize,
    k: usize,
}

impl LeffTail {
    /// The sizes of both layers, with the packed parameters checked against them.
    fn geoms(
        &self,
        x: &[usize],
        weight: &[usize],
        packed: usize,
    ) -> Result<(DepthwiseGeom, super::LinearGeom)> {
        let c = x.last().copied().unwrap_or(0);
        let g = DepthwiseGeom::new(x, &[c, 1, self.k, self.k], self.w)?;
        let lg = TokenLinear::ROWS.geom(x, weight)?;
        if packed != c * self.k * self.k + c + lg.o {
            return Err(candle_core::Error::Msg(format!(
                "leff tail: {packed} packed parameters for {c} channels, a {k}x{k} kernel and {o} outputs",
                k = self.k,
                o = lg.o
            )));
        }
        Ok((g, lg))
    }

    /// The packed parameters as (depthwise weight `(C, 1, k, k)`, depthwise bias, bias).
    fn split(&self, packed: &Tensor, c: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let kk = self.k * self.k;
        let o = packed.dim(0)? - c * kk - c;
        let dw = packed
            .narrow(0, 0, c * kk)?
            .reshape((c, 1, self.k, self.k))?;
        let db = packed.narrow(0, c * kk, c)?;
        let b = packed.narrow(0, c * kk + c, o)?;
        Ok((dw, db, b))
    }
}

impl CustomOp3 for LeffTail {
    fn name(&self) -> &'static str {
        "ifp-leff-tail"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let weight = f32_slice(s2, l2, self.name())?;
        let packed = f32_slice(s3, l3, self.name())?;
        let (g, lg) = self.geoms(l1.dims(), l2.dims(), packed.len())?;
        let kk = self.k * self.k;
        let (dw, rest) = packed.split_at(g.c * kk);
        let (db, bias) = rest.split_at(g.c);
        let a = gelu_of(x);
        let y = convolve(&a, &taps(dw, g, false), Some(db), true, g, 0);
        drop(a);
        let out = TokenLinear::ROWS.cpu_forward(&y, weight, bias, lg);
        Ok((
            CpuStorage::F32(out),
            TokenLinear::ROWS.out_shape(l1.dims(), lg),
        ))
    }

    /// The CPU op's steps with the CUDA kernels: the `token` GELU into a scratch buffer, the
    /// `dwconv` convolution with its GELU, the `linear` layer's products.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use crate::kernels::cuda;
        let (g, lg) = self.geoms(l1.dims(), l2.dims(), l3.shape().elem_count())?;
        let kk = self.k * self.k;
        // The packed parameters' parts, as views into its storage.
        let at = l3.start_offset();
        let dw = Layout::contiguous_with_offset((g.c, 1, self.k, self.k), at);
        let db = Layout::contiguous_with_offset(g.c, at + g.c * kk);
        let bias = Layout::contiguous_with_offset(lg.o, at + g.c * kk + g.c);
        let (a, shape) = cuda::token::gelu((s1, l1))?;
        let la = Layout::contiguous(shape);
        let (y, shape) = cuda::dwconv::token_depthwise(&g, (&a, &la), (s3, &dw), (s3, &db), true)?;
        drop(a);
        let ly = Layout::contiguous(shape);
        let out = TokenLinear::ROWS.cuda_forward(lg, [(&y, &ly), (s2, l2), (s3, &bias)])?;
        Ok((out, TokenLinear::ROWS.out_shape(l1.dims(), lg)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        packed: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = x.dim(2)?;
        let (dw, db, bias) = self.split(packed, c)?;
        // Recomputed: the GELU of x, the convolution, its GELU.
        let a = gelu_values(x)?;
        let plain = TokenDepthwise {
            w: self.w,
            gelus: Gelus::NONE,
        };
        let conv = a.apply_op3_no_bwd(&dw, &db, &plain)?;
        let y = gelu_values(&conv)?;
        // The linear layer's backward, then the GELU's, the convolution's and the first GELU's.
        let lin = y.apply_op3_no_bwd(
            weight,
            &grad.contiguous()?,
            &TokenLinearBackward(TokenLinear::ROWS),
        )?;
        let [dy, dweight, dbias] = unpack3(&lin, [y.shape(), weight.shape(), bias.shape()])?;
        let dconv = gelu_grad(&conv, &dy)?;
        let backward = TokenDepthwiseBackward { w: self.w };
        let conv_grads = a.apply_op3_no_bwd(&dw, &dconv, &backward)?;
        let [da, ddw, ddb] = unpack3(&conv_grads, [a.shape(), dw.shape(), db.shape()])?;
        let dx = gelu_grad(x, &da)?;
        let dpacked = Tensor::cat(&[ddw.flatten_all()?, ddb, dbias], 0)?;
        Ok((Some(dx), Some(dweight), Some(dpacked)))
    }
}

/// The three tensors a backward op packed, each reshaped to its shape.
fn unpack3(packed: &Tensor, shapes: [&Shape; 3]) -> Result<[Tensor; 3]> {
    let [a, b, c] = shapes;
    <[Tensor; 3]>::try_from(unpack(packed, &[a, b, c])?).map_err(|parts| {
        candle_core::Error::Msg(format!("leff tail: {} gradients, not 3", parts.len()))
    })
}

/// Where [`leff_tail`] runs as one op: float32 without autocast, on the CPU and on CUDA where
/// `IFP_CUDA_FUSED` turns on both `dwconv` and `linear` (the ops it is made of). Under mixed
/// autocast the linear layer's products take bfloat16 operands, which this op does not.
pub fn leff_tail_applies(x: &Tensor) -> bool {
    linear_applies(x) && depthwise_applies(x) && !crate::kernels::mixed_autocast(x)
}

/// The LeFF after its first linear layer: `linear(gelu(depthwise(gelu(x))))` of tokens
/// `(B, H*W, C)` in rows of `w` pixels, with the depthwise weight `(C, 1, k, k)` and bias `(C)`
/// and the linear layer's weight `(O, C)` and bias `(O)` -> `(B, H*W, O)`. One op where
/// [`leff_tail_applies`]; elsewhere [`depthwise`] with both GELUs, then [`linear`], each of
/// which picks its own version.
pub fn leff_tail(
    x: &Tensor,
    (dw, db): (&Tensor, &Tensor),
    w: usize,
    (weight, bias): (&Tensor, &Tensor),
) -> Result<Tensor> {
    let float32 = [dw, db, weight, bias]
        .iter()
        .all(|t| t.dtype() == x.dtype());
    // cuBLAS refuses empty products.
    let sized = x.device().is_cpu() || (x.elem_count() > 0 && weight.elem_count() > 0);
    if !(leff_tail_applies(x) && float32 && sized && x.rank() == 3) {
        let y = depthwise(x, dw, db, w, Gelus::BOTH)?;
        return linear(&y, weight, bias, Tokens::Rows, Tokens::Rows);
    }
    let packed = Tensor::cat(&[dw.flatten_all()?, db.clone(), bias.clone()], 0)?;
    let k = dw.dim(3)?;
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &packed, LeffTail { w, k })
}

/// [`leff_tail`] from tensor ops (any device and dtype): [`super::depthwise_composed`] with
/// both GELUs, then [`super::linear_composed`].
pub fn leff_tail_composed(
    x: &Tensor,
    (dw, db): (&Tensor, &Tensor),
    w: usize,
    (weight, bias): (&Tensor, &Tensor),
) -> Result<Tensor> {
    let y = super::depthwise_composed(x, dw, db, w, Gelus::BOTH)?;
    super::linear_composed(&y, weight, bias, Tokens::Rows, Tokens::Rows)
}
