//! The CUDA kernels that wait for a GPU run (`IFP_CUDA_FUSED`), checked on the CPU: each `.cu`
//! source is compiled as plain C++ with the shim in this folder (`emul.h`, and `cuda_bf16.h`
//! for CUDA's header), loaded, and run one emulated thread at a time over a small grid, so its
//! indexing, grid-stride loop and conversions are exercised; the results are compared with the
//! CPU kernels. Float arithmetic is the host's (glibc's `erff`, no contraction), so the GELU
//! gate is compared within float32 rounding and the AdamW update exactly. What this cannot
//! show (launch limits, the PTX compiler's choices) is left to `bench/gpu-check.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use half::bf16;
use ifp_trainer::kernels::{self, AdamWStep};
use libloading::{Library, Symbol};

/// A small grid: 3 blocks of 5 threads, so every thread strides over many elements.
const GRID: u32 = 3;
const BLOCK: u32 = 5;

/// `trainer/src/kernels/cuda/<name>.cu` compiled with the shim into a shared library in `dir`.
fn build(name: &str, dir: &Path) -> Library {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = here.join(format!("src/kernels/cuda/{name}.cu"));
    let shim = here.join("tests/trainer/cuda_emul");
    let lib = dir.join(format!("{name}.so"));
    let cxx = std::env::var_os("CXX").map_or_else(|| PathBuf::from("c++"), PathBuf::from);
    let out = Command::new(&cxx)
        .args(["-O1", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off"])
        .arg("-I")
        .arg(&shim)
        .args(["-include", "emul.h", "-x", "c++"])
        .arg(&src)
        .arg("-o")
        .arg(&lib)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run the C++ compiler {} (set CXX): {e}",
                cxx.display()
            )
        });
    assert!(
        out.status.success(),
        "{} failed on {}:\n{}",
        cxx.display(),
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // SAFETY: a library just built from the kernel's source; its initialisers only zero globals.
    unsafe { Library::new(&lib) }.expect("load the emulated kernels")
}

/// Runs `call` once per thread of the emulated grid, telling the library which thread it is.
fn launch(lib: &Library, mut call: impl FnMut()) {
    // SAFETY: `ifp_emul_set` has this signature in emul.h.
    let set: Symbol<unsafe extern "C" fn(u32, u32, u32, u32)> =
        unsafe { lib.get(b"ifp_emul_set") }.expect("ifp_emul_set");
    for block in 0..GRID {
        for thread in 0..BLOCK {
            // SAFETY: plain values.
            unsafe { set(block, thread, BLOCK, GRID) };
            call();
        }
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().and_then(|t| t.to_vec1()).expect("values")
}

/// Relative L2 distance of `a` from `b`.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n.max(1e-30)).sqrt()
}

/// Panics at the first element where `got` and `want` differ, naming it.
fn assert_same<T: PartialEq + std::fmt::Debug>(got: &[T], want: &[T], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: element {i} is {:?}, expected {:?}",
            got[i], want[i]
        );
    }
}

type GateFwd<T> = unsafe extern "C" fn(*const T, *mut T, i64, i64);
type GateBwd<T> = unsafe extern "C" fn(*const T, *const T, *mut T, i64, i64);

/// The emulated gate of x (b, 2h, H, W) -> y and dx for the output gradient dy, in `T`.
fn emulated_gate<T: Copy>(
    lib: &Library,
    suffix: &str,
    x: &[T],
    dy: &[T],
    fill: T,
    half: usize,
) -> (Vec<T>, Vec<T>) {
    let total = dy.len();
    let (mut y, mut dx) = (vec![fill; total], vec![fill; x.len()]);
    // SAFETY: the signatures of ifp_gate_fwd_* / ifp_gate_bwd_* in gate.cu; the buffers have
    // the sizes the kernels index (total outputs, 2 * total inputs and input gradients).
    unsafe {
        let fwd: Symbol<GateFwd<T>> = lib
            .get(format!("ifp_gate_fwd_{suffix}").as_bytes())
            .expect("fwd");
        let bwd: Symbol<GateBwd<T>> = lib
            .get(format!("ifp_gate_bwd_{suffix}").as_bytes())
            .expect("bwd");
        let (t, h) = (total as i64, half as i64);
        launch(lib, || fwd(x.as_ptr(), y.as_mut_ptr(), t, h));
        launch(lib, || bwd(x.as_ptr(), dy.as_ptr(), dx.as_mut_ptr(), t, h));
    }
    (y, dx)
}

