"""PyTorch restatement of the Uformer that IFP pre-trains (encoder returning five token tensors,
decoder with skips and modulators), for the parity checks and the speed baseline.

Written for this project from the behaviour the golden README documents (section 2 and 2b) and
the reference's module layout; parameter and buffer names are those of the reference state_dict
(`encoder.encoderlayer_0.blocks.0.attn.qkv.to_q.weight`, `decoder.decoderlayer_0.blocks.0.
modulator.weight`, `...attn.relative_position_index`), so the golden `uformer_tiny*.safetensors`
weights and the Rust checkpoints load with `strict=True`.

What the reference does and this file keeps:
  * `UformerEncoder(x)` returns (conv0, conv1, conv2, conv3, conv4), tokens (B, H*W, C)
    channel-last; `UformerDecoder(tuple)` concatenates [upsampled, skip] on the channel axis at
    each level and its output projection returns (B, 3, H, W). No global residual.
  * The grid side is recovered as int(sqrt(L)) everywhere: square inputs only.
  * Window sizes are fixed at construction from `img_size`: a level whose side is <= win_size
    uses one window of that side and no shift. The encoder shifts odd blocks (shift_flag True),
    the decoder never does (IFP passes shift_flag=False). The decoder (only) has a modulator,
    nn.Embedding(win_size**2, dim), added to each window's tokens after norm1 and partitioning.
  * Shifted windows mask token pairs from different regions with -100.
  * Stochastic depth as the reference builds it (IFP never passes drop_path_rate, so the
    constructors' default 0.1 applies): enc = linspace(0, rate, sum(depths[:4])), bottleneck
    blocks all `rate`, decoder blocks the reversed encoder list sliced per level. timm DropPath
    semantics (per-sample Bernoulli keep mask scaled by 1/keep), training mode only; one DropPath
    instance per block, called on the attention branch and again on the LeFF branch.
  * LayerNorm eps 1e-5; exact GELU; LeakyReLU 0.01 after the input conv; Downsample conv 4x4/2
    pad 1; Upsample ConvTranspose 2x2/2; q scaled by head_dim**-0.5.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# num_heads of the reference constructors (IFP does not pass it).
HEADS = (1, 2, 4, 8, 16, 16, 8, 4, 2)
MLP_RATIO = 4.0
SHIFT_MASK_VALUE = -100.0
DEFAULT_DROP_PATH_RATE = 0.1


def _side(tokens: int) -> int:
    return int(math.sqrt(tokens))


class DropPath(nn.Module):
    """timm's DropPath: in training, each sample's branch is kept with probability 1 - p and
    then scaled by 1 / (1 - p); identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        r = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        if keep > 0.0:
            r.div_(keep)
        return x * r


def drop_path_rates(depths: Sequence[int], rate: float):
    """Per-block rates of the nine levels, as the reference constructors compute them. Raises
    IndexError where the reference would (decoder depths summing past the encoder list)."""
    enc = [x.item() for x in torch.linspace(0, rate, sum(depths[:4]))]
    conv = [rate] * depths[4]
    dec = enc[::-1]
    out = []
    for lvl in range(4):
        a, b = sum(depths[:lvl]), sum(depths[:lvl + 1])
        out.append(enc[a:b])
    out.append(conv)
    for lvl in range(4):
        a, b = sum(depths[5:5 + lvl]), sum(depths[5:6 + lvl])
        sl = dec[a:b]
        if len(sl) < depths[5 + lvl]:
            raise IndexError(f"decoder level {lvl}: the reference's drop-path list has {len(sl)} "
                             f"entries for {depths[5 + lvl]} blocks")
        out.append(sl)
    return out


