#!/usr/bin/env python3
"""Analytic FLOPs of one IFP training step of the Restormer backbone + MSRResNet head, the
network `torch_ifp.py` builds for `MODEL.TYPE: restormer` (the paper network by default).

  python bench/restormer_flops.py [--batch 2] [--size 224] [--width W] [--config C.yaml] [--breakdown]
                                  [--check-torch]

No torch needed (PyYAML only with --config). `--check-torch` (square sizes) also counts the same
step of the `torch_ifp` network on the meta device, in seconds, with `torch_gpu_bench.py`'s
corrected counter and with the stock one, and exits 1 if the corrected count is more than 1%
off the analytic one. Counts, with 2 FLOPs per multiply-add:
  * every convolution (dense k x k, 1x1 and depthwise: P * C_out * C_in/groups * k*k
    multiply-adds for P output pixels) and the two batched matrix products of each MDTA
    attention (q k^T and attn v: P * C^2 / heads multiply-adds each);
  * one training step = the forward pass, the input gradient and the weight gradient of every
    such op, each costing as many multiply-adds as its forward pass; the first convolution
    (`patch_embed`) has no input gradient, because its input, the corrupted image, needs none.
    Both operands of an attention product are activations, so each has both gradients.
Left out: every elementwise or reduction op (LayerNorm, GELU and its gate, softmax, L2
normalisation, temperature, residual sums, bias adds and bias gradients, ReLU/LeakyReLU,
pixel (un)shuffle, padding), the FFTs of the corruption and of the frequency loss, gradient
clipping and the AdamW update. These are the ops `torch.utils.flop_counter` counts, so this
total is comparable with that counter once its depthwise weight-gradient formula is corrected
(`torch_gpu_bench.py --flops-only` does so; see its `conv_backward_flop`).

Network (as `torch_ifp.RestormerBackbone` / `MSRResNetHead`): the input is reflect-padded to a
multiple of 8; levels at full, 1/2, 1/4, 1/8 resolution with widths DIM x 1, 2, 4, 8,
NUM_BLOCKS transformer blocks per level (encoder levels 1-3, latent, decoder levels 3-1) and
NUM_REFINEMENT_BLOCKS more at full resolution and width 2*DIM; HEADS per level; GDFN hidden width
int(C * FFN_EXPANSION_FACTOR). A transformer block of width C, h heads, hidden width F, on P
pixels: qkv 1x1 C->3C, depthwise 3x3 on 3C, q k^T and attn v, project_out 1x1 C->C; GDFN
project_in 1x1 C->2F, depthwise 3x3 on 2F, project_out 1x1 F->C. Downsampling: 3x3 C->C/2 then
pixel-unshuffle; upsampling: 3x3 C->2C then pixel-shuffle; 1x1 channel reductions after the
level-3 and level-2 skip concatenations (none at level 1); output 3x3 2*DIM->OUT_CHANNELS. The
head (on the unpadded size): conv_first 3x3 IN_NC->NF, four residual blocks of two 3x3 NF->NF,
(pixel-shuffle upsampling convs when UPSCALE > 1), HRconv 3x3 NF->NF, conv_last 3x3 NF->OUT_NC.

Prints one line per component with --breakdown, then
`analytic_flops <total per step> forward <f> input_grad <i> weight_grad <w> params <n> batch <b> size <h>x<w>`.
The parameter count (weights, biases, LayerNorm affine, temperatures) is a check that the
enumeration is the network that torch builds (26,550,359 for the paper Restormer).
"""
import argparse
import sys

# presets/restormer-paper.yaml (the reference's restormer_pretrain_mMask.yaml) over the
# reference defaults, as torch_ifp.load_config merges them.
PAPER = {
    "INP_CHANNELS": 3, "OUT_CHANNELS": 64, "DIM": 48, "NUM_BLOCKS": [4, 6, 6, 8],
    "NUM_REFINEMENT_BLOCKS": 4, "HEADS": [1, 2, 4, 8], "FFN_EXPANSION_FACTOR": 2.66,
    "BIAS": False, "LAYERNORM_TYPE": "WithBias", "DUAL_PIXEL_TASK": False,
    "IN_NC": 64, "OUT_NC": 3, "NF": 64, "UPSCALE": 1,
}


