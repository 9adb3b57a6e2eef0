//! `norm.cu`: the channel LayerNorm's statistics, output and gradients against the CPU kernel.

use candle_core::{Device, Tensor};
use ifp_trainer::kernels;

use super::{build, launch, rel, values};

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
