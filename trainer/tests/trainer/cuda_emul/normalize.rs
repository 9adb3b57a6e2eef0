//! `normalize.cu`: `F.normalize` over the last dimension and its gradient against the CPU op
//! (`kernels::l2_normalize_last`) and the composed version.

use candle_core::{Device, Tensor, Var};
use ifp_trainer::kernels;

use super::{build, launch, rel, values};

type DotPartial = unsafe extern "C" fn(*const f32, *const f32, *mut f64, i64, i64, i32);
type DotReduce = unsafe extern "C" fn(*const f64, *mut f64, i64, i32);
type Apply = unsafe extern "C" fn(*const f32, *const f64, *mut f32, i64, i64);
type Dx = unsafe extern "C" fn(*const f32, *const f32, *const f64, *const f64, *mut f32, i64, i64);

/// `normalize.cu` run over rows (R, N) of `x` with output gradient `g`: (y, dx).
fn emulated(x: &[f32], g: &[f32], r: usize, n: usize, parts: i32) -> (Vec<f32>, Vec<f32>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build("normalize", dir.path());
    // SAFETY: the signatures of the kernels in normalize.cu.
    let (partial, reduce, apply, dx_kernel) = unsafe {
        (
            lib.get::<DotPartial>(b"ifp_row_dot_partial_f32")
                .expect("partial"),
            lib.get::<DotReduce>(b"ifp_row_dot_reduce_f32")
                .expect("reduce"),
            lib.get::<Apply>(b"ifp_l2n_apply_f32").expect("apply"),
            lib.get::<Dx>(b"ifp_l2n_dx_f32").expect("dx"),
        )
    };
    let (r64, n64) = (r as i64, n as i64);
    let mut part = vec![f64::NAN; r * parts as usize];
    let (mut sumsq, mut gx) = (vec![f64::NAN; r], vec![f64::NAN; r]);
    let (mut y, mut dx) = (vec![f32::NAN; r * n], vec![f32::NAN; r * n]);
    // SAFETY: every buffer has the size its kernel indexes (see normalize.cu).
    unsafe {
        let (xp, gp, pp) = (x.as_ptr(), g.as_ptr(), part.as_mut_ptr());
        let (sp, gxp) = (sumsq.as_mut_ptr(), gx.as_mut_ptr());
        launch(&lib, || partial(xp, xp, pp, r64, n64, parts));
        launch(&lib, || reduce(pp, sp, r64, parts));
        launch(&lib, || partial(gp, xp, pp, r64, n64, parts));
        launch(&lib, || reduce(pp, gxp, r64, parts));
        let (yp, dxp) = (y.as_mut_ptr(), dx.as_mut_ptr());
        launch(&lib, || apply(xp, sp, yp, r64, n64));
        launch(&lib, || dx_kernel(xp, gp, sp, gxp, dxp, r64, n64));
    }
    assert!(
        y.iter().chain(&dx).all(|v| v.is_finite()),
        "every element written"
    );
    (y, dx)
}

/// (output, input gradient for `g`) of `f` on `x`.
fn with_grad(x: &Var, g: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> (Vec<f32>, Vec<f32>) {
    let y = f(x.as_tensor());
    let grads = (&y * g)
        .and_then(|t| t.sum_all()?.backward())
        .expect("backward");
    (values(&y), values(grads.get(x.as_tensor()).expect("dx")))
}

#[test]
fn the_row_normalisation_kernels_run_as_the_cpu_op() {
    // More rows and partial sums than emulated threads; each thread adds several values.
    let (r, n) = (7usize, 37usize);
    let x = Var::from_tensor(&Tensor::randn(0.3f32, 2.0, (r, n), &Device::Cpu).expect("x"))
        .expect("var");
    let g = Tensor::randn(0f32, 1.0, (r, n), &Device::Cpu).expect("g");
    let (y, dx) = emulated(&values(x.as_tensor()), &values(&g), r, n, 4);
    assert!(
        kernels::fused_applies(x.as_tensor(), kernels::CudaKernel::Normalize),
        "the CPU op runs"
    );
    let (want_y, want_dx) = with_grad(&x, &g, |t| kernels::l2_normalize_last(t).expect("op"));
    let (e_y, e_dx) = (rel(&y, &want_y), rel(&dx, &want_dx));
    assert!(e_y < 1e-7 && e_dx < 1e-6, "output {e_y}, dx {e_dx}");
    let (want_y, want_dx) = with_grad(&x, &g, |t| {
        kernels::l2_normalize_last_composed(t).expect("composed")
    });
    let (e_y, e_dx) = (rel(&y, &want_y), rel(&dx, &want_dx));
    assert!(
        e_y < 1e-6 && e_dx < 1e-5,
        "composed: output {e_y}, dx {e_dx}"
    );
}

/// A row whose norm is below 1e-12 takes the clamp: y = x / 1e-12 and dx = g / 1e-12, as
/// PyTorch's `F.normalize` (the norm's own gradient does not flow through the clamp).
#[test]
fn a_row_below_eps_takes_the_clamp() {
    let (r, n) = (2usize, 5usize);
    let mut xs = vec![1e-14f32, -2e-14, 5e-15, 0.0, 3e-14];
    xs.extend([1.0, -2.0, 0.5, 3.0, 0.0]);
    let g: Vec<f32> = (0..r * n).map(|i| i as f32 - 4.0).collect();
    let (y, dx) = emulated(&xs, &g, r, n, 2);
    for i in 0..n {
        assert_eq!(y[i], xs[i] / 1e-12, "output {i}");
        assert_eq!(dx[i], g[i] / 1e-12, "gradient {i}");
    }
    let x = Var::from_tensor(&Tensor::from_vec(xs, (r, n), &Device::Cpu).expect("x")).expect("x");
    let gt = Tensor::from_vec(g, (r, n), &Device::Cpu).expect("g");
    let (want_y, want_dx) = with_grad(&x, &gt, |t| kernels::l2_normalize_last(t).expect("op"));
    assert_eq!(y, want_y);
    assert_eq!(dx, want_dx);
}
