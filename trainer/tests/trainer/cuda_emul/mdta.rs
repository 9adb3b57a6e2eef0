//! `mdta.cu`: the kernels of Restormer's channel attention on CUDA, against the CPU op. The
//! cuBLAS products between them are computed here directly (their plans have tests of their
//! own in `kernels::gemm_heads`), so what this checks is the kernels' formulas and indexing:
//! the probabilities, dS and the temperatures' gradient, both coefficient matrices, and the
//! normalisation's gradient in place.

use candle_core::{Device, Tensor, Var};
use ifp_trainer::kernels;

use super::{build, close, launch, values};

/// (S, sumsq, t, A, rows, C, heads, ch)
type Probs = unsafe extern "C" fn(*const f32, *const f64, *const f32, *mut f32, i64, i32, i32, i32);
/// (S, sumsq, t, A, D, Mq, dt_rows, rows, C, heads, ch)
type Ds = unsafe extern "C" fn(
    *const f32,
    *const f64,
    *const f32,
    *const f32,
    *mut f32,
    *mut f32,
    *mut f32,
    i64,
    i32,
    i32,
    i32,
);
/// (dS, sumsq, t, dt_rows, Mk, dt, rows, C, heads, ch)
type Mk = unsafe extern "C" fn(
    *const f32,
    *const f64,
    *const f32,
    *const f32,
    *mut f32,
    *mut f32,
    i64,
    i32,
    i32,
    i32,
);
/// (x, d, sumsq, xd, B, C, N)
type NormDx = unsafe extern "C" fn(*const f32, *mut f32, *const f64, *const f64, i64, i32, i64);

/// `(B, heads, ch, ch)` blocks: `out[b, h] = sum_l L[b, h](i, l) R[b, h](l, j)`, each operand
/// read through `at(b, h, row, col)`.
fn products(
    (batch, heads, m, n, k): (usize, usize, usize, usize, usize),
    l: impl Fn(usize, usize, usize, usize) -> f32,
    r: impl Fn(usize, usize, usize, usize) -> f32,
) -> Vec<f32> {
    let mut out = vec![0f32; batch * heads * m * n];
    for b in 0..batch {
        for h in 0..heads {
            for i in 0..m {
                for j in 0..n {
                    let s: f64 = (0..k)
                        .map(|p| f64::from(l(b, h, i, p)) * f64::from(r(b, h, p, j)))
                        .sum();
                    out[((b * heads + h) * m + i) * n + j] = s as f32;
                }
            }
        }
    }
    out
}