#[test]
fn the_gelu_gate_kernel_runs_as_the_cpu_kernel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build("gate", dir.path());
    // Two images, so the second half of each image is found at its own offset.
    let (b, h, hh, ww) = (2, 3, 4, 5);
    let x = Tensor::randn(0f32, 2.0, (b, 2 * h, hh, ww), &Device::Cpu).expect("x");
    let dy = Tensor::randn(0f32, 1.0, (b, h, hh, ww), &Device::Cpu).expect("dy");
    let (xs, dys) = (values(&x), values(&dy));
    let (y, dx) = emulated_gate(&lib, "f32", &xs, &dys, f32::NAN, h * hh * ww);
    assert!(
        y.iter().chain(&dx).all(|v| v.is_finite()),
        "every element written"
    );
    // The CPU kernel's forward, and its gradient through a backward pass.
    let xv = candle_core::Var::from_tensor(&x).expect("var");
    let want = kernels::gelu_gate(xv.as_tensor()).expect("cpu gate");
    let grads = (&want * &dy)
        .and_then(|t| t.sum_all()?.backward())
        .expect("backward");
    let want_dx = values(grads.get(xv.as_tensor()).expect("dx"));
    let (ey, edx) = (rel(&y, &values(&want)), rel(&dx, &want_dx));
    assert!(ey < 1e-6 && edx < 1e-6, "output {ey}, input gradient {edx}");

    // bfloat16: float32 arithmetic on the widened inputs, each result rounded once.
    let (xb, dyb): (Vec<bf16>, Vec<bf16>) = (
        xs.iter().map(|v| bf16::from_f32(*v)).collect(),
        dys.iter().map(|v| bf16::from_f32(*v)).collect(),
    );
    let (yb, dxb) = emulated_gate(&lib, "bf16", &xb, &dyb, bf16::NAN, h * hh * ww);
    let widen = |v: &[bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
    let (yw, dxw) = emulated_gate(
        &lib,
        "f32",
        &widen(&xb),
        &widen(&dyb),
        f32::NAN,
        h * hh * ww,
    );
    let round = |v: Vec<f32>| v.into_iter().map(bf16::from_f32).collect::<Vec<_>>();
    assert_same(&yb, &round(yw), "bf16 gate = the float32 gate rounded");
    assert_same(
        &dxb,
        &round(dxw),
        "bf16 gate gradient = the float32 one rounded",
    );
}

type AdamW = unsafe extern "C" fn(
    *const f32,
    *const f32,
    *const f32,
    *const f32,
    *mut f32,
    *mut f32,
    *mut f32,
    i64,
    i32,
    f32,
    i32,
    f32,
    f32,
    f32,
    f32,
    f32,
    f32,
    f32,
);

#[test]
fn the_adamw_kernel_gives_the_cpu_update() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build("optim", dir.path());
    // SAFETY: the signature of ifp_adamw_f32 in optim.cu.
    let kernel: Symbol<AdamW> = unsafe { lib.get(b"ifp_adamw_f32") }.expect("ifp_adamw_f32");
    let n = 203;
    let draw = |std: f32| Tensor::randn(0f32, std, n, &Device::Cpu).expect("draw");
    // Weights as small as an update, so that every rounding of the update shows in them.
    let (w, m) = (draw(1e-4), draw(0.01));
    let v = draw(0.01).sqr().expect("v");
    // Exact zeros in the gradient too.
    let g = draw(0.1).relu().expect("g");
    for (clip, decay) in [(None, 0.05), (Some(0.37), 0.05), (Some(0.5), 0.0)] {
        let s = AdamWStep::new(3, 3e-4, (0.9, 0.95), 1e-8, decay, clip);
        let (w2, m2, v2) = kernels::adamw_update(&w, &g, &m, &v, &s).expect("cpu update");
        let [ws, gs, ms, vs] = [&w, &g, &m, &v].map(values);
        let mut out = [vec![f32::NAN; n], vec![f32::NAN; n], vec![f32::NAN; n]];
        let [wo, mo, vo] = &mut out;
        launch(&lib, || {
            // SAFETY: every buffer holds n floats.
            unsafe {
                kernel(
                    ws.as_ptr(),
                    gs.as_ptr(),
                    ms.as_ptr(),
                    vs.as_ptr(),
                    wo.as_mut_ptr(),
                    mo.as_mut_ptr(),
                    vo.as_mut_ptr(),
                    n as i64,
                    i32::from(s.grad_scale.is_some()),
                    s.grad_scale.unwrap_or(1.0),
                    i32::from(s.decay.is_some()),
                    s.decay.unwrap_or(1.0),
                    s.one_minus_beta1,
                    s.beta2,
                    s.one_minus_beta2,
                    s.inv_bias_correction2,
                    s.eps,
                    s.step_size,
                )
            }
        });
        for (what, got, want) in [
            ("weights", wo, &w2),
            ("exp_avg", mo, &m2),
            ("exp_avg_sq", vo, &v2),
        ] {
            // Equal as numbers (an fma of a negative product and +0 may keep -0 where candle's
            // CPU affine gives +0).
            let want = values(want);
            if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                panic!(
                    "{what} (clip {clip:?}, decay {decay}): element {i} is {:e} emulated, {:e} on the CPU",
                    got[i], want[i]
                );
            }
        }
    }
}

