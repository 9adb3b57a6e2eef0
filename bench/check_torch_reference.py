#!/usr/bin/env python3
"""Check bench/torch_ifp.py against the golden vectors (`../shared/golden` beside the checkout by default, or IFP_GOLDEN_DIR).

  python bench/check_torch_reference.py [--golden DIR] [--threads T]

* restormer_tiny: builds the network from configs/restormer_tiny.yaml, loads the `encoder.*` /
  `decoder.*` keys with load_state_dict(strict=True), runs `input` in float64 and float32 and
  compares `output` (and `f64.encoder_output`), then the gradients of sum(output * probe) with
  respect to the input and every parameter (`grad.*`).
* corruption, freq_loss, ifp_mask: the corruption transforms, the four losses (values and
  d loss / d pred) and the masks.
* uformer_tiny, uformer_tiny_shift: the same for the Uformer of web/static/ifp_models.py (strict
  load including the relative_position_index buffers; output, the five encoder token tensors,
  input and parameter gradients), eval mode.
* padding: a 30x26 input must give a 30x26 output equal to running the padded input and cropping.

Errors: `rel_l2` = ||a - b|| / ||b||, `rel_max` = max|a - b| / max|b|. float64 results are
compared with the `f64.*` copies, float32 results with the float32 keys. Exit status 1 if any
check exceeds its tolerance.
"""
import argparse
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_ifp as ti  # noqa: E402

TOL = {torch.float64: 1e-9, torch.float32: 2e-5}
TOL_GRAD = {torch.float64: 1e-9, torch.float32: 1e-4}
failures = []


def errs(a, b):
    a = a.detach().double()
    b = b.detach().double()
    d = a - b
    rl2 = float(d.norm() / b.norm()) if float(b.norm()) > 0 else float(d.norm())
    bm = float(b.abs().max())
    rmax = float(d.abs().max() / bm) if bm > 0 else float(d.abs().max())
    return rl2, rmax


def report(name, a, b, tol):
    rl2, rmax = errs(a, b)
    ok = rl2 <= tol and rmax <= tol * 10
    if not ok:
        failures.append(name)
    print(f"{'ok ' if ok else 'BAD'} {name:48s} rel_l2 {rl2:.3e}  rel_max {rmax:.3e}")
    return rl2, rmax


def check_restormer(gdir):
    g = load_file(os.path.join(gdir, "restormer_tiny.safetensors"))
    cfg = ti.load_config(os.path.join(gdir, "configs", "restormer_tiny.yaml"))
    sd = {k: v for k, v in g.items() if k.startswith(("encoder.", "decoder."))}
    for dt in (torch.float64, torch.float32):
        tag = "f64" if dt == torch.float64 else "f32"
        pre = "f64." if dt == torch.float64 else ""
        model = ti.build_model(cfg)
        model.load_state_dict(sd, strict=True)  # raises on any missing/unexpected key or shape
        model = model.to(dt).eval()
        x = g["input"].to(dt).clone().requires_grad_(True)
        z = model.encoder(x)
        out = model.decoder(z)
        report(f"restormer_tiny[{tag}] output", out, g[pre + "output"], TOL[dt])
        report(f"restormer_tiny[{tag}] encoder_output (vs f64)", z, g["f64.encoder_output"], TOL[dt])
        (out * g["probe"].to(dt)).sum().backward()
        report(f"restormer_tiny[{tag}] grad.input", x.grad, g[pre + "grad.input"], TOL_GRAD[dt])
        worst = ("", 0.0, 0.0)
        worst_l2 = ("", 0.0)
        n = 0
        for name, p in model.named_parameters():
            rl2, rmax = errs(p.grad, g[pre + "grad." + name])
            n += 1
            if rmax > worst[1]:
                worst = (name, rmax, rl2)
            if rl2 > worst_l2[1]:
                worst_l2 = (name, rl2)
            if rl2 > TOL_GRAD[dt]:
                failures.append(f"{tag} grad.{name}")
        print(f"    {n} parameter gradients; worst rel_max {worst[1]:.3e} ({worst[0]}), "
              f"worst rel_l2 {worst_l2[1]:.3e} ({worst_l2[0]})")
        # total gradient over all parameters at once
        allg = torch.cat([p.grad.flatten() for _, p in model.named_parameters()])
        allr = torch.cat([g[pre + "grad." + k].flatten() for k, _ in model.named_parameters()])
        report(f"restormer_tiny[{tag}] all param grads", allg, allr, TOL_GRAD[dt])
    # padding path (not covered by the golden file): output size and pad/crop consistency
    model = ti.build_model(cfg)
    model.load_state_dict(sd, strict=True)
    model = model.double().eval()
    xs = g["input"].double()[:, :, :30, :26]
    with torch.no_grad():
        out = model(xs)
        xp = torch.nn.functional.pad(xs, (0, 6, 0, 2), mode="reflect")
        enc = model.encoder  # run padded input (already a multiple of 8), crop features after
        full = model.decoder(enc(xp)[:, :, :30, :26])
    assert out.shape == (2, 3, 30, 26), out.shape
    report("padding 30x26: crop(enc(reflect_pad(x))) path", out, full, 1e-12)


