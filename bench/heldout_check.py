#!/usr/bin/env python3
"""Held-out parity of `ifp forward` against the PyTorch restatement (torch_ifp), float64.

  python bench/heldout_check.py [--ifp-bin BIN] [--workdir DIR] [--keep] [--tol 1e-4] [--only NAME]
                                [--family all|restormer|uformer]

Unlike check_torch_reference.py (which replays the golden files: seed 1234, N = 2, 32x32), every
case here draws fresh weights and inputs the golden files never saw: other seeds, batch 1..3,
spatial sizes that are not multiples of 8 (the reflect-pad-to-8 and crop-back path) and
non-square ones, and three Restormer configs:

  * `golden_tiny`  $IFP_GOLDEN_DIR/configs/restormer_tiny.yaml (dim 8, blocks [1,1,1,2])
  * `small16`      dim 16, blocks [1,2,2,2], 1 refinement block, heads [1,2,4,8], OUT 32, NF 32
  * `biasfree`     dim 8, blocks [1,1,2,1], 2 refinement blocks, heads [2,2,4,4], FFN 2.0,
                   LAYERNORM_TYPE BiasFree and BIAS True (convolution biases wherever the
                   reference puts `bias=bias`; the reference's patch_embed, Downsample and
                   Upsample convolutions never have a bias)
  * `biasfree_nb`  the same with BIAS False (BiasFree LayerNorm on its own)

(the two extra configs are written to the work directory, under /tmp by default).

Uformer (`--family uformer`; web/static/ifp_models.py): the golden `uformer_tiny` (window 4, depth 1)
and `uformer_tiny_shift` (shifted windows) configs, plus `uf_win2` (window 2, odd depths),
`uf_win6` (window 6 / shift 3 on 96x96), `uf_dim16` (EMBED_DIM 16, window 8) and `uf_paper128`
(the uformer-paper network at 128x128); batch 1..3, inputs equal to IMAGE_SIZE and twice it
(windows are fixed at construction, as in the reference). Only square sides whose every level
tiles work in the reference; three such inputs (non-square, 48x48 on window 4, 64x64 on window
6) must be refused by both the torch restatement and `ifp forward` (with a message naming the
rule). Weights: the same scheme, with `relative_position_bias_table` and `modulator.weight`
drawn 0.2 N(0,1), as when the golden vectors were made.

Weights follow the scheme the golden vectors were made with (so outputs are O(1) and the attention softmaxes
are not saturated): torch.manual_seed(seed), one float64 draw per parameter in
encoder.named_parameters() then decoder.named_parameters() order, rounded to float32:
`temperature` U[0.5,1.5); `*bias` 0.05 N(0,1); other 1-D 1 + 0.2 N(0,1); other weights
s N(0,1) with s = min(0.2, 1/sqrt(fan_in)). The input is ImageNet-normalised U[0,1) noise, drawn in
float64 and rounded to float32. The expected output is the float64 forward of the float32-rounded
weights and input. `ifp forward` (a subprocess) gets the float32 weights and input as safetensors.

`--patch-embed-bias-shim` adds a zero `encoder.patch_embed.proj.bias` to the weights given to
`ifp forward` for BIAS True configs (a diagnostic: the output is unchanged, it only lets a loader
that wrongly expects that key run, so the rest of the BIAS True network can still be compared).

Metric: rel L2 = ||rust - torch_f64|| / ||torch_f64||; a case passes if it is < tol (1e-4) and the
Rust output is finite and has the expected shape. For scale, the table also shows the same metric
for plain float32 PyTorch on the same tensors. Exit 0 if every case passes, 1 otherwise.
"""
import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import torch_ifp as ti  # noqa: E402

# The golden vectors sit in `../shared/golden` beside the checkout (or IFP_GOLDEN_DIR).
GOLDEN = os.environ.get("IFP_GOLDEN_DIR", os.path.join(HERE, "..", "..", "shared", "golden"))
GOLDEN_TINY = os.path.join(GOLDEN, "configs", "restormer_tiny.yaml")

def restormer_yaml(title, out_ch, dim, blocks, refinement, heads, ffn, bias, norm):
    """A small Restormer config (not a golden network) with the decoder matching its output."""
    return f"""\
# heldout_check.py: {title} (not a golden network)
MODEL:
  TYPE: restormer
  RECOVER_TARGET_TYPE: m_masked
  RESTORMER:
    INP_CHANNELS: 3
    OUT_CHANNELS: {out_ch}
    DIM: {dim}
    NUM_BLOCKS: {blocks}
    NUM_REFINEMENT_BLOCKS: {refinement}
    HEADS: {heads}
    FFN_EXPANSION_FACTOR: {ffn}
    BIAS: {bias}
    LAYERNORM_TYPE: {norm}
  DECODER:
    IN_NC: {out_ch}
    OUT_NC: 3
    UPSCALE: 1
    NF: {out_ch}
DATA:
  IMG_SIZE: 32
"""


