//! The SRResNet-style reconstruction head of IFP (`MSRResNet_Head`, after Wang et al.'s
//! MSRResNet in BasicSR/DegAE) at scale 1: it turns the backbone's feature maps back into an
//! RGB image. Parameter names follow the reference (`conv_first`, `basic_block1.conv1`, ...).

use candle_core::{Module, Result, Tensor};
use candle_nn::init::NonLinearity;
use candle_nn::{Init, VarBuilder};

use super::layers::{Activation, Conv2d};
use crate::config::DecoderConfig;

/// BasicSR's `initialize_weights(..., scale=0.1)`: kaiming-normal (fan-in, ReLU gain) times 0.1,
/// zero bias. Expressed as a normal init with the scaled standard deviation.
fn scaled_kaiming(in_c: usize, k: usize) -> Init {
    let std = NonLinearity::ReLU.gain() / ((in_c * k * k) as f64).sqrt() * 0.1;
    Init::Randn {
        mean: 0.0,
        stdev: std,
    }
}

fn conv(in_c: usize, out_c: usize, vb: VarBuilder) -> Result<Conv2d> {
    Conv2d::with_init(
        in_c,
        out_c,
        3,
        true,
        scaled_kaiming(in_c, 3),
        Init::Const(0.0),
        vb,
    )
}

/// `ResidualBlock_noBN`: x + conv2(relu(conv1(x))).
struct ResidualBlock {
    conv1: Conv2d,
    conv2: Conv2d,
}

impl Module for ResidualBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv2
            .forward_residual(&self.conv1.forward_act(x, Activation::Relu)?, x)
    }
}

/// The head: features (B, IN_NC, H, W) -> image (B, OUT_NC, H, W).
pub struct MsrResNetHead {
    conv_first: Conv2d,
    blocks: Vec<ResidualBlock>,
    hr_conv: Conv2d,
    conv_last: Conv2d,
}

impl MsrResNetHead {
    pub fn new(cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let nf = cfg.nf;
        // Created in the reference's `named_parameters()` order: conv_first, blocks, HRconv, conv_last.
        let conv_first = conv(cfg.in_nc, nf, vb.pp("conv_first"))?;
        let blocks = (1..=4)
            .map(|i| {
                let vb = vb.pp(format!("basic_block{i}"));
                Ok(ResidualBlock {
                    conv1: conv(nf, nf, vb.pp("conv1"))?,
                    conv2: conv(nf, nf, vb.pp("conv2"))?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(MsrResNetHead {
            conv_first,
            blocks,
            hr_conv: conv(nf, nf, vb.pp("HRconv"))?,
            conv_last: conv(nf, cfg.out_nc, vb.pp("conv_last"))?,
        })
    }
}

impl Module for MsrResNetHead {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let fea = self.conv_first.forward_act(x, Activation::LeakyRelu(0.1))?;
        let out = self.blocks.iter().try_fold(fea, |f, b| b.forward(&f))?;
        self.conv_last
            .forward(&self.hr_conv.forward_act(&out, Activation::LeakyRelu(0.1))?)
    }
}
