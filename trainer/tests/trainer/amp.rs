//! Mixed precision (`TRAIN.AMP: bf16`): the bf16 forward and gradients stay close to the float32
//! golden values, parameters and gradients stay float32, and training steps run with falling
//! loss. On `IFP_TEST_DEVICE` (CPU by default; `bench/gpu-check.sh` runs them on CUDA).
//!
//! The errors are printed. bf16 keeps 8 bits of mantissa, so they are ~1e-2 on the output and
//! larger on gradients that are sums of many small terms. The yardstick is PyTorch's own
//! `torch.autocast(bfloat16)` on restormer_tiny with the golden weights (CPU,
//! `bench/torch_amp_reference.py`): output 1.4e-2, grad.input 1.4e-1, worst parameter gradient
//! 3.7e-1 (a LayerNorm bias). The bounds below allow about that much, not more.

use crate::common;

use candle_core::{DType, Var};
use ifp_trainer::config::Amp;
use ifp_trainer::models::{load_weights, Network, WeightSource};
use ifp_trainer::{Config, Control, Event, TrainOptions};

/// Output and worst gradient relative L2 errors of one golden network run in bf16.
fn bf16_errors(name: &str) -> (f64, f64, f64) {
    let dir = common::golden_dir();
    let mut cfg = Config::load(
        dir.join(format!("configs/{name}.yaml"))
            .to_str()
            .expect("path"),
    )
    .expect("config");
    cfg.train.amp = Amp::Bf16;
    let dev = common::test_device();
    let file = dir.join(format!("{name}.safetensors"));
    let g = candle_core::safetensors::load(&file, &dev).expect("golden file");
    let weights = load_weights(&file, &dev).expect("weights");
    let net = Network::build(&cfg, WeightSource::Tensors(weights), &dev).expect("network");
    let input = Var::from_tensor(&g["input"]).expect("var");
    let out = net.forward(input.as_tensor()).expect("forward");
    assert_eq!(out.dtype(), DType::F32, "the output comes back in float32");
    let o = common::rel_l2(&out, &g["output"]);
    let loss = (out * &g["probe"]).expect("mul").sum_all().expect("sum");
    let grads = loss.backward().expect("backward");
    let gi = common::rel_l2(
        grads.get(input.as_tensor()).expect("input grad"),
        &g["grad.input"],
    );
    let mut worst = 0f64;
    for (pname, v) in net.vars().expect("vars") {
        assert_eq!(
            v.dtype(),
            DType::F32,
            "{pname}: master weights stay float32"
        );
        let grad = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: {pname} received no gradient under AMP"));
        assert_eq!(grad.dtype(), DType::F32, "{pname}: gradient dtype");
        worst = worst.max(common::rel_l2(grad, &g[&format!("grad.{pname}")]));
    }
    eprintln!(
        "{name} bf16 AMP on {:?}: output rel L2 {o:.3e}, grad.input {gi:.3e}, worst parameter gradient {worst:.3e}",
        dev.location()
    );
    (o, gi, worst)
}

#[test]
fn bf16_restormer_is_close_to_the_float32_reference() {
    let (o, gi, worst) = bf16_errors("restormer_tiny");
    assert!(o < 2e-2, "output {o}");
    assert!(gi < 0.2 && worst < 0.45, "gradients {gi} {worst}");
}

#[test]
fn bf16_uformer_is_close_to_the_float32_reference() {
    let (o, gi, worst) = bf16_errors("uformer_tiny");
    assert!(o < 2e-2, "output {o}");
    assert!(gi < 0.2 && worst < 0.45, "gradients {gi} {worst}");
}

/// The losses of 30 tiny-preset training steps with the given AMP setting.
fn train_losses(amp: Amp) -> Vec<f64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = Config::load("tiny").expect("tiny preset");
    cfg.train.amp = amp;
    cfg.train.steps = Some(30);
    cfg.train.warmup_epochs = 5;
    cfg.save_freq = 1000;
    let opts = TrainOptions {
        out_dir: dir.path().to_path_buf(),
        device: common::test_device(),
        resume: false,
    };
    let mut losses = Vec::new();
    ifp_trainer::train(&cfg, &opts, |ev| {
        if let Event::Step(p) = ev {
            losses.push(p.loss);
        }
        Control::Continue
    })
    .expect("training");
    assert_eq!(losses.len(), 30);
    losses
}

/// Training under `TRAIN.AMP: bf16` really runs in bf16 (its first loss differs from the float32
/// run's on the same batch, by a bf16-sized amount) and still learns.
#[test]
fn bf16_training_steps_lower_the_loss() {
    let losses = train_losses(Amp::Bf16);
    let f32_losses = train_losses(Amp::Off);
    let first = (losses[0] - f32_losses[0]).abs() / f32_losses[0];
    let head: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let tail: f64 = losses[25..].iter().sum::<f64>() / 5.0;
    eprintln!(
        "tiny preset, bf16 AMP: mean loss of steps 1-5 {head:.5}, of steps 26-30 {tail:.5}; \
         first loss {:.6} vs float32 {:.6}",
        losses[0], f32_losses[0]
    );
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(
        first > 0.0,
        "bf16 training gave the float32 loss: AMP not applied"
    );
    assert!(first < 0.05, "first loss {first} away from float32's");
    assert!(tail < 0.8 * head, "loss did not fall: {head} -> {tail}");
}
