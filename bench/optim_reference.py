#!/usr/bin/env python3
"""Reference numbers for the optimiser, clipping and LR schedule (for the Rust unit tests).

  python bench/optim_reference.py [--out bench/optim_reference.json]

Computed with real torch.optim.AdamW, torch.nn.utils.clip_grad_norm_ and timm's
CosineLRScheduler (falls back to torch_ifp.cosine_lr, an exact restatement, if timm is missing;
`schedule.source` says which). Prints the JSON and writes it to --out.

a) schedule: BASE_LR 3e-4, WARMUP_LR 2.5e-7, MIN_LR 2.5e-6, DATA.BATCH_SIZE 4, world size 1
   (all three scaled by 4/512), total 50 steps, 5 warm-up steps, built exactly as the reference's
   lr_scheduler.py (t_initial=50, lr_min, warmup_lr_init, warmup_t=5, cycle_limit=1,
   t_in_epochs=False). `used_lr[k]` is the LR optimiser step k (k = 0..49) runs with in the
   reference loop (optimizer.step() then lr_scheduler.step_update(k)), `logged_lr[k]` the LR the
   reference prints at step k (read after step_update), `timm_lr[t]` = lr(t) for t = 0..50.
b) AdamW with two groups (w: (2,3), weight decay 0.05; b: (3,), no decay), betas (0.9, 0.95),
   eps 1e-8, lr 1e-2, 5e-3, 2e-3 for steps 1..3; before each optimiser step the given gradient
   is clipped with clip_grad_norm_([w, b], 3.0) (step 2's gradient has norm > 3). Recorded per
   step: returned (pre-clip) norm, clip coefficient, clipped gradients, parameters after the
   step; after step 3: exp_avg / exp_avg_sq. Run in float32 (values as training) and float64
   (same float32 inputs widened).
"""
import argparse
import json
import math
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_ifp as ti  # noqa: E402


def f32_bits(t):
    return [format(struct.unpack("<I", struct.pack("<f", float(v)))[0], "08x") for v in t.flatten().tolist()]


def tolist(t):
    return [float(v) for v in t.detach().flatten().tolist()] if t.dim() <= 1 else \
        [[float(v) for v in row] for row in t.detach().tolist()]


def schedule_section():
    base, warm, lmin = ti.scaled_lrs(3e-4, 2.5e-7, 2.5e-6, batch=4, world_size=1)
    T, W = 50, 5
    p1 = torch.nn.Parameter(torch.zeros(2, 2))
    p2 = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [p1]}, {"params": [p2], "weight_decay": 0.0}], lr=base,
                            betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05)
    source = "timm"
    try:
        import timm
        from timm.scheduler.cosine_lr import CosineLRScheduler

        sched = CosineLRScheduler(opt, t_initial=T, lr_min=lmin, warmup_lr_init=warm, warmup_t=W,
                                  cycle_limit=1, t_in_epochs=False)
        source = f"timm {timm.__version__} CosineLRScheduler"
        raw = [float(sched._get_lr(t)[0]) for t in range(T + 1)]
    except ImportError:
        sched = ti.build_scheduler(opt, T, W, warm, lmin, use_timm=False)
        source = "restatement (timm not installed)"
        raw = [ti.cosine_lr(t, base, warm, lmin, T, W) for t in range(T + 1)]
    used, logged = [], []
    for k in range(T):
        lrs = [g["lr"] for g in opt.param_groups]
        assert lrs[0] == lrs[1]
        used.append(float(lrs[0]))
        p1.grad = torch.zeros_like(p1)
        p2.grad = torch.zeros_like(p2)
        opt.step()
        sched.step_update(k)
        logged.append(float(opt.param_groups[0]["lr"]))
    restated = [ti.cosine_lr(t, base, warm, lmin, T, W) for t in range(T + 1)]
    restated_used = [ti.used_lr(k, base, warm, lmin, T, W) for k in range(T)]
    dev = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(raw, restated))
    dev_used = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(used, restated_used))
    return {
        "source": source,
        "config": {"BASE_LR": 3e-4, "WARMUP_LR": 2.5e-7, "MIN_LR": 2.5e-6, "batch": 4, "world_size": 1,
                   "scale": 4 / 512, "total_steps": T, "warmup_steps": W},
        "scaled": {"base_lr": base, "warmup_lr": warm, "min_lr": lmin},
        "used_lr": used,
        "logged_lr": logged,
        "timm_lr": raw,
        "restatement_max_rel_dev": {"timm_lr": dev, "used_lr": dev_used},
        "rule": ("lr(t) = warmup_lr + t*(base-warmup_lr)/W for t < W; else "
                 "min + 0.5*(base-min)*(1+cos(pi*t/T)) for W <= t < T (t absolute, no warmup "
                 "prefix); min for t >= T. Optimiser step k uses lr(max(k-1, 0)): the scheduler's "
                 "constructor sets lr(0) = warmup_lr, step k runs, then step_update(k) sets lr(k) "
                 "for step k+1. So steps 0 and 1 both use warmup_lr, and the last warm-up value "
                 "lr(W-1) is used by step W. The reference logs lr(k) at step k."),
    }