SMALL16_YAML = restormer_yaml("a second small Restormer", 32, 16, "[1, 2, 2, 2]", 1,
                              "[1, 2, 4, 8]", 2.66, False, "WithBias")
BIASFREE_YAML = restormer_yaml("BiasFree LayerNorm + convolution biases", 16, 8, "[1, 1, 2, 1]",
                               2, "[2, 2, 4, 4]", 2.0, True, "BiasFree")
BIASFREE_NB_YAML = restormer_yaml("BiasFree LayerNorm without convolution biases", 16, 8,
                                  "[1, 1, 2, 1]", 2, "[2, 2, 4, 4]", 2.0, False, "BiasFree")

# (config name, seed, N, H, W)
CASES = [
    ("golden_tiny", 7, 1, 30, 26),
    ("golden_tiny", 11, 2, 17, 9),
    ("golden_tiny", 23, 3, 40, 40),
    ("golden_tiny", 5, 1, 64, 48),
    ("golden_tiny", 99, 2, 9, 33),
    ("golden_tiny", 2024, 1, 8, 8),
    ("small16", 3, 2, 30, 26),
    ("small16", 8, 3, 17, 9),
    ("small16", 42, 1, 64, 48),
    ("small16", 61, 2, 40, 40),
    ("biasfree", 13, 2, 30, 26),
    ("biasfree", 77, 1, 64, 48),
    ("biasfree", 31, 3, 17, 9),
    ("biasfree", 4321, 1, 24, 56),
    ("biasfree_nb", 17, 2, 30, 26),
    ("biasfree_nb", 29, 1, 64, 48),
]

# Uformer (web/static/ifp_models.py). Square sides only (the reference recovers the side as
# int(sqrt(tokens))); window sizes are fixed at construction from IMAGE_SIZE, so running a
# larger input than IMAGE_SIZE is allowed when every level still tiles.
UF_TINY = os.path.join(GOLDEN, "configs", "uformer_tiny.yaml")
UF_SHIFT = os.path.join(GOLDEN, "configs", "uformer_tiny_shift.yaml")


def _uformer_yaml(note, size, win, embed, depths):
    return f"""\
# heldout_check.py: {note} (not a golden network)
MODEL:
  TYPE: uformer
  RECOVER_TARGET_TYPE: m_masked
  UFORMER:
    INP_CHANNELS: 3
    IMAGE_SIZE: {size}
    PATCH_SIZE: 1
    EMBED_DIM: {embed}
    DEPTHS: {list(depths)}
    WIN_SIZE: {win}
DATA:
  IMG_SIZE: {size}
"""


UFORMER_YAMLS = {
    # window 2, odd depths (blocks 0 and 2 plain, block 1 shifted by 1), bottleneck 2x2 window
    "uf_win2": _uformer_yaml("window 2, odd depths", 32, 2, 8, [3, 2, 1, 2, 3, 1, 2, 1, 1]),
    # window 6 (shift 3) on a 96 grid: levels 96/48/24/12 shifted, bottleneck 6x6 one window
    "uf_win6": _uformer_yaml("window 6 on 96x96", 96, 6, 8, [2, 2, 2, 2, 2, 1, 1, 1, 1]),
    # 16 channels per head, window 8, depth 2 everywhere (level 3 = one 8x8 window, bottleneck 4x4)
    "uf_dim16": _uformer_yaml("EMBED_DIM 16, window 8", 64, 8, 16, [2, 2, 2, 2, 2, 2, 2, 2, 2]),
    # the uformer-paper network (embed 32, depths [1,2,8,8,2,8,8,2,1], window 8) at 128x128
    "uf_paper128": _uformer_yaml("the paper Uformer at 128x128", 128, 8, 32, [1, 2, 8, 8, 2, 8, 8, 2, 1]),
}

# (config name, seed, N, H, W); H != IMAGE_SIZE where noted in the config comment above
UFORMER_CASES = [
    ("uformer_tiny", 7, 1, 32, 32),
    ("uformer_tiny", 11, 3, 32, 32),
    ("uformer_tiny", 23, 2, 64, 64),  # built for 32: bottleneck window 2 tiles a 4x4 grid
    ("uformer_tiny_shift", 5, 2, 32, 32),
    ("uformer_tiny_shift", 99, 1, 32, 32),
    ("uformer_tiny_shift", 2024, 1, 64, 64),  # built for 32, shifted masks rebuilt for 64
    ("uf_win2", 13, 2, 32, 32),
    ("uf_win2", 77, 1, 32, 32),
    ("uf_win6", 31, 1, 96, 96),
    ("uf_win6", 4321, 2, 96, 96),
    ("uf_dim16", 3, 1, 64, 64),
    ("uf_dim16", 8, 2, 64, 64),
    ("uf_paper128", 61, 1, 128, 128),
]

