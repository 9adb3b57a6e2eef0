//! Uformer (Wang et al., "Uformer: A General U-Shaped Transformer for Image Restoration",
//! CVPR 2022), split the way IFP (Image-free Pre-training, ACM MM 2024) pre-trains it:
//! `Uformer_Encoder` (input projection, four LeWin levels each followed by a 4x4/stride-2
//! downsampling, a LeWin bottleneck) returns five token tensors, and `Uformer_Decoder` (four
//! 2x2/stride-2 upsamplings, each concatenated with its skip and followed by modulated LeWin
//! blocks, then the output projection) turns them back into an image. Parameter and buffer
//! names are those of the reference state_dict (`encoderlayer_0.blocks.0.attn.qkv.to_q.weight`,
//! `decoderlayer_0.blocks.0.modulator.weight`, `conv.blocks.0.attn.relative_position_index`...).
//!
//! Reference behaviour kept on purpose (the golden vectors come from the reference code, and
//! checkpoints must load there): no global residual; the
//! encoder ignores `modulator=True`, the decoder runs with `shift_flag=False`; a level no larger
//! than the window uses one window of its own size and no shift; shifted windows mask pairs from
//! different regions with -100 (not -inf); the decoder modulator always has `WIN_SIZE^2` rows;
//! only square inputs (the side is recovered as `sqrt(tokens)`).
//!
//! Tokens are `(B, H*W, C)`, channel-last, row-major. `forward` is eval mode; `forward_t` with
//! a `DropPathRng` is training mode, where the reference's stochastic depth applies
//! (`MODEL.UFORMER.DROP_PATH_RATE`, default the reference constructors' 0.1; see `drop_path`).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::UformerConfig;

mod block;
pub mod drop_path;
mod sampling;

use block::{Layer, LevelSpec};
pub use drop_path::{drop_path_rates, DropPathRng};
pub use sampling::{Downsample, Upsample};
use sampling::{InputProj, OutputProj};

/// `num_heads` of the reference constructors (IFP does not pass it): levels 0-3, bottleneck,
/// decoder levels 0-3. Every level then has `EMBED_DIM` channels per head.
const HEADS: [usize; 9] = [1, 2, 4, 8, 16, 16, 8, 4, 2];

fn err(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(msg)
}

/// Side of the square token grid, `int(sqrt(L))` in the reference, which then fails on any
/// non-square count; here that is an error that says so.
fn side(tokens: usize) -> Result<usize> {
    let s = (tokens as f64).sqrt().round() as usize;
    if s * s != tokens {
        return Err(err(format!(
            "Uformer needs square inputs: {tokens} tokens is not a square grid"
        )));
    }
    Ok(s)
}

/// Checks what the reference checks only by failing somewhere inside: the halvings are exact,
/// every level is tiled by whole windows, and decoder levels hold a full window (modulator).
fn check_size(cfg: &UformerConfig) -> Result<()> {
    let (s, w) = (cfg.image_size, cfg.win_size);
    if cfg.depths.len() != 9 || w == 0 || cfg.embed_dim == 0 {
        return Err(err(format!(
            "Uformer needs 9 depths and a positive EMBED_DIM and WIN_SIZE, got {:?}, {}, {}",
            cfg.depths, cfg.embed_dim, w
        )));
    }
    let tiles = (0..=4).all(|l| (s >> l) <= w || (s >> l).is_multiple_of(w));
    if !s.is_multiple_of(16) || s / 8 < w || !tiles {
        return Err(err(format!(
            "Uformer IMAGE_SIZE {s} does not work with WIN_SIZE {w}: it must be a multiple of \
             16, at least 8 * WIN_SIZE, and every level above the window a multiple of it"
        )));
    }
    Ok(())
}

fn check_input(cfg: &UformerConfig, h: usize, w: usize) -> Result<()> {
    if h != w || !h.is_multiple_of(16) {
        return Err(err(format!(
            "Uformer needs square inputs with a side divisible by 16, got {h}x{w} \
             (the network is built for {0}x{0})",
            cfg.image_size
        )));
    }
    Ok(())
}

