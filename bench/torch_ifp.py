"""PyTorch restatement of the IFP pre-training step (Restormer backbone + MSRResNet head, or the
Uformer encoder + decoder; the networks live in web/static/ifp_models.py).

Written for this project from the method description (ARCHITECTURE.md, "The method: what the trainer computes");
parameter names are those of the reference state_dict (`encoder.*`, `decoder.*`) so that
`state_dict()` loads the golden files and the Rust checkpoints with `strict=True`.

Contents
  * config, network (from ifp_models): load_config() reads the reference YAML schema;
                   RestormerBackbone, MSRResNetHead, IFPNet, build_model() (MODEL.TYPE
                   restormer or uformer)
  * data:          make_noise_image(), CropSampler (RandomResizedCrop + flip, PIL bicubic)
  * mask:          draw_radii(), ifp_mask()
  * corruption:    frequency_transform(), frequency_m_transform(), normalize_img()
  * losses:        freq_loss(pred, target, mask, kind)  kind in normal|masked|m_masked|m_m_masked
  * optimisation:  param_groups(), scaled_lrs(), build_optimizer(), build_scheduler(),
                   cosine_lr() (restatement of timm's CosineLRScheduler), used_lr()
  * train_step():  one reference training iteration (zero_grad, fwd, bwd, clip, step, step_update)

The reference training loop (IFP main_IFP.py) calls, per iteration:
    optimizer.zero_grad(); loss.backward(); norm = clip_grad_norm_(params, CLIP_GRAD);
    optimizer.step(); lr_scheduler.step_update(global_step)
so optimiser step k uses lr(max(k - 1, 0)) of timm's schedule (the scheduler's constructor sets
lr(0) = WARMUP_LR before the first step).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ----------------------------------------------------------------------------------------------
# Config and networks: the module the platform serves (web/static/ifp_models.py), one home for
# the PyTorch Restormer, Uformer and fine-tuning networks.
# ----------------------------------------------------------------------------------------------

import os as _os
import sys as _sys

_sys.path.insert(0, _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "..", "web", "static"))
from ifp_models import (  # noqa: E402,F401
    IFPNet, MSRResNetHead, RestormerBackbone, build_model, load_config,
)

# ----------------------------------------------------------------------------------------------
# Data: noise image, RandomResizedCrop + flip
# ----------------------------------------------------------------------------------------------


def make_noise_image(seed: int = 0, width: int = 640, height: int = 480, mean: float = 0.467,
                     std: float = 0.075) -> np.ndarray:
    """HWC uint8 i.i.d. Gaussian noise image (clipped to [0,1], quantised to 8 bits)."""
    rng = np.random.default_rng(seed)
    v = rng.normal(mean, std, size=(height, width, 3)).clip(0.0, 1.0)
    return np.round(v * 255.0).astype(np.uint8)


class CropSampler:
    """The reference's IFPTransform image part: RandomResizedCrop(size, scale=(min_scale, 1),
    ratio=(3/4, 4/3), PIL bicubic) then RandomHorizontalFlip(0.5) then ToTensor. Uses torchvision
    on a PIL image when available (exact reference semantics, torch global RNG), else a tensor
    fallback with the same sampling rule."""

    def __init__(self, img_hwc_u8: np.ndarray, size: int, min_scale: float = 0.2):
        self.size = size
        self.min_scale = min_scale
        self.np_img = img_hwc_u8
        try:
            import torchvision.transforms as T
            from PIL import Image

            self.pil = Image.fromarray(np.ascontiguousarray(img_hwc_u8)).convert("RGB")
            self.tf = T.Compose([
                T.RandomResizedCrop(size, scale=(min_scale, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
            ])
        except Exception:  # pragma: no cover - torchvision missing
            self.pil, self.tf = None, None
            self.t_img = torch.from_numpy(img_hwc_u8).permute(2, 0, 1).float().div(255.0)

    def _fallback(self):
        _, H, W = self.t_img.shape
        area = H * W
        for _ in range(10):
            ta = area * float(torch.empty(1).uniform_(self.min_scale, 1.0))
            lr = math.log(3 / 4), math.log(4 / 3)
            ar = math.exp(float(torch.empty(1).uniform_(*lr)))
            w = int(round(math.sqrt(ta * ar)))
            h = int(round(math.sqrt(ta / ar)))
            if 0 < w <= W and 0 < h <= H:
                i = int(torch.randint(0, H - h + 1, (1,)))
                j = int(torch.randint(0, W - w + 1, (1,)))
                break
        else:
            h = w = min(H, W)
            i, j = (H - h) // 2, (W - w) // 2
        c = self.t_img[:, i:i + h, j:j + w].unsqueeze(0)
        c = F.interpolate(c, size=(self.size, self.size), mode="bicubic", align_corners=False,
                          antialias=True)[0].clamp(0, 1)
        if float(torch.rand(1)) < 0.5:
            c = c.flip(-1)
        return c

    def sample(self, batch: int) -> torch.Tensor:
        if self.tf is not None and self.pil is not None:
            return torch.stack([self.tf(self.pil) for _ in range(batch)])
        return torch.stack([self._fallback() for _ in range(batch)])


# ----------------------------------------------------------------------------------------------
# Mask and corruption
# ----------------------------------------------------------------------------------------------


def draw_radii(size: int, sample_ratio: float = 0.5, seed: Optional[int] = None) -> np.ndarray:
    """Radii as FreqMaskGenerator draws them: numpy legacy global RNG,
    randint(0, size//2, size=int(size//2 * sample_ratio), dtype='l'). With `seed`, calls
    np.random.seed(seed) first (the reference seeds np.random with SEED + rank just before)."""
    if seed is not None:
        np.random.seed(seed)
    mid = size // 2
    return np.random.randint(low=0, high=mid, size=int(mid * sample_ratio), dtype="l")


def ifp_mask(size: int, radii: Sequence[int]) -> torch.Tensor:
    """int64 (S, S) mask in the fftshifted layout; 0 on the (half-open) square rings."""
    m = torch.ones(size, size, dtype=torch.int64)
    c = size // 2
    for r in radii:
        r = int(r)
        m[c - r, c - r:c + r] = 0
        m[c + r, c - r:c + r] = 0
        m[c - r:c + r, c - r] = 0
        m[c - r:c + r, c + r] = 0
    return m


def _as_mask4(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # (S,S) or (N,S,S) or (N,1,S,S) -> broadcastable (N|1, 1, S, S) in x's real dtype
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    return mask.to(device=x.device)


def frequency_transform(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`normal` / `masked` corruption: real part of ifft2(ifftshift(fftshift(fft2 x) * mask)), clamp."""
    m = _as_mask4(mask, x)
    Fx = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1)) * m
    y = torch.fft.ifft2(torch.fft.ifftshift(Fx, dim=(-2, -1))).real
    return y.clamp(0.0, 1.0)