# Inputs the architecture cannot take: both the torch restatement (like the reference) and
# `ifp forward` must refuse them; ifp's message must say why (`square`/`divisible`/`tiled`).
UFORMER_REJECT = [
    ("uformer_tiny", 1, 1, 32, 48),  # non-square
    ("uformer_tiny", 2, 1, 48, 48),  # 48 -> bottleneck 3x3 cannot be tiled by its 2x2 window
    ("uf_win6", 3, 1, 64, 64),       # 64 -> level 1 is 32x32, not tiled by 6x6 windows
]


def golden_init_(model: ti.IFPNet, seed: int) -> None:
    """The golden vectors' parameter initialisation (float64 draws rounded to float32), spelt out
    in the module docstring."""
    torch.manual_seed(seed)
    named = [("encoder." + n, p) for n, p in model.encoder.named_parameters()]
    named += [("decoder." + n, p) for n, p in model.decoder.named_parameters()]
    with torch.no_grad():
        for name, p in named:
            shape = tuple(p.shape)
            if name.endswith("temperature"):
                v = torch.rand(shape, dtype=torch.float64) + 0.5
            elif name.endswith(("relative_position_bias_table", "modulator.weight")):
                v = 0.2 * torch.randn(shape, dtype=torch.float64)
            elif name.endswith("bias"):
                v = 0.05 * torch.randn(shape, dtype=torch.float64)
            elif p.dim() == 1:
                v = 1.0 + 0.2 * torch.randn(shape, dtype=torch.float64)
            else:
                fan_in = p.numel() / shape[0]
                v = min(0.2, 1.0 / math.sqrt(fan_in)) * torch.randn(shape, dtype=torch.float64)
            p.copy_(v.to(torch.float32).to(p.dtype))


