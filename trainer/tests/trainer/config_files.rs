//! The reference's own config files and the golden configs load unchanged, and the configs
//! of the golden networks build exactly the stored key sets.

use crate::common;

use std::path::PathBuf;

use candle_core::Device;
use ifp_trainer::config::{ModelType, PRESETS};
use ifp_trainer::models::{load_weights, Network, WeightSource};
use ifp_trainer::Config;

fn shared() -> PathBuf {
    common::golden_dir().join("..")
}

#[test]
fn reference_configs_load_unchanged() {
    let r = Config::load(
        shared()
            .join("reference/restormer_pretrain_mMask.yaml")
            .to_str()
            .expect("p"),
    )
    .expect("restormer reference config");
    assert_eq!(r.model.kind, ModelType::Restormer);
    assert_eq!(r.model.restormer.dim, 48);
    assert_eq!(r.data.img_size, 224);
    assert_eq!(r.total_steps(), 60000);
    assert_eq!(r.train.optimizer.betas, (0.9, 0.95));
    assert_eq!(r.train.base_lr, 3e-4);
    let u = Config::load(
        shared()
            .join("reference/uformer_pretrain_mMask.yaml")
            .to_str()
            .expect("p"),
    )
    .expect("uformer reference config");
    assert_eq!(u.model.kind, ModelType::Uformer);
    assert_eq!(u.model.uformer.image_size, 256);
}

#[test]
fn golden_configs_load_unchanged() {
    for name in ["restormer_tiny", "uformer_tiny", "uformer_tiny_shift"] {
        let p = common::golden_dir().join(format!("configs/{name}.yaml"));
        Config::load(p.to_str().expect("p")).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn presets_are_the_reference_configs() {
    let names: Vec<_> = PRESETS.iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        ["tiny", "tiny-uformer", "restormer-paper", "uformer-paper"]
    );
    // tiny-uformer is the golden test network.
    let tiny = Config::load("tiny-uformer").expect("preset");
    let golden = Config::load(
        common::golden_dir()
            .join("configs/uformer_tiny.yaml")
            .to_str()
            .expect("p"),
    )
    .expect("golden config");
    assert_eq!(tiny.model.uformer, golden.model.uformer);
    let paper = Config::load("restormer-paper").expect("preset");
    let reference = Config::load(
        shared()
            .join("reference/restormer_pretrain_mMask.yaml")
            .to_str()
            .expect("p"),
    )
    .expect("reference");
    assert_eq!(paper, reference);
}

#[test]
fn paper_restormer_has_the_reference_size() {
    let cfg = Config::load("restormer-paper").expect("preset");
    let net = Network::build(&cfg, WeightSource::Init(0), &Device::Cpu).expect("network");
    let n = net.num_parameters().expect("count");
    // The paper network has about 26.5M parameters (PyTorch counts 26,550,359 for this config).
    assert_eq!(n, 26_550_359);
}

#[test]
fn golden_restormer_config_builds_the_stored_key_set() {
    let dir = common::golden_dir();
    let cfg =
        Config::load(dir.join("configs/restormer_tiny.yaml").to_str().expect("p")).expect("config");
    let fresh = Network::build(&cfg, WeightSource::Init(7), &Device::Cpu).expect("fresh");
    let stored =
        load_weights(&dir.join("restormer_tiny.safetensors"), &Device::Cpu).expect("weights");
    let mut want: Vec<_> = stored.keys().cloned().collect();
    want.sort();
    let mut got: Vec<_> = fresh.state_dict().expect("state").keys().cloned().collect();
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn bias_true_keeps_the_patch_embedding_without_bias() {
    // The reference's OverlapPatchEmbed ignores BIAS; every other Restormer conv follows it.
    let mut cfg = Config::load("tiny").expect("preset");
    cfg.model.restormer.bias = true;
    let net = Network::build(&cfg, WeightSource::Init(0), &Device::Cpu).expect("network");
    let keys = net.state_dict().expect("state");
    assert!(!keys.contains_key("encoder.patch_embed.proj.bias"));
    assert!(keys.contains_key("encoder.encoder_level1.0.attn.qkv.bias"));
    assert!(keys.contains_key("encoder.output.bias"));
}
