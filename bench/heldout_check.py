#!/usr/bin/env python3
"""Held-out parity of `ifp forward` against the PyTorch restatement (torch_ifp), float64.

  python bench/heldout_check.py [--ifp-bin BIN] [--workdir DIR] [--keep] [--tol 1e-4] [--only NAME]

Unlike check_torch_reference.py (which replays the golden files: seed 1234, N = 2, 32x32), every
case here draws fresh weights and inputs the golden files never saw: other seeds, batch 1..3,
spatial sizes that are not multiples of 8 (the reflect-pad-to-8 and crop-back path) and
non-square ones, and three Restormer configs:

  * `golden_tiny`  /work/shared/golden/configs/restormer_tiny.yaml (dim 8, blocks [1,1,1,2])
  * `small16`      dim 16, blocks [1,2,2,2], 1 refinement block, heads [1,2,4,8], OUT 32, NF 32
  * `biasfree`     dim 8, blocks [1,1,2,1], 2 refinement blocks, heads [2,2,4,4], FFN 2.0,
                   LAYERNORM_TYPE BiasFree and BIAS True (convolution biases wherever the
                   reference puts `bias=bias`; the reference's patch_embed, Downsample and
                   Upsample convolutions never have a bias)
  * `biasfree_nb`  the same with BIAS False (BiasFree LayerNorm on its own)

(the two extra configs are written to the work directory, under /tmp by default).

Weights follow the golden README's init scheme (so outputs are O(1) and the attention softmaxes
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

GOLDEN_TINY = "/work/shared/golden/configs/restormer_tiny.yaml"

SMALL16_YAML = """\
# heldout_check.py: a second small Restormer (not a golden network)
MODEL:
  TYPE: restormer
  RECOVER_TARGET_TYPE: m_masked
  RESTORMER:
    INP_CHANNELS: 3
    OUT_CHANNELS: 32
    DIM: 16
    NUM_BLOCKS: [1, 2, 2, 2]
    NUM_REFINEMENT_BLOCKS: 1
    HEADS: [1, 2, 4, 8]
    FFN_EXPANSION_FACTOR: 2.66
    BIAS: False
    LAYERNORM_TYPE: WithBias
  DECODER:
    IN_NC: 32
    OUT_NC: 3
    UPSCALE: 1
    NF: 32
DATA:
  IMG_SIZE: 32
"""

BIASFREE_YAML = """\
# heldout_check.py: BiasFree LayerNorm + convolution biases (not a golden network)
MODEL:
  TYPE: restormer
  RECOVER_TARGET_TYPE: m_masked
  RESTORMER:
    INP_CHANNELS: 3
    OUT_CHANNELS: 16
    DIM: 8
    NUM_BLOCKS: [1, 1, 2, 1]
    NUM_REFINEMENT_BLOCKS: 2
    HEADS: [2, 2, 4, 4]
    FFN_EXPANSION_FACTOR: 2.0
    BIAS: True
    LAYERNORM_TYPE: BiasFree
  DECODER:
    IN_NC: 16
    OUT_NC: 3
    UPSCALE: 1
    NF: 16
DATA:
  IMG_SIZE: 32
"""

BIASFREE_NB_YAML = BIASFREE_YAML.replace("BIAS: True", "BIAS: False").replace(
    "+ convolution biases", "without convolution biases")

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


def golden_init_(model: ti.IFPNet, seed: int) -> None:
    """The golden README's parameter initialisation (float64 draws rounded to float32)."""
    torch.manual_seed(seed)
    named = [("encoder." + n, p) for n, p in model.encoder.named_parameters()]
    named += [("decoder." + n, p) for n, p in model.decoder.named_parameters()]
    with torch.no_grad():
        for name, p in named:
            shape = tuple(p.shape)
            if name.endswith("temperature"):
                v = torch.rand(shape, dtype=torch.float64) + 0.5
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ifp-bin", default=os.environ.get("IFP_BIN", "/var/tmp/ifp-target/release/ifp"))
    ap.add_argument("--workdir", default=None, help="where configs/weights/inputs go (default: a new /tmp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--only", default=None, help="run only the cases of this config name")
    ap.add_argument("--patch-embed-bias-shim", action="store_true",
                    help="for BIAS True configs, also give ifp a zero encoder.patch_embed.proj.bias")
    a = ap.parse_args()

    if not os.access(a.ifp_bin, os.X_OK):
        print(f"ifp binary not found or not executable: {a.ifp_bin} (set --ifp-bin or IFP_BIN)")
        sys.exit(1)
    work = a.workdir or tempfile.mkdtemp(prefix="ifp-heldout-", dir="/tmp")
    os.makedirs(work, exist_ok=True)
    configs = {"golden_tiny": GOLDEN_TINY}
    for name, text in (("small16", SMALL16_YAML), ("biasfree", BIASFREE_YAML),
                       ("biasfree_nb", BIASFREE_NB_YAML)):
        path = os.path.join(work, f"{name}.yaml")
        with open(path, "w") as f:
            f.write(text)
        configs[name] = path

    rows, failures = [], 0
    for cname, seed, n, h, w in CASES:
        if a.only and cname != a.only:
            continue
        tag = f"{cname}-s{seed}-n{n}-{h}x{w}"
        cfg = ti.load_config(configs[cname])
        model = ti.build_model(cfg)
        golden_init_(model, seed)
        sd32 = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
        n_params = sum(p.numel() for p in model.parameters())
        shim = a.patch_embed_bias_shim and bool(cfg["MODEL"]["RESTORMER"]["BIAS"])
        if shim:
            w0 = sd32["encoder.patch_embed.proj.weight"]
            sd32["encoder.patch_embed.proj.bias"] = torch.zeros(w0.shape[0], dtype=torch.float32)
            tag += "+shim"
        # input drawn right after the parameters (same generator stream), float64 -> float32
        x32 = ti.normalize_img(torch.rand(n, 3, h, w, dtype=torch.float64)).to(torch.float32).contiguous()

        with torch.no_grad():
            ref = model.to(torch.float64).eval()(x32.to(torch.float64))
            out32 = model.to(torch.float32).eval()(x32)
        wpath = os.path.join(work, f"{tag}.weights.safetensors")
        ipath = os.path.join(work, f"{tag}.input.safetensors")
        opath = os.path.join(work, f"{tag}.output.safetensors")
        save_file(sd32, wpath)
        save_file({"input": x32}, ipath)
        if os.path.exists(opath):
            os.remove(opath)
        cmd = [a.ifp_bin, "forward", "--config", configs[cname], "--weights", wpath, "--input", ipath,
               "--output", opath]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        secs = time.perf_counter() - t0
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

    print()
    print(f"| case | params | input shape | rel L2 (ifp vs torch f64) | max abs diff | max abs out "
          f"| rel L2 (torch f32 vs f64) | ifp forward s | result |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---|")
    for tag, npar, shp, rel, mad, mx, r32, secs, st in rows:
        print(f"| {tag} | {npar} | {shp} | {rel:.2e} | {mad:.2e} | {mx:.2f} | {r32:.2e} | {secs:.2f} | {st} |")
    print()
    print(f"{len(rows) - failures}/{len(rows)} cases pass (tol {a.tol:g}); work dir {work}"
          + ("" if a.keep or a.workdir else " (removed)"))
    if not a.keep and not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