def check_uformer(gdir, name):
    """golden/<name>.safetensors: strict load (parameters and relative_position_index buffers),
    output, the five encoder token tensors, grad.input and every parameter gradient, f64 and
    f32, in eval mode (DropPath inactive). Also checks the drop-path rates of the paper network
    against the reference construction (linspace(0, 0.1, 19), bottleneck 0.1, decoder reversed)."""
    import ifp_models as tu  # on the path torch_ifp set

    g = load_file(os.path.join(gdir, f"{name}.safetensors"))
    cfg = ti.load_config(os.path.join(gdir, "configs", f"{name}.yaml"))
    sd = {k: v for k, v in g.items() if k.startswith(("encoder.", "decoder."))}
    for dt in (torch.float64, torch.float32):
        tag = "f64" if dt == torch.float64 else "f32"
        pre = "f64." if dt == torch.float64 else ""
        model = ti.build_model(cfg)
        res = model.load_state_dict(sd, strict=True)  # raises on any missing/unexpected key or shape
        assert not res.missing_keys and not res.unexpected_keys, res
        model = model.to(dt).eval()
        x = g["input"].to(dt).clone().requires_grad_(True)
        z = model.encoder(x)
        out = model.decoder(z)
        report(f"{name}[{tag}] output", out, g[pre + "output"], TOL[dt])
        for i, zi in enumerate(z):
            report(f"{name}[{tag}] encoder_output.{i} (vs f64)", zi, g[f"f64.encoder_output.{i}"], TOL[dt])
        (out * g["probe"].to(dt)).sum().backward()
        report(f"{name}[{tag}] grad.input", x.grad, g[pre + "grad.input"], TOL_GRAD[dt])
        worst, n = ("", 0.0), 0
        for pname, p in model.named_parameters():
            rl2, _ = errs(p.grad, g[pre + "grad." + pname])
            n += 1
            if rl2 > worst[1]:
                worst = (pname, rl2)
            if rl2 > TOL_GRAD[dt]:
                failures.append(f"{name} {tag} grad.{pname}")
        print(f"    {n} parameter gradients; worst rel_l2 {worst[1]:.3e} ({worst[0]})")
    n_buf = sum(1 for k in sd if k.endswith("relative_position_index"))
    print(f"ok  {name}: strict load of {len(sd)} keys ({n_buf} relative_position_index buffers)")
    rates = tu.drop_path_rates([1, 2, 8, 8, 2, 8, 8, 2, 1], 0.1)
    enc = [r for lvl in rates[:4] for r in lvl]
    ok = (len(enc) == 19 and enc[0] == 0.0 and abs(enc[-1] - 0.1) < 1e-7 and rates[4] == [0.1, 0.1]
          and [r for lvl in rates[5:] for r in lvl] == enc[::-1])
    if not ok:
        failures.append("drop_path_rates")
    print(f"{'ok ' if ok else 'BAD'} drop_path_rates(paper depths): encoder {enc[0]:.4f}..{enc[-1]:.4f}, "
          f"bottleneck {rates[4]}, decoder reversed")
    # DropPath against timm's own (same torch RNG state -> the same masks, bit for bit).
    try:
        from timm.layers import DropPath as TimmDropPath
    except ImportError:
        print("--  timm not installed: DropPath vs timm skipped")
        return
    x = torch.randn(64, 10, 4)
    for p in (enc[1], 0.1, 0.5):
        torch.manual_seed(3)
        ya = TimmDropPath(p).train()(x)
        torch.manual_seed(3)
        yb = tu.DropPath(p).train()(x)
        ok = torch.equal(ya, yb) and torch.equal(tu.DropPath(p).eval()(x), x)
        if not ok:
            failures.append(f"DropPath({p})")
        print(f"{'ok ' if ok else 'BAD'} DropPath({p:.4g}) == timm DropPath in train mode, identity in eval "
              f"({int((yb == 0).all(-1).all(-1).sum())}/64 samples dropped)")


