//! The modules the networks share, with the parameter names of their PyTorch counterparts:
//! `Conv2d` (dense or depthwise, with its bias and activation, and the residual sum fused in
//! where a kernel can take it) and Restormer's `ChannelLayerNorm`, plus reflect padding. The
//! arithmetic is in `crate::kernels`, whose functions pick a fused kernel or their composed
//! tensor-op version (candle 0.11's own `LayerNorm`, fused softmax and grouped convolution drop
//! gradients or are very slow: ARCHITECTURE.md, "Known traps in candle 0.11").

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::kernels::token::Gelus;
use crate::kernels::{self, amp, CudaKernel};

pub use crate::kernels::Activation;

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
            k,
            depthwise: true,
        })
    }

    fn forward_dense(&self, x: &Tensor) -> Result<Tensor> {
        kernels::conv_dense(x, &self.weight, self.k)
    }

    fn forward_depthwise(&self, x: &Tensor) -> Result<Tensor> {
        if kernels::mixed_autocast(x) {
            return kernels::depthwise(x, &self.weight, self.k);
        }
        // A convolution, so lowered under AMP like the dense ones (the CPU kernel is float32
        // only: a bf16 input on the CPU takes the composed path; CUDA has both).
        let (x, weight) = (amp::lower(x)?, amp::lower(&self.weight)?);
        amp::raise(kernels::depthwise(&x, &weight, self.k)?)
    }
}

impl Conv2d {
    /// `act(conv(x) + bias)`: (B, C, H, W) -> (B, O, H, W).
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        let y = if self.depthwise {
            self.forward_depthwise(x)?
        } else {
            self.forward_dense(x)?
        };
        match &self.bias {
            Some(b) => kernels::bias_act(&y, b, act),
            None => kernels::activation(&y, act),
        }
    }
}

impl Conv2d {
    /// The weight of this convolution when it is depthwise, bias-free and the fused op that
    /// follows it applies to `x` (`kernels::depthwise_fused_applicable`: float32, on the CPU
    /// or on CUDA where `IFP_CUDA_FUSED` turns on `kernel`, the op's own). Ops fused with the
    /// convolution take it from here.
    pub fn fusable_depthwise_weight(&self, x: &Tensor, kernel: CudaKernel) -> Option<&Tensor> {
        (self.depthwise
            && self.bias.is_none()
            && kernels::depthwise_fused_applicable(x, &self.weight, self.k, kernel))
        .then_some(&self.weight)
    }

    /// The weight and bias of a depthwise convolution with a bias (`None` for any other): what
    /// an op that runs the convolution inside takes.
    pub fn depthwise_with_bias(&self) -> Option<(&Tensor, &Tensor)> {
        match (self.depthwise, &self.bias) {
            (true, Some(bias)) => Some((&self.weight, bias)),
            _ => None,
        }
    }

    /// The convolution of tokens `(B, H*W, C)` in rows of `w` pixels, channels last, with the
    /// exact GELUs of `gelus` before and after it, as Uformer's LeFF uses it: a depthwise
    /// convolution with a bias is one op (the GELUs included) where
    /// `token::depthwise_applies`; otherwise the tokens go through [`Module::forward`] as
    /// `(B, C, H, W)` and back.
    pub fn forward_tokens(&self, x: &Tensor, w: usize, gelus: Gelus) -> Result<Tensor> {
        if let (true, Some(bias)) = (self.depthwise, &self.bias) {
            if kernels::token::depthwise_applies(x) {
                return kernels::token::depthwise(x, &self.weight, bias, w, gelus);
            }
        }
        let x = if gelus.before {
            kernels::token::gelu(x)?
        } else {
            x.clone()
        };
        let y = kernels::token::through_planes(&x, w, |planes| self.forward(planes))?;
        if gelus.after {
            kernels::token::gelu(&y)
        } else {
            Ok(y)
        }
    }

    /// The kernel size k (k x k).
    pub fn kernel_size(&self) -> usize {
        self.k
    }

    /// `residual + conv(x)` (the bias included): for a dense convolution, one op where the
    /// kernel applies (see `kernels::conv_dense_residual`).
    pub fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if self.depthwise {
            return residual + self.forward(x)?;
        }
        kernels::conv_dense_residual(x, &self.weight, self.bias.as_ref(), self.k, residual)
    }
}

impl Module for Conv2d {
    // (B, C, H, W) -> (B, O, H, W)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Activation::Identity)
    }
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
        kernels::channel_layer_norm(x, &self.weight, self.bias.as_ref())
    }
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
