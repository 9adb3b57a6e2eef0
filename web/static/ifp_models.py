"""IFP platform networks in PyTorch: load an `ifp` checkpoint with `strict=True` and run it.

Downloaded from an IFP platform server (`/static/ifp_models.py`) or taken from its repository
(`web/static/ifp_models.py`). Needs `torch`, `safetensors` and `pyyaml`.

    import ifp_models
    net = ifp_models.load("model-000500.safetensors")   # strict=True; eval mode, float32

A fine-tuning checkpoint (`ifp finetune`, `finetune` and `compare` jobs) gives a network that
restores images in [0, 1]: a `FinetuneNet` (Restormer `encoder.*` + `head.conv.*`) or a
`UformerFinetuneNet` (the whole Uformer, `encoder.*` + `decoder.*`):

    import numpy as np, torch
    from PIL import Image
    x = torch.from_numpy(np.asarray(Image.open("noisy.png").convert("RGB"), np.float32) / 255)
    with torch.no_grad():
        y = net(x.permute(2, 0, 1)[None]).clamp(0, 1)[0]
    Image.fromarray((y.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)).save("out.png")

A pre-training checkpoint (`ifp train`, `pretrain` jobs: `encoder.*` + `decoder.*`) gives an
`IFPNet` (Restormer backbone + MSRResNet head, or Uformer encoder + decoder), which maps an
ImageNet-normalised corrupted image to its reconstruction, as in pre-training.

Parameter and buffer names are those of the reference `state_dict`, so reference weights load
here and checkpoints from here load into the reference code. The network is rebuilt from the
`ifp_config` metadata every `ifp` checkpoint carries. The trainer's parity tests check these
modules against the golden vectors (`bench/check_torch_reference.py`).

Contents
  * config:     load_config(path), config_from_yaml(text): the reference YAML schema
  * Restormer:  RestormerBackbone, MSRResNetHead, IFPNet, build_model()
  * Uformer:    UformerEncoder, UformerDecoder, build_uformer() (encoder returning five token
                tensors, decoder with skips and modulators, shifted windows, stochastic depth)
  * fine-tuning: FinetuneNet (Restormer encoder + one 3x3 convolution head, residual by
                default), UformerFinetuneNet (encoder + decoder, residual by default)
  * load(path): any `ifp` model file, strictly
"""
from __future__ import annotations

import ast
import math
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------

_DEFAULTS = {
    "MODEL": {
        "TYPE": "restormer",
        "RECOVER_TARGET_TYPE": "normal",
        "RESTORMER": {
            "INP_CHANNELS": 3, "OUT_CHANNELS": 64, "DIM": 48, "NUM_BLOCKS": [4, 6, 6, 8],
            "NUM_REFINEMENT_BLOCKS": 4, "HEADS": [1, 2, 4, 8], "FFN_EXPANSION_FACTOR": 2.66,
            "BIAS": False, "LAYERNORM_TYPE": "WithBias", "DUAL_PIXEL_TASK": False,
            "GLOBAL_RESIDUAL": False, "PATCH_SIZE": 1,
        },
        "DECODER": {"IN_NC": 180, "OUT_NC": 3, "UPSCALE": 1, "NF": 64},
    },
    "DATA": {"BATCH_SIZE": 128, "IMG_SIZE": 224, "MIN_CROP_SCALE": 0.2, "FILTER_TYPE": "IFP",
             "SAMPLE_RATIO": 0.5, "MASK_RADIUS1": 16, "MASK_RADIUS2": 999},
    "TRAIN": {"EPOCHS": 300, "WARMUP_EPOCHS": 20, "WEIGHT_DECAY": 0.05, "BASE_LR": 3e-4,
              "WARMUP_LR": 2.5e-7, "MIN_LR": 2.5e-6, "CLIP_GRAD": 3.0, "ACCUMULATION_STEPS": 1,
              "OPTIMIZER": {"NAME": "adamw", "EPS": 1e-8, "BETAS": (0.9, 0.999)}},
}


