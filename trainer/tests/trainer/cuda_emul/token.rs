//! `token.cu`: Uformer's row LayerNorm, softmax, GELU, repeated bias and stochastic depth's
//! residual, with their gradients, against the CPU kernels.

use candle_core::{Device, Tensor, Var};
use ifp_trainer::kernels::token;

use super::{assert_same, build, close, launch, values, var};

type Stats = unsafe extern "C" fn(*const f32, *mut f32, *mut f32, i64, i32);
type Apply = unsafe extern "C" fn(
    *const f32,
    *const f32,
    *const f32,
    *const f32,
    *const f32,
    *mut f32,
    i64,
    i32,
);
type Partial =
    unsafe extern "C" fn(*const f32, *const f32, *const f32, *const f32, *mut f64, i64, i32, i32);
type ColPartial = unsafe extern "C" fn(*const f32, *mut f64, i64, i32, i32);
type ColReduce = unsafe extern "C" fn(*const f64, *mut f32, i64, i32, i32);
/// (input, output, rows or count, row or bias length)
type Rows = unsafe extern "C" fn(*const f32, *mut f32, i64, i32);
type RowsDx = unsafe extern "C" fn(*const f32, *const f32, *mut f32, i64, i32);
type Elementwise = unsafe extern "C" fn(*const f32, *mut f32, i64);
type ElementwiseDx = unsafe extern "C" fn(*const f32, *const f32, *mut f32, i64);

/// Rows and row length: more rows than emulated threads and partial sums, an odd length.
const R: usize = 23;
const C: usize = 7;
/// Partial sums per column: each emulated thread adds several rows.
const PARTS: i32 = 4;

/// The CPU op's output and the gradients of `inputs` for the output gradient `dy`.
fn cpu(inputs: &[&Var], dy: &Tensor, f: impl Fn() -> Tensor) -> (Vec<f32>, Vec<Vec<f32>>) {
    let y = f();
    let grads = (&y * dy)
        .and_then(|t| t.sum_all()?.backward())
        .expect("backward");
    let g = inputs
        .iter()
        .map(|v| values(grads.get(v.as_tensor()).expect("gradient")))
        .collect();
    (values(&y), g)
}

#[test]
fn the_token_layer_norm_kernels_run_as_the_cpu_kernel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build("token", dir.path());
    // SAFETY: the signatures of the ifp_rln_* and ifp_col_* kernels in token.cu.
    let (stats, apply, dx_kernel, partial, reduce) = unsafe {
        (
            lib.get::<Stats>(b"ifp_rln_stats_f32").expect("stats"),
            lib.get::<Apply>(b"ifp_rln_apply_f32").expect("apply"),
            lib.get::<Apply>(b"ifp_rln_dx_f32").expect("dx"),
            lib.get::<Partial>(b"ifp_rln_params_partial_f32")
                .expect("partial"),
            lib.get::<ColReduce>(b"ifp_col_sum_reduce_f32")
                .expect("reduce"),
        )
    };
    let (x, w, b) = (var(0.5, 3.0, (R, C)), var(1.0, 0.2, C), var(0.0, 0.2, C));
    let dy = Tensor::randn(0f32, 1.0, (R, C), &Device::Cpu).expect("dy");
    let (xs, ws, bs, gs) = (
        values(x.as_tensor()),
        values(w.as_tensor()),
        values(b.as_tensor()),
        values(&dy),
    );
    let n = R * C;
    let (r64, c32) = (R as i64, C as i32);
    let (mut mean, mut rstd) = (vec![f32::NAN; R], vec![f32::NAN; R]);
    let (mut y, mut out) = (vec![f32::NAN; n], vec![f32::NAN; n + 2 * C]);
    let mut part = vec![f64::NAN; 2 * C * PARTS as usize];
    // SAFETY: every buffer has the size its kernel indexes (see token.cu's layouts).
    unsafe {
        let (m, r) = (mean.as_mut_ptr(), rstd.as_mut_ptr());
        launch(&lib, || stats(xs.as_ptr(), m, r, r64, c32));
        let (m, r) = (mean.as_ptr(), rstd.as_ptr());
        let (xp, wp, bp, gp) = (xs.as_ptr(), ws.as_ptr(), bs.as_ptr(), gs.as_ptr());
        let (yp, op, pp) = (y.as_mut_ptr(), out.as_mut_ptr(), part.as_mut_ptr());
        launch(&lib, || apply(xp, wp, bp, m, r, yp, r64, c32));
        // dx takes dy where the forward takes b.
        launch(&lib, || dx_kernel(xp, wp, gp, m, r, op, r64, c32));
        launch(&lib, || partial(xp, gp, m, r, pp, r64, c32, PARTS));
        launch(&lib, || reduce(pp, op, n as i64, 2 * c32, PARTS));
    }
    let (want, grads) = cpu(&[&x, &w, &b], &dy, || {
        token::layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor()).expect("cpu")
    });
    close("output", &y, &want, 1e-6);
    close("dx", &out[..n], &grads[0], 1e-6);
    close("dw", &out[n..n + C], &grads[1], 1e-6);
    close("db", &out[n + C..], &grads[2], 1e-6);
}

