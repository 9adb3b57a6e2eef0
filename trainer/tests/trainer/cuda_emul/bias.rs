//! `bias.cu`: a bias with its activation, and the bias gradient's partial sums, against the
//! CPU op.

use candle_core::{Device, Tensor};
use ifp_trainer::kernels;

use super::{assert_same, build, launch, rel, values};

type BiasAct = unsafe extern "C" fn(*const f32, *const f32, *mut f32, i64, i32, i64, i32, f32);
type BiasDx = unsafe extern "C" fn(*const f32, *const f32, *mut f32, i64, i32, f32);
type SumPartial = unsafe extern "C" fn(*const f32, *mut f64, i64, i32, i64, i32);
type SumReduce = unsafe extern "C" fn(*const f64, *mut f32, i64, i32, i32);

#[test]
fn the_bias_act_kernels_run_as_the_cpu_kernel() {
    use ifp_trainer::kernels::Activation;
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build("bias", dir.path());
    // SAFETY: the signatures of the kernels in bias.cu.
    let (fwd, dx_kernel, partial, reduce) = unsafe {
        (
            lib.get::<BiasAct>(b"ifp_bias_act_f32").expect("fwd"),
            lib.get::<BiasDx>(b"ifp_bias_act_dx_f32").expect("dx"),
            lib.get::<SumPartial>(b"ifp_channel_sum_partial_f32")
                .expect("partial"),
            lib.get::<SumReduce>(b"ifp_channel_sum_reduce_f32")
                .expect("reduce"),
        )
    };
    let (b, c, hw) = (2usize, 3usize, 35usize);
    let n = b * c * hw;
    let x = Tensor::randn(0f32, 1.0, (b, c, 5, 7), &Device::Cpu).expect("x");
    let bias = Tensor::randn(0f32, 1.0, c, &Device::Cpu).expect("b");
    let dy = Tensor::randn(0f32, 1.0, (b, c, 5, 7), &Device::Cpu).expect("dy");
    let (xs, bs, gs) = (values(&x), values(&bias), values(&dy));
    let (b64, c32, hw64) = (b as i64, c as i32, hw as i64);
    // Four partial sums per channel: each emulated thread adds many pixels of both images.
    let parts = 4i32;
    for (act, has_slope, slope) in [
        (Activation::Identity, 0, 0.0),
        (Activation::Relu, 1, 0.0),
        (Activation::LeakyRelu(0.1), 1, 0.1f32),
    ] {
        let (mut y, mut out) = (vec![f32::NAN; n], vec![f32::NAN; n + c]);
        let mut part = vec![f64::NAN; c * parts as usize];
        // SAFETY: every buffer has the size its kernel indexes (see bias.cu).
        unsafe {
            let (yp, op, pp) = (y.as_mut_ptr(), out.as_mut_ptr(), part.as_mut_ptr());
            launch(&lib, || {
                fwd(
                    xs.as_ptr(),
                    bs.as_ptr(),
                    yp,
                    n as i64,
                    c32,
                    hw64,
                    has_slope,
                    slope,
                )
            });
            launch(&lib, || {
                dx_kernel(yp, gs.as_ptr(), op, n as i64, has_slope, slope)
            });
            launch(&lib, || partial(op, pp, b64, c32, hw64, parts));
            launch(&lib, || reduce(pp, op, n as i64, c32, parts));
        }
        let (xv, bv) = (
            candle_core::Var::from_tensor(&x).expect("x"),
            candle_core::Var::from_tensor(&bias).expect("b"),
        );
        let want = kernels::bias_act(xv.as_tensor(), bv.as_tensor(), act).expect("cpu op");
        let grads = (&want * &dy)
            .and_then(|t| t.sum_all()?.backward())
            .expect("backward");
        let grad = |v: &candle_core::Var| values(grads.get(v.as_tensor()).expect("gradient"));
        assert_same(&y, &values(&want), &format!("{act:?} output"));
        assert_same(&out[..n], &grad(&xv), &format!("{act:?} input gradient"));
        let e = rel(&out[n..], &grad(&bv));
        assert!(e < 1e-6, "{act:?} bias gradient {e}");
    }
}
