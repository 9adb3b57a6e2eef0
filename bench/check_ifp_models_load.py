#!/usr/bin/env python3
"""Check that `ifp_models.load` (web/static/ifp_models.py, the module the platform serves) loads
`ifp` checkpoints with strict=True and computes what the Rust trainer computes.

  python bench/check_ifp_models_load.py [--ifp target/debug/ifp] [--data ../shared/data]

1. `ifp train --config tiny --steps 2`: load model-000002 with ifp_models.load (an IFPNet), run
   a random input, compare with `ifp forward` on the same input (relative L2 <= 1e-4, float32).
2. `ifp finetune --model tiny ... --steps 2`: load model-000002 (a FinetuneNet), restore the
   first Rain100H input, compare with the PNG `ifp eval --save-outputs` wrote for it (8-bit:
   at most 1 level apart, mean under 0.05 levels).
3. The same with `--model tiny-uformer` (a UformerFinetuneNet: encoder and decoder; the
   481x321 image is padded to a square the windows tile, then cropped back).
Exit 0 when all hold, 1 otherwise. The test suite runs this script (server test
`pytorch_loads_checkpoints`) when IFP_TORCH_PYTHON names a Python with the packages of
bench/requirements.txt; `.ci/run` sets that up.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "web", "static"))
import ifp_models  # noqa: E402


def run(*args):
    r = subprocess.run(list(args), capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{r.stderr}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ifp", default=os.environ.get("IFP", os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "/var/tmp/ifp-target"), "debug", "ifp")))
    ap.add_argument("--data", default=os.path.join(HERE, "..", "..", "shared", "data"))
    a = ap.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre")
        run(a.ifp, "train", "--config", "tiny", "--steps", "2", "--out", pre)
        w = os.path.join(pre, "model-000002.safetensors")
        net = ifp_models.load(w)
        x = torch.randn(1, 3, 40, 40, generator=torch.Generator().manual_seed(0))
        save_file({"input": x}, os.path.join(tmp, "in.safetensors"))
        run(a.ifp, "forward", "--config", "tiny", "--weights", w, "--input",
            os.path.join(tmp, "in.safetensors"), "--output", os.path.join(tmp, "out.safetensors"))
        theirs = load_file(os.path.join(tmp, "out.safetensors"))["output"]
        with torch.no_grad():
            mine = net(x)
        rel = float((mine - theirs).norm() / mine.norm())
        good = rel <= 1e-4
        ok &= good
        print(f"{'ok ' if good else 'FAIL'} pre-training: {type(net).__name__}, strict load, "
              f"forward rel_l2 {rel:.2e} vs ifp forward")

        rain = os.path.join(a.data, "rain", "Rain100H")
        clean = os.path.join(a.data, "clean", "CBSD68")
        for model, crop in (("tiny", "24"), ("tiny-uformer", "32")):
            ft = os.path.join(tmp, "ft-" + model)
            run(a.ifp, "finetune", "--model", model, "--train", clean, "--sigma", "25", "--crop", crop,
                "--batch", "2", "--steps", "2", "--save-freq", "2", "--out", ft)
            ok &= check_finetuned(a.ifp, os.path.join(ft, "model-000002.safetensors"), rain,
                                  os.path.join(ft, "restored"))
    sys.exit(0 if ok else 1)


def check_finetuned(ifp, w, data, outs):
    """Loads a fine-tuned model file strictly and restores the first image of `data` (Rain100H:
    not square, so a Uformer pads) as `ifp eval --save-outputs` does."""
    net = ifp_models.load(w)
    run(ifp, "eval", "--weights", w, "--data", data, "--max-images", "1", "--save-outputs", outs)
    name = sorted(os.listdir(os.path.join(data, "input")))[0]
    img = np.asarray(Image.open(os.path.join(data, "input", name)).convert("RGB"), np.float32) / 255
    with torch.no_grad():
        y = net(torch.from_numpy(img).permute(2, 0, 1)[None]).clamp(0, 1)[0]
    mine = (y.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.int32)
    theirs = np.asarray(Image.open(os.path.join(outs, os.path.splitext(name)[0] + ".png")), np.int32)
    diff = np.abs(mine - theirs)
    good = mine.shape == theirs.shape and diff.max() <= 1 and diff.mean() < 0.05
    print(f"{'ok ' if good else 'FAIL'} fine-tuning: {type(net).__name__}, strict load, "
          f"{name} {mine.shape}: max |diff| {diff.max()} levels, mean {diff.mean():.4f} "
          f"vs ifp eval --save-outputs")
    return good


if __name__ == "__main__":
    main()
