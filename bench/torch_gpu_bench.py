#!/usr/bin/env python3
"""Time full IFP training steps in PyTorch eager on a GPU — the baseline `bench/gpu-check.sh`
compares `ifp bench --device cuda` with.

  python bench/torch_gpu_bench.py --config C.yaml [--batch B] [--size S] [--steps N] [--warmup 2]
                                  [--amp off|bf16] [--device cuda] [--flops-only]
                                  [--flop-counter fixed|stock] [--profile N]

The step is `torch_ifp.train_step` (corruption, forward, frequency loss, backward, clipping,
AdamW with the reference's two parameter groups, timm schedule), as `torch_bench.py` times it on
the CPU, with the crops sampled on the CPU and copied to the device inside the timed region
(as the Rust trainer does). `--amp bf16` wraps forward + loss in `torch.autocast(bfloat16)`
(the reference's AMP with the dtype ifp supports); TF32 is off on both sides (candle's default).

Output: `step i ms X loss L`, then one summary line
`step_ms <median> images_per_s <v> peak_alloc_mb <v> peak_reserved_mb <v> model_flops <per step>
flop_counter <fixed|stock>`; the counter is also named on stderr.
`--profile N` then runs one more step under `torch.profiler` and prints its N ops with the most
device time (self time, so nested ops are not counted twice).
`model_flops` is counted once with `torch.utils.flop_counter` on forward + backward (matrix
products and convolutions, 2 FLOPs per multiply-add; elementwise ops, FFTs and the optimiser are
not counted), the numerator of MFU; `--flops-only` prints just that line, with the counter's name
(any device: `--device meta` counts without computing anything, in seconds).

The stock counter (`--flop-counter stock`) ignores `groups` in a convolution's weight gradient,
so it counts every depthwise weight gradient C times over: for the paper Restormer at batch 2,
224x224 it says 12.2 TFLOP per step where the network does 1.68. The default counter
(`fixed`) replaces its `aten.convolution_backward` formula with `conv_backward_flop` below and
agrees with the analytic count of `bench/restormer_flops.py`.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_ifp as ti  # noqa: E402


def conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                       _output_padding, _groups, output_mask, out_shape=None, **_kwargs) -> int:
    """FLOPs of `aten.convolution_backward`: the input gradient as torch.utils.flop_counter counts
    it, and the weight gradient as many multiply-adds as the forward convolution (N * output
    pixels * C_out * C_in/groups * k*k for a plain convolution; the stock formula leaves out the
    division by `groups`)."""
    from torch.utils.flop_counter import conv_flop_count

    flops = 0
    if output_mask[0]:
        flops += conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:
        # the forward's count: weight (C_out, C_in/groups, k..) (transposed: (C_in, C_out/groups, k..))
        # against the output pixels (transposed: the input pixels)
        flops += conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return flops


FLOP_COUNTERS = {
    "fixed": "torch.utils.flop_counter with conv_backward_flop (weight gradients divided by groups)",
    "stock": "torch.utils.flop_counter as shipped (depthwise weight gradients counted C times over)",
}


def count_flops(model, x, mask, kind, counter="fixed"):
    """FLOPs of one forward + backward of the network and loss (the optimiser is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    custom = {torch.ops.aten.convolution_backward: conv_backward_flop} if counter == "fixed" else {}
    with FlopCounterMode(display=False, custom_mapping=custom) as fc:
        x_in = ti.corrupt(x, mask, kind)
        loss = ti.freq_loss(model(x_in), ti.normalize_img(x), mask, kind)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--amp", choices=["off", "bf16"], default="off")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flops-only", action="store_true")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after timing, profile one more step and print its N costliest ops")
    ap.add_argument("--flop-counter", choices=sorted(FLOP_COUNTERS), default="fixed",
                    help="fixed (default): groups-aware convolution backward; stock: as torch ships it")
    a = ap.parse_args()

    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(a.seed)
    cfg = ti.load_config(a.config)
    size = a.size or int(cfg["DATA"]["IMG_SIZE"])
    kind = cfg["MODEL"].get("RECOVER_TARGET_TYPE", "m_masked")
    tr = cfg["TRAIN"]
    model = ti.build_model(cfg).float().train().to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    sampler = ti.CropSampler(ti.make_noise_image(a.seed), size, float(cfg["DATA"]["MIN_CROP_SCALE"]))
    radii = ti.draw_radii(size, float(cfg["DATA"]["SAMPLE_RATIO"]), seed=a.seed)
    mask = ti.ifp_mask(size, radii).to(dev)

    flops = count_flops(model, sampler.sample(a.batch).to(dev), mask, kind, a.flop_counter)
    print(f"model FLOPs per step {flops / 1e12:.4f} T, counted by {FLOP_COUNTERS[a.flop_counter]}",
          file=sys.stderr, flush=True)
    if a.flops_only:
        print(f"model_flops {flops} counter {a.flop_counter} params {n_params} batch {a.batch} size {size}")
        return

    base, warm, lmin = ti.scaled_lrs(float(tr["BASE_LR"]), float(tr["WARMUP_LR"]), float(tr["MIN_LR"]), a.batch)
    betas = tr["OPTIMIZER"].get("BETAS", (0.9, 0.95))
    opt = ti.build_optimizer(model, base, float(tr["WEIGHT_DECAY"]), betas, float(tr["OPTIMIZER"].get("EPS", 1e-8)))
    total = a.warmup + a.steps
    sched = ti.build_scheduler(opt, total_steps=total, warmup_steps=min(int(tr["WARMUP_EPOCHS"]), total),
                               warmup_lr=warm, min_lr=lmin)
    clip = float(tr.get("CLIP_GRAD", 3.0)) or None
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    print(f"torch {torch.__version__} device {torch.cuda.get_device_name(dev) if cuda else dev} params {n_params} "
          f"batch {a.batch} size {size} kind {kind} amp {a.amp}", flush=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(total):
        sync()
        t0 = time.perf_counter()
        clean = sampler.sample(a.batch).to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.amp == "bf16"):
            loss, _gn = ti.train_step(model, opt, sched, clean, mask, i, kind=kind, clip=clip)
        sync()
        ms = (time.perf_counter() - t0) * 1e3
        if i >= a.warmup:
            times.append(ms)
        print(f"{'step' if i >= a.warmup else 'warmup'} {i} ms {ms:.1f} loss {loss:.6f}", flush=True)
    med = statistics.median(times)
    alloc = torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else float("nan")
    reserved = torch.cuda.max_memory_reserved(dev) / 2**20 if cuda else float("nan")
    print(f"step_ms {med:.2f} images_per_s {a.batch * 1e3 / med:.2f} peak_alloc_mb {alloc:.0f} "
          f"peak_reserved_mb {reserved:.0f} model_flops {flops} flop_counter {a.flop_counter}")
    if a.profile > 0:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            clean = sampler.sample(a.batch).to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.amp == "bf16"):
                ti.train_step(model, opt, sched, clean, mask, total, kind=kind, clip=clip)
            sync()
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=a.profile))


if __name__ == "__main__":
    main()
