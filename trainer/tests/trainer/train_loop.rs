//! The training loop end to end on a tiny network: falling loss, checkpoint files, exact
//! resumption, divergence detection, and a mask that removes nothing.

use candle_core::Device;

use crate::common;
use ifp_trainer::checkpoint::{self, model_path, sample_path, state_path};
use ifp_trainer::models::{load_weights, Network, WeightSource};
use ifp_trainer::{train, Config, Control, Event, TrainerError};

fn tiny(steps: usize, save_freq: usize) -> Config {
    let mut cfg = Config::load("tiny").expect("tiny preset");
    cfg.data.img_size = 16;
    cfg.data.batch_size = 2;
    cfg.train.steps = Some(steps);
    cfg.train.warmup_epochs = 2;
    cfg.save_freq = save_freq;
    cfg.validate().expect("valid");
    cfg
}

#[test]
fn loss_falls_on_the_tiny_preset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = Config::load("tiny").expect("tiny preset");
    cfg.train.steps = Some(40);
    cfg.train.warmup_epochs = 5;
    cfg.save_freq = 1000;
    let mut losses = Vec::new();
    train(&cfg, &common::cpu_run(dir.path(), false), |ev| {
        if let Event::Step(p) = ev {
            losses.push(p.loss);
        }
        Control::Continue
    })
    .expect("training");
    assert_eq!(losses.len(), 40);
    let head: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let tail: f64 = losses[35..].iter().sum::<f64>() / 5.0;
    eprintln!("tiny preset: mean loss of steps 1-5 {head:.5}, of steps 36-40 {tail:.5}");
    assert!(tail < 0.8 * head, "loss did not fall: {head} -> {tail}");
}

#[test]
fn checkpoints_are_complete_and_loadable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = tiny(4, 2);
    let mut seen = Vec::new();
    let summary = train(&cfg, &common::cpu_run(dir.path(), false), |ev| {
        if let Event::Checkpoint(c) = ev {
            seen.push(c.step);
        }
        Control::Continue
    })
    .expect("training");
    assert_eq!(seen, vec![2, 4]);
    assert_eq!(summary.steps_done, 4);
    for step in [2, 4] {
        for p in [
            model_path(dir.path(), step),
            state_path(dir.path(), step),
            sample_path(dir.path(), step),
        ] {
            assert!(
                checkpoint::verify(&p),
                "{} or its sidecar is missing or wrong",
                p.display()
            );
        }
    }
    // The model file holds exactly the network's state_dict and rebuilds it strictly.
    let w = load_weights(&model_path(dir.path(), 4), &Device::Cpu).expect("weights");
    let net = Network::build(&cfg, WeightSource::Tensors(w), &Device::Cpu).expect("strict load");
    assert_eq!(net.vars().expect("vars").len(), 131);
    // Two rows of five tiles, 2 px apart: input | corrupted | reconstruction | target | error,
    // and their spectra below with the removed frequencies tinted red.
    let png = image::open(sample_path(dir.path(), 4))
        .expect("sample png")
        .to_rgb8();
    let tile = (png.height() - 2) / 2;
    assert_eq!(
        (png.width(), png.height()),
        (5 * tile + 8, 2 * tile + 2),
        "two rows of five tiles"
    );
    let red = (0..png.width())
        .flat_map(|x| (tile + 2..png.height()).map(move |y| (x, y)))
        .filter(|&(x, y)| {
            let [r, g, b] = png.get_pixel(x, y).0;
            r >= 128 && g < r / 2 && b < r / 2
        })
        .count();
    assert!(red > 100, "the spectra show the mask: {red} red pixels");
    assert_eq!(checkpoint::latest_complete(dir.path()), Some(4));
}

/// A tiny Uformer (golden tiny network shape, 32x32 crops): every block depth 1, so the
/// stochastic-depth rates are 0, 0.033, 0.067, 0.1 (encoder), 0.1 (bottleneck) and reversed.
fn tiny_uformer(steps: usize, save_freq: usize) -> Config {
    let yaml = format!(
        "MODEL:\n  TYPE: uformer\n  RECOVER_TARGET_TYPE: m_masked\n  UFORMER:\n    \
         IMAGE_SIZE: 32\n    EMBED_DIM: 8\n    DEPTHS: [1, 1, 1, 1, 1, 1, 1, 1, 1]\n    \
         WIN_SIZE: 4\nDATA:\n  IMG_SIZE: 32\n  BATCH_SIZE: 2\nTRAIN:\n  STEPS: {steps}\n  \
         WARMUP_EPOCHS: 2\n  BASE_LR: 0.128\nSAVE_FREQ: {save_freq}\n"
    );
    Config::from_yaml(&yaml).expect("tiny uformer config")
}