#[test]
fn the_channel_attention_kernels_run_as_the_cpu_op() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build("mdta", dir.path());
    // SAFETY: the signatures of these kernels in mdta.cu.
    let (probs, ds_kernel, mk_kernel, norm_dx) = unsafe {
        (
            lib.get::<Probs>(b"ifp_mdta_probs_f32").expect("probs"),
            lib.get::<Ds>(b"ifp_mdta_ds_f32").expect("ds"),
            lib.get::<Mk>(b"ifp_mdta_mk_f32").expect("mk"),
            lib.get::<NormDx>(b"ifp_mdta_norm_dx_f32").expect("norm dx"),
        )
    };
    // (B, heads, ch, H, W), and one q row of zeros (the normalisation's clamp).
    for &(batch, heads, ch, h, w) in &[(2, 2, 3, 3, 4), (1, 3, 2, 2, 5)] {
        let what = format!("B {batch}, {heads} heads of {ch}, {h}x{w}");
        let (c, n) = (heads * ch, h * w);
        let mut x0 = Tensor::randn(0f32, 1.0, (batch, 3 * c, h, w), &Device::Cpu)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .expect("qkv");
        x0[..n].fill(0.0);
        let qkv = Var::from_tensor(
            &Tensor::from_vec(x0.clone(), (batch, 3 * c, h, w), &Device::Cpu).expect("qkv"),
        )
        .expect("var");
        let temp =
            Var::from_tensor(&(Tensor::rand(0.5f32, 1.5, (heads, 1, 1), &Device::Cpu).expect("t")))
                .expect("var");
        let g = Tensor::randn(0f32, 1.0, (batch, c, h, w), &Device::Cpu).expect("g");
        let (x, t, gs) = (x0, values(temp.as_tensor()), values(&g));

        // Host side: the rows' squared norms and the products the plans issue.
        let sumsq: Vec<f64> = x
            .chunks(n)
            .map(|r| r.iter().map(|v| f64::from(*v).powi(2)).sum())
            .collect();
        let row =
            |b: usize, part: usize, hh: usize, i: usize| ((b * 3 + part) * c + hh * ch + i) * n;
        let xs = &x;
        let xat = |part: usize| {
            move |b: usize, hh: usize, i: usize, p: usize| xs[row(b, part, hh, i) + p]
        };
        let gat = |b: usize, hh: usize, i: usize, p: usize| gs[(b * c + hh * ch + i) * n + p];
        let (q, k, v) = (xat(0), xat(1), xat(2));
        let dims = (batch, heads, ch, ch, n);
        let s = products(dims, q, |b, hh, p, j| k(b, hh, j, p));
        let rows = batch * heads * ch;
        let small = rows * ch;
        let (r64, c32, h32, ch32) = (rows as i64, c as i32, heads as i32, ch as i32);
        let mut a = vec![f32::NAN; small];
        // SAFETY: every buffer has the size its kernel indexes (see mdta.cu's layouts).
        unsafe {
            let ap = a.as_mut_ptr();
            launch(&lib, || {
                probs(
                    s.as_ptr(),
                    sumsq.as_ptr(),
                    t.as_ptr(),
                    ap,
                    r64,
                    c32,
                    h32,
                    ch32,
                )
            });
        }
        let at = |b: usize, hh: usize, i: usize, j: usize| a[((b * heads + hh) * ch + i) * ch + j];
        let out = products((batch, heads, ch, n, ch), at, v);
        let want =
            kernels::channel_attention(qkv.as_tensor(), temp.as_tensor(), heads).expect("cpu");
        close(&format!("{what}: output"), &out, &values(&want), 1e-5);

        // Backward.
        let mut d = products(dims, gat, |b, hh, p, j| v(b, hh, j, p));
        let (mut mq, mut mk, mut dt_rows) = (
            vec![f32::NAN; small],
            vec![f32::NAN; small],
            vec![f32::NAN; rows],
        );
        let mut dt = vec![f32::NAN; batch * heads];
        // SAFETY: as above.
        unsafe {
            let (dp, mqp, dtrp) = (d.as_mut_ptr(), mq.as_mut_ptr(), dt_rows.as_mut_ptr());
            let (sp, qp, tp, ap) = (s.as_ptr(), sumsq.as_ptr(), t.as_ptr(), a.as_ptr());
            launch(&lib, || {
                ds_kernel(sp, qp, tp, ap, dp, mqp, dtrp, r64, c32, h32, ch32)
            });
            let (dc, dtrc, mkp, dtp) = (
                d.as_ptr(),
                dt_rows.as_ptr(),
                mk.as_mut_ptr(),
                dt.as_mut_ptr(),
            );
            launch(&lib, || {
                mk_kernel(dc, qp, tp, dtrc, mkp, dtp, r64, c32, h32, ch32)
            });
        }
        let coef = |m: &[f32]| {
            let m = m.to_vec();
            move |b: usize, hh: usize, i: usize, j: usize| m[((b * heads + hh) * ch + i) * ch + j]
        };
        let dq = products((batch, heads, ch, n, ch), coef(&mq), k);
        let dk = products((batch, heads, ch, n, ch), coef(&mk), q);
        let dv = products(
            (batch, heads, ch, n, ch),
            |b, hh, i, j| at(b, hh, j, i),
            gat,
        );
        let mut dqkv = Vec::with_capacity(x.len());
        let per_image = heads * ch * n;
        for b in 0..batch {
            for part in [&dq, &dk, &dv] {
                dqkv.extend_from_slice(&part[b * per_image..][..per_image]);
            }
        }
        let xd: Vec<f64> = x
            .chunks(n)
            .zip(dqkv.chunks(n))
            .map(|(xr, dr)| {
                xr.iter()
                    .zip(dr)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum()
            })
            .collect();
        // SAFETY: x and dqkv are (B, 3C, N); sumsq and xd one per row.
        unsafe {
            let dp = dqkv.as_mut_ptr();
            launch(&lib, || {
                norm_dx(
                    x.as_ptr(),
                    dp,
                    sumsq.as_ptr(),
                    xd.as_ptr(),
                    batch as i64,
                    c32,
                    n as i64,
                )
            });
        }
        let grads = (want * &g)
            .and_then(|y| y.sum_all()?.backward())
            .expect("backward");
        let grad = |v: &Var| values(grads.get(v.as_tensor()).expect("gradient"));
        // Part by part: the clamped zero row's gradient (its values / 1e-12) would swamp a
        // relative error over the whole of dqkv.
        let want = grad(&qkv);
        for (i, (got, want)) in dqkv.chunks(c * n).zip(want.chunks(c * n)).enumerate() {
            let (b, part) = (i / 3, ["q", "k", "v"][i % 3]);
            close(&format!("{what}: image {b}, d{part}"), got, want, 1e-5);
        }
        let dt_sum: Vec<f32> = (0..heads)
            .map(|hh| (0..batch).map(|b| dt[b * heads + hh]).sum())
            .collect();
        close(&format!("{what}: dt"), &dt_sum, &grad(&temp), 1e-5);
    }
}