class LinearProjection(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=True)
        self.to_kv = nn.Linear(dim, dim * 2, bias=True)

    def forward(self, x):
        b, n, c = x.shape
        d = c // self.heads
        q = self.to_q(x).reshape(b, n, self.heads, d).transpose(1, 2)
        kv = self.to_kv(x).reshape(b, n, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        return q, kv[0], kv[1]


def relative_position_index(w: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + (w - 1)
    dx = xs[:, None] - xs[None, :] + (w - 1)
    return dy * (2 * w - 1) + dx  # int64 (w*w, w*w)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, win: int, heads: int):
        super().__init__()
        self.win, self.heads = win, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * win - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(win))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.qkv = LinearProjection(dim, heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        bw, n, c = x.shape
        q, k, v = self.qkv(x)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, self.heads, n, n)
        attn = attn.softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(bw, n, c))


class LeFF(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.linear1 = nn.Sequential(nn.Linear(dim, hidden), nn.GELU())
        self.dwconv = nn.Sequential(nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden), nn.GELU())
        self.linear2 = nn.Sequential(nn.Linear(hidden, dim))

    def forward(self, x):
        b, l, _ = x.shape
        h = _side(l)
        y = self.linear1(x)
        y = y.transpose(1, 2).reshape(b, -1, h, h)
        y = self.dwconv(y).flatten(2).transpose(1, 2)
        return self.linear2(y)


