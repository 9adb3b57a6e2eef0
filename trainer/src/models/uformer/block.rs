//! The LeWin transformer block of Uformer and its parts: window attention with a relative
//! position bias (shifted windows masked as in the reference), the LeFF feed-forward, and the
//! `BasicUformerLayer` stack of blocks. Tokens are `(B, H*W, C)`. In training, each block's two
//! residual branches go through stochastic depth (`drop_path`); `Module::forward` is eval mode.

use std::sync::Mutex;

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::drop_path::{self, DropPathRng};
use super::{err, side};
use crate::kernels::token::{self as kernels, Gelus, Tokens};
use crate::kernels::{amp, window_partition, window_reverse_add, WindowGrid};
use crate::models::layers::Conv2d;

const MLP_RATIO: usize = 4;
/// Added to attention logits of token pairs that a cyclic shift brought together.
const SHIFT_MASK_VALUE: f32 = -100.0;

/// Linear layers are initialised as the reference's `_init_weights`: N(0, 0.02) (its
/// truncation at +-2 never triggers at that std), zero bias.
fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let init = Init::Randn {
        mean: 0.0,
        stdev: 0.02,
    };
    Ok(Linear {
        weight: vb.get_with_hints((out_dim, in_dim), "weight", init)?,
        bias: vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?,
    })
}

/// The `relative_position_index` buffer of a `w x w` window: entry `(i, j)` indexes the bias
/// table row of the offset between tokens `i` and `j` (row-major within the window).
fn relative_position_index(w: usize) -> Vec<i64> {
    let n = w * w;
    let mut idx = Vec::with_capacity(n * n);
    for i in 0..n {
        for j in 0..n {
            let dy = (i / w) as i64 - (j / w) as i64 + w as i64 - 1;
            let dx = (i % w) as i64 - (j % w) as i64 + w as i64 - 1;
            idx.push(dy * (2 * w as i64 - 1) + dx);
        }
    }
    idx
}

/// The reference's shift attention mask for an `h x h` grid, window `w`, shift `s`: tokens are
/// labelled by the 3x3 regions of `slice(0,-w), slice(-w,-s), slice(-s,None)`, and a pair of
/// tokens of one window gets -100 when their labels differ. `(nW, w*w, w*w)`.
fn shift_mask(h: usize, w: usize, s: usize) -> Vec<f32> {
    let region = |y: usize| {
        if y + w < h {
            0
        } else if y + s < h {
            1
        } else {
            2
        }
    };
    let (nw, n) = (h / w, w * w);
    let mut out = Vec::with_capacity(nw * nw * n * n);
    for wy in 0..nw {
        for wx in 0..nw {
            let label = |t: usize| region(wy * w + t / w) * 3 + region(wx * w + t % w);
            for i in 0..n {
                for j in 0..n {
                    let v = if label(i) == label(j) {
                        0.0
                    } else {
                        SHIFT_MASK_VALUE
                    };
                    out.push(v);
                }
            }
        }
    }
    out
}

/// `nn.Linear(in, out)` on the last dimension, weight `(out, in)`: one matrix product over all
/// leading dimensions flattened.
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    /// The layer with its input and output tokens laid out as given (see `kernels::token`).
    fn forward_tokens(&self, x: &Tensor, input: Tokens, output: Tokens) -> Result<Tensor> {
        kernels::linear(x, &self.weight, &self.bias, input, output)
    }
}

impl Module for Linear {
    // (..., in) -> (..., out)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_tokens(x, Tokens::Rows, Tokens::Rows)
    }
}

/// `nn.LayerNorm(dim)` over the channels of each token, eps 1e-5 (fused kernel on CPU).
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(LayerNorm {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
        })
    }
}

impl Module for LayerNorm {
    // (B, L, C) -> (B, L, C)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        kernels::layer_norm(x, &self.weight, &self.bias)
    }
}

/// `LinearProjection`: `to_q` and `to_kv`. q, k and v are three matrix products (k and v on
/// the two halves of `to_kv`'s weight), so no split of a large activation is needed, whose
/// backward would zero-pad each part to the full size.
struct LinearProjection {
    to_q: Linear,
    to_kv: Linear,
    heads: usize,
}

impl LinearProjection {
    fn new(dim: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(LinearProjection {
            to_q: linear(dim, dim, vb.pp("to_q"))?,
            to_kv: linear(dim, dim * 2, vb.pp("to_kv"))?,
            heads,
        })
    }

