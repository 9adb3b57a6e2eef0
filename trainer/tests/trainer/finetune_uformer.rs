//! Uformer fine-tuning (issue 18): the whole pre-trained Uformer, encoder and decoder, trained
//! end to end with a residual output. Its L1 loss falls; an IFP initialisation carries both
//! parts over under the reference's names; resumption is exact with stochastic depth on; images
//! of any shape are restored through the padding; a comparison runs on a Uformer; crops the
//! windows cannot tile and mismatched backbones are refused naming the key.

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::common;
use crate::finetune::{few_clean, losses_of, small_test_set};
use ifp_trainer::checkpoint::{model_path, state_path};
use ifp_trainer::finetune::compare::{compare, CompareSpec, Pretrain};
use ifp_trainer::finetune::{self, net, Event, FinetuneConfig, FinetuneNet};
use ifp_trainer::models::WeightSource;
use ifp_trainer::{Config, Control};

/// The `tiny-uformer` preset (the golden network's size), denoising sigma 25 on 32x32 crops.
fn uformer_task(train_dir: &Path, steps: usize, save_freq: usize) -> FinetuneConfig {
    let mut c = FinetuneConfig {
        model: Config::load("tiny-uformer").expect("preset").model,
        ..Default::default()
    };
    c.data.train_dir = train_dir.to_path_buf();
    c.data.noise_sigma = 25.0;
    c.data.crop = 32;
    c.data.batch_size = 4;
    c.data.val_images = 1;
    c.data.val_crop = 48; // not a side the network takes: validation goes through the padding
    c.train.steps = Some(steps);
    c.train.warmup_epochs = 2;
    c.train.base_lr = 2e-3;
    c.save_freq = save_freq;
    c.validate().expect("valid");
    c
}

fn keys(t: impl IntoIterator<Item = (String, Tensor)>) -> BTreeSet<(String, Vec<usize>)> {
    t.into_iter().map(|(k, v)| (k, v.dims().to_vec())).collect()
}

#[test]
fn uformer_l1_loss_falls() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = uformer_task(&few_clean(tmp.path(), 5), 60, 60);
    cfg.train.base_lr = 5e-3;
    let (losses, s) = losses_of(&cfg, &tmp.path().join("run"));
    let head: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let tail: f64 = losses[55..].iter().sum::<f64>() / 5.0;
    eprintln!("Uformer L1 of steps 1-5 {head:.5}, of steps 56-60 {tail:.5}");
    assert!(tail < 0.8 * head, "loss did not fall: {head} -> {tail}");
    let best = s.best.expect("validated");
    assert!(best.scores.psnr.is_finite() && best.scores.ssim > 0.0);
}

/// From a pre-training checkpoint, fine-tuning starts from its encoder AND decoder, and writes
/// the same keys (the reference Uformer's, buffers included); from scratch it draws new ones.
#[test]
fn an_ifp_initialisation_carries_encoder_and_decoder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut pre = Config::load("tiny-uformer").expect("preset");
    pre.train.steps = Some(2);
    pre.save_freq = 2;
    let pre_dir = tmp.path().join("pre");
    ifp_trainer::train(&pre, &common::cpu_run(&pre_dir, false), |_| {
        Control::Continue
    })
    .expect("pre-training");
    let weights = net::load_all(&model_path(&pre_dir, 2), &Device::Cpu).expect("weights");

    let mut cfg = uformer_task(&few_clean(tmp.path(), 5), 2, 2);
    cfg.init = Some(model_path(&pre_dir, 2));
    let ft = finetune::Finetuner::new(&cfg, &Device::Cpu).expect("from IFP");
    let state = ft.network().state_dict().expect("state");
    assert_eq!(
        keys(state.clone()),
        keys(weights.clone()),
        "same names and shapes"
    );
    for (k, v) in &state {
        let d = common::rel_l2(v, &weights[k]);
        assert!(
            d == 0.0,
            "{k} was not loaded from the pre-training checkpoint ({d})"
        );
    }
    // From scratch: the same keys, other values (the decoder is not the pre-trained one).
    cfg.init = None;
    let scratch = finetune::Finetuner::new(&cfg, &Device::Cpu).expect("from scratch");
    let s = scratch.network().state_dict().expect("state");
    assert_eq!(keys(s.clone()), keys(weights.clone()));
    let k = "decoder.output_proj.proj.0.weight";
    assert!(common::rel_l2(&s[k], &weights[k]) > 0.1);

    // A fine-tuned Uformer reloads strictly; a file without a decoder is refused.
    let enc_only: std::collections::HashMap<String, Tensor> = weights
        .into_iter()
        .filter(|(k, _)| k.starts_with("encoder."))
        .collect();
    let e = FinetuneNet::new(
        &cfg.model,
        WeightSource::Tensors(enc_only.clone()),
        WeightSource::Tensors(enc_only),
        true,
        &Device::Cpu,
    )
    .err()
    .expect("no decoder");
    assert!(e.to_string().contains("decoder."), "{e}");
}

