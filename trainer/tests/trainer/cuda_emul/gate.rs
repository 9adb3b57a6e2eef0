//! `gate.cu`: the GELU gate and its gradient against the CPU kernel, float32 and bfloat16.

use candle_core::{Device, Tensor};
use half::bf16;
use ifp_trainer::kernels;
use libloading::{Library, Symbol};

use super::{assert_same, build, launch, rel, values};

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
