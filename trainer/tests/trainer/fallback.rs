//! The composed fallback of every custom CPU kernel (the path CUDA and bf16 take) against the
//! kernels, through whole networks: Restormer (im2col, depthwise, channel LayerNorm) and Uformer
//! (LayerNorm, softmax, GELU, bias addition, depthwise), values and every gradient.
//!
//! The kernels are switched off process-wide, so this file holds a single test (the tests of one
//! binary run in parallel threads).

use crate::common;

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use ifp_trainer::kernels;
use ifp_trainer::models::{load_weights, Network, WeightSource};
use ifp_trainer::Config;

/// Output, input gradient and parameter gradients of `sum(net(input) * probe)` on the CPU.
fn run(name: &str) -> (Tensor, Tensor, HashMap<String, Tensor>) {
    let dir = common::golden_dir();
    let cfg = Config::load(
        dir.join(format!("configs/{name}.yaml"))
            .to_str()
            .expect("path"),
    )
    .expect("config");
    let file = dir.join(format!("{name}.safetensors"));
    let g = candle_core::safetensors::load(&file, &Device::Cpu).expect("golden file");
    let weights = load_weights(&file, &Device::Cpu).expect("weights");
    let net = Network::build(&cfg, WeightSource::Tensors(weights), &Device::Cpu).expect("net");
    let input = Var::from_tensor(&g["input"]).expect("var");
    let out = net.forward(input.as_tensor()).expect("forward");
    let grads = (&out * &g["probe"])
        .and_then(|t| t.sum_all())
        .and_then(|l| l.backward())
        .expect("backward");
    let gi = grads.get(input.as_tensor()).expect("input grad").clone();
    let params = net
        .vars()
        .expect("vars")
        .into_iter()
        .map(|(n, v)| {
            let gr = grads.get(v.as_tensor()).expect("param grad").clone();
            (n, gr)
        })
        .collect();
    (out, gi, params)
}

#[test]
fn composed_fallbacks_equal_the_cpu_kernels() {
    for name in ["restormer_tiny", "uformer_tiny", "uformer_tiny_shift"] {
        kernels::set_enabled(true);
        let (out_k, gi_k, p_k) = run(name);
        kernels::set_enabled(false);
        let (out_f, gi_f, p_f) = run(name);
        kernels::set_enabled(true);
        let o = common::rel_l2(&out_f, &out_k);
        let gi = common::rel_l2(&gi_f, &gi_k);
        let mut worst = (0f64, String::new());
        for (n, gk) in &p_k {
            let e = common::rel_l2(&p_f[n], gk);
            if e > worst.0 {
                worst = (e, n.clone());
            }
        }
        eprintln!(
            "{name}: fallback vs kernels: output {o:.2e}, grad.input {gi:.2e}, worst parameter gradient {:.2e} ({})",
            worst.0, worst.1
        );
        assert!(o < 1e-5, "{name}: output {o}");
        assert!(gi < 1e-4, "{name}: input gradient {gi}");
        assert!(
            worst.0 < 1e-4,
            "{name}: gradient of {}: {}",
            worst.1,
            worst.0
        );
    }
}
