//! Restormer backbone (Zamir et al., "Restormer: Efficient Transformer for High-Resolution Image
//! Restoration", CVPR 2022), as IFP's `Restormer_Backbone`: the full U-shaped transformer up to
//! its output convolution, which emits `OUT_CHANNELS` feature maps for the reconstruction head.
//! Parameter names follow the reference state_dict (`encoder_level1.0.attn.qkv_dwconv.weight`...).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use candle_nn::ops::{pixel_shuffle, pixel_unshuffle};

use super::layers::{reflect_pad_end, ChannelLayerNorm, Conv2d};
use crate::config::RestormerConfig;
use crate::kernels::{self, CudaKernel};

/// Multi-DConv Head Transposed (channel) Attention.
struct Attention {
    heads: usize,
    temperature: Tensor,
    qkv: Conv2d,
    qkv_dwconv: Conv2d,
    project_out: Conv2d,
}

impl Attention {
    fn new(dim: usize, heads: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Attention {
            heads,
            temperature: vb.get_with_hints(
                (heads, 1, 1),
                "temperature",
                candle_nn::Init::Const(1.0),
            )?,
            qkv: Conv2d::new(dim, dim * 3, 1, bias, vb.pp("qkv"))?,
            qkv_dwconv: Conv2d::depthwise(dim * 3, 3, bias, vb.pp("qkv_dwconv"))?,
            project_out: Conv2d::new(dim, dim, 1, bias, vb.pp("project_out"))?,
        })
    }
}

impl Attention {
    /// `residual + attention(x)`: (B, C, H, W) -> (B, C, H, W).
    fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let p = self.qkv.forward(x)?; // (B, 3C, H, W)
        let out = if let Some(wt) = self
            .qkv_dwconv
            .fusable_depthwise_weight(&p, CudaKernel::Mdta)
        {
            let k = self.qkv_dwconv.kernel_size();
            kernels::depthwise_channel_attention(&p, wt, k, &self.temperature, self.heads)?
        } else {
            let qkv = self.qkv_dwconv.forward(&p)?;
            kernels::channel_attention(&qkv, &self.temperature, self.heads)?
        };
        self.project_out.forward_residual(&out, residual)
    }
}

/// Gated-Dconv Feed-forward Network.
struct FeedForward {
    project_in: Conv2d,
    dwconv: Conv2d,
    project_out: Conv2d,
}

impl FeedForward {
    fn new(dim: usize, factor: f64, bias: bool, vb: VarBuilder) -> Result<Self> {
        // `int(dim * ffn_expansion_factor)` in the reference: truncation, not rounding.
        let hidden = (dim as f64 * factor) as usize;
        Ok(FeedForward {
            project_in: Conv2d::new(dim, hidden * 2, 1, bias, vb.pp("project_in"))?,
            dwconv: Conv2d::depthwise(hidden * 2, 3, bias, vb.pp("dwconv"))?,
            project_out: Conv2d::new(hidden, dim, 1, bias, vb.pp("project_out"))?,
        })
    }
}

impl FeedForward {
    /// `residual + ffn(x)`: (B, C, H, W) -> (B, C, H, W).
    fn forward_residual(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let p = self.project_in.forward(x)?; // (B, 2*hidden, H, W)
        let gated = if let Some(wt) = self.dwconv.fusable_depthwise_weight(&p, CudaKernel::Gate) {
            kernels::depthwise_gelu_gate(&p, wt, self.dwconv.kernel_size())?
        } else {
            kernels::gelu_gate(&self.dwconv.forward(&p)?)?
        };
        self.project_out.forward_residual(&gated, residual)
    }
}

struct TransformerBlock {
    norm1: ChannelLayerNorm,
    attn: Attention,
    norm2: ChannelLayerNorm,
    ffn: FeedForward,
}

impl TransformerBlock {
    fn new(dim: usize, heads: usize, cfg: &RestormerConfig, vb: VarBuilder) -> Result<Self> {
        let with_bias = cfg.layernorm_type == "WithBias";
        Ok(TransformerBlock {
            norm1: ChannelLayerNorm::new(dim, with_bias, vb.pp("norm1"))?,
            attn: Attention::new(dim, heads, cfg.bias, vb.pp("attn"))?,
            norm2: ChannelLayerNorm::new(dim, with_bias, vb.pp("norm2"))?,
            ffn: FeedForward::new(dim, cfg.ffn_expansion_factor, cfg.bias, vb.pp("ffn"))?,
        })
    }
}

impl Module for TransformerBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // x + attn(norm1(x)), then x + ffn(norm2(x)), each sum fused into the branch's last
        // convolution where a kernel applies.
        let x = self.attn.forward_residual(&self.norm1.forward(x)?, x)?;
        self.ffn.forward_residual(&self.norm2.forward(&x)?, &x)
    }
}

/// An `nn.Sequential` of transformer blocks (`encoder_level1.0`, `encoder_level1.1`, ...).
struct Stage(Vec<TransformerBlock>);

impl Stage {
    fn new(
        n: usize,
        dim: usize,
        heads: usize,
        cfg: &RestormerConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        (0..n)
            .map(|i| TransformerBlock::new(dim, heads, cfg, vb.pp(i)))
            .collect::<Result<_>>()
            .map(Stage)
    }
}

impl Module for Stage {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.iter().try_fold(x.clone(), |x, b| b.forward(&x))
    }
}

/// `Downsample`: conv3x3 C -> C/2, then PixelUnshuffle(2): (B, C, H, W) -> (B, 2C, H/2, W/2).
struct Downsample(Conv2d);

