//! Fine-tuning end to end on tiny networks and a few images of `../shared/data`: falling L1
//! loss, exact resumption, `ifp eval`'s scoring of a checkpoint, the fixed splits, and a tiny
//! IFP-vs-scratch comparison writing its JSON and CSV reports.

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::common;
use ifp_trainer::checkpoint::{model_path, state_path};
use ifp_trainer::finetune::compare::{compare, CompareSpec, Pretrain};
use ifp_trainer::finetune::evaluate::{evaluate_weights, EvalRequest};
use ifp_trainer::finetune::{self, data, Event, FinetuneConfig};
use ifp_trainer::{Config, Control};

/// `n` CBSD68 images copied into `dir` (a small, fast-loading clean set).
pub(crate) fn few_clean(dir: &Path, n: usize) -> PathBuf {
    let src = common::data_dir().join("clean/CBSD68");
    let out = dir.join("clean");
    std::fs::create_dir_all(&out).expect("mkdir");
    let entries = data::list_set(&src).expect("CBSD68");
    for e in entries.iter().take(n) {
        std::fs::copy(&e.target, out.join(&e.name)).expect("copy");
    }
    out
}

/// Centre `size` x `size` crops of the first `n` Kodak24 images, as PNGs in `dir/test`.
pub(crate) fn small_test_set(dir: &Path, n: usize, size: usize) -> PathBuf {
    let out = dir.join("test");
    std::fs::create_dir_all(&out).expect("mkdir");
    let entries = data::list_set(&common::data_dir().join("clean/Kodak24")).expect("Kodak24");
    let deg = data::Degradation {
        noise_sigma: 0.0,
        blur_sigma: 0.0,
    };
    for it in data::load_eval(&entries[..n], &deg, 0, size).expect("crops") {
        it.target.save_png(&out.join(&it.name)).expect("png");
    }
    out
}

/// The tiny preset's encoder, denoising sigma 25 on 24x24 crops.
fn tiny_task(train_dir: &Path, steps: usize, save_freq: usize) -> FinetuneConfig {
    let mut c = FinetuneConfig {
        model: Config::load("tiny").expect("tiny").model,
        ..Default::default()
    };
    c.data.train_dir = train_dir.to_path_buf();
    c.data.split_every = 5;
    c.data.noise_sigma = 25.0;
    c.data.crop = 24;
    c.data.batch_size = 4;
    c.data.val_images = 1;
    c.data.val_crop = 32;
    c.train.steps = Some(steps);
    c.train.warmup_epochs = 2;
    c.train.base_lr = 2e-3;
    c.save_freq = save_freq;
    c.validate().expect("valid");
    c
}

/// Fine-tunes `cfg` into `dir` from the start: every step's loss and the summary.
pub(crate) fn losses_of(cfg: &FinetuneConfig, dir: &Path) -> (Vec<f64>, finetune::FinetuneSummary) {
    let mut losses = Vec::new();
    let s = finetune::finetune(cfg, &common::cpu_run(dir, false), |ev| {
        if let Event::Step(p) = ev {
            losses.push(p.loss);
        }
        Control::Continue
    })
    .expect("fine-tuning");
    (losses, s)
}

#[test]
fn l1_loss_falls_on_a_tiny_config() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tiny_task(&few_clean(tmp.path(), 5), 30, 30);
    let (losses, s) = losses_of(&cfg, &tmp.path().join("run"));
    let head: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let tail: f64 = losses[25..].iter().sum::<f64>() / 5.0;
    eprintln!("L1 of steps 1-5 {head:.5}, of steps 26-30 {tail:.5}");
    assert!(tail < 0.85 * head, "loss did not fall: {head} -> {tail}");
    let best = s.best.expect("validated");
    assert_eq!((best.step, s.history.len()), (30, 1));
    assert!(best.scores.psnr.is_finite() && best.scores.ssim > 0.0);
}