def adamw_run(dtype, w0, b0, grads, lrs, clip=3.0):
    w = torch.nn.Parameter(w0.clone().to(dtype))
    b = torch.nn.Parameter(b0.clone().to(dtype))
    opt = torch.optim.AdamW([{"params": [w]}, {"params": [b], "weight_decay": 0.0}], lr=lrs[0],
                            betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05)
    steps = []
    for (gw, gb), lr in zip(grads, lrs):
        for g in opt.param_groups:
            g["lr"] = lr
        w.grad = gw.clone().to(dtype)
        b.grad = gb.clone().to(dtype)
        norm = torch.nn.utils.clip_grad_norm_([w, b], clip)
        coef = min(1.0, clip / (float(norm) + 1e-6))
        rec = {"lr": lr, "grad_norm": float(norm), "clip_coef": coef, "clipped": float(norm) > clip,
               "clipped_grad_w": tolist(w.grad), "clipped_grad_b": tolist(b.grad)}
        opt.step()
        rec["w"] = tolist(w)
        rec["b"] = tolist(b)
        if dtype == torch.float32:
            rec["w_f32_bits"] = f32_bits(w.detach())
            rec["b_f32_bits"] = f32_bits(b.detach())
        steps.append(rec)
    sw, sb = opt.state[w], opt.state[b]
    state = {"step": float(sw["step"]), "exp_avg_w": tolist(sw["exp_avg"]), "exp_avg_sq_w": tolist(sw["exp_avg_sq"]),
             "exp_avg_b": tolist(sb["exp_avg"]), "exp_avg_sq_b": tolist(sb["exp_avg_sq"])}
    return {"steps": steps, "final_state": state}


def adamw_section():
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(2, 3, generator=g, dtype=torch.float32)
    b0 = torch.randn(3, generator=g, dtype=torch.float32)
    scales = [0.5, 3.0, 1.0]  # step 2 is clipped
    grads = []
    for s in scales:
        gw = (torch.randn(2, 3, generator=g, dtype=torch.float32) * s).to(torch.float32)
        gb = (torch.randn(3, generator=g, dtype=torch.float32) * s).to(torch.float32)
        grads.append((gw, gb))
    lrs = [1e-2, 5e-3, 2e-3]
    r32 = adamw_run(torch.float32, w0, b0, grads, lrs)
    r64 = adamw_run(torch.float64, w0, b0, grads, lrs)
    clipped = [s["clipped"] for s in r32["steps"]]
    assert clipped == [False, True, False], clipped
    return {
        "hyper": {"betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": {"w": 0.05, "b": 0.0},
                  "lr": lrs, "clip_max_norm": 3.0, "clip_norm_type": 2.0,
                  "torch_adamw_impl": "single-tensor (CPU default, foreach/fused off), amsgrad False, maximize False"},
        "inputs": {"w0": tolist(w0), "b0": tolist(b0), "w0_f32_bits": f32_bits(w0), "b0_f32_bits": f32_bits(b0),
                   "grads": [{"w": tolist(gw), "b": tolist(gb)} for gw, gb in grads],
                   "grads_f32_bits": [{"w": f32_bits(gw), "b": f32_bits(gb)} for gw, gb in grads],
                   "generation": "torch.Generator().manual_seed(0); w0=randn(2,3), b0=randn(3), then per step "
                                 "gw=randn(2,3)*s, gb=randn(3)*s with s = 0.5, 3.0, 1.0 (float32)"},
        "float32": r32,
        "float64": r64,
        "rules": {
            "clip_grad_norm_": ("total = ||(||g_w||_2, ||g_b||_2)||_2 (returned, pre-clip); "
                                "coef = max_norm / (total + 1e-6); if coef < 1 every gradient is multiplied by "
                                "coef (torch multiplies by clamp(coef, max=1) always)"),
            "adamw_step": ("t += 1; p *= 1 - lr*wd; m = m + (1-b1)*(g - m)  [lerp]; v = b2*v + (1-b2)*g*g; "
                           "bc1 = 1 - b1^t; bc2 = 1 - b2^t; p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)"),
        },
    }


def paper_section():
    """The reference's own configuration for context: 1 GPU, DATA.BATCH_SIZE = 1 (the CLI default
    of main_IFP.py), EPOCHS 60000 x 1 iteration, WARMUP_EPOCHS 20."""
    base, warm, lmin = ti.scaled_lrs(3e-4, 2.5e-7, 2.5e-6, batch=1, world_size=1)
    T, W = 60000, 20
    ts = [0, 1, 2, 19, 20, 21, 100, 30000, 59999, 60000]
    return {"scaled": {"base_lr": base, "warmup_lr": warm, "min_lr": lmin}, "total_steps": T, "warmup_steps": W,
            "lr_at": {str(t): ti.cosine_lr(t, base, warm, lmin, T, W) for t in ts}}


def mask_section():
    import numpy as np

    radii = ti.draw_radii(224, 0.5, seed=0)
    m = ti.ifp_mask(224, radii.tolist())
    return {"note": ("main_IFP.py seeds np.random with SEED + rank (SEED default 0) and the only numpy "
                     "draw before the data transform is FreqMaskGenerator's randint, so rank 0 of the "
                     "reference run uses these radii for every image of every step"),
            "size": 224, "sample_ratio": 0.5, "seed": 0, "radii": [int(r) for r in radii],
            "num_zeros": int((m == 0).sum()), "numpy": np.__version__}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "optim_reference.json"))
    a = ap.parse_args()
    doc = {
        "generated_by": "bench/optim_reference.py",
        "torch": torch.__version__,
        "schedule": schedule_section(),
        "adamw": adamw_section(),
        "paper_schedule": paper_section(),
        "reference_mask_seed0_224": mask_section(),
    }
    s = json.dumps(doc, indent=1)
    print(s)
    with open(a.out, "w") as f:
        f.write(s + "\n")
    _ = math  # noqa


if __name__ == "__main__":
    main()