/// The window of level `level` (0-3 and the bottleneck 4; decoder level k works at level 3-k):
/// the configured one, or the whole level when the network's level is no larger (the reference
/// builds each block for `IMAGE_SIZE`, so this does not change with the input).
fn level_window(cfg: &UformerConfig, level: usize) -> usize {
    cfg.win_size.min(cfg.image_size >> level)
}

/// Whether a square input of side `s` runs through the network of `cfg`: the four halvings are
/// exact and every level is tiled by its windows.
pub fn fits(cfg: &UformerConfig, s: usize) -> bool {
    s > 0
        && s.is_multiple_of(16)
        && (0..=4).all(|l| {
            let w = level_window(cfg, l);
            w > 0 && (s >> l).is_multiple_of(w)
        })
}

/// The smallest square side no smaller than `h` and `w` that `fits`, which an `h x w` image is
/// padded to. Any multiple of `IMAGE_SIZE` that is a multiple of 16 fits, so the search ends.
pub fn padded_side(cfg: &UformerConfig, h: usize, w: usize) -> Result<usize> {
    let start = h.max(w).max(1).next_multiple_of(16);
    let bound = start + 16 * cfg.image_size.max(cfg.win_size).max(1);
    (start..=bound)
        .step_by(16)
        .find(|&s| fits(cfg, s))
        .ok_or_else(|| {
            err(format!(
                "no square side from {start} to {bound} fits a Uformer with IMAGE_SIZE {} and                  WIN_SIZE {}",
                cfg.image_size, cfg.win_size
            ))
        })
}

/// The Uformer encoder: image (B, 3, H, W) -> five token tensors, levels 0-3 and bottleneck,
/// `(B, (H/2^k)^2, EMBED_DIM*2^k)`.
pub struct UformerEncoder {
    cfg: UformerConfig,
    input_proj: InputProj,
    layers: Vec<Layer>,
    downsamples: Vec<Downsample>,
    bottleneck: Layer,
}

impl UformerEncoder {
    pub fn new(cfg: &UformerConfig, vb: VarBuilder) -> Result<Self> {
        check_size(cfg)?;
        let rates = drop_path_rates(&cfg.depths, cfg.drop_path_rate)?;
        let e = cfg.embed_dim;
        let input_proj = InputProj::new(cfg.inp_channels, e, vb.pp("input_proj"))?;
        let spec = |l: usize| LevelSpec {
            dim: e << l,
            heads: HEADS[l],
            res: cfg.image_size >> l,
            depth: cfg.depths[l],
            win: cfg.win_size,
            shift_flag: true,
            modulator: false,
        };
        let (mut layers, mut downsamples) = (Vec::new(), Vec::new());
        for (l, level_rates) in rates.iter().take(4).enumerate() {
            layers.push(Layer::new(
                spec(l),
                level_rates,
                vb.pp(format!("encoderlayer_{l}")),
            )?);
            downsamples.push(Downsample::new(
                e << l,
                e << (l + 1),
                vb.pp(format!("dowsample_{l}")),
            )?);
        }
        Ok(UformerEncoder {
            cfg: cfg.clone(),
            input_proj,
            layers,
            downsamples,
            bottleneck: Layer::new(spec(4), &rates[4], vb.pp("conv"))?,
        })
    }

    /// (B, 3, H, W) -> [conv0, conv1, conv2, conv3, conv4], tokens channel-last (eval mode).
    pub fn forward(&self, img: &Tensor) -> Result<Vec<Tensor>> {
        self.forward_t(img, None)
    }

    /// `forward`; with `rng`, in training mode (stochastic depth).
    pub fn forward_t(
        &self,
        img: &Tensor,
        mut rng: Option<&mut DropPathRng>,
    ) -> Result<Vec<Tensor>> {
        let (_, _, h, w) = img.dims4()?;
        check_input(&self.cfg, h, w)?;
        let mut x = self.input_proj.forward(img)?;
        let mut out = Vec::with_capacity(5);
        for (layer, down) in self.layers.iter().zip(&self.downsamples) {
            let y = layer.forward_t(&x, rng.as_deref_mut())?;
            x = down.forward(&y)?;
            out.push(y);
        }
        out.push(self.bottleneck.forward_t(&x, rng)?);
        Ok(out)
    }

