//! `dwconv.cu`: the LeFF's channels-last depthwise convolution with its bias and GELU, and its
//! gradients, against the CPU op.

use candle_core::{Device, Tensor, Var};
use ifp_trainer::kernels::token;

use super::{build, close, launch, values, var};

/// (x, weight, bias, y, n, H, W, C, k, mirror, gelu)
type Apply = unsafe extern "C" fn(
    *const f32,
    *const f32,
    *const f32,
    *mut f32,
    i64,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
);
/// (x, dy, partial, rows, H, W, C, k, J)
type Partial = unsafe extern "C" fn(*const f32, *const f32, *mut f64, i64, i32, i32, i32, i32, i32);
/// token.cu's (partial, out, at, K, J)
type Reduce = unsafe extern "C" fn(*const f64, *mut f32, i64, i32, i32);

/// Partial sums: each emulated thread adds several image rows.
const PARTS: i32 = 3;

#[test]
fn the_token_depthwise_kernels_run_as_the_cpu_op() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build("dwconv", dir.path());
    let token_lib = build("token", dir.path());
    // SAFETY: the signatures of these kernels in dwconv.cu and token.cu.
    let (apply, partial, reduce) = unsafe {
        (
            lib.get::<Apply>(b"ifp_tdw_apply_f32").expect("apply"),
            lib.get::<Partial>(b"ifp_tdw_params_partial_f32")
                .expect("partial"),
            token_lib
                .get::<Reduce>(b"ifp_col_sum_reduce_f32")
                .expect("reduce"),
        )
    };
    // (B, H, W, C, k): odd sizes, a 5x5 kernel wider than the grid.
    for (b, h, w, c, k) in [(2, 5, 4, 3, 3), (1, 3, 2, 2, 5)] {
        let what = format!("{b}x{h}x{w}x{c} k{k}");
        let x = var(0.0, 1.0, (b, h * w, c));
        let weight = var(0.0, 0.5, (c, 1, k, k));
        let bias = var(0.0, 1.0, c);
        let dy = Tensor::randn(0f32, 1.0, (b, h * w, c), &Device::Cpu).expect("dy");
        let (xs, ws, bs, gs) = (
            values(x.as_tensor()),
            values(weight.as_tensor()),
            values(bias.as_tensor()),
            values(&dy),
        );
        let n = xs.len();
        let params = (k * k + 1) * c;
        let (n64, h32, w32, c32, k32) = (n as i64, h as i32, w as i32, c as i32, k as i32);
        let rows = (b * h) as i64;
        for gelu in [0, 1] {
            let mut y = vec![f32::NAN; n];
            // SAFETY: x, y are (B, H*W, C), the weight (C, k*k), the bias (C).
            unsafe {
                let yp = y.as_mut_ptr();
                let (xp, wp, bp) = (xs.as_ptr(), ws.as_ptr(), bs.as_ptr());
                launch(&lib, || {
                    apply(xp, wp, bp, yp, n64, h32, w32, c32, k32, 0, gelu)
                });
            }
            let want = token::depthwise(
                x.as_tensor(),
                weight.as_tensor(),
                bias.as_tensor(),
                w,
                token::Gelus {
                    before: false,
                    after: gelu == 1,
                },
            )
            .expect("cpu");
            // GELU: the CPU's erf is a vectorised approximation, within float32 rounding.
            close(&format!("{what} gelu {gelu}"), &y, &values(&want), 1e-5);
        }
        // The backward of the plain convolution: dx, then dweight and dbias after it.
        let mut out = vec![f32::NAN; n + params];
        let mut part = vec![f64::NAN; PARTS as usize * params];
        // SAFETY: out holds dx (n) and the parameters' gradients; part (PARTS, params).
        unsafe {
            let (op, pp) = (out.as_mut_ptr(), part.as_mut_ptr());
            let (xp, wp, gp) = (xs.as_ptr(), ws.as_ptr(), gs.as_ptr());
            // The mirrored pass reads no bias; the weight stands in, as on the GPU.
            launch(&lib, || {
                apply(gp, wp, wp, op, n64, h32, w32, c32, k32, 1, 0)
            });
            launch(&lib, || {
                partial(xp, gp, pp, rows, h32, w32, c32, k32, PARTS)
            });
            let pc = part.as_ptr();
            launch(&token_lib, || reduce(pc, op, n64, params as i32, PARTS));
        }
        let y = token::depthwise(
            x.as_tensor(),
            weight.as_tensor(),
            bias.as_tensor(),
            w,
            token::Gelus::NONE,
        )
        .expect("cpu");
        let grads = (&y * &dy)
            .and_then(|t| t.sum_all()?.backward())
            .expect("backward");
        let grad = |v: &Var| values(grads.get(v.as_tensor()).expect("gradient"));
        close(&format!("{what} dx"), &out[..n], &grad(&x), 1e-6);
        let wn = n + k * k * c;
        close(
            &format!("{what} dweight"),
            &out[n..wn],
            &grad(&weight),
            1e-6,
        );
        close(&format!("{what} dbias"), &out[wn..], &grad(&bias), 1e-6);
    }
}
