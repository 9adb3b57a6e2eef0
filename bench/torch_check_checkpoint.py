#!/usr/bin/env python3
"""Check a checkpoint and a forward result of the Rust `ifp forward` against PyTorch.

  python bench/torch_check_checkpoint.py --config C.yaml --weights W.safetensors \
      --input IN.safetensors --output OUT.safetensors [--dtype f64|f32] [--tol 1e-4]

Builds the Restormer + MSRResNet-head network (MODEL.RESTORMER.*, MODEL.DECODER.{IN_NC, OUT_NC,
NF (default 64), UPSCALE}) or the Uformer encoder + decoder (MODEL.UFORMER.*, bench/
web/static/ifp_models.py; the relative_position_index buffers are part of the strict load) from a
reference-schema config, loads W with
load_state_dict(strict=True) (on failure: prints the error, exit 1), runs the forward pass on
tensor `input` of IN (float64 by default, from the stored float32 values) and compares it with
tensor `output` of OUT. Prints the relative L2 error ||mine - theirs|| / ||mine|| and the max abs
difference; exit 0 if rel_l2 <= tol, 2 otherwise (3 on missing tensors / shape mismatch).
"""
import argparse
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_ifp as ti  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--dtype", choices=["f64", "f32"], default="f64")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dt = torch.float64 if a.dtype == "f64" else torch.float32

    cfg = ti.load_config(a.config)
    model = ti.build_model(cfg)
    weights = load_file(a.weights)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        print(f"load_state_dict(strict=True) failed for {a.weights}:\n{e}")
        sys.exit(1)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"loaded {len(weights)} tensors ({n_params} parameters) strict=True from {a.weights}")
    model = model.to(dt).eval()

    inp = load_file(a.input)
    out = load_file(a.output)
    if "input" not in inp or "output" not in out:
        print(f"missing tensor: `input` in {a.input}: {'input' in inp}, `output` in {a.output}: {'output' in out}")
        sys.exit(3)
    x = inp["input"].to(dt)
    theirs = out["output"].to(torch.float64)
    with torch.no_grad():
        mine = model(x).to(torch.float64)
    if mine.shape != theirs.shape:
        print(f"shape mismatch: torch {tuple(mine.shape)} vs {a.output} {tuple(theirs.shape)}")
        sys.exit(3)
    d = mine - theirs
    rel = float(d.norm() / mine.norm()) if float(mine.norm()) > 0 else float(d.norm())
    mad = float(d.abs().max())
    finite = bool(torch.isfinite(theirs).all())
    print(f"input {tuple(x.shape)} -> output {tuple(mine.shape)} (torch {a.dtype})")
    print(f"rel_l2 {rel:.3e}  max_abs_diff {mad:.3e}  max_abs_torch {float(mine.abs().max()):.3e}")
    if not finite or not (rel <= a.tol):
        print(f"FAIL: rel_l2 {rel:.3e} > tol {a.tol:g}" if finite else "FAIL: non-finite values in output")
        sys.exit(2)
    print("OK")


if __name__ == "__main__":
    main()
