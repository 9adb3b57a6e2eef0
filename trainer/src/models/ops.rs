//! Differentiable building blocks shared by the networks, written so that every one has a
//! correct and reasonably fast backward in candle 0.11 (DESIGN 4: its `LayerNorm`, fused softmax
//! and grouped convolution either drop gradients or are very slow):
//! - 3x3 convolutions as im2col + one matrix product (backward = matmul + slicing),
//! - 1x1 convolutions as a plain matrix product,
//! - depthwise convolutions as a sum of shifted, per-channel-scaled views,
//! - a channel LayerNorm and a softmax made of elementary differentiable ops.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use super::amp;
use super::kernels;

/// PyTorch's default `nn.Conv2d` initialisation: kaiming-uniform with a = sqrt(5), i.e.
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight and the bias alike.
fn torch_default_init(fan_in: usize) -> Init {
    let b = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform { lo: -b, up: b }
}

/// A stride-1 "same" 2-D convolution with square kernel `k` (odd), dense or depthwise, with the
/// parameter names of `nn.Conv2d` (`weight`, `bias`).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    out_c: usize,
    k: usize,
    depthwise: bool,
}

impl Conv2d {
    /// A dense convolution `in_c -> out_c` with PyTorch's default init.
    pub fn new(in_c: usize, out_c: usize, k: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let init = torch_default_init(in_c * k * k);
        Self::with_init(in_c, out_c, k, bias, init, init, vb)
    }

    /// A dense convolution with explicit weight init; the bias uses `bias_init`.
    pub fn with_init(
        in_c: usize,
        out_c: usize,
        k: usize,
        bias: bool,
        init: Init,
        bias_init: Init,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get_with_hints((out_c, in_c, k, k), "weight", init)?;
        let bias = if bias {
            Some(vb.get_with_hints(out_c, "bias", bias_init)?)
        } else {
            None
        };
        Ok(Conv2d {
            weight,
            bias,
            out_c,
            k,
            depthwise: false,
        })
    }

    /// A depthwise convolution (`groups = channels`), weight `(C, 1, k, k)`.
    pub fn depthwise(channels: usize, k: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let init = torch_default_init(k * k);
        let weight = vb.get_with_hints((channels, 1, k, k), "weight", init)?;
        let bias = if bias {
            Some(vb.get_with_hints(channels, "bias", init)?)
        } else {
            None
        };
        Ok(Conv2d {
            weight,
            bias,
            out_c: channels,
            k,
            depthwise: true,
        })
    }

    fn forward_dense(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let y = if kernels::applicable(x) && amp::low_dtype().is_none() {
            return kernels::conv_dense(x, &self.weight, self.k);
        } else if self.k == 1 {
            // (O, C) x (B, C, H*W) -> (B, O, H*W)
            let wm = self.weight.reshape((self.out_c, c))?;
            amp::broadcast_matmul(&wm, &x.reshape((b, c, h * w))?)?
        } else {
            // (B, C*k*k, H*W), gathered in the product's dtype (half the memory under AMP).
            // (float32 CPU inputs took `kernels::conv_dense` above, 1x1 included.)
            let x = amp::lower(x)?;
            let cols = im2col(&x, self.k)?;
            let wm = self.weight.reshape((self.out_c, c * self.k * self.k))?;
            amp::broadcast_matmul(&wm, &cols)?
        };
        y.reshape((b, self.out_c, h, w))
    }

    fn forward_depthwise(&self, x: &Tensor) -> Result<Tensor> {
        // A convolution, so lowered under AMP like the dense ones (the CPU kernel is float32
        // only: a bf16 input on the CPU takes the composed path; CUDA has both).
        let (x, weight) = (amp::lower(x)?, amp::lower(&self.weight)?);
        let y = if kernels::depthwise_applicable(&x, &weight, self.k) {
            kernels::depthwise(&x, &weight, self.k)?
        } else {
            depthwise_composed(&x, &weight, self.k)?
        };
        amp::raise(y)
    }
}