def frequency_m_transform(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`m_masked` / `m_m_masked` corruption: |F|*mask with the unmasked phase, modulus of ifft2, clamp."""
    m = _as_mask4(mask, x)
    Fx = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
    mag = torch.abs(Fx) * m
    Fm = torch.polar(mag.to(Fx.real.dtype), torch.angle(Fx))
    y = torch.abs(torch.fft.ifft2(torch.fft.ifftshift(Fm, dim=(-2, -1))))
    return y.clamp(0.0, 1.0)


def normalize_img(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def corrupt(x: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Network input for clean crops x in [0,1] (normalised)."""
    if kind in ("m_masked", "m_m_masked"):
        return normalize_img(frequency_m_transform(x, mask))
    return normalize_img(frequency_transform(x, mask))


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------


def _spec(x: torch.Tensor, cast_f32: bool) -> torch.Tensor:
    if cast_f32:
        x = x.float()  # the reference's tensor2freq does `.float()`
    return torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))


def freq_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str,
              in_chans: int = 3, cast_f32: bool = False) -> torch.Tensor:
    """The four reconstruction losses of IFP.forward (PATCH_FACTOR 1, FREQ_LOSS defaults).
    `mask` (S,S) or (N,S,S); for (S,S) the batch sum of (1-mask) is N * zeros(mask)."""
    N = pred.shape[0]
    m = mask
    if m.dim() == 2:
        m = m[None].expand(N, -1, -1)
    m = m.to(device=pred.device)
    inv = (1 - m)[:, None].to(pred.dtype if not cast_f32 else torch.float32)  # (N,1,S,S)
    Z = inv.sum()
    P, T = _spec(pred, cast_f32), _spec(target, cast_f32)
    if cast_f32:
        pred, target = pred.float(), target.float()
    if kind in ("normal", "masked"):
        d = P - T
        e = torch.sqrt(d.real ** 2 + d.imag ** 2 + 1e-12)
        if kind == "normal":
            return e.mean()
        return (e * inv).sum() / Z / in_chans
    Pm = torch.abs(P).clamp(0.0, 1.0)
    Tm = torch.abs(T).clamp(0.0, 1.0)
    if kind == "m_masked":
        e = torch.sqrt(0.8 * (pred - target) ** 2 + (Pm - Tm) ** 2 + 1e-12)
        return (e * inv).sum() / Z / in_chans
    if kind == "m_m_masked":
        e1 = torch.sqrt(0.8 * (pred - target) ** 2 + 1e-12)
        e2 = torch.sqrt((Pm - Tm) ** 2 + 1e-12)
        S2 = pred.shape[-1] * pred.shape[-2]
        return (e1.sum() / (N * S2) + (e2 * inv).sum() / Z) / in_chans
    raise ValueError(f"unknown RECOVER_TARGET_TYPE {kind!r}")