#[test]
fn resumed_run_is_bit_identical() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = tiny_task(&few_clean(tmp.path(), 5), 6, 3);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    finetune::finetune(&cfg, &common::cpu_run(&a, false), |_| Control::Continue).expect("straight");
    let s = finetune::finetune(&cfg, &common::cpu_run(&b, false), |ev| match ev {
        Event::Step(p) if p.step == 3 => Control::Stop,
        _ => Control::Continue,
    })
    .expect("first half");
    assert!(s.run.stopped && s.run.steps_done == 3);
    // A stopped run is not tested: its best checkpoint is not final.
    assert!(s.test.is_none() && !finetune::test_set::test_path(&b).exists());
    let s = finetune::finetune(&cfg, &common::cpu_run(&b, true), |_| Control::Continue)
        .expect("resume");
    assert_eq!((s.run.resumed_from, s.run.steps_done), (Some(3), 6));
    common::assert_same_file(&model_path(&a, 6), &model_path(&b, 6), "resumed weights");
    common::assert_same_file(&state_path(&a, 6), &state_path(&b, 6), "resumed state");
    let (ha, hb) = (finetune::history_path(&a), finetune::history_path(&b));
    common::assert_same_file(&ha, &hb, "resumed history");
    // A different config refuses to resume.
    let mut other = cfg.clone();
    other.data.noise_sigma = 15.0;
    let err = finetune::finetune(&other, &common::cpu_run(&b, true), |_| Control::Continue)
        .expect_err("must refuse");
    assert!(err.to_string().contains("NOISE_SIGMA"), "{err}");
}

/// A stop while the finished run scores its test images ends it untested, as a stop during
/// training would; a resume scores the test set then.
#[test]
fn a_stop_while_testing_leaves_the_test_to_the_resume() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cfg = tiny_task(&few_clean(tmp.path(), 5), 2, 2);
    cfg.data.test_dir = Some(small_test_set(tmp.path(), 2, 64));
    let run = tmp.path().join("run");
    let mut asked = Vec::new();
    let s = finetune::finetune(&cfg, &common::cpu_run(&run, false), |ev| match ev {
        Event::Testing { done, total } => {
            asked.push((done, total));
            if done == 1 {
                Control::Stop
            } else {
                Control::Continue
            }
        }
        _ => Control::Continue,
    })
    .expect("stopped while testing");
    assert_eq!(asked, [(0, 2), (1, 2)]);
    assert!(s.run.stopped && s.run.steps_done == 2 && s.test.is_none());
    assert!(!finetune::test_set::test_path(&run).exists());
    let s = finetune::finetune(&cfg, &common::cpu_run(&run, true), |_| Control::Continue)
        .expect("resume");
    assert!(!s.run.stopped);
    assert_eq!(s.test.expect("tested").test_images, 2);
    assert!(finetune::test_set::test_path(&run).exists());
}

#[test]
fn eval_scores_a_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let train = few_clean(tmp.path(), 5);
    let test = small_test_set(tmp.path(), 2, 96);
    let mut cfg = tiny_task(&train, 2, 2);
    cfg.data.test_dir = Some(test.clone());
    let run = tmp.path().join("run");
    let summary = finetune::finetune(&cfg, &common::cpu_run(&run, false), |_| Control::Continue)
        .expect("fine-tuning");
    let (best, path) = finetune::best_model(&run).expect("history").expect("best");
    assert_eq!(path, model_path(&run, best.step));
    let req = EvalRequest {
        weights: &path,
        dir: &test,
        noise_sigma: None,
        blur_sigma: None,
        max_images: 0,
        tile: None,
        save_outputs: None,
    };
    let whole = evaluate_weights(&req, &Device::Cpu).expect("eval");
    assert_eq!(whole.len(), 2);
    // The finished run scored the same checkpoint on the same test images, through the run's
    // own config rather than the model file's, and wrote what it returned to `test.json`.
    let tested = summary.test.expect("a finished run is tested");
    assert_eq!((tested.best_step, tested.test_images), (best.step, 2));
    assert_eq!(tested.per_image, whole);
    let written: finetune::TestReport = serde_json::from_slice(
        &std::fs::read(finetune::test_set::test_path(&run)).expect("test.json"),
    )
    .expect("parse test.json");
    assert_eq!(written.per_image, whole);
    let mean = whole.iter().map(|s| s.scores.psnr).sum::<f64>() / 2.0;
    assert!((written.test.psnr.mean - mean).abs() < 1e-9, "{written:?}");
    for s in &whole {
        // sigma 25 noise alone is about 20 dB; a 2-step network stays near it.
        assert!(s.scores.psnr > 12.0 && s.scores.psnr < 40.0, "{s:?}");
    }
    // Tiled restoration covers the image and stays close to the whole-image one.
    let tiled = evaluate_weights(
        &EvalRequest {
            tile: Some(64),
            ..req
        },
        &Device::Cpu,
    )
    .expect("tiled eval");
    for (w, t) in whole.iter().zip(&tiled) {
        assert!((w.scores.psnr - t.scores.psnr).abs() < 1.0, "{w:?} {t:?}");
    }
    // Saved outputs are the restorations: scored against the targets they give the reported
    // PSNR, up to 8-bit rounding (the noisy input would score differently).
    let outputs = tmp.path().join("restored");
    let saved = evaluate_weights(
        &EvalRequest {
            save_outputs: Some(&outputs),
            ..req
        },
        &Device::Cpu,
    )
    .expect("eval with outputs");
    let targets = ifp_trainer::finetune::data::list_set(&test).expect("test set");
    for (s, entry) in saved.iter().zip(&targets) {
        let png = outputs.join(std::path::Path::new(&s.name).with_extension("png"));
        let load = |p: &std::path::Path| {
            let rgb = image::open(p).expect("an image").to_rgb8();
            ifp_trainer::data::image::Image::from_rgb8(&rgb)
        };
        let (restored, target) = (load(&png), load(&entry.target));
        let again = ifp_trainer::eval::metrics::score(&restored, &target).expect("score");
        assert!((again.psnr - s.scores.psnr).abs() < 0.1, "{s:?}: {again:?}");
    }
    // A pre-training checkpoint is not a fine-tuned model.
    let bad = EvalRequest {
        weights: &train.join("nope.safetensors"),
        ..req
    };
    assert!(evaluate_weights(&bad, &Device::Cpu).is_err());
}

