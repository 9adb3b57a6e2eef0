//! `optim.cu`: the one-pass AdamW update against the CPU update, exactly; the squared norm of
//! many tensors against float64 sums.

use candle_core::{Device, Tensor};
use ifp_trainer::kernels::{self, AdamWStep};
use libloading::Symbol;

use super::{build, launch, values};

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

type SumsqPartial = unsafe extern "C" fn(*const u64, *const i64, *mut f64, i32, i32);
type SumRows = unsafe extern "C" fn(*const f64, *mut f64, i64, i32);

/// The squared norm of several tensors through a table of their addresses: the float64 sum of
/// every square, to float64 rounding, and the composed version's float32 per-tensor sums to
/// float32 rounding.
#[test]
fn the_squared_norm_kernels_sum_every_tensor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build("optim", dir.path());
    // SAFETY: the signatures of these kernels in optim.cu.
    let (partial, sum_rows) = unsafe {
        (
            lib.get::<SumsqPartial>(b"ifp_sumsq_partial_f32")
                .expect("partial"),
            lib.get::<SumRows>(b"ifp_sum_rows_f64").expect("sum rows"),
        )
    };
    // One value, fewer values than partial sums, and many per emulated thread.
    let sizes = [1usize, 3, 40, 1001];
    let tensors: Vec<Tensor> = sizes
        .iter()
        .map(|&n| Tensor::randn(0f32, 1.5, n, &Device::Cpu).expect("t"))
        .collect();
    let data: Vec<Vec<f32>> = tensors.iter().map(values).collect();
    let ptrs: Vec<u64> = data.iter().map(|d| d.as_ptr() as u64).collect();
    let lens: Vec<i64> = data.iter().map(|d| d.len() as i64).collect();
    let (t, j) = (sizes.len(), 4usize);
    let mut part = vec![f64::NAN; t * j];
    let (mut per, mut out) = (vec![f64::NAN; t], [f64::NAN]);
    // SAFETY: the table holds live buffers of the lengths given; the outputs have t * j, t and
    // one element.
    unsafe {
        let (pp, perp, op) = (part.as_mut_ptr(), per.as_mut_ptr(), out.as_mut_ptr());
        let (t32, j32) = (t as i32, j as i32);
        launch(&lib, || partial(ptrs.as_ptr(), lens.as_ptr(), pp, t32, j32));
        launch(&lib, || sum_rows(pp, perp, t as i64, j32));
        launch(&lib, || sum_rows(perp, op, 1, t32));
    }
    let exact: f64 = data.iter().flatten().map(|v| (*v as f64).powi(2)).sum();
    assert!(
        ((out[0] - exact) / exact).abs() < 1e-14,
        "{} vs {exact}",
        out[0]
    );
    for (i, d) in data.iter().enumerate() {
        let want: f64 = d.iter().map(|v| (*v as f64).powi(2)).sum();
        assert!(((per[i] - want) / want).abs() < 1e-14, "tensor {i}");
    }
    let refs: Vec<&Tensor> = tensors.iter().collect();
    let composed = kernels::squared_norm_composed(&refs, &Device::Cpu)
        .and_then(|t| t.to_scalar::<f64>())
        .expect("composed");
    assert!(((out[0] - composed) / composed).abs() < 1e-6);
}

type AdamWMulti = unsafe extern "C" fn(
    *const u64,
    *const u64,
    *const u64,
    *const u64,
    *const i64,
    *const i64,
    *const i32,
    *const f32,
    i32,
    i32,
    f32,
    f32,
    f32,
    f32,
    f32,
    f32,
    f32,
);

/// The one-launch update of several parameters, in place through tables of addresses, against
/// the CPU update of each: parameters of one element and of many, decayed and not, with more
/// threads given to the larger ones (here 4 elements per thread).
#[test]
fn the_multi_tensor_adamw_kernel_gives_each_parameters_cpu_update() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = build("optim", dir.path());
    // SAFETY: the signature of ifp_adamw_multi_f32 in optim.cu.
    let kernel: Symbol<AdamWMulti> =
        unsafe { lib.get(b"ifp_adamw_multi_f32") }.expect("ifp_adamw_multi_f32");
    let sizes = [1usize, 37, 203, 2];
    let decays = [0.0, 0.05, 0.05, 0.0];
    let draw = |n: usize, std: f32| Tensor::randn(0f32, std, n, &Device::Cpu).expect("draw");
    let params: Vec<[Tensor; 4]> = sizes
        .iter()
        .map(|&n| {
            let v = draw(n, 0.01).sqr().expect("v");
            [draw(n, 1e-4), draw(n, 0.1), draw(n, 0.01), v]
        })
        .collect();
    let clip = Some(0.37);
    let steps: Vec<AdamWStep> = decays
        .iter()
        .map(|&d| AdamWStep::new(3, 3e-4, (0.9, 0.95), 1e-8, d, clip))
        .collect();
    // Host copies the kernel updates in place: [w, g, m, v] per parameter.
    let mut data: Vec<[Vec<f32>; 4]> = params.iter().map(|p| p.each_ref().map(values)).collect();
    let table = |k: usize, data: &mut Vec<[Vec<f32>; 4]>| -> Vec<u64> {
        data.iter_mut().map(|p| p[k].as_mut_ptr() as u64).collect()
    };
    let (w, g, m, v) = (
        table(0, &mut data),
        table(1, &mut data),
        table(2, &mut data),
        table(3, &mut data),
    );
    let lens: Vec<i64> = sizes.iter().map(|&n| n as i64).collect();
    let mut first = vec![0i64];
    for &n in &sizes {
        first.push(first[first.len() - 1] + n.div_ceil(4) as i64);
    }
    let apply: Vec<i32> = steps.iter().map(|s| i32::from(s.decay.is_some())).collect();
    let decay: Vec<f32> = steps.iter().map(|s| s.decay.unwrap_or(1.0)).collect();
    let s = steps[0];
    launch(&lib, || {
        // SAFETY: the tables hold live buffers of their parameters' lengths; first has one
        // entry more than there are parameters.
        unsafe {
            kernel(
                w.as_ptr(),
                g.as_ptr(),
                m.as_ptr(),
                v.as_ptr(),
                lens.as_ptr(),
                first.as_ptr(),
                apply.as_ptr(),
                decay.as_ptr(),
                sizes.len() as i32,
                1,
                s.grad_scale.unwrap_or(1.0),
                s.one_minus_beta1,
                s.beta2,
                s.one_minus_beta2,
                s.inv_bias_correction2,
                s.eps,
                s.step_size,
            )
        }
    });
    for (i, ([w0, g0, m0, v0], st)) in params.iter().zip(&steps).enumerate() {
        let (w2, m2, v2) = kernels::adamw_update(w0, g0, m0, v0, st).expect("cpu update");
        for (what, got, want) in [
            ("weights", &data[i][0], w2),
            ("exp_avg", &data[i][2], m2),
            ("exp_avg_sq", &data[i][3], v2),
        ] {
            let want = values(&want);
            if let Some(e) = got.iter().zip(&want).position(|(a, b)| a != b) {
                panic!(
                    "parameter {i} {what}: element {e} is {:e} emulated, {:e} on the CPU",
                    got[e], want[e]
                );
            }
        }
        assert_eq!(
            data[i][1],
            values(g0),
            "parameter {i}: the gradient is read only"
        );
    }
}