def _decode(v):
    # yacs' _decode_cfg_value: strings that are Python literals become literals
    # (PyYAML reads `3e-4` and `(0.9, 0.95)` as strings).
    if isinstance(v, dict):
        return {k: _decode(x) for k, x in v.items()}
    if isinstance(v, str):
        try:
            return ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v
    return v


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: str) -> dict:
    """Reference-schema YAML merged over the reference defaults (config.py) that matter here.
    Unknown keys are kept (this is a benchmark helper, not the validating loader)."""
    import yaml

    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    import copy

    return _merge(copy.deepcopy(_DEFAULTS), _decode(raw))


# ----------------------------------------------------------------------------------------------
# Network: Restormer backbone (reference parameter names)
# ----------------------------------------------------------------------------------------------


class _LNBody(nn.Module):
    """Per-pixel LayerNorm over channels; weights live at `<norm>.body.weight/bias`."""

    def __init__(self, dim: int, with_bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        if with_bias:
            self.bias = nn.Parameter(torch.zeros(dim))
        else:
            self.register_parameter("bias", None)

    def forward(self, x):  # x: (B, HW, C)
        var = x.var(-1, keepdim=True, unbiased=False)
        if self.bias is None:  # BiasFree: no mean subtraction in the numerator
            return x / torch.sqrt(var + 1e-5) * self.weight
        mu = x.mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * self.weight + self.bias


class ChannelLayerNorm(nn.Module):
    def __init__(self, dim: int, ln_type: str):
        super().__init__()
        self.body = _LNBody(dim, with_bias=(ln_type != "BiasFree"))

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.body(x.flatten(2).transpose(1, 2))  # (B, HW, C)
        return y.transpose(1, 2).reshape(b, c, h, w)


class GDFN(nn.Module):
    def __init__(self, dim: int, expansion: float, bias: bool):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, 1, 1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x):
        a, g = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(a) * g)


class MDTA(nn.Module):
    """Channel ("transposed") attention."""

    def __init__(self, dim: int, heads: int, bias: bool):
        super().__init__()
        self.num_heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, 1, 1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        shp = (b, self.num_heads, c // self.num_heads, h * w)
        q = F.normalize(q.reshape(shp), dim=-1)
        k = F.normalize(k.reshape(shp), dim=-1)
        v = v.reshape(shp)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.temperature, dim=-1)
        return self.project_out((attn @ v).reshape(b, c, h, w))


class TransformerBlock(nn.Module):
    def __init__(self, dim, heads, expansion, bias, ln_type):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, ln_type)
        self.attn = MDTA(dim, heads, bias)
        self.norm2 = ChannelLayerNorm(dim, ln_type)
        self.ffn = GDFN(dim, expansion, bias)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, cin, dim):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, 3, 1, 1, bias=False)

    def forward(self, x):
        return self.proj(x)