# ----------------------------------------------------------------------------------------------
# Optimisation (reference: optimizer.py get_pretrain_param_groups, main_IFP.py LR scaling,
# lr_scheduler.py build_scheduler with timm CosineLRScheduler)
# ----------------------------------------------------------------------------------------------


def is_no_decay(name: str, p: torch.Tensor) -> bool:
    # `len(param.shape) == 1 or name.endswith(".bias")`; the Restormer/IFP modules define no
    # no_weight_decay()/no_weight_decay_keywords(), so nothing else is skipped. Note that the
    # attention `temperature` (heads,1,1) is 3-D and therefore DECAYED.
    return p.dim() == 1 or name.endswith(".bias")


def param_groups(model: nn.Module) -> Tuple[List[dict], List[str], List[str]]:
    decay, no_decay, dn, nn_ = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if is_no_decay(name, p):
            no_decay.append(p)
            nn_.append(name)
        else:
            decay.append(p)
            dn.append(name)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], dn, nn_


def scaled_lrs(base_lr: float, warmup_lr: float, min_lr: float, batch: int, world_size: int = 1,
               accumulation_steps: int = 1) -> Tuple[float, float, float]:
    """All three LRs are multiplied by batch * world_size / 512 (and by accumulation steps if > 1)."""
    s = batch * world_size / 512.0
    b, w, m = base_lr * s, warmup_lr * s, min_lr * s
    if accumulation_steps > 1:
        b, w, m = b * accumulation_steps, w * accumulation_steps, m * accumulation_steps
    return b, w, m


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.05,
                    betas=(0.9, 0.95), eps: float = 1e-8) -> torch.optim.AdamW:
    groups, _, _ = param_groups(model)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def cosine_lr(t: int, base: float, warmup_init: float, lr_min: float, t_initial: int, warmup_t: int) -> float:
    """timm CosineLRScheduler._get_lr (cycle_mul 1, cycle_decay 1, cycle_limit 1, k_decay 1,
    warmup_prefix False, no noise) for the update count t."""
    if t < warmup_t:
        return warmup_init + t * ((base - warmup_init) / warmup_t)
    i = t // t_initial
    if i < 1:
        t_curr = t - t_initial * i
        return lr_min + 0.5 * (base - lr_min) * (1 + math.cos(math.pi * t_curr / t_initial))
    return lr_min