/// Depthwise convolution from tensor ops (any device and dtype): a sum of shifted views, each
/// scaled per channel. The reference for `kernels::depthwise`.
pub fn depthwise_composed(x: &Tensor, weight: &Tensor, k: usize) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    let p = k / 2;
    let xp = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
    // (C, 1, k, k) -> (C, k*k): one per-channel scale per tap.
    let taps = weight.reshape((c, k * k))?;
    let mut acc: Option<Tensor> = None;
    for i in 0..k {
        for j in 0..k {
            let tap = taps.narrow(1, i * k + j, 1)?.reshape((1, c, 1, 1))?;
            let term = xp.narrow(2, i, h)?.narrow(3, j, w)?.broadcast_mul(&tap)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
    }
    acc.ok_or_else(|| candle_core::Error::Msg("empty depthwise kernel".into()))
}

/// What follows a convolution, fused with its bias where a kernel applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Identity,
    Relu,
    /// LeakyReLU with this negative slope (>= 0).
    LeakyRelu(f64),
}

impl Conv2d {
    /// `act(conv(x) + bias)`: (B, C, H, W) -> (B, O, H, W).
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let y = if self.depthwise {
            self.forward_depthwise(x)?
        } else {
            self.forward_dense(x)?
        };
        if let Some(b) = &self.bias {
            if kernels::applicable(&y) {
                let slope = match act {
                    Activation::Identity => None,
                    Activation::Relu => Some(0.0),
                    Activation::LeakyRelu(s) => Some(s as f32),
                };
                return kernels::bias_act(&y, b, slope);
            }
        }
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, self.out_c, 1, 1))?)?,
            None => y,
        };
        match act {
            Activation::Identity => Ok(y),
            Activation::Relu => y.relu(),
            Activation::LeakyRelu(s) => leaky_relu(&y, s),
        }
    }
}

impl Conv2d {
    /// The weight of this convolution when it is depthwise, bias-free and the CPU kernels
    /// apply to `x` (float32, no autocast): ops fused with the convolution take it from here.
    pub fn fusable_depthwise_weight(&self, x: &Tensor) -> Option<&Tensor> {
        (self.depthwise
            && self.bias.is_none()
            && kernels::applicable(x)
            && amp::low_dtype().is_none())
        .then_some(&self.weight)
    }

    /// The kernel size k (k x k).
    pub fn kernel_size(&self) -> usize {
        self.k
    }

    /// `residual + conv(x)` (the bias included): one op on the CPU for a dense convolution in
    /// float32, else the convolution then the sum.
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if !self.depthwise && kernels::applicable(x) && amp::low_dtype().is_none() {
            let bias = self.bias.as_ref();
            return kernels::conv_dense_residual(x, &self.weight, bias, self.k, residual);
        }
        residual + self.forward(x)?
    }
}

impl Module for Conv2d {
    // (B, C, H, W) -> (B, O, H, W)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Activation::Identity)
    }
}

/// (B, C, H, W) -> (B, C*k*k, H*W) with zero padding k/2, column order `c*k*k + i*k + j`
/// (the layout of a PyTorch conv weight reshaped to (O, C*k*k)).
pub fn im2col(x: &Tensor, k: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let p = k / 2;
    let xp = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
    let mut taps = Vec::with_capacity(k * k);
    for i in 0..k {
        for j in 0..k {
            taps.push(xp.narrow(2, i, h)?.narrow(3, j, w)?);
        }
    }
    // k*k x (B, C, H, W) -> (B, C, k*k, H, W)
    Tensor::stack(&taps, 2)?.reshape((b, c * k * k, h * w))
}