#[test]
fn a_resumed_uformer_run_is_bit_identical() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = uformer_task(&few_clean(tmp.path(), 5), 4, 2);
    assert!(
        cfg.model.uformer.drop_path_rate > 0.0,
        "stochastic depth on"
    );
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    finetune::finetune(&cfg, &common::cpu_run(&a, false), |_| Control::Continue).expect("straight");
    let s = finetune::finetune(&cfg, &common::cpu_run(&b, false), |ev| match ev {
        Event::Step(p) if p.step == 2 => Control::Stop,
        _ => Control::Continue,
    })
    .expect("first half");
    assert!(s.run.stopped);
    finetune::finetune(&cfg, &common::cpu_run(&b, true), |_| Control::Continue).expect("resume");
    common::assert_same_file(&model_path(&a, 4), &model_path(&b, 4), "resumed weights");
    common::assert_same_file(&state_path(&a, 4), &state_path(&b, 4), "resumed state");
}

/// Any image shape (here 40x70, padded to 128x128 inside) gives an output of that shape; the
/// residual output is the input plus the scaled network output.
#[test]
fn images_of_any_shape_are_restored() {
    let cfg = uformer_task(Path::new("unused"), 1, 1);
    let net = FinetuneNet::new(
        &cfg.model,
        WeightSource::Init(1),
        WeightSource::Init(2),
        true,
        &Device::Cpu,
    )
    .expect("network");
    let x = Tensor::rand(0f32, 1f32, (1, 3, 40, 70), &Device::Cpu).expect("input");
    let y = net.forward(&x).expect("forward");
    assert_eq!(y.dims(), &[1, 3, 40, 70]);
    // Not residual: the output is the de-normalised network output, not the input plus it.
    let plain = FinetuneNet::new(
        &cfg.model,
        WeightSource::Init(1),
        WeightSource::Init(2),
        false,
        &Device::Cpu,
    )
    .expect("network");
    // restored = degraded + std * y (residual) and mean + std * y (plain): they differ by
    // degraded - mean.
    let z = plain.forward(&x).expect("forward");
    let mean = Tensor::new(&[0.485f32, 0.456, 0.406], &Device::Cpu)
        .and_then(|m| m.reshape((1, 3, 1, 1)))
        .expect("mean");
    let expect = (z + x.broadcast_sub(&mean).expect("x - mean")).expect("sum");
    assert!(common::rel_l2(&y, &expect) < 1e-6);
}

#[test]
fn crops_the_windows_cannot_tile_are_refused() {
    for (crop, fits) in [(24, "32 does"), (48, "64 does")] {
        let yaml = format!(
            "MODEL: {{TYPE: uformer, UFORMER: {{IMAGE_SIZE: 32, EMBED_DIM: 8, WIN_SIZE: 4, \
             DEPTHS: [1, 1, 1, 1, 1, 1, 1, 1, 1]}}}}\nDATA: {{TRAIN_DIR: x, CROP: {crop}}}"
        );
        let e = FinetuneConfig::from_yaml(&yaml).expect_err("refused");
        assert_eq!(e.key_path(), Some("DATA.CROP"), "{e}");
        assert!(e.to_string().contains(fits), "{e}");
    }
    // A bad IMAGE_SIZE is reported under its own key (a fine-tuning config has no IMG_SIZE).
    let e = FinetuneConfig::from_yaml(
        "MODEL: {TYPE: uformer, UFORMER: {IMAGE_SIZE: 40}}\nDATA: {TRAIN_DIR: x, CROP: 64}",
    )
    .expect_err("refused");
    assert_eq!(e.key_path(), Some("MODEL.UFORMER.IMAGE_SIZE"), "{e}");
}

/// "Does IFP help?" on a Uformer: IFP pre-training of the tiny Uformer, both arms fine-tuned
/// and scored; a Restormer pre-training for a Uformer fine-tuning is refused.
#[test]
fn a_uformer_comparison_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut ft = uformer_task(&few_clean(tmp.path(), 5), 2, 2);
    ft.data.test_dir = Some(small_test_set(tmp.path(), 1, 40));
    let mut pre = Config::load("tiny-uformer").expect("preset");
    pre.train.steps = Some(2);
    pre.train.warmup_epochs = 1;
    let spec = |pre: Config| CompareSpec {
        finetune: ft.clone(),
        pretrain: Pretrain::Run(Box::new(pre)),
        extra_arm: None,
        tile: None,
        showcase: 1,
    };
    let out = tmp.path().join("cmp");
    let r = compare(&spec(pre), &out, &Device::Cpu, |_| Control::Continue).expect("compare");
    assert_eq!(r.arms.len(), 2);
    assert_eq!(r.test_images, 1);
    assert!(r.deltas[0].diff.psnr.mean.is_finite());
    let e = compare(
        &spec(Config::load("tiny").expect("tiny")),
        &tmp.path().join("other"),
        &Device::Cpu,
        |_| Control::Continue,
    )
    .expect_err("Restormer pre-training, Uformer fine-tuning");
    assert!(e.to_string().contains("MODEL"), "{e}");
}