#[test]
fn the_softmax_gelu_and_bias_kernels_run_as_the_cpu_kernels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build("token", dir.path());
    // SAFETY: the signatures of these kernels in token.cu.
    let (softmax, softmax_dx, gelu, gelu_dx, add, col_partial, col_reduce) = unsafe {
        (
            lib.get::<Rows>(b"ifp_softmax_f32").expect("softmax"),
            lib.get::<RowsDx>(b"ifp_softmax_dx_f32")
                .expect("softmax dx"),
            lib.get::<Elementwise>(b"ifp_gelu_f32").expect("gelu"),
            lib.get::<ElementwiseDx>(b"ifp_gelu_dx_f32")
                .expect("gelu dx"),
            lib.get::<RowsDx>(b"ifp_add_rows_f32").expect("add"),
            lib.get::<ColPartial>(b"ifp_col_sum_partial_f32")
                .expect("partial"),
            lib.get::<ColReduce>(b"ifp_col_sum_reduce_f32")
                .expect("reduce"),
        )
    };
    let n = R * C;
    let (r64, c32, n64) = (R as i64, C as i32, n as i64);
    let (x, bias) = (var(0.0, 2.0, (R, C)), var(0.0, 1.0, C));
    let dy = Tensor::randn(0f32, 1.0, (R, C), &Device::Cpu).expect("dy");
    let (xs, bs, gs) = (values(x.as_tensor()), values(bias.as_tensor()), values(&dy));

    // Softmax: its backward reads the output.
    let (mut y, mut dx) = (vec![f32::NAN; n], vec![f32::NAN; n]);
    // SAFETY: x, y, dy and dx are (R, C).
    unsafe {
        let (yp, dxp) = (y.as_mut_ptr(), dx.as_mut_ptr());
        launch(&lib, || softmax(xs.as_ptr(), yp, r64, c32));
        let yc = y.as_ptr();
        launch(&lib, || softmax_dx(yc, gs.as_ptr(), dxp, r64, c32));
    }
    let (want, grads) = cpu(&[&x], &dy, || token::softmax(x.as_tensor()).expect("cpu"));
    close("softmax", &y, &want, 1e-6);
    close("softmax dx", &dx, &grads[0], 1e-6);

    // GELU: the CPU kernel's erf is a vectorised approximation, within float32 rounding.
    let (mut y, mut dx) = (vec![f32::NAN; n], vec![f32::NAN; n]);
    // SAFETY: every buffer holds n values.
    unsafe {
        let (yp, dxp) = (y.as_mut_ptr(), dx.as_mut_ptr());
        launch(&lib, || gelu(xs.as_ptr(), yp, n64));
        launch(&lib, || gelu_dx(xs.as_ptr(), gs.as_ptr(), dxp, n64));
    }
    let (want, grads) = cpu(&[&x], &dy, || token::gelu(x.as_tensor()).expect("cpu"));
    close("gelu", &y, &want, 1e-5);
    close("gelu dx", &dx, &grads[0], 1e-5);

    // The bias repeated over the rows, and its gradient: dy's column sums.
    let (mut y, mut db) = (vec![f32::NAN; n], vec![f32::NAN; C]);
    let mut part = vec![f64::NAN; C * PARTS as usize];
    // SAFETY: x, y, dy are (R, C); b and db (C); part (PARTS, C).
    unsafe {
        let (yp, dbp, pp) = (y.as_mut_ptr(), db.as_mut_ptr(), part.as_mut_ptr());
        launch(&lib, || add(xs.as_ptr(), bs.as_ptr(), yp, n64, c32));
        launch(&lib, || col_partial(gs.as_ptr(), pp, r64, c32, PARTS));
        let pc = part.as_ptr();
        launch(&lib, || col_reduce(pc, dbp, 0, c32, PARTS));
    }
    let (want, grads) = cpu(&[&x, &bias], &dy, || {
        token::add_bias(x.as_tensor(), bias.as_tensor()).expect("cpu")
    });
    close("add bias", &y, &want, 1e-7);
    close("bias gradient", &db, &grads[1], 1e-6);
}

