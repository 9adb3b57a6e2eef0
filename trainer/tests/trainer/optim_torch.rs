//! AdamW, clipping and the LR schedule against numbers computed with PyTorch 2.15
//! (`torch.optim.AdamW`, `clip_grad_norm_`) and timm's `CosineLRScheduler`, as the IFP reference
//! uses them. The numbers come from `bench/optim_reference.py` (stored in
//! `bench/optim_reference.json`).

use candle_core::{Device, Tensor, Var};
use ifp_trainer::config::TrainConfig;
use ifp_trainer::optim::{clip_scale, grad_norm_sq, AdamW, LrSchedule};
use serde_json::Value;

fn reference() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/optim_reference.json");
    let text = std::fs::read_to_string(path).expect("bench/optim_reference.json");
    serde_json::from_str(&text).expect("json")
}

fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(a) => a.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().expect("number")],
        other => panic!("not a number list: {other}"),
    }
}

fn tensor(v: &Value, shape: &[usize]) -> Tensor {
    let data: Vec<f32> = floats(v).into_iter().map(|x| x as f32).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).expect("tensor")
}

fn max_rel(a: &Tensor, b: &[f64]) -> f64 {
    let a: Vec<f32> = a.flatten_all().and_then(|t| t.to_vec1()).expect("vec");
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
        / scale
}

#[test]
fn schedule_matches_timm_and_reference_loop() {
    let r = reference();
    let s = &r["schedule"];
    let t = TrainConfig {
        steps: Some(50),
        warmup_epochs: 5,
        base_lr: 3e-4,
        warmup_lr: 2.5e-7,
        min_lr: 2.5e-6,
        ..TrainConfig::default()
    };
    let sched = LrSchedule::from_config(&t, 4);
    for (k, want) in floats(&s["timm_lr"]).iter().enumerate() {
        let got = sched.value_at(k);
        assert!(
            (got - want).abs() <= 1e-12 * want.abs(),
            "timm lr({k}) {got} vs {want}"
        );
    }
    for (k, want) in floats(&s["used_lr"]).iter().enumerate() {
        let got = sched.lr_for_step(k);
        assert!(
            (got - want).abs() <= 1e-12 * want.abs(),
            "step {k} lr {got} vs {want}"
        );
    }
}

#[test]
fn adamw_with_clipping_matches_torch() {
    let r = reference();
    let a = &r["adamw"];
    let w = Var::from_tensor(&tensor(&a["inputs"]["w0"], &[2, 3])).expect("w");
    // Named like a bias so the no-decay rule, not a special case, puts it in group 2.
    let b = Var::from_tensor(&tensor(&a["inputs"]["b0"], &[3])).expect("b");
    let mut opt = AdamW::new(
        vec![
            ("layer.weight".into(), w.clone()),
            ("layer.bias".into(), b.clone()),
        ],
        0.05,
        (0.9, 0.95),
        1e-8,
    )
    .expect("adamw");
    assert_eq!(opt.group_sizes(), (1, 1));
    let want_steps = a["float32"]["steps"].as_array().expect("steps");
    for (i, step) in a["inputs"]["grads"]
        .as_array()
        .expect("grads")
        .iter()
        .enumerate()
    {
        // Build the gradients through a real backward: loss = sum(w * gw) + sum(b * gb).
        let gw = tensor(&step["w"], &[2, 3]);
        let gb = tensor(&step["b"], &[3]);
        let loss = ((w.as_tensor() * &gw).expect("m").sum_all().expect("s")
            + (b.as_tensor() * &gb).expect("m").sum_all().expect("s"))
        .expect("add");
        let grads = loss.backward().expect("backward");
        let norm_sq = grad_norm_sq(&grads, &[w.clone(), b.clone()]).expect("norm");
        let norm = norm_sq.to_scalar::<f64>().expect("read").sqrt();
        let want = &want_steps[i];
        let want_norm = want["grad_norm"].as_f64().expect("norm");
        assert!(
            (norm - want_norm).abs() < 1e-6 * want_norm,
            "step {i}: norm {norm} vs {want_norm}"
        );
        let lr = want["lr"].as_f64().expect("lr");
        opt.step(&grads, lr, clip_scale(norm, 3.0)).expect("step");
        let ew = max_rel(w.as_tensor(), &floats(&want["w"]));
        let eb = max_rel(b.as_tensor(), &floats(&want["b"]));
        eprintln!("adamw step {i}: norm {norm:.7} (torch {want_norm:.7}), max rel err w {ew:.2e} b {eb:.2e}");
        assert!(ew < 1e-6 && eb < 1e-6, "step {i}: w err {ew}, b err {eb}");
    }
    let st = opt.state_tensors();
    let fin = &a["float32"]["final_state"];
    for (key, want) in [
        ("exp_avg.layer.weight", &fin["exp_avg_w"]),
        ("exp_avg_sq.layer.weight", &fin["exp_avg_sq_w"]),
        ("exp_avg.layer.bias", &fin["exp_avg_b"]),
        ("exp_avg_sq.layer.bias", &fin["exp_avg_sq_b"]),
    ] {
        let e = max_rel(&st[key], &floats(want));
        assert!(e < 1e-6, "{key}: {e}");
    }
}
