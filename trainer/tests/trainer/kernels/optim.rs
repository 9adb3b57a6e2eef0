//! The one-pass AdamW update against the composed one on `IFP_TEST_DEVICE`: the same numbers,
//! element for element, over steps with and without clipping and weight decay. On CUDA this
//! is the check that must pass before `IFP_CUDA_FUSED` can become the default there.

use candle_core::{DType, Device, Tensor};
use ifp_trainer::kernels::{self, adamw_update, adamw_update_composed, AdamWStep};

use super::CudaKernelsOn;
use crate::common;

/// A fixed pseudo-random draw in [-scale/2, scale/2) (xorshift), the same on every run.
fn draw(n: usize, seed: u64, scale: f32, dev: &Device) -> Tensor {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
        .collect();
    Tensor::from_vec(data, n, dev).expect("tensor")
}

/// Elements where `a` and `b` differ as numbers (so -0 equals +0), with the first of them.
fn differences(a: &Tensor, b: &Tensor) -> (usize, Option<(usize, f32, f32)>) {
    let a: Vec<f32> = a.flatten_all().and_then(|t| t.to_vec1()).expect("a");
    let b: Vec<f32> = b.flatten_all().and_then(|t| t.to_vec1()).expect("b");
    let mut diff = a.iter().zip(&b).enumerate().filter(|(_, (x, y))| x != y);
    let first = diff.next().map(|(i, (x, y))| (i, *x, *y));
    (first.map_or(0, |_| 1) + diff.count(), first)
}

#[test]
fn adamw_update_matches_composed() {
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    // Several blocks and parallel chunks, with a ragged end.
    let n = 70_001;
    // Weights as small as an update, so that every rounding of the update shows in them.
    let w0 = draw(n, 1, 2e-4, &dev);
    let zeros = Tensor::zeros(n, DType::F32, &dev).expect("zeros");
    assert!(
        kernels::fused_applies(&w0, kernels::CudaKernel::Optim),
        "the one-pass update applies on {dev:?}"
    );
    let (mut w, mut m, mut v) = (w0.clone(), zeros.clone(), zeros.clone());
    let (mut wc, mut mc, mut vc) = (w0.clone(), zeros.clone(), zeros);
    for t in 1..=4 {
        // Gradients with exact zeros (clamped halves cancel at t = 2), clipping on even steps,
        // no decay at step 3 (the no-decay group).
        let g = (draw(n, 10 + t as u64, 1.0, &dev) * (t as f64 - 2.0))
            .and_then(|g| g.clamp(-0.3f32, 0.3f32))
            .expect("g");
        let clip = (t % 2 == 0).then_some(0.37);
        let decay = if t == 3 { 0.0 } else { 0.05 };
        let s = AdamWStep::new(t, 3e-4, (0.9, 0.95), 1e-8, decay, clip);
        (w, m, v) = adamw_update(&w, &g, &m, &v, &s).expect("fused");
        (wc, mc, vc) = adamw_update_composed(&wc, &g, &mc, &vc, &s).expect("composed");
        for (what, a, b) in [
            ("weights", &w, &wc),
            ("exp_avg", &m, &mc),
            ("exp_avg_sq", &v, &vc),
        ] {
            let (count, first) = differences(a, b);
            assert_eq!(
                count, 0,
                "{what} after step {t} on {dev:?}: first difference {first:?}"
            );
        }
    }
    let moved = (&w - &w0)
        .and_then(|d| d.abs()?.max(0)?.to_scalar::<f32>())
        .expect("max");
    eprintln!("adamw update on {dev:?}: 4 steps of {n} elements equal to the composed update; largest weight change {moved:e}");
    assert!(moved > 0.0, "the updates changed the weights");
}

/// The squared global norm (on CUDA with the switch on: three launches through a table of
/// addresses) against the composed per-tensor sums, on `IFP_TEST_DEVICE`: tensors of one
/// value, of fewer values than partial sums, and large ones, and none at all.
#[test]
fn squared_norm_matches_composed() {
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    let tensors: Vec<Tensor> = [1usize, 7, 300, 70_001, 5]
        .iter()
        .enumerate()
        .map(|(i, &n)| draw(n, 40 + i as u64, 3.0, &dev))
        .collect();
    let refs: Vec<&Tensor> = tensors.iter().collect();
    let scalar = |t: Tensor| t.to_scalar::<f64>().expect("scalar");
    let fast = scalar(kernels::squared_norm(&refs, &dev).expect("fast"));
    let slow = scalar(kernels::squared_norm_composed(&refs, &dev).expect("slow"));
    let rel = ((fast - slow) / slow).abs();
    assert!(rel < 1e-6, "{fast} vs {slow}: {rel}");
    let none = scalar(kernels::squared_norm(&[], &dev).expect("empty"));
    assert_eq!(none, 0.0);
    println!("squared norm kernel on {dev:?} matches the composed version ({rel:.1e})");
}