    /// The `relative_position_index` buffers, full names.
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        self.layers
            .iter()
            .chain(std::iter::once(&self.bottleneck))
            .flat_map(Layer::buffers)
            .collect()
    }
}

/// The Uformer decoder: the encoder's five token tensors -> image (B, 3, H, W).
pub struct UformerDecoder {
    output_proj: OutputProj,
    upsamples: Vec<Upsample>,
    layers: Vec<Layer>,
}

impl UformerDecoder {
    pub fn new(cfg: &UformerConfig, vb: VarBuilder) -> Result<Self> {
        check_size(cfg)?;
        let rates = drop_path_rates(&cfg.depths, cfg.drop_path_rate)?;
        let e = cfg.embed_dim;
        // Created in the reference's order: output_proj, then upsample_k / decoderlayer_k.
        let output_proj = OutputProj::new(2 * e, cfg.inp_channels, vb.pp("output_proj"))?;
        let (mut upsamples, mut layers) = (Vec::new(), Vec::new());
        for k in 0..4 {
            // Level k works at side img/2^(3-k) on [upsampled, skip] = 2 * (e << (3-k)) channels;
            // its upsampling takes the bottleneck (k = 0) or the previous level's output.
            let dim = e << (4 - k);
            let in_c = if k == 0 { e << 4 } else { e << (5 - k) };
            upsamples.push(Upsample::new(
                in_c,
                dim / 2,
                vb.pp(format!("upsample_{k}")),
            )?);
            let spec = LevelSpec {
                dim,
                heads: HEADS[5 + k],
                res: cfg.image_size >> (3 - k),
                depth: cfg.depths[5 + k],
                win: cfg.win_size,
                shift_flag: false,
                modulator: true,
            };
            layers.push(Layer::new(
                spec,
                &rates[5 + k],
                vb.pp(format!("decoderlayer_{k}")),
            )?);
        }
        Ok(UformerDecoder {
            output_proj,
            upsamples,
            layers,
        })
    }

    /// [conv0..conv4] -> (B, 3, H, W). Concatenations are [upsampled, skip] on channels
    /// (eval mode).
    pub fn forward(&self, enc: &[Tensor]) -> Result<Tensor> {
        self.forward_t(enc, None)
    }

    /// `forward`; with `rng`, in training mode (stochastic depth).
    pub fn forward_t(&self, enc: &[Tensor], mut rng: Option<&mut DropPathRng>) -> Result<Tensor> {
        if enc.len() != 5 {
            return Err(err(format!(
                "the Uformer decoder takes 5 token tensors, got {}",
                enc.len()
            )));
        }
        let mut x = enc[4].clone();
        for (k, (up, layer)) in self.upsamples.iter().zip(&self.layers).enumerate() {
            let skip = &enc[3 - k];
            x = layer.forward_t(
                &Tensor::cat(&[&up.forward(&x)?, skip], 2)?,
                rng.as_deref_mut(),
            )?;
        }
        self.output_proj.forward(&x)
    }

    /// The `relative_position_index` buffers, full names.
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        self.layers.iter().flat_map(Layer::buffers).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_side_is_the_next_square_every_level_tiles() {
        let paper = UformerConfig::default(); // IMAGE_SIZE 256, WIN_SIZE 8
        assert!(fits(&paper, 256) && fits(&paper, 128) && fits(&paper, 768));
        assert!(!fits(&paper, 120) && !fits(&paper, 0));
        // Kodak's 768x512 pads to 768x768; 16 * 8 = 128 is the smallest side every level tiles.
        assert_eq!(padded_side(&paper, 768, 512).unwrap(), 768);
        assert_eq!(padded_side(&paper, 100, 20).unwrap(), 128);
        let tiny = UformerConfig {
            image_size: 64,
            ..UformerConfig::default()
        };
        // Its bottleneck window is the whole 4x4 level, so inputs need a side divisible by 64.
        assert!(!fits(&tiny, 48) && fits(&tiny, 64) && fits(&tiny, 128));
        assert_eq!(padded_side(&tiny, 40, 40).unwrap(), 64);
        assert_eq!(padded_side(&tiny, 65, 3).unwrap(), 128);
    }
}