class Count:
    """Multiply-adds of the forward pass, input gradients and weight gradients, per component."""

    def __init__(self):
        self.rows = []  # (component, forward MACs, input-grad MACs, weight-grad MACs)
        self.params = 0

    def conv(self, name, pixels, cin, cout, k, groups=1, bias=False, input_grad=True):
        """k x k convolution producing `pixels` output pixels (batch included)."""
        macs = pixels * cout * (cin // groups) * k * k
        self.rows.append((name, macs, macs if input_grad else 0, macs))
        self.params += cout * (cin // groups) * k * k + (cout if bias else 0)

    def bmm(self, name, macs):
        """A product of two activations: both operands get a gradient."""
        self.rows.append((name, macs, macs, macs))

    def block(self, name, pixels, batch, c, heads, expansion, bias, ln_bias):
        hidden = int(c * expansion)
        self.params += 2 * (c + (c if ln_bias else 0)) + heads  # norm1, norm2, temperature
        self.conv(f"{name}.attn.qkv", pixels, c, 3 * c, 1, bias=bias)
        self.conv(f"{name}.attn.qkv_dwconv", pixels, 3 * c, 3 * c, 3, groups=3 * c, bias=bias)
        # per image and head: (c/h x HW) @ (HW x c/h), then (c/h x c/h) @ (c/h x HW)
        self.bmm(f"{name}.attn.q@kT", pixels * (c // heads) * c)
        self.bmm(f"{name}.attn.attn@v", pixels * (c // heads) * c)
        self.conv(f"{name}.attn.project_out", pixels, c, c, 1, bias=bias)
        self.conv(f"{name}.ffn.project_in", pixels, c, 2 * hidden, 1, bias=bias)
        self.conv(f"{name}.ffn.dwconv", pixels, 2 * hidden, 2 * hidden, 3, groups=2 * hidden, bias=bias)
        self.conv(f"{name}.ffn.project_out", pixels, hidden, c, 1, bias=bias)


def count_step(batch, height, width, r):
    """The Count of one training step of the Restormer + MSRResNet head on batch x H x W crops."""
    n = Count()
    hp, wp = -(-height // 8) * 8, -(-width // 8) * 8  # pad8
    px = [batch * (hp >> i) * (wp >> i) for i in range(4)]  # pixels at levels 1..4
    dim, nb, hd = r["DIM"], list(r["NUM_BLOCKS"]), list(r["HEADS"])
    exp, bias = float(r["FFN_EXPANSION_FACTOR"]), bool(r["BIAS"])
    ln_bias = r["LAYERNORM_TYPE"] != "BiasFree"
    d = [dim, 2 * dim, 4 * dim, 8 * dim]

    def level(name, lv, c, blocks, heads):
        for i in range(blocks):
            n.block(f"{name}.{i}", px[lv], batch, c, heads, exp, bias, ln_bias)

    n.conv("patch_embed", px[0], r["INP_CHANNELS"], d[0], 3, input_grad=False)
    level("encoder_level1", 0, d[0], nb[0], hd[0])
    n.conv("down1_2", px[0], d[0], d[0] // 2, 3)
    level("encoder_level2", 1, d[1], nb[1], hd[1])
    n.conv("down2_3", px[1], d[1], d[1] // 2, 3)
    level("encoder_level3", 2, d[2], nb[2], hd[2])
    n.conv("down3_4", px[2], d[2], d[2] // 2, 3)
    level("latent", 3, d[3], nb[3], hd[3])
    n.conv("up4_3", px[3], d[3], 2 * d[3], 3)
    n.conv("reduce_chan_level3", px[2], d[3], d[2], 1, bias=bias)
    level("decoder_level3", 2, d[2], nb[2], hd[2])
    n.conv("up3_2", px[2], d[2], 2 * d[2], 3)
    n.conv("reduce_chan_level2", px[1], d[2], d[1], 1, bias=bias)
    level("decoder_level2", 1, d[1], nb[1], hd[1])
    n.conv("up2_1", px[1], d[1], 2 * d[1], 3)
    level("decoder_level1", 0, d[1], nb[0], hd[0])
    level("refinement", 0, d[1], r["NUM_REFINEMENT_BLOCKS"], hd[0])
    if r.get("DUAL_PIXEL_TASK"):
        n.conv("skip_conv", px[0], d[0], d[1], 1, bias=bias)
    n.conv("output", px[0], d[1], r["OUT_CHANNELS"], 3, bias=bias)

    # MSRResNet head on the cropped (unpadded) output
    p = batch * height * width
    nf, scale = r["NF"], r["UPSCALE"]
    n.conv("decoder.conv_first", p, r["IN_NC"], nf, 3, bias=True)
    for i in range(1, 5):
        n.conv(f"decoder.basic_block{i}.conv1", p, nf, nf, 3, bias=True)
        n.conv(f"decoder.basic_block{i}.conv2", p, nf, nf, 3, bias=True)
    if scale in (2, 3):
        n.conv("decoder.upconv1", p, nf, nf * scale * scale, 3, bias=True)
        p *= scale * scale
    elif scale == 4:
        n.conv("decoder.upconv1", p, nf, nf * 4, 3, bias=True)
        n.conv("decoder.upconv2", 4 * p, nf, nf * 4, 3, bias=True)
        p *= 16
    n.conv("decoder.HRconv", p, nf, nf, 3, bias=True)
    n.conv("decoder.conv_last", p, nf, r["OUT_NC"], 3, bias=True)
    if r["IN_NC"] != r["OUT_CHANNELS"]:
        raise SystemExit(f"DECODER.IN_NC {r['IN_NC']} != RESTORMER.OUT_CHANNELS {r['OUT_CHANNELS']}")
    return n


def load(path):
    import yaml

    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    m = raw.get("MODEL", {})
    if str(m.get("TYPE", "restormer")).lower() != "restormer":
        raise SystemExit(f"{path}: MODEL.TYPE {m.get('TYPE')!r}; this count is for the Restormer")
    r = dict(PAPER)
    r.update({k: v for k, v in (m.get("RESTORMER") or {}).items() if k in PAPER})
    r.update({k: v for k, v in (m.get("DECODER") or {}).items() if k in PAPER})
    return r, int(raw.get("DATA", {}).get("IMG_SIZE", 224))


def torch_counts(config, batch, size):
    """(corrected, stock) flop_counter totals of one forward + backward of the torch_ifp network
    built from `config`, on the meta device (shapes only)."""
    import os

    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_ifp as ti
    import torch_gpu_bench as tgb

    cfg = ti.load_config(config)
    kind = cfg["MODEL"].get("RECOVER_TARGET_TYPE", "m_masked")
    dev = torch.device("meta")
    model = ti.build_model(cfg).float().train().to(dev)
    mask = ti.ifp_mask(size, ti.draw_radii(size, float(cfg["DATA"].get("SAMPLE_RATIO", 0.5)), seed=0)).to(dev)
    x = torch.empty(batch, 3, size, size, device=dev)
    return tuple(tgb.count_flops(model, x, mask, kind, counter) for counter in ("fixed", "stock"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=None, help="crop height (and width), default 224 or DATA.IMG_SIZE")
    ap.add_argument("--width", type=int, default=None, help="crop width if not square")
    ap.add_argument("--config", default=None, help="Restormer YAML (reference schema); default the paper network")
    ap.add_argument("--breakdown", action="store_true", help="one line per component (block-level sums)")
    ap.add_argument("--check-torch", action="store_true",
                    help="compare with torch.utils.flop_counter (corrected and stock) on the meta device")
    a = ap.parse_args()
    r, img = load(a.config) if a.config else (dict(PAPER), 224)
    h = a.size or img
    w = a.width or h
    n = count_step(a.batch, h, w, r)

    fwd = 2 * sum(x[1] for x in n.rows)
    dx = 2 * sum(x[2] for x in n.rows)
    dw = 2 * sum(x[3] for x in n.rows)
    if a.breakdown:
        groups = {}
        for name, f, i, g in n.rows:
            key = name.split(".")[0] if not name.startswith("decoder.") else "decoder (head)"
            op = name.rsplit(".", 1)[-1]
            if op in ("q@kT", "attn@v"):
                key += " attention products"
            elif op in ("qkv_dwconv", "dwconv"):
                key += " depthwise convs"
            elif len(name.split(".")) > 2 and key != "decoder (head)":
                key += " 1x1 convs"
            acc = groups.setdefault(key, [0, 0, 0])
            acc[0] += 2 * f
            acc[1] += 2 * i
            acc[2] += 2 * g
        print(f"{'component':42s} {'forward GFLOP':>14s} {'input grad':>11s} {'weight grad':>11s} {'step':>9s}")
        for key, (f, i, g) in groups.items():
            print(f"{key:42s} {f / 1e9:14.2f} {i / 1e9:11.2f} {g / 1e9:11.2f} {(f + i + g) / 1e9:9.2f}")
        print(f"{'total':42s} {fwd / 1e9:14.2f} {dx / 1e9:11.2f} {dw / 1e9:11.2f} {(fwd + dx + dw) / 1e9:9.2f}")
    total = fwd + dx + dw
    print(f"per step: {total / 1e12:.4f} TFLOP (forward {fwd / 1e12:.4f}, input gradients {dx / 1e12:.4f}, "
          f"weight gradients {dw / 1e12:.4f}); batch {a.batch}, {h}x{w}, {n.params} parameters", file=sys.stderr)
    print(f"analytic_flops {total} forward {fwd} input_grad {dx} weight_grad {dw} params {n.params} "
          f"batch {a.batch} size {h}x{w}")
    if a.check_torch:
        import os

        if w != h:
            raise SystemExit("--check-torch needs a square size")
        cfg = a.config or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "presets",
                                       "restormer-paper.yaml")
        fixed, stock = torch_counts(cfg, a.batch, h)
        rel = abs(fixed - total) / total
        print(f"torch_flops corrected {fixed} stock {stock} corrected/analytic {fixed / total:.6f} "
              f"stock/analytic {stock / total:.3f}")
        if rel > 0.01:
            print(f"corrected counter {rel:.2%} off the analytic count", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
