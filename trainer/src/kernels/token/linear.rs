//! `nn.Linear` over the last dimension of Uformer's tokens as one op: one gemm product into
//! rows prefilled with the bias. The attention's side of it can also read its input from, or
//! write its output to, the head layout `(B', heads, N, d)`, so the head split and merge around
//! the window attention are part of the op's copies rather than graph nodes.
//!
//! Composed, a linear layer is a reshape, a product, a broadcast bias addition and a reshape
//! (plus a transpose and a contiguous copy each way for the head layout); candle's backward
//! zero-fills a full-size gradient for the input of every one of those nodes and adds into it.
//! The op has one input edge of activation size. Its backward computes `dx = dy W`,
//! `dW = dy^T x` and `db = sum(dy)` in one op, reading `x` again rather than keeping anything.
//! On CUDA the same steps run as `kernels/gemm_tokens/` plans them (`cuda/linear.rs`), also
//! under bf16 autocast where `mixed` is on: the products' operands are then cast to bfloat16
//! inside the op and multiplied into float32 results, as `mixed`'s product does.

use std::borrow::Cow;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::bias::column_sums;
use crate::kernels::product::{matmul, Mat};
use crate::kernels::{
    amp, f32_slice, fused_applies, mixed_autocast, pack_after, runs_uncast, unpack,
    zeros_with_room, CudaKernel,
};

/// How the tokens of one side of the op are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tokens {
    /// `(..., features)`: one token per row.
    Rows,
    /// `(B', heads, N, features / heads)`: the attention's per-head layout of `B'` windows of
    /// `N` tokens.
    Heads(usize),
}

/// `y = x W^T + b` with `x` laid out as `input`, `y` as `output`, the products' operands in
/// `products` (bfloat16 on CUDA only).
#[derive(Clone, Copy)]
pub(super) struct TokenLinear {
    input: Tokens,
    output: Tokens,
    products: DType,
}

/// The product's sizes: `groups * tokens` rows of `k` features in, `o` out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::kernels) struct LinearGeom {
    pub(in crate::kernels) groups: usize,
    pub(in crate::kernels) tokens: usize,
    pub(in crate::kernels) k: usize,
    pub(in crate::kernels) o: usize,
}

impl LinearGeom {
    /// The sizes for an input of shape `x` laid out as `input` and a weight `(o, k)`, checked
    /// against the layouts (`output` too).
    pub(in crate::kernels) fn new(
        input: Tokens,
        output: Tokens,
        x: &[usize],
        w: &[usize],
    ) -> Result<Self> {
        let bad = |why: String| candle_core::Error::Msg(format!("token linear: {why}"));
        let &[o, k] = w else {
            return Err(bad(format!("weight {w:?} is not (out, in)")));
        };
        let (groups, tokens, features) = match (input, x) {
            (Tokens::Heads(h), &[g, xh, n, d]) if xh == h && h > 0 => (g, n, h * d),
            (Tokens::Heads(h), _) => {
                return Err(bad(format!("input {x:?} is not (B', {h}, N, d)")))
            }
            (Tokens::Rows, &[g, n, f]) => (g, n, f),
            (Tokens::Rows, [lead @ .., f]) => (lead.iter().product(), 1, *f),
            (Tokens::Rows, []) => return Err(bad("a scalar input".into())),
        };
        if features != k {
            return Err(bad(format!(
                "input {x:?} has {features} features, the weight {k}"
            )));
        }
        match output {
            Tokens::Heads(h)
                if h == 0 || !o.is_multiple_of(h) || (x.len() != 3 && input == Tokens::Rows) =>
            {
                Err(bad(format!(
                    "{o} outputs of input {x:?} cannot split into {h} heads"
                )))
            }
            _ => Ok(LinearGeom {
                groups,
                tokens,
                k,
                o,
            }),
        }
    }

    pub(in crate::kernels) fn rows(&self) -> usize {
        self.groups * self.tokens
    }

    /// The length of the backward op's one output: dx, dW and db one after another.
    pub(in crate::kernels) fn gradients_len(&self) -> usize {
        self.rows() * self.k + self.o * self.k + self.o
    }
}

impl TokenLinear {
    /// The plain layer: tokens in rows both sides, float32 products.
    pub(super) const ROWS: TokenLinear = TokenLinear {
        input: Tokens::Rows,
        output: Tokens::Rows,
        products: DType::F32,
    };

    /// The CPU computes in float32 only (it takes the composed path under autocast).
    fn cpu_products(&self, name: &str) -> Result<()> {
        if self.products == DType::F32 {
            Ok(())
        } else {
            Err(candle_core::Error::Msg(format!(
                "{name}: {:?} products run on CUDA only",
                self.products
            )))
        }
    }

    pub(super) fn geom(&self, x: &[usize], w: &[usize]) -> Result<LinearGeom> {
        LinearGeom::new(self.input, self.output, x, w)
    }