impl Downsample {
    fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Downsample(Conv2d::new(
            c,
            c / 2,
            3,
            false,
            vb.pp("body").pp(0),
        )?))
    }
}

impl Module for Downsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        pixel_unshuffle(&self.0.forward(x)?, 2)
    }
}

/// `Upsample`: conv3x3 C -> 2C, then PixelShuffle(2): (B, C, H, W) -> (B, C/2, 2H, 2W).
struct Upsample(Conv2d);

impl Upsample {
    fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Upsample(Conv2d::new(
            c,
            c * 2,
            3,
            false,
            vb.pp("body").pp(0),
        )?))
    }
}

impl Module for Upsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        pixel_shuffle(&self.0.forward(x)?, 2)
    }
}

/// The Restormer backbone: image (B, 3, H, W) -> features (B, OUT_CHANNELS, H, W).
pub struct Restormer {
    patch_embed: Conv2d,
    encoder_level1: Stage,
    down1_2: Downsample,
    encoder_level2: Stage,
    down2_3: Downsample,
    encoder_level3: Stage,
    down3_4: Downsample,
    latent: Stage,
    up4_3: Upsample,
    reduce_chan_level3: Conv2d,
    decoder_level3: Stage,
    up3_2: Upsample,
    reduce_chan_level2: Conv2d,
    decoder_level2: Stage,
    up2_1: Upsample,
    decoder_level1: Stage,
    refinement: Stage,
    output: Conv2d,
}

impl Restormer {
    pub fn new(cfg: &RestormerConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.dim;
        let nb = &cfg.num_blocks;
        let h = &cfg.heads;
        let bias = cfg.bias;
        Ok(Restormer {
            patch_embed: Conv2d::new(
                cfg.inp_channels,
                d,
                3,
                // `OverlapPatchEmbed(inp_channels, dim)` keeps its own default bias=False,
                // whatever BIAS says.
                false,
                vb.pp("patch_embed").pp("proj"),
            )?,
            encoder_level1: Stage::new(nb[0], d, h[0], cfg, vb.pp("encoder_level1"))?,
            down1_2: Downsample::new(d, vb.pp("down1_2"))?,
            encoder_level2: Stage::new(nb[1], d * 2, h[1], cfg, vb.pp("encoder_level2"))?,
            down2_3: Downsample::new(d * 2, vb.pp("down2_3"))?,
            encoder_level3: Stage::new(nb[2], d * 4, h[2], cfg, vb.pp("encoder_level3"))?,
            down3_4: Downsample::new(d * 4, vb.pp("down3_4"))?,
            latent: Stage::new(nb[3], d * 8, h[3], cfg, vb.pp("latent"))?,
            up4_3: Upsample::new(d * 8, vb.pp("up4_3"))?,
            reduce_chan_level3: Conv2d::new(d * 8, d * 4, 1, bias, vb.pp("reduce_chan_level3"))?,
            decoder_level3: Stage::new(nb[2], d * 4, h[2], cfg, vb.pp("decoder_level3"))?,
            up3_2: Upsample::new(d * 4, vb.pp("up3_2"))?,
            reduce_chan_level2: Conv2d::new(d * 4, d * 2, 1, bias, vb.pp("reduce_chan_level2"))?,
            decoder_level2: Stage::new(nb[1], d * 2, h[1], cfg, vb.pp("decoder_level2"))?,
            up2_1: Upsample::new(d * 2, vb.pp("up2_1"))?,
            decoder_level1: Stage::new(nb[0], d * 2, h[0], cfg, vb.pp("decoder_level1"))?,
            refinement: Stage::new(
                cfg.num_refinement_blocks,
                d * 2,
                h[0],
                cfg,
                vb.pp("refinement"),
            )?,
            output: Conv2d::new(d * 2, cfg.out_channels, 3, bias, vb.pp("output"))?,
        })
    }
}

impl Module for Restormer {
    // (B, 3, H, W) -> (B, OUT_CHANNELS, H, W)
    fn forward(&self, img: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = img.dims4()?;
        // `check_image_size`: reflect-pad bottom/right to a multiple of 8, crop back at the end.
        let x = reflect_pad_end(
            &reflect_pad_end(img, 2, (8 - h % 8) % 8)?,
            3,
            (8 - w % 8) % 8,
        )?;

        let enc1 = self
            .encoder_level1
            .forward(&self.patch_embed.forward(&x)?)?;
        let enc2 = self.encoder_level2.forward(&self.down1_2.forward(&enc1)?)?;
        let enc3 = self.encoder_level3.forward(&self.down2_3.forward(&enc2)?)?;
        let latent = self.latent.forward(&self.down3_4.forward(&enc3)?)?;

        // Concatenations are [upsampled, skip] along channels.
        let dec3 = Tensor::cat(&[self.up4_3.forward(&latent)?, enc3], 1)?;
        let dec3 = self
            .decoder_level3
            .forward(&self.reduce_chan_level3.forward(&dec3)?)?;
        let dec2 = Tensor::cat(&[self.up3_2.forward(&dec3)?, enc2], 1)?;
        let dec2 = self
            .decoder_level2
            .forward(&self.reduce_chan_level2.forward(&dec2)?)?;
        let dec1 = Tensor::cat(&[self.up2_1.forward(&dec2)?, enc1], 1)?;
        let dec1 = self
            .refinement
            .forward(&self.decoder_level1.forward(&dec1)?)?;

        self.output.forward(&dec1)?.narrow(2, 0, h)?.narrow(3, 0, w)
    }
}
