"""Reference PSNR/SSIM numbers from scikit-image for `trainer/tests/trainer/eval_metrics.rs`.

Run with the bench venv (`pip install scikit-image`), from the repository root:

    python bench/skimage_reference.py > bench/skimage_reference.json

Each case is a pair of 8-bit RGB images built from files in ../shared/data (crops, or a
deterministic integer perturbation that the Rust test rebuilds exactly). Metrics follow the
restoration-paper conventions the trainer implements:
- RGB: values in [0, 255] (float64), data_range=255; SSIM with gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, channel_axis=2 (mean of the per-channel SSIMs).
- Y: MATLAB rgb2ycbcr's luma, Y = 16 + 65.481 R + 128.553 G + 24.966 B for R, G, B in [0, 1],
  not rounded, compared on [0, 255] with data_range=255.
"""

import json
import os
import sys

import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def load(rel):
    return np.asarray(Image.open(os.path.join(DATA, rel)).convert("RGB"), dtype=np.uint8)


def crop(img, top, left, h, w):
    return img[top : top + h, left : left + w]


def perturb(img):
    """b = clip(a + ((7x + 13y + 5c) mod 21) - 10, 0, 255), x = column, y = row, c = channel."""
    h, w, _ = img.shape
    y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    d = (7 * x + 13 * y + 5 * c) % 21 - 10
    return np.clip(img.astype(np.int64) + d, 0, 255).astype(np.uint8)


def y_channel(img):
    f = img.astype(np.float64) / 255.0
    return 16.0 + 65.481 * f[..., 0] + 128.553 * f[..., 1] + 24.966 * f[..., 2]


def metrics(a, b):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ya, yb = y_channel(a), y_channel(b)
    ssim_args = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    return {
        "psnr": peak_signal_noise_ratio(b64, a64, data_range=255),
        "ssim": structural_similarity(b64, a64, channel_axis=2, **ssim_args),
        "psnr_y": peak_signal_noise_ratio(yb, ya, data_range=255),
        "ssim_y": structural_similarity(yb, ya, **ssim_args),
    }


def main():
    rain_in = load("rain/Rain100H/input/norain-1.png")
    rain_tg = load("rain/Rain100H/target/norain-1.png")
    kodak = load("clean/Kodak24/kodim01.png")
    cases = [
        # (name, restored, target, description for the Rust side)
        ("rain_full", rain_in, rain_tg,
         {"kind": "files", "restored": "rain/Rain100H/input/norain-1.png",
          "target": "rain/Rain100H/target/norain-1.png"}),
        ("rain_crop_37x53", crop(rain_in, 10, 20, 37, 53), crop(rain_tg, 10, 20, 37, 53),
         {"kind": "crop", "restored": "rain/Rain100H/input/norain-1.png",
          "target": "rain/Rain100H/target/norain-1.png", "top": 10, "left": 20, "h": 37, "w": 53}),
        ("kodak_perturbed_crop", perturb(crop(kodak, 100, 150, 96, 128)), crop(kodak, 100, 150, 96, 128),
         {"kind": "perturb", "target": "clean/Kodak24/kodim01.png",
          "top": 100, "left": 150, "h": 96, "w": 128}),
        ("kodak_11x11", perturb(crop(kodak, 0, 0, 11, 11)), crop(kodak, 0, 0, 11, 11),
         {"kind": "perturb", "target": "clean/Kodak24/kodim01.png",
          "top": 0, "left": 0, "h": 11, "w": 11}),
    ]
    out = {
        "generator": "bench/skimage_reference.py",
        "skimage": __import__("skimage").__version__,
        "numpy": np.__version__,
        "cases": [],
    }
    for name, restored, target, desc in cases:
        out["cases"].append({"name": name, **desc, **metrics(restored, target)})
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