def check_corruption(gdir):
    g = load_file(os.path.join(gdir, "corruption.safetensors"))
    mask = g["mask"]
    N = g["x"].shape[0]
    m3 = mask[None].expand(N, -1, -1)
    for dt in (torch.float64, torch.float32):
        tag = "f64" if dt == torch.float64 else "f32"
        pre = "f64." if dt == torch.float64 else ""
        x = g["x"].to(dt)
        tol = TOL[dt]
        ft = ti.frequency_transform(x, m3)
        fm = ti.frequency_m_transform(x, m3)
        report(f"corruption[{tag}] frequency_transform", ft, g[pre + "frequency_transform"], tol)
        report(f"corruption[{tag}] frequency_m_transform", fm, g[pre + "frequency_m_transform"], tol)
        report(f"corruption[{tag}] normalized_x", ti.normalize_img(x), g[pre + "normalized_x"], tol)
        report(f"corruption[{tag}] normalized_frequency_transform", ti.corrupt(x, m3, "masked"),
               g[pre + "normalized_frequency_transform"], tol)
        report(f"corruption[{tag}] normalized_frequency_m_transform", ti.corrupt(x, m3, "m_masked"),
               g[pre + "normalized_frequency_m_transform"], tol)


def check_loss(gdir):
    g = load_file(os.path.join(gdir, "freq_loss.safetensors"))
    mask = g["mask"]
    for dt in (torch.float64, torch.float32):
        tag = "f64" if dt == torch.float64 else "f32"
        pre = "f64." if dt == torch.float64 else ""
        for kind in ("normal", "masked", "m_masked", "m_m_masked"):
            pred = g["pred"].to(dt).clone().requires_grad_(True)
            target = g["target"].to(dt)
            loss = ti.freq_loss(pred, target, mask, kind)
            loss.backward()
            report(f"freq_loss[{tag}] loss.{kind}", loss.reshape(1), g[pre + "loss." + kind].reshape(1), TOL[dt])
            report(f"freq_loss[{tag}] grad.{kind}", pred.grad, g[pre + "grad." + kind], TOL_GRAD[dt])


def check_masks(gdir):
    g = load_file(os.path.join(gdir, "ifp_mask.safetensors"))
    for s in ("a", "b", "r0", "seeded"):
        m = g["mask_" + s]
        mine = ti.ifp_mask(m.shape[0], g["radii_" + s].tolist())
        ok = torch.equal(mine, m)
        if not ok:
            failures.append("mask_" + s)
        print(f"{'ok ' if ok else 'BAD'} ifp_mask mask_{s:8s} zeros {int((m == 0).sum())}")
    r = ti.draw_radii(32, 0.5, seed=1234)
    ok = r.tolist() == g["radii_seeded"].tolist()
    if not ok:
        failures.append("radii_seeded")
    print(f"{'ok ' if ok else 'BAD'} draw_radii(32, 0.5, np.random.seed(1234)) = {r.tolist()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--golden", default=os.environ.get("IFP_GOLDEN_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "golden")))
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, numpy {np.__version__}, threads {torch.get_num_threads()}")
    check_masks(a.golden)
    check_corruption(a.golden)
    check_loss(a.golden)
    check_restormer(a.golden)
    check_uformer(a.golden, "uformer_tiny")
    check_uformer(a.golden, "uformer_tiny_shift")
    if failures:
        print(f"FAILED: {len(failures)} checks: {failures[:10]}")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