/// The channel LayerNorm of Restormer (`WithBias_LayerNorm` / `BiasFree_LayerNorm` applied to
/// `to_3d(x)`): each pixel is normalised over its channels with the biased variance and
/// eps 1e-5 inside the square root.
#[derive(Debug, Clone)]
pub struct ChannelLayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl ChannelLayerNorm {
    /// `with_bias` selects WithBias (weight and bias) or BiasFree (weight only). The parameters
    /// live under `body.` as in the reference.
    pub fn new(channels: usize, with_bias: bool, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("body");
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = if with_bias {
            Some(vb.get_with_hints(channels, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(ChannelLayerNorm { weight, bias })
    }
}

impl Module for ChannelLayerNorm {
    // (B, C, H, W) -> (B, C, H, W)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if kernels::applicable(x) {
            return kernels::channel_layer_norm(x, &self.weight, self.bias.as_ref());
        }
        channel_layer_norm_composed(x, &self.weight, self.bias.as_ref())
    }
}

/// The channel LayerNorm from tensor ops (any device and dtype); the reference for
/// `kernels::channel_layer_norm`.
pub fn channel_layer_norm_composed(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let c = x.dim(1)?;
    let mu = x.mean_keepdim(1)?;
    let xc = x.broadcast_sub(&mu)?;
    let var = xc.sqr()?.mean_keepdim(1)?;
    let denom = (var + 1e-5)?.sqrt()?;
    let w = weight.reshape((1, c, 1, 1))?;
    match bias {
        Some(b) => xc
            .broadcast_div(&denom)?
            .broadcast_mul(&w)?
            .broadcast_add(&b.reshape((1, c, 1, 1))?),
        // BiasFree divides the raw input, not the centred one.
        None => x.broadcast_div(&denom)?.broadcast_mul(&w),
    }
}

/// Softmax over the last dimension from elementary ops (so it has a backward); the max is
/// detached since subtracting it does not change the result.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// `F.normalize(x, dim=-1)`: `x / max(||x||_2, 1e-12)`.
pub fn l2_normalize_last(x: &Tensor) -> Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    x.broadcast_div(&n)
}

/// `nn.PixelShuffle(r)`: (B, C*r*r, H, W) -> (B, C, H*r, W*r).
pub fn pixel_shuffle(x: &Tensor, r: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let oc = c / (r * r);
    x.reshape((b, oc, r, r, h, w))?
        .permute((0, 1, 4, 2, 5, 3))?
        .reshape((b, oc, h * r, w * r))
}

/// `nn.PixelUnshuffle(r)`: (B, C, H, W) -> (B, C*r*r, H/r, W/r).
pub fn pixel_unshuffle(x: &Tensor, r: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (oh, ow) = (h / r, w / r);
    x.reshape((b, c, oh, r, ow, r))?
        .permute((0, 1, 3, 5, 2, 4))?
        .reshape((b, c * r * r, oh, ow))
}

/// Reflect padding at the end of dimension `dim` (`F.pad(..., mode='reflect')` with zero
/// leading pad): indices `0..n` followed by `n-2, n-3, ...`. Needs `pad < n`.
pub fn reflect_pad_end(x: &Tensor, dim: usize, pad: usize) -> Result<Tensor> {
    if pad == 0 {
        return Ok(x.clone());
    }
    let n = x.dim(dim)?;
    if pad >= n {
        return Err(candle_core::Error::Msg(format!(
            "reflect padding of {pad} needs a size above {pad}, got {n}"
        )));
    }
    let idx: Vec<u32> = (0..n as u32)
        .chain((0..pad as u32).map(|i| n as u32 - 2 - i))
        .collect();
    let idx = Tensor::from_vec(idx, n + pad, x.device())?;
    x.index_select(&idx, dim)
}

/// Exact (erf) GELU, as `nn.GELU()` / `F.gelu`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

/// LeakyReLU with the given slope, differentiable: `max(x, 0) + slope * min(x, 0)`.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    let pos = x.relu()?;
    let neg = (x - &pos)?;
    pos + (neg * slope)?
}
