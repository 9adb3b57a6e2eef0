//! Parity of the Restormer backbone + head with the PyTorch reference
//! (`golden/restormer_tiny.safetensors`): output and the gradient of `sum(output * probe)`
//! for the input and for every parameter within `common::parity_bounds` (relative L2).

use crate::common;

use candle_core::Device;
use ifp_trainer::models::{load_weights, Network, WeightSource};
use ifp_trainer::Config;

fn setup() -> (
    Config,
    std::collections::HashMap<String, candle_core::Tensor>,
    Network,
) {
    let dir = common::golden_dir();
    let cfg = Config::load(
        dir.join("configs/restormer_tiny.yaml")
            .to_str()
            .expect("path"),
    )
    .expect("config");
    let dev = common::test_device();
    let all = candle_core::safetensors::load(dir.join("restormer_tiny.safetensors"), &dev)
        .expect("golden file");
    let weights = load_weights(&dir.join("restormer_tiny.safetensors"), &dev).expect("weights");
    let net = Network::build(&cfg, WeightSource::Tensors(weights), &dev).expect("network");
    (cfg, all, net)
}

#[test]
fn forward_matches_reference() {
    let (out_tol, _) = common::parity_bounds(&common::test_device());
    let (_, g, net) = setup();
    let enc = net.encode(&g["input"]).expect("encode");
    let e = common::rel_l2(&enc, &g["encoder_output"]);
    let out = net.forward(&g["input"]).expect("forward");
    let o = common::rel_l2(&out, &g["output"]);
    eprintln!("restormer_tiny: encoder_output rel L2 {e:.3e}, output rel L2 {o:.3e}");
    assert!(e < out_tol, "encoder output error {e}");
    assert!(o < out_tol, "output error {o}");
}

#[test]
fn gradients_match_reference() {
    let (_, grad_tol) = common::parity_bounds(&common::test_device());
    let (_, g, net) = setup();
    common::check_gradients("restormer_tiny", &g, &net, 131, grad_tol);
}

#[test]
fn strict_load_rejects_wrong_config() {
    let dir = common::golden_dir();
    let mut cfg = Config::load(
        dir.join("configs/restormer_tiny.yaml")
            .to_str()
            .expect("path"),
    )
    .expect("config");
    cfg.model.decoder.nf = 32;
    let weights =
        load_weights(&dir.join("restormer_tiny.safetensors"), &Device::Cpu).expect("weights");
    let err = Network::build(&cfg, WeightSource::Tensors(weights), &Device::Cpu)
        .err()
        .expect("must fail");
    assert!(
        err.to_string().contains("decoder.conv_first.weight"),
        "{err}"
    );
}