/// Stochastic depth draws from a per-step stream, so a resumed Uformer run (drop-path rate
/// 0.1 by default) still ends with exactly the straight run's weights and moments.
#[test]
fn uformer_resume_with_stochastic_depth_is_bit_identical() {
    let straight = tempfile::tempdir().expect("tempdir");
    let split = tempfile::tempdir().expect("tempdir");
    let cfg = tiny_uformer(4, 100);
    assert_eq!(cfg.model.uformer.drop_path_rate, 0.1);
    train(&cfg, &common::cpu_run(straight.path(), false), |_| {
        Control::Continue
    })
    .expect("straight run");
    train(&cfg, &common::cpu_run(split.path(), false), |ev| match ev {
        Event::Step(p) if p.step == 2 => Control::Stop,
        _ => Control::Continue,
    })
    .expect("first half");
    let second = train(&cfg, &common::cpu_run(split.path(), true), |_| {
        Control::Continue
    })
    .expect("resume");
    assert_eq!(second.resumed_from, Some(2));
    common::assert_same_file(
        &model_path(straight.path(), 4),
        &model_path(split.path(), 4),
        "Uformer weights after resuming differ from the straight run",
    );
    common::assert_same_file(
        &state_path(straight.path(), 4),
        &state_path(split.path(), 4),
        "Uformer optimiser moments after resuming differ from the straight run",
    );
}

#[test]
fn resume_is_bit_identical() {
    let straight = tempfile::tempdir().expect("tempdir");
    let split = tempfile::tempdir().expect("tempdir");
    let cfg = tiny(6, 100);
    train(&cfg, &common::cpu_run(straight.path(), false), |_| {
        Control::Continue
    })
    .expect("straight run");
    // Stop after 3 steps (as a cancelled job would), then resume to 6.
    let first = train(&cfg, &common::cpu_run(split.path(), false), |ev| match ev {
        Event::Step(p) if p.step == 3 => Control::Stop,
        _ => Control::Continue,
    })
    .expect("first half");
    assert!(first.stopped);
    assert_eq!(checkpoint::latest_complete(split.path()), Some(3));
    let second = train(&cfg, &common::cpu_run(split.path(), true), |_| {
        Control::Continue
    })
    .expect("resume");
    assert_eq!(second.resumed_from, Some(3));
    assert_eq!(second.steps_done, 6);
    common::assert_same_file(
        &model_path(straight.path(), 6),
        &model_path(split.path(), 6),
        "weights after resuming differ from the straight run",
    );
    common::assert_same_file(
        &state_path(straight.path(), 6),
        &state_path(split.path(), 6),
        "optimiser moments after resuming differ from the straight run",
    );
}

#[test]
fn divergence_stops_with_the_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = tiny(20, 100);
    cfg.train.base_lr = 1e30;
    cfg.train.warmup_epochs = 0;
    cfg.train.clip_grad = 0.0;
    let err = train(&cfg, &common::cpu_run(dir.path(), false), |_| {
        Control::Continue
    })
    .expect_err("must diverge");
    match &err {
        TrainerError::NonFinite { step, .. } => assert!(*step >= 1 && *step <= 20, "{err}"),
        other => panic!("expected a divergence error, got {other}"),
    }
    assert!(err.to_string().contains("step"), "{err}");
}

#[test]
fn a_mask_that_removes_nothing_gives_finite_losses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = tiny(3, 100);
    cfg.data.sample_ratio = 0.0;
    let mut losses = Vec::new();
    train(&cfg, &common::cpu_run(dir.path(), false), |ev| {
        if let Event::Step(p) = ev {
            losses.push(p.loss);
        }
        Control::Continue
    })
    .expect("training with an empty mask");
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
}

#[test]
fn per_sample_masks_and_mfm_train() {
    for (filter, mode) in [("IFP", "per_sample"), ("MFM", "fixed")] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = tiny(2, 100);
        cfg.data.filter_type = filter.into();
        cfg.data.mask_mode = mode.into();
        cfg.data.mask_radius1 = 4.0;
        let s = train(&cfg, &common::cpu_run(dir.path(), false), |_| {
            Control::Continue
        })
        .expect("training");
        assert!(s.final_loss.is_some_and(f64::is_finite), "{filter}/{mode}");
    }
}

#[test]
fn resume_refuses_a_different_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = tiny(2, 2);
    train(&cfg, &common::cpu_run(dir.path(), false), |_| {
        Control::Continue
    })
    .expect("first run");
    let mut other = tiny(4, 2);
    other.data.sample_ratio = 0.25;
    let err = train(&other, &common::cpu_run(dir.path(), true), |_| {
        Control::Continue
    })
    .expect_err("must refuse");
    assert!(
        err.to_string().contains("sample_ratio") || err.to_string().contains("SAMPLE_RATIO"),
        "{err}"
    );
    // A longer run of the same config is fine.
    let more = train(&tiny(4, 2), &common::cpu_run(dir.path(), true), |_| {
        Control::Continue
    })
    .expect("longer");
    assert_eq!(more.steps_done, 4);
}

#[test]
fn the_same_run_writes_the_same_bytes() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let cfg = tiny(2, 2);
    let ra = train(&cfg, &common::cpu_run(a.path(), false), |_| {
        Control::Continue
    })
    .expect("run a");
    let rb = train(&cfg, &common::cpu_run(b.path(), false), |_| {
        Control::Continue
    })
    .expect("run b");
    let (ca, cb) = (
        ra.last_checkpoint.expect("ck a"),
        rb.last_checkpoint.expect("ck b"),
    );
    assert_eq!(
        ca.model.sha256, cb.model.sha256,
        "model files differ between identical runs"
    );
    assert_eq!(
        ca.state.sha256, cb.state.sha256,
        "state files differ between identical runs"
    );
}