type Stats = unsafe extern "C" fn(*const f32, *mut f32, *mut f32, i64, i32, i64);
type Apply = unsafe extern "C" fn(
    *const f32,
    *const f32,
    *const f32,
    *const f32,
    *const f32,
    *mut f32,
    i64,
    i32,
    i64,
    i32,
);
type Partial = unsafe extern "C" fn(
    *const f32,
    *const f32,
    *const f32,
    *const f32,
    *mut f32,
    i64,
    i32,
    i64,
    i32,
    i32,
);
type Reduce = unsafe extern "C" fn(*const f32, *mut f32, i64, i32, i32);

#[test]
fn the_channel_norm_kernels_run_as_the_cpu_kernel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build("norm", dir.path());
    // SAFETY: the signatures of the ifp_cln_* kernels in norm.cu.
    let (stats, apply, dx_kernel, partial, reduce) = unsafe {
        (
            lib.get::<Stats>(b"ifp_cln_stats_f32").expect("stats"),
            lib.get::<Apply>(b"ifp_cln_apply_f32").expect("apply"),
            lib.get::<Apply>(b"ifp_cln_dx_f32").expect("dx"),
            lib.get::<Partial>(b"ifp_cln_params_partial_f32")
                .expect("partial"),
            lib.get::<Reduce>(b"ifp_cln_params_reduce_f32")
                .expect("reduce"),
        )
    };
    let (b, c, hw) = (2usize, 5usize, 21usize);
    // Four partial sums per channel: each emulated thread adds many pixels of both images.
    let parts = 4usize;
    let n = b * c * hw;
    let x = Tensor::randn(0.5f32, 3.0, (b, c, 3, 7), &Device::Cpu).expect("x");
    let w = Tensor::randn(1f32, 0.2, c, &Device::Cpu).expect("w");
    let bias = Tensor::randn(0f32, 0.2, c, &Device::Cpu).expect("b");
    let dy = Tensor::randn(0f32, 1.0, (b, c, 3, 7), &Device::Cpu).expect("dy");
    let (xs, ws, bs, gs) = (values(&x), values(&w), values(&bias), values(&dy));
    let (b64, c32, hw64) = (b as i64, c as i32, hw as i64);
    for with_bias in [true, false] {
        let wb = i32::from(with_bias);
        let (mut mean, mut rstd) = (vec![f32::NAN; b * hw], vec![f32::NAN; b * hw]);
        let (mut y, mut out) = (vec![f32::NAN; n], vec![f32::NAN; n + 2 * c]);
        let mut part = vec![f32::NAN; 2 * c * parts];
        // SAFETY: every buffer has the size its kernel indexes (see norm.cu's layouts).
        unsafe {
            let (m, r) = (mean.as_mut_ptr(), rstd.as_mut_ptr());
            launch(&lib, || stats(xs.as_ptr(), m, r, b64, c32, hw64));
            let (m, r) = (mean.as_ptr(), rstd.as_ptr());
            let (xp, wp, bp, gp) = (xs.as_ptr(), ws.as_ptr(), bs.as_ptr(), gs.as_ptr());
            let (yp, op, pp) = (y.as_mut_ptr(), out.as_mut_ptr(), part.as_mut_ptr());
            launch(&lib, || apply(xp, wp, bp, m, r, yp, b64, c32, hw64, wb));
            launch(&lib, || dx_kernel(xp, wp, gp, m, r, op, b64, c32, hw64, wb));
            let j = parts as i32;
            launch(&lib, || partial(xp, gp, m, r, pp, b64, c32, hw64, j, wb));
            launch(&lib, || reduce(pp, op, n as i64, c32, j));
        }
        assert!(
            y.iter().chain(&out).all(|v| v.is_finite()),
            "every element written (bias {with_bias})"
        );
        // The CPU kernel, and its gradients for the same output gradient.
        let (xv, wv, bv) = (
            candle_core::Var::from_tensor(&x).expect("x"),
            candle_core::Var::from_tensor(&w).expect("w"),
            candle_core::Var::from_tensor(&bias).expect("b"),
        );
        let bias_ref = with_bias.then_some(bv.as_tensor());
        let want = kernels::channel_layer_norm(xv.as_tensor(), wv.as_tensor(), bias_ref)
            .expect("cpu norm");
        let grads = (&want * &dy)
            .and_then(|t| t.sum_all()?.backward())
            .expect("backward");
        let grad = |v: &candle_core::Var| values(grads.get(v.as_tensor()).expect("gradient"));
        let e_y = rel(&y, &values(&want));
        let e_dx = rel(&out[..n], &grad(&xv));
        let e_dw = rel(&out[n..n + c], &grad(&wv));
        assert!(
            e_y < 1e-6 && e_dx < 1e-6 && e_dw < 1e-6,
            "bias {with_bias}: output {e_y}, dx {e_dx}, dw {e_dw}"
        );
        if with_bias {
            let e_db = rel(&out[n + c..], &grad(&bv));
            assert!(e_db < 1e-6, "db {e_db}");
        }
    }
}