class _Resample(nn.Module):
    """Downsample: conv3x3 C->C/2 + PixelUnshuffle(2); Upsample: conv3x3 C->2C + PixelShuffle(2)."""

    def __init__(self, c, down: bool):
        super().__init__()
        if down:
            self.body = nn.Sequential(nn.Conv2d(c, c // 2, 3, 1, 1, bias=False), nn.PixelUnshuffle(2))
        else:
            self.body = nn.Sequential(nn.Conv2d(c, c * 2, 3, 1, 1, bias=False), nn.PixelShuffle(2))

    def forward(self, x):
        return self.body(x)


class RestormerBackbone(nn.Module):
    def __init__(self, inp_channels=3, out_channels=64, dim=48, num_blocks=(4, 6, 6, 8),
                 num_refinement_blocks=4, heads=(1, 2, 4, 8), ffn_expansion_factor=2.66,
                 bias=False, layernorm_type="WithBias", global_residual=False,
                 dual_pixel_task=False):
        super().__init__()
        self.global_residual = global_residual
        self.dual_pixel_task = dual_pixel_task

        def blocks(d, n, h):
            return nn.Sequential(*[TransformerBlock(d, h, ffn_expansion_factor, bias, layernorm_type)
                                   for _ in range(n)])

        d1, d2, d3, d4 = dim, dim * 2, dim * 4, dim * 8
        # registration order = reference order (named_parameters / optimiser group order)
        self.patch_embed = _PatchEmbed(inp_channels, d1)
        self.encoder_level1 = blocks(d1, num_blocks[0], heads[0])
        self.down1_2 = _Resample(d1, down=True)
        self.encoder_level2 = blocks(d2, num_blocks[1], heads[1])
        self.down2_3 = _Resample(d2, down=True)
        self.encoder_level3 = blocks(d3, num_blocks[2], heads[2])
        self.down3_4 = _Resample(d3, down=True)
        self.latent = blocks(d4, num_blocks[3], heads[3])
        self.up4_3 = _Resample(d4, down=False)
        self.reduce_chan_level3 = nn.Conv2d(d4, d3, 1, bias=bias)
        self.decoder_level3 = blocks(d3, num_blocks[2], heads[2])
        self.up3_2 = _Resample(d3, down=False)
        self.reduce_chan_level2 = nn.Conv2d(d3, d2, 1, bias=bias)
        self.decoder_level2 = blocks(d2, num_blocks[1], heads[1])
        self.up2_1 = _Resample(d2, down=False)
        self.decoder_level1 = blocks(d2, num_blocks[0], heads[0])
        self.refinement = blocks(d2, num_refinement_blocks, heads[0])
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(d1, d2, 1, bias=bias)
        self.output = nn.Conv2d(d2, out_channels, 3, 1, 1, bias=bias)

    @staticmethod
    def pad8(x):
        h, w = x.shape[-2:]
        ph, pw = (8 - h % 8) % 8, (8 - w % 8) % 8
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        return x

    def forward(self, inp):
        H, W = inp.shape[-2:]
        x0 = self.pad8(inp)
        e1_in = self.patch_embed(x0)
        e1 = self.encoder_level1(e1_in)
        e2 = self.encoder_level2(self.down1_2(e1))
        e3 = self.encoder_level3(self.down2_3(e2))
        lat = self.latent(self.down3_4(e3))
        d3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(lat), e3], 1)))
        d2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(d3), e2], 1)))
        d1 = self.decoder_level1(torch.cat([self.up2_1(d2), e1], 1))
        d1 = self.refinement(d1)
        if self.dual_pixel_task:
            out = self.output(d1 + self.skip_conv(e1_in))
        elif self.global_residual:
            out = self.output(d1) + x0
        else:
            out = self.output(d1)
        return out[:, :, :H, :W]


# ----------------------------------------------------------------------------------------------
# Network: MSRResNet head
# ----------------------------------------------------------------------------------------------


class _ResBlock(nn.Module):
    def __init__(self, nf):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class MSRResNetHead(nn.Module):
    def __init__(self, in_c=64, out_c=3, nf=64, scale=1):
        super().__init__()
        self.upscale = scale
        self.conv_first = nn.Conv2d(in_c, nf, 3, 1, 1, bias=True)
        self.basic_block1 = _ResBlock(nf)
        self.basic_block2 = _ResBlock(nf)
        self.basic_block3 = _ResBlock(nf)
        self.basic_block4 = _ResBlock(nf)
        if scale in (2, 3):
            self.upconv1 = nn.Conv2d(nf, nf * scale * scale, 3, 1, 1, bias=True)
            self.pixel_shuffle = nn.PixelShuffle(scale)
        elif scale == 4:
            self.upconv1 = nn.Conv2d(nf, nf * 4, 3, 1, 1, bias=True)
            self.upconv2 = nn.Conv2d(nf, nf * 4, 3, 1, 1, bias=True)
            self.pixel_shuffle = nn.PixelShuffle(2)
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)
        self.conv_last = nn.Conv2d(nf, out_c, 3, 1, 1, bias=True)

    def forward(self, x):
        lrelu = lambda t: F.leaky_relu(t, 0.1)  # noqa: E731
        out = lrelu(self.conv_first(x))
        out = self.basic_block4(self.basic_block3(self.basic_block2(self.basic_block1(out))))
        if self.upscale == 4:
            out = lrelu(self.pixel_shuffle(self.upconv1(out)))
            out = lrelu(self.pixel_shuffle(self.upconv2(out)))
        elif self.upscale in (2, 3):
            out = lrelu(self.pixel_shuffle(self.upconv1(out)))
        return self.conv_last(lrelu(self.HRconv(out)))