    /// (B', N, C) -> q, k, v, each (B', heads, N, C/heads); q is multiplied by `q_scale`
    /// (folded into its weight and bias, the small tensors).
    fn forward(&self, x: &Tensor, q_scale: f64) -> Result<(Tensor, Tensor, Tensor)> {
        let c = x.dim(2)?;
        let heads = Tokens::Heads(self.heads);
        let proj = |w: &Tensor, bias: &Tensor| kernels::linear(x, w, bias, Tokens::Rows, heads);
        let (bq, bkv) = (&self.to_q.bias, &self.to_kv.bias);
        let wkv = &self.to_kv.weight;
        let q = proj(&(&self.to_q.weight * q_scale)?, &(bq * q_scale)?)?;
        let k = proj(&wkv.narrow(0, 0, c)?, &bkv.narrow(0, 0, c)?)?;
        let v = proj(&wkv.narrow(0, c, c)?, &bkv.narrow(0, c, c)?)?;
        Ok((q, k, v))
    }
}

impl LinearProjection {
    /// (B', N, C) -> q, k and v packed as (B', 3 * heads, N, C/heads) by one product with the
    /// stacked weights, q scaled as in [`LinearProjection::forward`].
    fn forward_packed(&self, x: &Tensor, q_scale: f64) -> Result<Tensor> {
        let w = Tensor::cat(
            &[(&self.to_q.weight * q_scale)?, self.to_kv.weight.clone()],
            0,
        )?;
        let b = Tensor::cat(&[(&self.to_q.bias * q_scale)?, self.to_kv.bias.clone()], 0)?;
        kernels::linear(x, &w, &b, Tokens::Rows, Tokens::Heads(3 * self.heads))
    }
}

/// `WindowAttention`: multi-head self-attention inside each window, with a learned relative
/// position bias per head.
struct WindowAttention {
    heads: usize,
    scale: f64,
    relative_position_bias_table: Tensor,
    /// `relative_position_index` flattened, as u32 on the network's device, for the gather.
    index: Tensor,
    /// The buffer itself as the reference stores it: `(w*w, w*w)` int64 on the CPU.
    buffer: (String, Tensor),
    qkv: LinearProjection,
    proj: Linear,
}

impl WindowAttention {
    fn new(dim: usize, win: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        let n = win * win;
        let table = vb.get_with_hints(
            ((2 * win - 1) * (2 * win - 1), heads),
            "relative_position_bias_table",
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let idx = relative_position_index(win);
        let index = Tensor::from_vec(
            idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            n * n,
            vb.device(),
        )?;
        let buffer = Tensor::from_vec(idx, (n, n), &Device::Cpu)?;
        let name = format!("{}.relative_position_index", vb.prefix());
        Ok(WindowAttention {
            heads,
            scale: ((dim / heads) as f64).powf(-0.5),
            relative_position_bias_table: table,
            index,
            buffer: (name, buffer),
            qkv: LinearProjection::new(dim, heads, vb.pp("qkv"))?,
            proj: linear(dim, dim, vb.pp("proj"))?,
        })
    }

    // (B*nW, N, C), mask (nW, N, N) -> (B*nW, N, C)
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let n = x.dim(1)?;
        // (T, heads) -> (N*N, heads) -> (heads, N, N)
        let bias = self
            .relative_position_bias_table
            .index_select(&self.index, 0)?
            .reshape((n, n, self.heads))?
            .permute((2, 0, 1))?;
        // The bias (and the mask, repeated over the images) added to the logits.
        let extra = match mask {
            Some(m) => {
                let nw = m.dim(0)?;
                // (nW, 1, N, N) -> (nW, heads, N, N), plus the bias repeated over windows.
                let mask = m.unsqueeze(1)?.broadcast_as((nw, self.heads, n, n))?;
                kernels::add_bias(&mask, &bias)?
            }
            None => bias,
        };
        // (B*nW, heads, N, d)
        let out = if kernels::window_attention_applies(x) {
            let qkv = self.qkv.forward_packed(x, self.scale)?;
            kernels::window_attention(&qkv, &extra, self.heads)?
        } else {
            let (q, k, v) = self.qkv.forward(x, self.scale)?;
            let attn = amp::matmul(&q, &k.t()?)?; // (B*nW, heads, N, N)
            amp::matmul(&kernels::biased_softmax(&attn, &extra)?, &v)?
        };
        // (B*nW, heads, N, d) -> (B*nW, N, C)
        self.proj
            .forward_tokens(&out, Tokens::Heads(self.heads), Tokens::Rows)
    }
}