def used_lr(k: int, base: float, warmup_init: float, lr_min: float, t_initial: int, warmup_t: int) -> float:
    """LR the k-th optimiser step (k = 0, 1, ...) uses in the reference loop: step_update(k) runs
    after optimizer.step() of step k, and the constructor sets lr(0) (= warmup_init when
    warmup_t > 0; base when warmup_t == 0)."""
    if k == 0:
        return warmup_init if warmup_t else base
    return cosine_lr(k - 1, base, warmup_init, lr_min, t_initial, warmup_t)


class _OwnCosine:
    """Fallback with timm's interface (update_groups at construction and on step_update)."""

    def __init__(self, optimizer, t_initial, lr_min, warmup_lr_init, warmup_t):
        self.opt = optimizer
        self.base = [g["lr"] for g in optimizer.param_groups]
        self.args = (t_initial, warmup_t)
        self.lr_min, self.warm = lr_min, warmup_lr_init
        if warmup_t:
            for g in optimizer.param_groups:
                g["lr"] = warmup_lr_init

    def step_update(self, num_updates: int):
        for g, b in zip(self.opt.param_groups, self.base):
            g["lr"] = cosine_lr(num_updates, b, self.warm, self.lr_min, *self.args)


def build_scheduler(optimizer, total_steps: int, warmup_steps: int, warmup_lr: float, min_lr: float,
                    use_timm: bool = True):
    """lr_scheduler.py build_scheduler('cosine'): CosineLRScheduler(optimizer, t_initial=num_steps,
    lr_min=MIN_LR, warmup_lr_init=WARMUP_LR, warmup_t=warmup_steps, cycle_limit=1,
    t_in_epochs=False) with num_steps = EPOCHS * iters_per_epoch (1 iteration per epoch in IFP)."""
    if use_timm:
        try:
            from timm.scheduler.cosine_lr import CosineLRScheduler

            return CosineLRScheduler(optimizer, t_initial=total_steps, lr_min=min_lr,
                                     warmup_lr_init=warmup_lr, warmup_t=warmup_steps,
                                     cycle_limit=1, t_in_epochs=False)
        except ImportError:
            pass
    return _OwnCosine(optimizer, total_steps, min_lr, warmup_lr, warmup_steps)


# ----------------------------------------------------------------------------------------------
# One training step
# ----------------------------------------------------------------------------------------------


def train_step(model: nn.Module, optimizer, scheduler, clean: torch.Tensor, mask: torch.Tensor,
               step: int, kind: str = "m_masked", clip: Optional[float] = 3.0,
               in_chans: int = 3) -> Tuple[float, float]:
    """One reference iteration on a batch of clean crops in [0,1] (N,3,S,S) with the spectrum mask.
    Order as main_IFP.py (ACCUMULATION_STEPS == 1): zero_grad, forward+loss, backward,
    clip_grad_norm_(all params, clip, norm_type 2) -> pre-clip total norm, optimizer.step(),
    scheduler.step_update(step). Returns (loss, grad_norm)."""
    x_in = corrupt(clean, mask, kind)
    target = normalize_img(clean)
    optimizer.zero_grad(set_to_none=True)
    pred = model(x_in)
    # Under autocast the network's output is bf16/f16: the loss runs in float32, as the
    # reference's tensor2freq `.float()` and ifp's TRAIN.AMP do (cuFFT has no bf16 either).
    loss = freq_loss(pred, target, mask, kind, in_chans=in_chans,
                     cast_f32=pred.dtype in (torch.bfloat16, torch.float16))
    loss.backward()
    if clip:
        gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
    else:
        gn = float(torch.norm(torch.stack([p.grad.norm(2) for p in model.parameters() if p.grad is not None])))
    optimizer.step()
    if scheduler is not None:
        scheduler.step_update(step)
    return float(loss.detach()), gn


__all__ = [
    "load_config", "build_model", "IFPNet", "RestormerBackbone", "MSRResNetHead",
    "make_noise_image", "CropSampler", "draw_radii", "ifp_mask", "frequency_transform",
    "frequency_m_transform", "normalize_img", "corrupt", "freq_loss", "is_no_decay",
    "param_groups", "scaled_lrs", "build_optimizer", "build_scheduler", "cosine_lr", "used_lr",
    "train_step",
]
