//! `optim.cu`: the one-pass AdamW update against the CPU update, exactly.

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