/// `LeFF`: Linear -> GELU -> depthwise 3x3 conv on the spatial view -> GELU -> Linear.
struct LeFF {
    linear1: Linear,
    dwconv: Conv2d,
    linear2: Linear,
}

impl LeFF {
    fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(LeFF {
            linear1: linear(dim, hidden, vb.pp("linear1").pp(0))?,
            dwconv: Conv2d::depthwise(hidden, 3, true, vb.pp("dwconv").pp(0))?,
            linear2: linear(hidden, dim, vb.pp("linear2").pp(0))?,
        })
    }
}

impl Module for LeFF {
    // (B, H*W, C) -> (B, H*W, C)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = side(x.dim(1)?)?;
        // (B, H*W, hidden); the rest is one op where it applies (the CPU).
        let y = self.linear1.forward(x)?;
        let fused = self.dwconv.depthwise_with_bias();
        if let Some(dw) = fused.filter(|_| kernels::leff_tail_applies(&y)) {
            let linear2 = (&self.linear2.weight, &self.linear2.bias);
            return kernels::leff_tail(&y, dw, h, linear2);
        }
        // The convolution over the H x W grid channels last, between the two GELUs.
        let y = self.dwconv.forward_tokens(&y, h, Gelus::BOTH)?;
        self.linear2.forward(&y)
    }
}

/// `LeWinTransformerBlock`: (shifted) window attention and LeFF, each pre-normed with a
/// residual; decoder blocks add a learned `modulator` to every window before the attention.
struct LeWinBlock {
    win: usize,
    shift: usize,
    modulator: Option<Tensor>,
    norm1: LayerNorm,
    attn: WindowAttention,
    norm2: LayerNorm,
    mlp: LeFF,
    /// Stochastic-depth rate of both residual branches (training only).
    drop_path: f64,
    /// Shift masks by grid side, built on first use (they depend on the input size only).
    masks: Mutex<Vec<(usize, Tensor)>>,
}

/// What distinguishes the blocks of one `BasicUformerLayer`.
#[derive(Clone, Copy)]
pub(super) struct LevelSpec {
    pub(super) dim: usize,
    pub(super) heads: usize,
    /// Side of the grid the layer is built for (`img_size >> level`).
    pub(super) res: usize,
    pub(super) depth: usize,
    pub(super) win: usize,
    pub(super) shift_flag: bool,
    pub(super) modulator: bool,
}

impl LeWinBlock {
    fn new(spec: LevelSpec, index: usize, drop_path: f64, vb: VarBuilder) -> Result<Self> {
        let mut shift = if spec.shift_flag && !index.is_multiple_of(2) {
            spec.win / 2
        } else {
            0
        };
        let mut win = spec.win;
        if spec.res <= win {
            shift = 0;
            win = spec.res;
        }
        // Created in the reference's `named_parameters()` order: modulator, norm1, attn, norm2, mlp.
        let modulator = if spec.modulator {
            // `nn.Embedding(win_size*win_size, dim)` default init: N(0, 1). Sized by the
            // configured window, not the level's.
            let n = spec.win * spec.win;
            Some(vb.get_with_hints(
                (n, spec.dim),
                "modulator.weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
            )?)
        } else {
            None
        };
        Ok(LeWinBlock {
            win,
            shift,
            modulator,
            norm1: LayerNorm::new(spec.dim, vb.pp("norm1"))?,
            attn: WindowAttention::new(spec.dim, win, spec.heads, vb.pp("attn"))?,
            norm2: LayerNorm::new(spec.dim, vb.pp("norm2"))?,
            mlp: LeFF::new(spec.dim, spec.dim * MLP_RATIO, vb.pp("mlp"))?,
            drop_path,
            masks: Mutex::new(Vec::new()),
        })
    }

    fn shift_mask(&self, h: usize, device: &Device) -> Result<Tensor> {
        let mut cache = self
            .masks
            .lock()
            .map_err(|_| err("shift mask cache poisoned".into()))?;
        if let Some((_, m)) = cache.iter().find(|(s, _)| *s == h) {
            return Ok(m.clone());
        }
        let (nw, n) = ((h / self.win) * (h / self.win), self.win * self.win);
        let m = Tensor::from_vec(shift_mask(h, self.win, self.shift), (nw, n, n), device)?;
        cache.push((h, m.clone()));
        Ok(m)
    }
}