#[test]
fn splits_are_fixed_and_paired_sets_are_recognised() {
    let rain = common::data_dir().join("rain/Rain100H");
    let mut d = FinetuneConfig::default().data;
    d.train_dir = rain;
    d.split_every = 5;
    d.val_images = 4;
    let (train, val, test) = data::split(&d).expect("split");
    assert_eq!((train.len(), val.len(), test.len()), (76, 4, 20));
    assert_eq!(test[0].name, "norain-5.png");
    assert_eq!(test[19].name, "norain-100.png");
    assert!(train.iter().all(|e| e.input.is_some()));
    assert!(!train
        .iter()
        .chain(&val)
        .any(|e| test.iter().any(|t| t.name == e.name)));
    assert_eq!(data::split(&d).expect("again").2, test);
}

#[test]
fn a_degradation_must_fit_the_data() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let clean = few_clean(tmp.path(), 3);
    let rain = common::data_dir().join("rain/Rain100H");
    let mut d = FinetuneConfig::default().data;
    let refused = |d: &finetune::TaskData, key: &str, needle: &str| {
        let e = data::check_degradation(d, Path::new("")).expect_err("refused");
        assert_eq!(e.key_path(), Some(key), "{e}");
        assert!(e.to_string().contains(needle), "{e}");
        // The run itself refuses it too, before reading an image.
        let e = data::split(d).expect_err("split refused");
        assert!(e.to_string().contains(key), "{e}");
    };
    // Clean images and no degradation: nothing to restore.
    d.train_dir = clean.clone();
    refused(&d, "DATA.TRAIN_DIR", "nothing to restore");
    // Noise or blur on paired data would degrade the degraded inputs again.
    d.train_dir = rain.clone();
    d.noise_sigma = 25.0;
    refused(&d, "DATA.NOISE_SIGMA", "25");
    d.noise_sigma = 0.0;
    d.blur_sigma = 1.5;
    refused(&d, "DATA.BLUR_SIGMA", "1.5");
    // A clean test folder next to paired training data has nothing to restore either.
    d.blur_sigma = 0.0;
    d.test_dir = Some(clean.clone());
    refused(&d, "DATA.TEST_DIR", "nothing to restore");
    // What fits: paired data as it is, clean data with a degradation; a relative folder is
    // found under the given root.
    d.test_dir = None;
    data::check_degradation(&d, Path::new("")).expect("paired, no degradation");
    d.train_dir = PathBuf::from("clean");
    d.noise_sigma = 15.0;
    data::check_degradation(&d, tmp.path()).expect("clean + noise");
    d.noise_sigma = 0.0;
    let e = data::check_degradation(&d, tmp.path()).expect_err("clean, relative");
    assert_eq!(e.key_path(), Some("DATA.TRAIN_DIR"), "{e}");
}

#[test]
fn a_config_states_its_network_only_with_a_model_tree() {
    assert!(FinetuneConfig::names_model("MODEL:\n  TYPE: restormer\n"));
    assert!(FinetuneConfig::names_model("{\"MODEL\": {}, \"SEED\": 1}"));
    assert!(!FinetuneConfig::names_model("DATA:\n  TRAIN_DIR: x\n"));
    assert!(!FinetuneConfig::names_model(
        "# MODEL: in a comment only\nSEED: 1\n"
    ));
    assert!(!FinetuneConfig::names_model(""));
}