/// The in-place update of several parameters (on CUDA with the switch on, one launch) against
/// the composed update of each, on `IFP_TEST_DEVICE`, over steps with and without clipping and
/// with both weight-decay groups.
#[test]
fn in_place_adamw_update_matches_composed() {
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    let sizes = [1usize, 300, 70_001, 5];
    let fresh = |i: usize, n: usize| {
        [draw(n, 60 + i as u64, 2e-4, &dev)]
            .into_iter()
            .chain([0, 1].map(|_| Tensor::zeros(n, DType::F32, &dev).expect("zeros")))
            .collect::<Vec<_>>()
    };
    // [w, m, v] per parameter: updated in place, and by the composed version.
    let fast: Vec<Vec<Tensor>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| fresh(i, n))
        .collect();
    let mut slow: Vec<Vec<Tensor>> = fast
        .iter()
        .map(|p| p.iter().map(|t| t.copy().expect("copy")).collect())
        .collect();
    for t in 1..=3 {
        let grads: Vec<Tensor> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| draw(n, 100 * t as u64 + i as u64, 1.0, &dev))
            .collect();
        let clip = (t % 2 == 0).then_some(0.37);
        let steps: Vec<AdamWStep> = (0..sizes.len())
            .map(|i| AdamWStep::new(t, 3e-4, (0.9, 0.95), 1e-8, [0.05, 0.0][i % 2], clip))
            .collect();
        let items: Vec<kernels::AdamWItem> = fast
            .iter()
            .zip(&grads)
            .zip(&steps)
            .map(|((p, g), s)| (&p[0], g, &p[1], &p[2], *s))
            .collect();
        let applied = kernels::adamw_update_in_place(&items).expect("in place");
        assert!(applied, "applies on {dev:?}");
        for (i, p) in slow.iter_mut().enumerate() {
            let (w, m, v) =
                adamw_update_composed(&p[0], &grads[i], &p[1], &p[2], &steps[i]).expect("slow");
            *p = vec![w, m, v];
            for (k, what) in ["weights", "exp_avg", "exp_avg_sq"].iter().enumerate() {
                let (count, first) = differences(&fast[i][k], &p[k]);
                assert_eq!(count, 0, "parameter {i} {what} after step {t}: {first:?}");
            }
        }
    }
    println!("adamw update kernel on {dev:?}: in place, one launch, equal to the composed update");
}

/// Where writing in place would read what it has written (the two moments one tensor, or the
/// gradient the weights) or cannot write (transposed moments), or the kernels are off, the
/// in-place update declines for every parameter and changes nothing: the caller then takes the
/// one-by-one path.
#[test]
fn in_place_adamw_update_declines_and_touches_nothing() {
    let _on = CudaKernelsOn::new();
    let dev = common::test_device();
    let w = draw(12, 7, 1.0, &dev);
    let g = draw(12, 8, 1.0, &dev);
    let z = Tensor::zeros(12, DType::F32, &dev).expect("zeros");
    let z2 = z.copy().expect("copy");
    let s = AdamWStep::new(1, 3e-4, (0.9, 0.95), 1e-8, 0.05, None);
    let wt = draw(12, 9, 1.0, &dev).reshape((3, 4)).expect("w");
    let (gt, zt) = (wt.ones_like().expect("g"), wt.zeros_like().expect("z"));
    let transposed = zt.t().expect("t").contiguous().expect("c").t().expect("t");
    let cases: [(&str, Vec<kernels::AdamWItem>); 3] = [
        ("shared moments", vec![(&w, &g, &z, &z, s)]),
        ("gradient in the weights", vec![(&w, &w, &z, &z2, s)]),
        (
            "a fine parameter, then transposed moments",
            vec![(&w, &g, &z, &z2, s), (&wt, &gt, &transposed, &zt, s)],
        ),
    ];
    let values = |t: &Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("v");
    for (what, items) in cases {
        let before: Vec<Vec<f32>> = items
            .iter()
            .flat_map(|(w, g, m, v, _)| [w, g, m, v].map(|t| values(t)))
            .collect();
        let applied = kernels::adamw_update_in_place(&items).expect("in place");
        assert!(!applied, "{what}: declined on {dev:?}");
        let after: Vec<Vec<f32>> = items
            .iter()
            .flat_map(|(w, g, m, v, _)| [w, g, m, v].map(|t| values(t)))
            .collect();
        assert_eq!(after, before, "{what}: nothing changed");
    }
    kernels::set_enabled(false);
    let off = kernels::adamw_update_in_place(&[(&w, &g, &z, &z2, s)]);
    kernels::set_enabled(true);
    assert!(!off.expect("kernels off"), "declined with the kernels off");
}