impl LeWinBlock {
    /// (B, H*W, C) -> (B, H*W, C); `rng` Some = training mode (stochastic depth on; the
    /// reference calls its one DropPath module on the attention branch, then on the LeFF one).
    fn forward_t(&self, x: &Tensor, mut rng: Option<&mut DropPathRng>) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let h = side(l)?;
        let win = self.win;
        if !h.is_multiple_of(win) {
            return Err(err(format!(
                "Uformer: a {h}x{h} level cannot be tiled by {win}x{win} windows"
            )));
        }
        let xs = self.norm1.forward(x)?;
        // Cyclic shift and window partition: (B, H*W, C) -> (B*nW, w*w, C), windows in
        // row-major order.
        let grid = WindowGrid {
            win,
            shift: self.shift,
            h,
            w: h,
        };
        let windows = window_partition(&xs, grid)?;
        let n = win * win;
        let windows = match &self.modulator {
            Some(m) if m.dim(0)? == n => kernels::add_bias(&windows, m)?,
            Some(m) => {
                return Err(err(format!(
                    "Uformer: the modulator has {} rows, a {win}x{win} window {n} tokens",
                    m.dim(0)?
                )))
            }
            None => windows,
        };
        let mask = if self.shift > 0 {
            Some(self.shift_mask(h, x.device())?)
        } else {
            None
        };
        let out = self.attn.forward(&windows, mask.as_ref())?;
        // Window reverse and the shift undone, (B*nW, w*w, C) -> (B, H*W, C), added to x.
        let scales = drop_path::scales(b, self.drop_path, rng.as_deref_mut());
        let x = window_reverse_add(&out, x, scales.as_deref(), grid)?;
        let y = self.mlp.forward(&self.norm2.forward(&x)?)?;
        let scales = drop_path::scales(b, self.drop_path, rng);
        kernels::scaled_residual(&x, &y, scales.as_deref())
    }
}

/// `BasicUformerLayer`: `blocks.0`, `blocks.1`, ...; with `shift_flag`, odd blocks shift.
pub(super) struct Layer(Vec<LeWinBlock>);

impl Layer {
    /// `drop_path`: the rate of each block (`spec.depth` of them).
    pub(super) fn new(spec: LevelSpec, drop_path: &[f64], vb: VarBuilder) -> Result<Self> {
        if drop_path.len() != spec.depth {
            return Err(err(format!(
                "Uformer: {} drop-path rates for {} blocks",
                drop_path.len(),
                spec.depth
            )));
        }
        let vb = vb.pp("blocks");
        (0..spec.depth)
            .map(|i| LeWinBlock::new(spec, i, drop_path[i], vb.pp(i)))
            .collect::<Result<_>>()
            .map(Layer)
    }

    /// The blocks in order; `rng` Some = training mode.
    pub(super) fn forward_t(
        &self,
        x: &Tensor,
        mut rng: Option<&mut DropPathRng>,
    ) -> Result<Tensor> {
        self.0
            .iter()
            .try_fold(x.clone(), |x, b| b.forward_t(&x, rng.as_deref_mut()))
    }

    pub(super) fn buffers(&self) -> impl Iterator<Item = (String, Tensor)> + '_ {
        self.0.iter().map(|b| b.attn.buffer.clone())
    }
}

impl Module for Layer {
    // Eval mode: no stochastic depth.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_position_index_matches_reference_formula() {
        // 2x2 window, from the reference's meshgrid construction by hand.
        assert_eq!(
            relative_position_index(2),
            vec![4, 3, 1, 0, 5, 4, 2, 1, 7, 6, 4, 3, 8, 7, 5, 4]
        );
    }

    #[test]
    fn shift_mask_separates_regions() {
        // 4x4 grid, window 2, shift 1: the last window mixes four regions.
        let m = shift_mask(4, 2, 1);
        assert_eq!(m.len(), 4 * 4 * 4);
        assert!(m[..16].iter().all(|&v| v == 0.0));
        let last = &m[48..];
        assert_eq!(last.iter().filter(|&&v| v == 0.0).count(), 4);
    }
}