class IFPNet(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x):
        return self.decoder(self.encoder(x))


def build_model(cfg: dict) -> IFPNet:
    m = cfg["MODEL"]
    kind = str(m.get("TYPE", "restormer")).lower()
    if kind == "uformer":
        # Uformer encoder + decoder; MODEL.UFORMER.DROP_PATH_RATE is an extension key, default
        # the reference constructors' 0.1 (IFP never passes one).
        u = m.get("UFORMER") or {}
        enc, dec = build_uformer(u, float(u.get("DROP_PATH_RATE", DEFAULT_DROP_PATH_RATE)))
        return IFPNet(enc, dec)
    if kind != "restormer":
        raise NotImplementedError(f"ifp_models builds restormer and uformer networks, not {kind!r}")
    r, d = m["RESTORMER"], m["DECODER"]
    enc = RestormerBackbone(
        inp_channels=r["INP_CHANNELS"], out_channels=r["OUT_CHANNELS"], dim=r["DIM"],
        num_blocks=list(r["NUM_BLOCKS"]), num_refinement_blocks=r["NUM_REFINEMENT_BLOCKS"],
        heads=list(r["HEADS"]), ffn_expansion_factor=r["FFN_EXPANSION_FACTOR"], bias=bool(r["BIAS"]),
        layernorm_type=r["LAYERNORM_TYPE"], global_residual=bool(r["GLOBAL_RESIDUAL"]),
        dual_pixel_task=bool(r["DUAL_PIXEL_TASK"]))
    dec = MSRResNetHead(in_c=d["IN_NC"], out_c=d["OUT_NC"], nf=d.get("NF", 64), scale=d.get("UPSCALE", 1))
    return IFPNet(enc, dec)



# ----------------------------------------------------------------------------------------------
# Network: Uformer (encoder returning five token tensors, decoder with skips and modulators)
#
# Behaviour kept from the reference:
#  * `UformerEncoder(x)` returns (conv0, conv1, conv2, conv3, conv4), tokens (B, H*W, C)
#    channel-last; `UformerDecoder(tuple)` concatenates [upsampled, skip] on the channel axis at
#    each level and its output projection returns (B, 3, H, W). No global residual.
#  * The grid side is recovered as int(sqrt(L)) everywhere: square inputs only.
#  * Window sizes are fixed at construction from `img_size`: a level whose side is <= win_size
#    uses one window of that side and no shift. The encoder shifts odd blocks (shift_flag True),
#    the decoder never does (IFP passes shift_flag=False). The decoder (only) has a modulator,
#    nn.Embedding(win_size**2, dim), added to each window's tokens after norm1 and partitioning.
#  * Shifted windows mask token pairs from different regions with -100.
#  * Stochastic depth as the reference builds it (IFP never passes drop_path_rate, so the
#    constructors' default 0.1 applies): enc = linspace(0, rate, sum(depths[:4])), bottleneck
#    blocks all `rate`, decoder blocks the reversed encoder list sliced per level. timm DropPath
#    semantics (per-sample Bernoulli keep mask scaled by 1/keep), training mode only; one DropPath
#    instance per block, called on the attention branch and again on the LeFF branch.
#  * LayerNorm eps 1e-5; exact GELU; LeakyReLU 0.01 after the input conv; Downsample conv 4x4/2
#    pad 1; Upsample ConvTranspose 2x2/2; q scaled by head_dim**-0.5.
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# Fine-tuning network and loading checkpoints
# ----------------------------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FinetuneNet(nn.Module):
    """The fine-tuning network: the pre-trained Restormer encoder (`encoder.*`) and a task head of
    one 3x3 convolution to RGB (`head.conv.*`). Input and output are images in [0, 1]; the
    encoder sees the ImageNet-normalised input, as in pre-training, and with `residual` (the
    default) the head's output is added to the input."""

    def __init__(self, encoder: nn.Module, out_channels: int, residual: bool = True):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Module()
        self.head.conv = nn.Conv2d(out_channels, 3, 3, 1, 1, bias=True)
        self.residual = residual
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, degraded: torch.Tensor) -> torch.Tensor:
        y = self.head.conv(self.encoder((degraded - self.mean) / self.std))
        return y + degraded if self.residual else y


