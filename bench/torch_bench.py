#!/usr/bin/env python3
"""Time full IFP training steps in PyTorch eager (CPU, float32) — the baseline for `ifp bench`.

  python bench/torch_bench.py --config C.yaml [--batch B] [--size S] [--steps N] [--threads T]
                              [--warmup 2] [--seed 0] [--kind m_masked]

One step = sample B RandomResizedCrop(S, scale=(DATA.MIN_CROP_SCALE, 1), bicubic) + hflip crops
of a seeded 640x480 Gaussian-noise image (mean 0.467, std 0.075, 8-bit), corruption with the
fixed IFP mask (`m_masked` by default: MODEL.RECOVER_TARGET_TYPE), forward, frequency loss,
backward, clip_grad_norm_(3.0 = TRAIN.CLIP_GRAD), AdamW step with the two parameter groups
(decay / no decay) and the timm cosine schedule's step_update — i.e. everything the reference's
training iteration does. Defaults for B and S: DATA.BATCH_SIZE (if in the YAML file, else 1) and
DATA.IMG_SIZE (for a Uformer, MODEL.UFORMER.IMAGE_SIZE follows the size, as in `ifp bench`).
The model is in training mode: the Uformer's stochastic depth (DropPath) is active, as in the
reference's training and in `ifp bench`. `--warmup` steps are run first and not timed.

Output: one line per timed step (`step i ms X data_ms Y loss L grad_norm G`), then
`peak_rss_mb <ru_maxrss in MiB>` (includes the ~0.7 GB that `import torch` alone takes; the
header line reports `rss_after_import_mb`) and finally `step_ms <median> peak_rss_mb <value>` (the last
line starts with `step_ms <median>` like `ifp bench`).
"""
import argparse
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_ifp as ti  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch default)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kind", default=None, help="loss/corruption type (default: MODEL.RECOVER_TARGET_TYPE)")
    a = ap.parse_args()

    if a.threads:
        torch.set_num_threads(a.threads)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    torch.manual_seed(a.seed)
    cfg = ti.load_config(a.config)
    import yaml

    with open(a.config) as f:
        raw = yaml.safe_load(f) or {}
    batch = a.batch or int((raw.get("DATA") or {}).get("BATCH_SIZE", 1))
    size = a.size or int(cfg["DATA"]["IMG_SIZE"])
    if str(cfg["MODEL"].get("TYPE", "restormer")).lower() == "uformer":
        # The Uformer is built for its input size (window sizes depend on it), as `ifp bench`
        # does when given --size.
        cfg["MODEL"].setdefault("UFORMER", {})["IMAGE_SIZE"] = size
    kind = a.kind or cfg["MODEL"].get("RECOVER_TARGET_TYPE", "m_masked")
    tr = cfg["TRAIN"]

    model = ti.build_model(cfg).float().train()
    n_params = sum(p.numel() for p in model.parameters())
    base, warm, lmin = ti.scaled_lrs(float(tr["BASE_LR"]), float(tr["WARMUP_LR"]), float(tr["MIN_LR"]), batch)
    betas = tr["OPTIMIZER"].get("BETAS", (0.9, 0.95))
    opt = ti.build_optimizer(model, base, float(tr["WEIGHT_DECAY"]), betas, float(tr["OPTIMIZER"].get("EPS", 1e-8)))
    total = a.warmup + a.steps
    sched = ti.build_scheduler(opt, total_steps=max(total, 1), warmup_steps=min(int(tr["WARMUP_EPOCHS"]), total),
                               warmup_lr=warm, min_lr=lmin)
    clip = float(tr.get("CLIP_GRAD", 3.0)) or None

    sampler = ti.CropSampler(ti.make_noise_image(a.seed), size, float(cfg["DATA"]["MIN_CROP_SCALE"]))
    radii = ti.draw_radii(size, float(cfg["DATA"]["SAMPLE_RATIO"]), seed=a.seed)
    mask = ti.ifp_mask(size, radii)
    print(f"torch {torch.__version__} threads {torch.get_num_threads()} params {n_params} "
          f"batch {batch} size {size} kind {kind} clip {clip} mask_zeros {int((mask == 0).sum())} "
          f"rss_after_import_mb {rss0:.1f}",
          flush=True)

    times = []
    for i in range(total):
        t0 = time.perf_counter()
        clean = sampler.sample(batch)
        t1 = time.perf_counter()
        loss, gn = ti.train_step(model, opt, sched, clean, mask, i, kind=kind, clip=clip)
        t2 = time.perf_counter()
        ms = (t2 - t0) * 1e3
        if i >= a.warmup:
            times.append(ms)
            print(f"step {i - a.warmup} ms {ms:.1f} data_ms {(t1 - t0) * 1e3:.1f} loss {loss:.6f} grad_norm {gn:.4f}",
                  flush=True)
        else:
            print(f"warmup {i} ms {ms:.1f} loss {loss:.6f} grad_norm {gn:.4f}", flush=True)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    med = statistics.median(times) if times else float("nan")
    print(f"peak_rss_mb {rss_mb:.1f}")
    print(f"step_ms {med:.1f} peak_rss_mb {rss_mb:.1f}")


if __name__ == "__main__":
    main()