    /// [`Self::geom`], with the bias checked against the outputs.
    fn geom_with_bias(&self, x: &[usize], w: &[usize], b: &Layout) -> Result<LinearGeom> {
        let g = self.geom(x, w)?;
        if b.dims() != [g.o] {
            return Err(candle_core::Error::Msg(format!(
                "token linear: biases {:?} for {} outputs",
                b.dims(),
                g.o
            )));
        }
        Ok(g)
    }

    /// The layer of `[x, W, b]` on CUDA (`cuda/linear.rs`): this op's CUDA forward, and that
    /// of ops that end in it.
    #[cfg(feature = "cuda")]
    pub(super) fn cuda_forward(
        &self,
        g: LinearGeom,
        inputs: [(&candle_core::CudaStorage, &Layout); 3],
    ) -> Result<candle_core::CudaStorage> {
        let sides = (self.input, self.output);
        crate::kernels::cuda::linear::forward(g, sides, self.products, inputs)
    }

    pub(super) fn out_shape(&self, x: &[usize], g: LinearGeom) -> Shape {
        match (self.output, self.input) {
            (Tokens::Heads(h), _) => Shape::from((g.groups, h, g.tokens, g.o / h)),
            (Tokens::Rows, Tokens::Heads(_)) => Shape::from((g.groups, g.tokens, g.o)),
            (Tokens::Rows, Tokens::Rows) => {
                let mut dims = x.to_vec();
                if let Some(last) = dims.last_mut() {
                    *last = g.o;
                }
                Shape::from(dims)
            }
        }
    }

    /// The layer's output on the CPU, laid out as `self.output`.
    pub(super) fn cpu_forward(&self, x: &[f32], w: &[f32], b: &[f32], g: LinearGeom) -> Vec<f32> {
        let xm = as_rows(x, self.input, g, g.k);
        // y (rows, o) = bias + x (rows, k) W^T (k, o); W (o, k) is W^T stored transposed.
        let mut y = b.repeat(g.rows());
        let (xa, wa) = (
            Mat {
                data: &xm,
                transposed: false,
            },
            Mat {
                data: w,
                transposed: true,
            },
        );
        matmul(&mut y, xa, wa, g.rows(), g.o, g.k, true, parallelism());
        from_rows(y, self.output, g, g.o, 0)
    }
}

/// The products use every thread, as candle's matmul does.
fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        t => Parallelism::Rayon(t),
    }
}

/// (groups, heads, tokens, d) -> (groups, tokens, heads * d).
fn heads_to_rows(src: &[f32], g: LinearGeom, heads: usize, f: usize) -> Vec<f32> {
    let d = f / heads;
    let mut out = vec![0f32; src.len()];
    out.par_chunks_mut(g.tokens * f)
        .zip(src.par_chunks(g.tokens * f))
        .for_each(|(rows, group)| {
            for (n, row) in rows.chunks_mut(f).enumerate() {
                for (h, part) in row.chunks_mut(d).enumerate() {
                    part.copy_from_slice(&group[(h * g.tokens + n) * d..][..d]);
                }
            }
        });
    out
}

/// (groups, tokens, heads * d) -> (groups, heads, tokens, d), in a buffer with room for `room`
/// more values.
fn rows_to_heads(src: &[f32], g: LinearGeom, heads: usize, f: usize, room: usize) -> Vec<f32> {
    let d = f / heads;
    let mut out = zeros_with_room(src.len(), room);
    out.par_chunks_mut(g.tokens * f)
        .zip(src.par_chunks(g.tokens * f))
        .for_each(|(group, rows)| {
            for (n, row) in rows.chunks(f).enumerate() {
                for (h, part) in row.chunks(d).enumerate() {
                    group[(h * g.tokens + n) * d..][..d].copy_from_slice(part);
                }
            }
        });
    out
}

/// The rows of `data` (laid out as `side`, `f` features per token) as a (rows, f) matrix.
fn as_rows(data: &[f32], side: Tokens, g: LinearGeom, f: usize) -> Cow<'_, [f32]> {
    match side {
        Tokens::Rows => Cow::Borrowed(data),
        Tokens::Heads(h) => Cow::Owned(heads_to_rows(data, g, h, f)),
    }
}

/// A (rows, f) matrix laid out as `side`; a new buffer gets room for `room` more values (a
/// `rows` buffer kept as is has the room it was made with).
fn from_rows(rows: Vec<f32>, side: Tokens, g: LinearGeom, f: usize, room: usize) -> Vec<f32> {
    match side {
        Tokens::Rows => rows,
        Tokens::Heads(h) => rows_to_heads(&rows, g, h, f, room),
    }
}

impl CustomOp3 for TokenLinear {
    fn name(&self) -> &'static str {
        "ifp-token-linear"
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
        self.cpu_products(self.name())?;
        let g = self.geom_with_bias(l1.dims(), l2.dims(), l3)?;
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let b = f32_slice(s3, l3, self.name())?;
        let out = self.cpu_forward(x, w, b, g);
        Ok((CpuStorage::F32(out), self.out_shape(l1.dims(), g)))
    }

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
        let g = self.geom_with_bias(l1.dims(), l2.dims(), l3)?;
        let out = self.cuda_forward(g, [(s1, l1), (s2, l2), (s3, l3)])?;
        Ok((out, self.out_shape(l1.dims(), g)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let backward = TokenLinearBackward(*self);
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &backward)?;
        let mut parts = unpack(&packed, &[x.shape(), w.shape(), b.shape()])?.into_iter();
        Ok((parts.next(), parts.next(), parts.next()))
    }
}