def rel_l2(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.to(torch.float64), ref.to(torch.float64)
    n = float(ref.norm())
    return float((a - ref).norm()) / n if n > 0 else float((a - ref).norm())


def run_ifp(ifp_bin, cfg_path, wpath, ipath, opath):
    if os.path.exists(opath):
        os.remove(opath)
    cmd = [ifp_bin, "forward", "--config", cfg_path, "--weights", wpath, "--input", ipath, "--output", opath]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    return cmd, p, time.perf_counter() - t0


def prepare(cname, cfg_path, seed, n, h, w, work, shim_flag):
    """Model with fresh golden-scheme weights, its float32 state_dict, the float32 input."""
    cfg = ti.load_config(cfg_path)
    model = ti.build_model(cfg)
    golden_init_(model, seed)
    sd32 = {k: v.detach().contiguous() if not v.is_floating_point() else v.detach().to(torch.float32).contiguous()
            for k, v in model.state_dict().items()}
    tag = f"{cname}-s{seed}-n{n}-{h}x{w}"
    is_restormer = str(cfg["MODEL"].get("TYPE", "restormer")).lower() == "restormer"
    if shim_flag and is_restormer and bool(cfg["MODEL"]["RESTORMER"]["BIAS"]):
        w0 = sd32["encoder.patch_embed.proj.weight"]
        sd32["encoder.patch_embed.proj.bias"] = torch.zeros(w0.shape[0], dtype=torch.float32)
        tag += "+shim"
    # input drawn right after the parameters (same generator stream), float64 -> float32
    x32 = ti.normalize_img(torch.rand(n, 3, h, w, dtype=torch.float64)).to(torch.float32).contiguous()
    wpath = os.path.join(work, f"{tag}.weights.safetensors")
    ipath = os.path.join(work, f"{tag}.input.safetensors")
    opath = os.path.join(work, f"{tag}.output.safetensors")
    save_file(sd32, wpath)
    save_file({"input": x32}, ipath)
    return tag, model, x32, wpath, ipath, opath


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ifp-bin", default=os.environ.get("IFP_BIN", "/var/tmp/ifp-target/release/ifp"))
    ap.add_argument("--workdir", default=None, help="where configs/weights/inputs go (default: a new /tmp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--only", default=None, help="run only the cases of this config name")
    ap.add_argument("--family", choices=("all", "restormer", "uformer"), default="all",
                    help="which networks' cases to run (default all)")
    ap.add_argument("--patch-embed-bias-shim", action="store_true",
                    help="for BIAS True configs, also give ifp a zero encoder.patch_embed.proj.bias")
    a = ap.parse_args()

    if not os.access(a.ifp_bin, os.X_OK):
        print(f"ifp binary not found or not executable: {a.ifp_bin} (set --ifp-bin or IFP_BIN)")
        sys.exit(1)
    work = a.workdir or tempfile.mkdtemp(prefix="ifp-heldout-", dir="/tmp")
    os.makedirs(work, exist_ok=True)
    configs = {"golden_tiny": GOLDEN_TINY, "uformer_tiny": UF_TINY, "uformer_tiny_shift": UF_SHIFT}
    texts = {"small16": SMALL16_YAML, "biasfree": BIASFREE_YAML, "biasfree_nb": BIASFREE_NB_YAML, **UFORMER_YAMLS}
    for name, text in texts.items():
        path = os.path.join(work, f"{name}.yaml")
        with open(path, "w") as f:
            f.write(text)
        configs[name] = path

    cases, rejects = [], []
    if a.family in ("all", "restormer"):
        cases += CASES
    if a.family in ("all", "uformer"):
        cases += UFORMER_CASES
        rejects += UFORMER_REJECT
    if a.only:
        cases = [c for c in cases if c[0] == a.only]
        rejects = [c for c in rejects if c[0] == a.only]

    rows, failures = [], 0
    for cname, seed, n, h, w in cases:
        tag, model, x32, wpath, ipath, opath = prepare(cname, configs[cname], seed, n, h, w, work,
                                                       a.patch_embed_bias_shim)
        n_params = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            ref = model.to(torch.float64).eval()(x32.to(torch.float64))
            out32 = model.to(torch.float32).eval()(x32)
        cmd, p, secs = run_ifp(a.ifp_bin, configs[cname], wpath, ipath, opath)
        status, rel, mad = "FAIL", float("nan"), float("nan")
        note = ""
        if p.returncode != 0:
            note = f"ifp forward exit {p.returncode}: {p.stderr.strip()[-400:]}"
        else:
            got = load_file(opath).get("output")
            if got is None:
                note = "no tensor `output`"
            elif tuple(got.shape) != tuple(ref.shape):
                note = f"shape {tuple(got.shape)} != expected {tuple(ref.shape)}"
            elif not bool(torch.isfinite(got).all()):
                note = "non-finite values"
            else:
                rel = rel_l2(got, ref)
                mad = float((got.to(torch.float64) - ref).abs().max())
                status = "ok" if rel < a.tol else "FAIL"
        if status != "ok":
            failures += 1
            print(f"[{tag}] FAIL {note or f'rel_l2 {rel:.3e} >= {a.tol:g}'}\n  reproduce: {' '.join(cmd)}",
                  flush=True)
        rows.append((tag, n_params, f"{n}x3x{h}x{w}", rel, mad, float(ref.abs().max()), rel_l2(out32, ref),
                     secs, status))
        print(f"  {tag}: rel_l2 {rel:.3e} ({status}, {secs:.2f} s)", flush=True)

    reject_rows = []
    for cname, seed, n, h, w in rejects:
        tag, model, x32, wpath, ipath, opath = prepare(cname, configs[cname], seed, n, h, w, work, False)
        try:
            with torch.no_grad():
                model.to(torch.float64).eval()(x32.to(torch.float64))
            torch_says = "ran (!)"
        except Exception as e:  # noqa: BLE001 - any failure is what the reference does too
            torch_says = f"{type(e).__name__}"
        cmd, p, _ = run_ifp(a.ifp_bin, configs[cname], wpath, ipath, opath)
        msg = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
        ok = (p.returncode != 0 and torch_says != "ran (!)"
              and any(wd in msg for wd in ("square", "divisible", "tiled")))
        if not ok:
            failures += 1
            print(f"[{tag}] FAIL: expected both to refuse; torch {torch_says}, ifp exit {p.returncode}: {msg}",
                  flush=True)
        reject_rows.append((tag, f"{n}x3x{h}x{w}", torch_says, p.returncode, msg, "ok" if ok else "FAIL"))
        print(f"  {tag}: refused (torch {torch_says}, ifp exit {p.returncode})", flush=True)

    print()
    print(f"| case | params | input shape | rel L2 (ifp vs torch f64) | max abs diff | max abs out "
          f"| rel L2 (torch f32 vs f64) | ifp forward s | result |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---|")
    for tag, npar, shp, rel, mad, mx, r32, secs, st in rows:
        print(f"| {tag} | {npar} | {shp} | {rel:.2e} | {mad:.2e} | {mx:.2f} | {r32:.2e} | {secs:.2f} | {st} |")
    if reject_rows:
        print()
        print("| refused case | input shape | torch | ifp exit | ifp message | result |")
        print("|---|---|---|---:|---|---|")
        for tag, shp, ts, rc, msg, st in reject_rows:
            print(f"| {tag} | {shp} | {ts} | {rc} | {msg[:160]} | {st} |")
    print()
    total = len(rows) + len(reject_rows)
    print(f"{total - failures}/{total} cases pass (tol {a.tol:g}); work dir {work}"
          + ("" if a.keep or a.workdir else " (removed)"))
    if not a.keep and not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