def uformer_fits(img_size: int, win_size: int, s: int) -> bool:
    """Whether a square input of side `s` runs through a Uformer built for `img_size`: the four
    halvings are exact and every level is tiled by its window (the configured one, or the whole
    level where the network's level is no larger)."""
    return s > 0 and s % 16 == 0 and all((s >> lvl) % min(win_size, img_size >> lvl) == 0
                                         for lvl in range(5))


def uformer_padded_side(img_size: int, win_size: int, h: int, w: int) -> int:
    """The smallest square side >= h and w that `uformer_fits`: what inputs are padded to."""
    s = max(h, w, 1)
    s += (-s) % 16
    while not uformer_fits(img_size, win_size, s):
        s += 16
    return s


class UformerFinetuneNet(nn.Module):
    """The Uformer fine-tuning network: the whole pre-trained Uformer, encoder (`encoder.*`) and
    decoder (`decoder.*`). Input and output are images in [0, 1]. The network sees the
    ImageNet-normalised input, zero-padded at the bottom and right to a square its windows tile;
    its output, cropped back, is a residual in that normalised space (`x + y`, as in the Uformer
    paper): restored = degraded + std * y. Without `residual`, restored = mean + std * y."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, img_size: int, win_size: int,
                 residual: bool = True):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.img_size, self.win_size, self.residual = img_size, win_size, residual
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, degraded: torch.Tensor) -> torch.Tensor:
        h, w = degraded.shape[-2:]
        s = uformer_padded_side(self.img_size, self.win_size, h, w)
        x = F.pad((degraded - self.mean) / self.std, (0, s - w, 0, s - h))
        y = self.decoder(self.encoder(x))[..., :h, :w] * self.std
        return degraded + y if self.residual else y + self.mean


def config_from_yaml(text: str) -> dict:
    """A config YAML (reference schema) merged over the reference defaults."""
    import copy

    import yaml

    return _merge(copy.deepcopy(_DEFAULTS), _decode(yaml.safe_load(text) or {}))


def build_finetune(cfg: dict) -> nn.Module:
    """The fine-tuning network of a fine-tuning config (its MODEL and HEAD trees): a
    `FinetuneNet` (Restormer) or a `UformerFinetuneNet`."""
    m = _merge(_DEFAULTS["MODEL"], _decode(cfg.get("MODEL") or {}))
    residual = bool((cfg.get("HEAD") or {}).get("RESIDUAL", True))
    if str(m.get("TYPE", "restormer")).lower() == "uformer":
        u = m.get("UFORMER") or {}
        rate = float(u.get("DROP_PATH_RATE", DEFAULT_DROP_PATH_RATE))
        encoder, decoder = build_uformer(u, rate)
        return UformerFinetuneNet(encoder, decoder, int(u.get("IMAGE_SIZE", 256)),
                                  int(u.get("WIN_SIZE", 8)), residual)
    encoder = build_model({"MODEL": m}).encoder
    return FinetuneNet(encoder, int(m["RESTORMER"]["OUT_CHANNELS"]), residual)


def load(path: str, device: str = "cpu") -> nn.Module:
    """Any `ifp` model file: rebuilds its network from the `ifp_config` metadata and loads the
    weights with `strict=True` (a mismatch raises). Returns the network in eval mode."""
    import yaml
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if "ifp_config" not in meta:
        raise ValueError(f"{path}: no `ifp_config` metadata (not an ifp model file)")
    cfg = _decode(yaml.safe_load(meta["ifp_config"]) or {})
    weights = load_file(path, device=device)
    # Fine-tuning configs have a HEAD tree (and their Restormer files `head.*` tensors).
    if "HEAD" in cfg or any(k.startswith("head.") for k in weights):
        net = build_finetune(cfg)
    else:
        net = build_model(_merge(_DEFAULTS, cfg))
    net.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    return net.to(device).eval()


if __name__ == "__main__":
    import sys

    for p in sys.argv[1:]:
        n = load(p)
        count = sum(t.numel() for t in n.parameters())
        print(f"{p}: {type(n).__name__}, {count} parameters, strict load ok")
