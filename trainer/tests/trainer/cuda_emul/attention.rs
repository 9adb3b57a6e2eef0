//! `attention.cu`: Uformer's window attention from packed q, k, v, forward and backward, against
//! the CPU op, at each of the kernels' register widths.

use candle_core::{Device, Tensor, Var};
use ifp_trainer::kernels::token;

use super::{build, close, launch, values, var};

/// (qkv, bias, out, rows, H, N, D, K)
type Forward = unsafe extern "C" fn(*const f32, *const f32, *mut f32, i64, i32, i32, i32, i64);
/// (qkv, bias, dout, dqkv, stats, rows, H, N, D, K)
type Rows = unsafe extern "C" fn(
    *const f32,
    *const f32,
    *const f32,
    *mut f32,
    *mut f32,
    i64,
    i32,
    i32,
    i32,
    i64,
);
/// (qkv, bias, dout, stats, dqkv, ds, rows, H, N, D, K)
type Cols = unsafe extern "C" fn(
    *const f32,
    *const f32,
    *const f32,
    *const f32,
    *mut f32,
    *mut f32,
    i64,
    i32,
    i32,
    i32,
    i64,
);

/// (register width, windows, heads, tokens, head width, bias shape)
type Case = (usize, usize, usize, usize, usize, &'static [usize]);

#[test]
fn the_window_attention_kernels_run_as_the_cpu_op() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build("attention", dir.path());
    // More rows than the emulated grid's 15 threads; heads narrower than their width; a bias of
    // one head set and one of several windows repeated over the images.
    let cases: &[Case] = &[
        (16, 3, 2, 5, 7, &[2, 5, 5]),
        (16, 4, 1, 4, 16, &[2, 1, 4, 4]),
        (32, 2, 2, 6, 20, &[2, 2, 6, 6]),
        (64, 2, 1, 9, 40, &[1, 9, 9]),
    ];
    for &(width, windows, heads, n, d, bshape) in cases {
        let what = format!("d{width}: {windows}x{heads}x{n}x{d} + {bshape:?}");
        // SAFETY: the signatures of the ifp_watt_* kernels in attention.cu.
        let (forward, rows_kernel, cols_kernel) = unsafe {
            (
                lib.get::<Forward>(format!("ifp_watt_fwd_d{width}_f32").as_bytes())
                    .expect("forward"),
                lib.get::<Rows>(format!("ifp_watt_rows_d{width}_f32").as_bytes())
                    .expect("rows"),
                lib.get::<Cols>(format!("ifp_watt_cols_d{width}_f32").as_bytes())
                    .expect("cols"),
            )
        };
        let (qkv, bias) = (
            var(0.0, 1.0, (windows, 3 * heads, n, d)),
            var(0.0, 1.0, bshape),
        );
        let dout = Tensor::randn(0f32, 1.0, (windows, heads, n, d), &Device::Cpu).expect("dout");
        let (qs, bs, gs) = (
            values(qkv.as_tensor()),
            values(bias.as_tensor()),
            values(&dout),
        );
        let rows = windows * heads * n;
        let k = bs.len();
        let dims = (rows as i64, heads as i32, n as i32, d as i32, k as i64);
        let mut out = vec![f32::NAN; rows * d];
        let mut dqkv = vec![f32::NAN; qs.len()];
        let mut stats = vec![f32::NAN; 3 * rows];
        let mut ds = vec![f32::NAN; rows * n];
        // SAFETY: every buffer has the size its kernel indexes (see attention.cu's layouts).
        unsafe {
            let (qp, bp, gp) = (qs.as_ptr(), bs.as_ptr(), gs.as_ptr());
            let (r, h, nn, dd, kk) = dims;
            let op = out.as_mut_ptr();
            launch(&lib, || forward(qp, bp, op, r, h, nn, dd, kk));
            let (dp, sp) = (dqkv.as_mut_ptr(), stats.as_mut_ptr());
            launch(&lib, || rows_kernel(qp, bp, gp, dp, sp, r, h, nn, dd, kk));
            let (sc, dsp) = (stats.as_ptr(), ds.as_mut_ptr());
            launch(&lib, || {
                cols_kernel(qp, bp, gp, sc, dp, dsp, r, h, nn, dd, kk)
            });
        }
        // The bias's gradient: the logits' gradients summed over the bias's repeats.
        let mut dbias = vec![0f64; k];
        for (i, v) in ds.iter().enumerate() {
            dbias[i % k] += f64::from(*v);
        }
        let dbias: Vec<f32> = dbias.into_iter().map(|v| v as f32).collect();

        let y = token::window_attention(qkv.as_tensor(), bias.as_tensor(), heads).expect("cpu");
        let grads = (&y * &dout)
            .and_then(|t| t.sum_all()?.backward())
            .expect("backward");
        let grad = |v: &Var| values(grads.get(v.as_tensor()).expect("gradient"));
        close(&format!("{what} output"), &out, &values(&y), 1e-6);
        close(&format!("{what} dqkv"), &dqkv, &grad(&qkv), 1e-5);
        close(&format!("{what} dbias"), &dbias, &grad(&bias), 1e-5);
    }
}