/// (x, b, scales, y, count, values per sample)
type ScaledResidual = unsafe extern "C" fn(*const f32, *const f32, *const f32, *mut f32, i64, i64);
/// (dy, scales, dx, count, values per sample)
type ScaleSamples = unsafe extern "C" fn(*const f32, *const f32, *mut f32, i64, i64);

/// Stochastic depth's residual and its branch's gradient: the same values as the CPU op, bit
/// for bit (each product and sum rounded alone on both sides), samples of an odd size, a
/// dropped one among them.
#[test]
fn the_scaled_residual_kernels_run_as_the_cpu_op() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build("token", dir.path());
    // SAFETY: the signatures of these kernels in token.cu.
    let (residual, scale) = unsafe {
        (
            lib.get::<ScaledResidual>(b"ifp_scaled_residual_f32")
                .expect("residual"),
            lib.get::<ScaleSamples>(b"ifp_scale_samples_f32")
                .expect("scale"),
        )
    };
    let (x, branch) = (var(0.0, 1.0, (R, C)), var(0.0, 1.0, (R, C)));
    let scales: Vec<f32> = (0..R).map(|i| [1.0 / 0.9, 0.0, 1.25][i % 3]).collect();
    let dy = Tensor::randn(0f32, 1.0, (R, C), &Device::Cpu).expect("dy");
    let (xs, bs, gs) = (
        values(x.as_tensor()),
        values(branch.as_tensor()),
        values(&dy),
    );
    let (n, per) = ((R * C) as i64, C as i64);
    let (mut y, mut dx) = (vec![f32::NAN; R * C], vec![f32::NAN; R * C]);
    // SAFETY: x, b, y, dy and dx hold R * C values, the scales R.
    unsafe {
        let (yp, dxp, sp) = (y.as_mut_ptr(), dx.as_mut_ptr(), scales.as_ptr());
        launch(&lib, || residual(xs.as_ptr(), bs.as_ptr(), sp, yp, n, per));
        launch(&lib, || scale(gs.as_ptr(), sp, dxp, n, per));
    }
    let (want, grads) = cpu(&[&x, &branch], &dy, || {
        token::scaled_residual(x.as_tensor(), branch.as_tensor(), Some(&scales)).expect("cpu")
    });
    assert_same(&y, &want, "scaled residual");
    assert_same(&dx, &grads[1], "branch gradient");
    assert_same(&gs, &grads[0], "x gradient (dy itself)");
}