type Gather<T> = unsafe extern "C" fn(*const T, *mut T, i64, i32, i32, i32, i32);

/// The emulated `ifp_<name>_<suffix>` of conv.cu over `total` outputs.
fn emulated_gather<T: Copy>(
    lib: &Library,
    name: &str,
    src: &[T],
    total: usize,
    fill: T,
    dims: [i32; 4],
) -> Vec<T> {
    let mut out = vec![fill; total];
    // SAFETY: the signature of ifp_im2col_* / ifp_col2im_* in conv.cu; `src` and `out` have
    // the sizes the kernel indexes for `dims` (checked by the callers' shapes).
    unsafe {
        let f: Symbol<Gather<T>> = lib.get(name.as_bytes()).expect("kernel");
        let o = out.as_mut_ptr();
        let [c, h, w, k] = dims;
        launch(lib, || f(src.as_ptr(), o, total as i64, c, h, w, k));
    }
    out
}

#[test]
fn the_im2col_kernels_run_as_the_cpu_kernels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build("conv", dir.path());
    // Odd sizes, a plane smaller than the 5x5 kernel's reach, and two images.
    for &(b, c, h, w, k) in &[(2, 3, 5, 7, 3), (1, 2, 3, 4, 5), (2, 1, 1, 6, 3)] {
        let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &Device::Cpu).expect("x");
        let xv = candle_core::Var::from_tensor(&x).expect("var");
        let cols = kernels::im2col(xv.as_tensor(), k).expect("cpu im2col");
        let probe = Tensor::randn(0f32, 1.0, cols.shape(), &Device::Cpu).expect("probe");
        let grads = (&cols * &probe)
            .and_then(|t| t.sum_all()?.backward())
            .expect("backward");
        let dims = [c as i32, h as i32, w as i32, k as i32];
        let (xs, ps) = (values(&x), values(&probe));
        let got = emulated_gather(&lib, "ifp_im2col_f32", &xs, ps.len(), f32::NAN, dims);
        assert_same(
            &got,
            &values(&cols),
            &format!("im2col {b}x{c}x{h}x{w} k{k}"),
        );
        let back = emulated_gather(&lib, "ifp_col2im_f32", &ps, xs.len(), f32::NAN, dims);
        let want = values(grads.get(xv.as_tensor()).expect("gradient"));
        assert_same(&back, &want, &format!("col2im {b}x{c}x{h}x{w} k{k}"));

        // bfloat16: a copy, and a float32 sum rounded once.
        let to_bf16 = |v: &[f32]| v.iter().map(|x| bf16::from_f32(*x)).collect::<Vec<_>>();
        let widen = |v: &[bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
        let (xb, pb) = (to_bf16(&xs), to_bf16(&ps));
        let colsb = emulated_gather(&lib, "ifp_im2col_bf16", &xb, ps.len(), bf16::NAN, dims);
        let colsw = emulated_gather(
            &lib,
            "ifp_im2col_f32",
            &widen(&xb),
            ps.len(),
            f32::NAN,
            dims,
        );
        assert_same(&colsb, &to_bf16(&colsw), "bf16 im2col");
        let backb = emulated_gather(&lib, "ifp_col2im_bf16", &pb, xs.len(), bf16::NAN, dims);
        let backw = emulated_gather(
            &lib,
            "ifp_col2im_f32",
            &widen(&pb),
            xs.len(),
            f32::NAN,
            dims,
        );
        assert_same(&backb, &to_bf16(&backw), "bf16 col2im");
    }
}