def _partition(x, w):  # (B, H, W, C) -> (B*nW, w*w, C)
    b, h, ww, c = x.shape
    x = x.view(b, h // w, w, ww // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def _reverse(win, w, h, ww):  # (B*nW, w*w, C) -> (B, H, W, C)
    c = win.shape[-1]
    b = win.shape[0] // ((h // w) * (ww // w))
    x = win.view(b, h // w, ww // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, ww, c)


def shift_mask(h: int, w: int, s: int, dtype, device) -> torch.Tensor:
    """(nW, w*w, w*w): 0 within a region, -100 across regions (slices 0:-w, -w:-s, -s:)."""
    lab = torch.zeros(1, h, h, 1, dtype=dtype, device=device)
    cnt = 0
    for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
        for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            lab[:, hs, ws, :] = cnt
            cnt += 1
    win = _partition(lab, w).squeeze(-1)  # (nW, w*w)
    d = win.unsqueeze(1) - win.unsqueeze(2)
    return d.masked_fill(d != 0, SHIFT_MASK_VALUE).masked_fill(d == 0, 0.0)


class LeWinBlock(nn.Module):
    def __init__(self, dim: int, res: int, heads: int, win: int, shift: int, drop_path: float,
                 modulator: bool):
        super().__init__()
        self.win, self.shift = win, shift
        if res <= win:
            self.win, self.shift = res, 0
        # registration order = the reference's named_parameters() order
        self.modulator = nn.Embedding(win * win, dim) if modulator else None  # configured window
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.win, heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = LeFF(dim, int(dim * MLP_RATIO))

    def forward(self, x):
        b, l, c = x.shape
        h = _side(l)
        w, s = self.win, self.shift
        mask = shift_mask(h, w, s, x.dtype, x.device) if s > 0 else None
        shortcut = x
        y = self.norm1(x).view(b, h, h, c)
        if s > 0:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        win = _partition(y, w)
        if self.modulator is not None:
            win = win + self.modulator.weight
        out = _reverse(self.attn(win, mask), w, h, h)
        if s > 0:
            out = torch.roll(out, shifts=(s, s), dims=(1, 2))
        x = shortcut + self.drop_path(out.reshape(b, l, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicUformerLayer(nn.Module):
    def __init__(self, dim, res, depth, heads, win, shift_flag, rates, modulator):
        super().__init__()
        self.blocks = nn.ModuleList([
            LeWinBlock(dim, res, heads, win, (win // 2) if (shift_flag and i % 2 == 1) else 0, rates[i],
                       modulator)
            for i in range(depth)])

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return x


class InputProj(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.LeakyReLU(0.01))

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class OutputProj(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1))

    def forward(self, x):
        b, l, c = x.shape
        h = _side(l)
        return self.proj(x.transpose(1, 2).reshape(b, c, h, h))


class Downsample(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1))

    def forward(self, x):
        b, l, c = x.shape
        h = _side(l)
        return self.conv(x.transpose(1, 2).reshape(b, c, h, h)).flatten(2).transpose(1, 2)


class Upsample(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.deconv = nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, 2))

    def forward(self, x):
        b, l, c = x.shape
        h = _side(l)
        return self.deconv(x.transpose(1, 2).reshape(b, c, h, h)).flatten(2).transpose(1, 2)


def _init_weights(m):
    # the reference's _init_weights (Linear trunc-normal 0.02 and zero bias; LayerNorm 1/0)
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)


class UformerEncoder(nn.Module):
    def __init__(self, img_size=256, in_chans=3, embed_dim=32, depths=(1, 2, 8, 8, 2, 8, 8, 2, 1),
                 win_size=8, drop_path_rate=DEFAULT_DROP_PATH_RATE):
        super().__init__()
        rates = drop_path_rates(depths, drop_path_rate)
        e = embed_dim
        self.input_proj = InputProj(in_chans, e)
        for lvl in range(4):
            setattr(self, f"encoderlayer_{lvl}",
                    BasicUformerLayer(e << lvl, img_size >> lvl, depths[lvl], HEADS[lvl], win_size, True,
                                      rates[lvl], False))
            setattr(self, f"dowsample_{lvl}", Downsample(e << lvl, e << (lvl + 1)))
        self.conv = BasicUformerLayer(e << 4, img_size >> 4, depths[4], HEADS[4], win_size, True, rates[4],
                                      False)
        self.apply(_init_weights)

    def forward(self, x):
        y = self.input_proj(x)
        outs = []
        for lvl in range(4):
            y = getattr(self, f"encoderlayer_{lvl}")(y)
            outs.append(y)
            y = getattr(self, f"dowsample_{lvl}")(y)
        outs.append(self.conv(y))
        return tuple(outs)


class UformerDecoder(nn.Module):
    def __init__(self, img_size=256, in_chans=3, embed_dim=32, depths=(1, 2, 8, 8, 2, 8, 8, 2, 1),
                 win_size=8, drop_path_rate=DEFAULT_DROP_PATH_RATE):
        super().__init__()
        rates = drop_path_rates(depths, drop_path_rate)
        e = embed_dim
        self.output_proj = OutputProj(2 * e, in_chans)
        for k in range(4):
            dim = e << (4 - k)
            cin = (e << 4) if k == 0 else (e << (5 - k))
            setattr(self, f"upsample_{k}", Upsample(cin, dim // 2))
            setattr(self, f"decoderlayer_{k}",
                    BasicUformerLayer(dim, img_size >> (3 - k), depths[5 + k], HEADS[5 + k], win_size, False,
                                      rates[5 + k], True))
        self.apply(_init_weights)

    def forward(self, enc):
        x = enc[4]
        for k in range(4):
            x = torch.cat([getattr(self, f"upsample_{k}")(x), enc[3 - k]], -1)
            x = getattr(self, f"decoderlayer_{k}")(x)
        return self.output_proj(x)


def build_uformer(u: dict, drop_path_rate: float = DEFAULT_DROP_PATH_RATE):
    """(encoder, decoder) from a MODEL.UFORMER dict (reference keys + extensions)."""
    kw = dict(img_size=int(u.get("IMAGE_SIZE", 256)), in_chans=int(u.get("INP_CHANNELS", 3)),
              embed_dim=int(u.get("EMBED_DIM", 32)),
              depths=[int(d) for d in u.get("DEPTHS", [1, 2, 8, 8, 2, 8, 8, 2, 1])],
              win_size=int(u.get("WIN_SIZE", 8)), drop_path_rate=drop_path_rate)
    return UformerEncoder(**kw), UformerDecoder(**kw)


__all__: List[str] = ["DropPath", "drop_path_rates", "UformerEncoder", "UformerDecoder", "build_uformer"]
