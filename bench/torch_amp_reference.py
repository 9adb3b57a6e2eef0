#!/usr/bin/env python3
"""PyTorch `torch.autocast(bfloat16)` on restormer_tiny with the golden weights, against the
golden float32 values: the yardstick for ifp's `TRAIN.AMP: bf16` errors (trainer/tests/trainer/amp.rs).

  python bench/torch_amp_reference.py [--golden DIR] [--device cpu|cuda]

Prints the relative L2 error of the output, of the input gradient and of the worst parameter
gradient of sum(output * probe).
"""
import argparse
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_ifp as ti  # noqa: E402


def rl2(a, b):
    a, b = a.detach().double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--golden", default=os.environ.get("IFP_GOLDEN_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "golden")))
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    g = load_file(os.path.join(a.golden, "restormer_tiny.safetensors"))
    cfg = ti.load_config(os.path.join(a.golden, "configs", "restormer_tiny.yaml"))
    model = ti.build_model(cfg)
    model.load_state_dict({k: v for k, v in g.items() if k.startswith(("encoder.", "decoder."))}, strict=True)
    model = model.float().eval().to(dev)
    x = g["input"].to(dev).requires_grad_(True)
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        out = model(x)
    out = out.float()
    (out * g["probe"].to(dev)).sum().backward()
    worst = max((rl2(p.grad, g["grad." + n]), n) for n, p in model.named_parameters())
    print(f"torch autocast bf16 ({dev}) restormer_tiny: output {rl2(out, g['output']):.3e} "
          f"grad.input {rl2(x.grad, g['grad.input']):.3e} worst parameter gradient {worst[0]:.3e} ({worst[1]})")


if __name__ == "__main__":
    main()