/// A tiny comparison under `dir`: `steps` of 16x16 pre-training and of fine-tuning (saving
/// every 2) on five clean images, scored on `test.0` test images of side `test.1`.
fn tiny_compare(dir: &Path, steps: usize, test: (usize, usize), showcase: usize) -> CompareSpec {
    let train = few_clean(dir, 5);
    let mut ft = tiny_task(&train, steps, 2);
    ft.data.test_dir = Some(small_test_set(dir, test.0, test.1));
    let mut pre = Config::load("tiny").expect("tiny");
    pre.data.img_size = 16;
    pre.train.steps = Some(steps);
    pre.train.warmup_epochs = 1;
    pre.validate().expect("valid");
    CompareSpec {
        finetune: ft,
        pretrain: Pretrain::Run(Box::new(pre)),
        extra_arm: None,
        tile: None,
        showcase,
    }
}

#[test]
fn tiny_compare_writes_json_and_csv() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spec = tiny_compare(tmp.path(), 4, (1, 64), 1);
    let out = tmp.path().join("cmp");
    let report = compare(&spec, &out, &Device::Cpu, |_| Control::Continue).expect("compare");
    assert_eq!(report.arms.len(), 2);
    assert_eq!(report.deltas.len(), 1);
    assert_eq!(report.per_image.len(), 1);
    for a in &report.arms {
        assert_eq!(a.val_curve.len(), 2, "{}", a.name);
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("json"))
            .expect("parse");
    assert_eq!(json["arms"][0]["name"], "ifp");
    assert!(json["deltas"][0]["diff"]["psnr"]["mean"].is_number());
    let csv = std::fs::read_to_string(out.join("per_image.csv")).expect("csv");
    assert!(csv.starts_with("image,ifp_psnr,"), "{csv}");
    assert_eq!(csv.lines().count(), 2);
    let curve = std::fs::read_to_string(out.join("val_curve.csv")).expect("curve");
    assert_eq!(curve.lines().count(), 1 + 2 * 2);
    assert!(std::fs::read_dir(&out).expect("ls").any(|e| e
        .expect("e")
        .file_name()
        .to_string_lossy()
        .starts_with("showcase-")));
    eprintln!("{}", ifp_trainer::finetune::compare::table(&report));
}

/// Issue 18: a comparison over two seeds shares one pre-training, runs each seed's arms, and
/// summarises them: per-seed means and differences equal to the seeds' own reports, counts of
/// seeds and images favouring IFP, files beside them.
#[test]
fn a_two_seed_compare_summarises_the_seeds() {
    use ifp_trainer::finetune::seeds::compare_seeds;
    let tmp = tempfile::tempdir().expect("tempdir");
    let spec = tiny_compare(tmp.path(), 2, (2, 48), 0);
    let out = tmp.path().join("seeds");
    let (reports, summary) = compare_seeds(&spec, &[7, 8], false, &out, &Device::Cpu, |_, _| {
        Control::Continue
    })
    .expect("two seeds");
    assert_eq!(summary.seeds, [7, 8]);
    // One pre-training, in the first seed's folder; the second reuses its weights.
    assert!(out.join("seed-7/pretrain").is_dir());
    assert!(!out.join("seed-8/pretrain").exists());
    assert_eq!(reports[1].pretrain.weights, reports[0].pretrain.weights);
    // Different fine-tuning seeds give different runs.
    assert_ne!(
        reports[0].arms[1].test.psnr.mean,
        reports[1].arms[1].test.psnr.mean
    );
    let d = &summary.deltas[0];
    assert_eq!((d.arm.as_str(), d.baseline.as_str()), ("ifp", "scratch"));
    let per_seed: Vec<f64> = reports.iter().map(|r| r.deltas[0].diff.psnr.mean).collect();
    assert_eq!(d.psnr.per_seed, per_seed);
    assert!((d.psnr.mean - (per_seed[0] + per_seed[1]) / 2.0).abs() < 1e-12);
    assert!(d.psnr.ci95.is_some());
    assert_eq!(
        d.seeds_favouring,
        per_seed.iter().filter(|&&x| x > 0.0).count()
    );
    assert_eq!(d.per_image.len(), 2);
    assert_eq!(
        summary.arms[0].psnr.per_seed,
        reports
            .iter()
            .map(|r| r.arms[0].test.psnr.mean)
            .collect::<Vec<_>>()
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("seeds.json")).expect("json"))
            .expect("parse");
    assert_eq!(json["deltas"][0]["seeds_favouring"], d.seeds_favouring);
    let csv = std::fs::read_to_string(out.join("seeds.csv")).expect("csv");
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(
        csv.starts_with("seed,ifp_psnr,ifp_ssim,scratch_psnr"),
        "{csv}"
    );
    eprintln!("{}", ifp_trainer::finetune::seeds::seeds_table(&summary));
}