/// (x, W, dy) -> [dx, dW, db] flattened: `dx = dy W`, `dW = dy^T x`, `db = sum(dy)` over rows,
/// of the layer [`TokenLinear`].
pub(super) struct TokenLinearBackward(pub(super) TokenLinear);

impl CustomOp3 for TokenLinearBackward {
    fn name(&self) -> &'static str {
        "ifp-token-linear-backward"
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
        let op = &self.0;
        op.cpu_products(self.name())?;
        let g = op.geom(l1.dims(), l2.dims())?;
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let dy = f32_slice(s3, l3, self.name())?;
        let (rows, par) = (g.rows(), parallelism());
        let dym = as_rows(dy, op.output, g, g.o);
        let xm = as_rows(x, op.input, g, g.k);
        let dya = Mat {
            data: &dym,
            transposed: false,
        };
        // dx (rows, k) = dy (rows, o) W (o, k), with room for dW and db after it.
        let room = g.o * g.k + g.o;
        let mut dx = zeros_with_room(rows * g.k, room);
        let wa = Mat {
            data: w,
            transposed: false,
        };
        matmul(&mut dx, dya, wa, rows, g.k, g.o, false, par);
        let mut out = from_rows(dx, op.input, g, g.k, room);
        // dW (o, k) = dy^T (o, rows) x (rows, k)
        let mut dw = vec![0f32; g.o * g.k];
        let (dyt, xa) = (
            Mat {
                data: &dym,
                transposed: true,
            },
            Mat {
                data: &xm,
                transposed: false,
            },
        );
        matmul(&mut dw, dyt, xa, g.o, g.k, rows, false, par);
        pack_after(&mut out, &[&dw, &column_sums(&dym, g.o)]);
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

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
        let op = &self.0;
        let g = op.geom(l1.dims(), l2.dims())?;
        let sides = (op.input, op.output);
        let inputs = [(s1, l1), (s2, l2), (s3, l3)];
        let out = crate::kernels::cuda::linear::backward(g, sides, op.products, inputs)?;
        Ok((out, Shape::from(g.gradients_len())))
    }
}

/// Where [`linear`] runs as one op: float32 on the CPU without autocast, and on CUDA where
/// `IFP_CUDA_FUSED` turns on `linear` (`cuda/linear.rs`, planned in `kernels/gemm_tokens/`),
/// without autocast or under mixed autocast ([`runs_uncast`]; its products then take bfloat16
/// operands, as `mixed`'s product does). Elsewhere it is the composed version, whose product
/// follows the autocast setting.
pub fn linear_applies(x: &Tensor) -> bool {
    runs_uncast(x) && fused_applies(x, CudaKernel::Linear)
}

/// `x W^T + b` over the last dimension: x laid out as `input`, the result as `output`
/// ([`Tokens`]); weight `(out, in)`, bias `(out)`. One op where [`linear_applies`], else
/// [`linear_composed`]; the sizes are checked first either way, so a bad layout is the same
/// error on every path.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor, input: Tokens, output: Tokens) -> Result<Tensor> {
    let g = LinearGeom::new(input, output, x.dims(), w.dims())?;
    let float32 = w.dtype() == x.dtype() && b.dtype() == x.dtype();
    // cuBLAS refuses empty products.
    let sized = x.device().is_cpu() || g.rows() * g.k * g.o > 0;
    if !(linear_applies(x) && float32 && sized) {
        return linear_composed(x, w, b, input, output);
    }
    let products = if mixed_autocast(x) {
        DType::BF16
    } else {
        DType::F32
    };
    let op = TokenLinear {
        input,
        output,
        products,
    };
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, op)
}

/// [`linear`] from tensor ops (any device and dtype; the product under autocast).
pub fn linear_composed(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    input: Tokens,
    output: Tokens,
) -> Result<Tensor> {
    // (B', heads, N, d) -> (B', N, heads * d)
    let x = match input {
        Tokens::Rows => x.clone(),
        Tokens::Heads(_) => {
            let (g, h, n, d) = x.dims4()?;
            x.transpose(1, 2)?.reshape((g, n, h * d))?
        }
    };
    let mut dims = x.dims().to_vec();
    let k = dims
        .pop()
        .ok_or_else(|| candle_core::Error::Msg("token linear: a scalar input".into()))?;
    let rows: usize = dims.iter().product();
    let o = w.dim(0)?;
    let y = super::add_bias(&amp::matmul(&x.reshape((rows, k))?, &w.t()?)?, b)?;
    match output {
        Tokens::Rows => {
            dims.push(o);
            y.reshape(dims)
        }
        // (B', N, heads, d) -> (B', heads, N, d)
        Tokens::Heads(h) => {
            let (g, n, _) = x.dims3()?;
            y.reshape((g, n, h, o / h))?.transpose(1, 2)?.contiguous()
        }
    }
}
