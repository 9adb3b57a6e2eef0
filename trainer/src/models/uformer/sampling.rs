//! Uformer's resolution changes and projections, all on the token grid `(B, H*W, C)`:
//! 4x4/stride-2 downsampling, 2x2/stride-2 transposed-conv upsampling, and the 3x3 input and
//! output projections between image and tokens.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::{err, side};
use crate::kernels::amp;
use crate::kernels::token as kernels;
use crate::kernels::Activation;
use crate::models::layers::Conv2d;

/// PyTorch's default conv init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), weight and bias alike.
fn torch_uniform(fan_in: usize) -> Init {
    let b = 1.0 / (fan_in as f64).sqrt();
    Init::Uniform { lo: -b, up: b }
}

/// `Downsample`: Conv2d(C, O, 4, stride 2, padding 1) on the token grid. Written as a stride-2
/// im2col (the padded grid split into its four 2x2 phases, each tap a shifted view) and one
/// matrix product, so its backward is slicing plus GEMMs instead of candle's naive
/// transposed-convolution loop (its `conv_transpose2d` backward is a slow scalar loop). Public so the tests can compare it with `conv2d`.
pub struct Downsample {
    weight: Tensor,
    bias: Tensor,
    out_c: usize,
}

impl Downsample {
    pub(super) fn new(in_c: usize, out_c: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("conv").pp(0);
        let init = torch_uniform(in_c * 16);
        Ok(Downsample {
            weight: vb.get_with_hints((out_c, in_c, 4, 4), "weight", init)?,
            bias: vb.get_with_hints(out_c, "bias", init)?,
            out_c,
        })
    }

    /// From a weight `(O, C, 4, 4)` and a bias `(O)`.
    pub fn from_weights(weight: Tensor, bias: Tensor) -> Result<Self> {
        let out_c = weight.dim(0)?;
        Ok(Downsample {
            weight,
            bias,
            out_c,
        })
    }
}

impl Module for Downsample {
    // (B, H*W, C) -> (B, H/2*W/2, O)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, c) = x.dims3()?;
        let h = side(l)?;
        if !h.is_multiple_of(2) {
            return Err(err(format!("Uformer: cannot halve a {h}x{h} level")));
        }
        let ho = h / 2;
        // Padded row 2*(i+dy) + ry feeds output row i through kernel row ky = 2*dy + ry.
        let xp = x
            .reshape((b, h, h, c))?
            .pad_with_zeros(1, 1, 1)?
            .pad_with_zeros(2, 1, 1)?
            .reshape((b, ho + 1, 2, ho + 1, 2, c))?;
        let mut taps = Vec::with_capacity(4);
        for dy in 0..2 {
            for dx in 0..2 {
                // (B, Ho, ry, Wo, rx, C) -> (B, Ho, Wo, ry, rx, C)
                taps.push(
                    xp.narrow(1, dy, ho)?
                        .narrow(3, dx, ho)?
                        .permute((0, 1, 3, 2, 4, 5))?,
                );
            }
        }
        // (B, Ho, Wo, [dy dx], ry, rx, C) -> (B*Ho*Wo, 16*C)
        let cols = Tensor::stack(&taps, 3)?.reshape((b * ho * ho, 16 * c))?;
        // (O, C, ky, kx) = (O, C, dy, ry, dx, rx) -> (O, dy, dx, ry, rx, C), the column order.
        let wm = self
            .weight
            .reshape((self.out_c, c, 2, 2, 2, 2))?
            .permute((0, 2, 4, 3, 5, 1))?
            .reshape((self.out_c, 16 * c))?;
        kernels::add_bias(&amp::matmul(&cols, &wm.t()?)?, &self.bias)?.reshape((
            b,
            ho * ho,
            self.out_c,
        ))
    }
}

/// `Upsample`: ConvTranspose2d(C, O, 2, stride 2) on the token grid. With kernel = stride the
/// output pixels do not overlap: every input token times the `(C, O*2*2)` weight gives its own
/// 2x2 output patch, which a reshape puts in place. Public so the tests can compare it with
/// `conv_transpose2d`.
pub struct Upsample {
    weight: Tensor,
    bias: Tensor,
    out_c: usize,
}

impl Upsample {
    pub(super) fn new(in_c: usize, out_c: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("deconv").pp(0);
        // PyTorch takes a transposed conv's fan-in from weight dim 1, i.e. out_c * k * k.
        let init = torch_uniform(out_c * 4);
        Ok(Upsample {
            weight: vb.get_with_hints((in_c, out_c, 2, 2), "weight", init)?,
            bias: vb.get_with_hints(out_c, "bias", init)?,
            out_c,
        })
    }

    /// From a weight `(C, O, 2, 2)` and a bias `(O)`.
    pub fn from_weights(weight: Tensor, bias: Tensor) -> Result<Self> {
        let out_c = weight.dim(1)?;
        Ok(Upsample {
            weight,
            bias,
            out_c,
        })
    }
}

impl Module for Upsample {
    // (B, H*W, C) -> (B, 2H*2W, O)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, c) = x.dims3()?;
        let h = side(l)?;
        let o = self.out_c;
        // (C, O, ry, rx) -> (C, ry, rx, O)
        let wm = self.weight.permute((0, 2, 3, 1))?.reshape((c, 4 * o))?;
        // (B*H*W, C) x (C, 4*O) -> (B, H, W, ry, rx, O) -> (B, H, ry, W, rx, O)
        let y = amp::matmul(&x.reshape((b * l, c))?, &wm)?
            .reshape((b, h, h, 2, 2, o))?
            .permute((0, 1, 3, 2, 4, 5))?
            .reshape((b, 4 * l, o))?;
        kernels::add_bias(&y, &self.bias)
    }
}

/// `InputProj`: conv 3x3 + LeakyReLU(0.01), image -> tokens.
pub(super) struct InputProj {
    proj: Conv2d,
}

impl InputProj {
    pub(super) fn new(in_c: usize, out_c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(InputProj {
            proj: Conv2d::new(in_c, out_c, 3, true, vb.pp("proj").pp(0))?,
        })
    }
}

impl Module for InputProj {
    // (B, 3, H, W) -> (B, H*W, C)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.proj.forward_act(x, Activation::LeakyRelu(0.01))?;
        let (b, c, h, w) = y.dims4()?;
        y.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
    }
}

/// `OutputProj`: tokens -> image, conv 3x3, no activation.
pub(super) struct OutputProj {
    proj: Conv2d,
}

impl OutputProj {
    pub(super) fn new(in_c: usize, out_c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(OutputProj {
            proj: Conv2d::new(in_c, out_c, 3, true, vb.pp("proj").pp(0))?,
        })
    }
}

impl Module for OutputProj {
    // (B, H*W, C) -> (B, C_out, H, W)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, c) = x.dims3()?;
        let h = side(l)?;
        let img = x.transpose(1, 2)?.reshape((b, c, h, h))?;
        self.proj.forward(&img)
    }
}
