//! `ifp finetune`: fine-tune a pre-trained (or fresh) network on a restoration data set (a
//! Restormer encoder with a one-convolution head, or a whole Uformer), validating and
//! checkpointing as it goes (`--resume` continues), then scoring its best checkpoint on the
//! test images (`test.json`).

use std::path::{Path, PathBuf};

use clap::Args;
use ifp_trainer::finetune::{self, Event, FinetuneConfig};
use ifp_trainer::train::Started;
use ifp_trainer::Control;

use super::{classify, load_config, parse_device, run_options, Failure};

/// The task flags shared by `ifp finetune` and `ifp compare`.
#[derive(Args, Clone)]
pub struct TaskArgs {
    /// A fine-tuning config (YAML, the `FinetuneConfig` schema); the flags below override it
    /// (default: none, the built-in defaults).
    #[arg(long, value_name = "FILE")]
    pub ft_config: Option<PathBuf>,
    /// Pre-training config or preset whose MODEL tree describes the network (e.g. tiny,
    /// tiny-uformer);
    /// defaults to the config stored beside the initial weights (`ifp finetune` needs one of them).
    #[arg(long, value_name = "FILE|PRESET")]
    pub model: Option<String>,
    /// Training images: a folder with input/ and target/, or clean images (with --sigma/--blur);
    /// required unless --ft-config gives DATA.TRAIN_DIR.
    #[arg(long, value_name = "DIR")]
    pub train: Option<PathBuf>,
    /// Without a test folder (--test), every K-th training image (natural name order) is a
    /// test image, never trained on (default 5).
    #[arg(long, value_name = "K")]
    pub split_every: Option<usize>,
    /// Gaussian noise sigma on the 0-255 scale for clean images, e.g. 25 (default 0: none).
    #[arg(long, value_name = "S")]
    pub sigma: Option<f64>,
    /// Gaussian blur sigma in pixels for clean images, before the noise (default 0: none).
    #[arg(long, value_name = "S")]
    pub blur: Option<f64>,
    /// Side of the square training crops (default 48).
    #[arg(long, value_name = "PIXELS")]
    pub crop: Option<usize>,
    /// Training crops per step (default 4).
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Optimiser steps (default 1000).
    #[arg(long, value_name = "N")]
    pub steps: Option<usize>,
    /// Learning rate, the actual one: not scaled by the batch size (default 0.0003).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Validate and checkpoint every N steps, and at the end (default 100).
    #[arg(long, value_name = "N")]
    pub save_freq: Option<usize>,
    /// Training images held out for validation, which picks the best checkpoint (default 4).
    #[arg(long, value_name = "N")]
    pub val_images: Option<usize>,
    /// Centre crop side of the validation images; 0 = whole images (default 128).
    #[arg(long, value_name = "PIXELS")]
    pub val_crop: Option<usize>,
    /// Seed of crops, flips, noise and freshly drawn weights (default 0).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// The test-set flags: where the images a finished run's best checkpoint is scored on come from.
#[derive(Args, Clone, Default)]
pub struct TestArgs {
    /// Test images (default: none, every --split-every-th training image is held out).
    #[arg(long, value_name = "DIR")]
    pub test: Option<PathBuf>,
    /// Score only the first N test images (default 0: all).
    #[arg(long, value_name = "N")]
    pub max_test_images: Option<usize>,
}

impl TaskArgs {
    /// The config from `--ft-config` (or defaults) with the flags and `test`'s applied,
    /// validated, and whether it states the network (`--model`, or a MODEL tree in
    /// `--ft-config`).
    pub fn config(&self, test: &TestArgs) -> Result<(FinetuneConfig, bool), Failure> {
        let mut stated = self.model.is_some();
        let mut c = match &self.ft_config {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    Failure::usage(anyhow::anyhow!("--ft-config {}: {e}", p.display()))
                })?;
                stated |= FinetuneConfig::names_model(&text);
                FinetuneConfig::from_yaml(&text).map_err(|e| {
                    Failure::usage(anyhow::anyhow!("--ft-config {}: {e}", p.display()))
                })?
            }
            None => FinetuneConfig::default(),
        };
        if let Some(m) = &self.model {
            c.model = load_config(m)?.model;
        }
        let d = &mut c.data;
        if let Some(p) = &self.train {
            d.train_dir = p.clone();
        }
        if test.test.is_some() {
            d.test_dir = test.test.clone();
        }
        set(&mut d.split_every, self.split_every);
        set(&mut d.noise_sigma, self.sigma);
        set(&mut d.blur_sigma, self.blur);
        set(&mut d.crop, self.crop);
        set(&mut d.batch_size, self.batch);
        set(&mut d.val_images, self.val_images);
        set(&mut d.val_crop, self.val_crop);
        set(&mut d.max_test_images, test.max_test_images);
        if self.steps.is_some() {
            c.train.steps = self.steps;
        }
        set(&mut c.train.base_lr, self.lr);
        set(&mut c.save_freq, self.save_freq);
        set(&mut c.seed, self.seed);
        if c.data.train_dir.as_os_str().is_empty() {
            return Err(Failure::usage(anyhow::anyhow!(
                "--train DIR is required (or DATA.TRAIN_DIR in --ft-config)"
            )));
        }
        for (flag, dir) in [
            ("--train", Some(&c.data.train_dir)),
            ("--test", c.data.test_dir.as_ref()),
        ] {
            if let Some(dir) = dir {
                if !dir.is_dir() {
                    return Err(Failure::usage(anyhow::anyhow!(
                        "{flag} {}: no such folder",
                        dir.display()
                    )));
                }
            }
        }
        c.validate()
            .and_then(|()| c.refuse_unread())
            .map_err(|e| Failure::usage(anyhow::anyhow!("fine-tuning config: {e}")))?;
        finetune::data::check_degradation(&c.data, std::path::Path::new("")).map_err(|e| {
            Failure::usage(anyhow::anyhow!(
                "{e} (flags: --train, --test, --sigma, --blur)"
            ))
        })?;
        Ok((c, stated))
    }
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

#[derive(Args)]
pub struct FinetuneArgs {
    #[command(flatten)]
    task: TaskArgs,
    #[command(flatten)]
    test: TestArgs,
    /// Initial weights: a pre-training or fine-tuning model file, or reference-named PyTorch
    /// weights (safetensors). Restormer takes the encoder from it (the head is new); Uformer takes
    /// encoder and decoder (default: none, the network starts from scratch).
    #[arg(long, value_name = "W.safetensors")]
    init: Option<PathBuf>,
    /// Output folder for checkpoints, history.json and test.json.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Where to train: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Continue from the newest complete checkpoint in --out.
    #[arg(long)]
    resume: bool,
}

/// Progress lines go to stderr, results to stdout.
pub fn say(line: &str) {
    eprintln!("{line}");
}

/// Prints one fine-tuning event the way `ifp train` prints its own.
pub fn print_event(prefix: &str, print_freq: usize, ev: &Event<'_>) {
    match ev {
        Event::Started {
            run:
                Started {
                    start_step,
                    total_steps,
                    parameters,
                },
            train_images,
            val_images,
        } => say(&format!(
            "{prefix}fine-tuning {parameters} parameters for {total_steps} steps on {train_images} \
             images ({val_images} for validation){}",
            if *start_step > 0 {
                format!(", resuming at step {start_step}")
            } else {
                String::new()
            }
        )),
        Event::Step(p) => {
            if p.step % print_freq == 0 || p.step == p.total_steps || p.step == 1 {
                say(&format!(
                    "{prefix}step {:>6}/{} loss {:.5} lr {:.3e} {:.1} img/s eta {:.0}s",
                    p.step,
                    p.total_steps,
                    p.loss,
                    p.lr,
                    p.images_per_sec,
                    p.eta.as_secs_f64()
                ));
            }
        }
        Event::Validated(v) => say(&format!(
            "{prefix}validation step {}: PSNR {:.3} dB SSIM {:.4} (Y: {:.3} dB, {:.4})",
            v.step, v.scores.psnr, v.scores.ssim, v.scores.psnr_y, v.scores.ssim_y
        )),
        Event::Checkpoint(c) => say(&format!("{prefix}checkpoint {}", c.model.path.display())),
        Event::Testing { done: 0, total } => say(&format!(
            "{prefix}testing the best checkpoint on {total} image{}",
            if *total == 1 { "" } else { "s" }
        )),
        Event::Testing { .. } => {}
        Event::Tested(t) => say(&format!(
            "{prefix}test ({} images, best checkpoint step {}): PSNR {:.3} ± {:.3} dB SSIM {:.4} \
             (Y: {:.3} dB, {:.4})",
            t.test_images,
            t.best_step,
            t.test.psnr.mean,
            t.test.psnr.se,
            t.test.ssim.mean,
            t.test.psnr_y.mean,
            t.test.ssim_y.mean
        )),
    }
}

pub fn run(a: FinetuneArgs) -> Result<(), Failure> {
    let (mut cfg, mut model_known) = a.task.config(&a.test)?;
    if let Some(p) = &a.init {
        if !p.is_file() {
            return Err(Failure::usage(anyhow::anyhow!(
                "--init {}: no such file",
                p.display()
            )));
        }
        cfg.init = Some(p.clone());
        // Without --model the weights' stored network is used; a MODEL in --ft-config must
        // then be that network, or it would be ignored (the platform refuses the same).
        if a.task.model.is_none() {
            if let Some(m) = finetune::net::stored_model_config(p).map_err(classify)? {
                if model_known && !m.same_backbone(&cfg.model) {
                    let file = a.task.ft_config.as_deref().unwrap_or(Path::new(""));
                    return Err(Failure::usage(anyhow::anyhow!(
                        "--ft-config {}: MODEL differs from the network stored in --init {}; \
                         leave MODEL out to inherit it",
                        file.display(),
                        p.display()
                    )));
                }
                cfg.model = m;
                model_known = true;
            }
        }
    }
    if !model_known {
        return Err(Failure::usage(anyhow::anyhow!(
            "--model is required: name the network (a preset such as tiny, or a pre-training \
             config), or give --init weights whose checkpoint folder stores it"
        )));
    }
    let device = parse_device(&a.device)?;
    let opts = run_options(&a.out, device, a.resume)?;
    let pf = cfg.print_freq;
    let s = finetune::finetune(&cfg, &opts, |ev| {
        print_event("", pf, &ev);
        Control::Continue
    })
    .map_err(classify)?;
    match s.best {
        Some(b) => eprintln!(
            "done: {} steps; best validation PSNR {:.3} dB at step {} ({})",
            s.run.steps_done,
            b.scores.psnr,
            b.step,
            ifp_trainer::checkpoint::model_path(&a.out, b.step).display()
        ),
        None => eprintln!("done: {} steps", s.run.steps_done),
    }
    if s.test.is_some() {
        eprintln!("wrote {}", finetune::test_set::test_path(&a.out).display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag of `finetune`, `compare` and `eval` says what it does, and every flag that
    /// takes a value states its default: in clap's `[default: X]` (and then what a default of 0
    /// means), or in its help as "default ..." (a flag that overrides a config value as the
    /// config's own default has it), or says it is required.
    #[test]
    fn every_flag_has_help_and_states_its_default() {
        let d = ifp_trainer::finetune::FinetuneConfig::default();
        let defaults = [
            ("split-every", d.data.split_every.to_string()),
            ("sigma", format!("{}", d.data.noise_sigma)),
            ("blur", format!("{}", d.data.blur_sigma)),
            ("crop", d.data.crop.to_string()),
            ("batch", d.data.batch_size.to_string()),
            ("steps", d.total_steps().to_string()),
            ("lr", format!("{}", d.train.base_lr)),
            ("save-freq", d.save_freq.to_string()),
            ("val-images", d.data.val_images.to_string()),
            ("val-crop", d.data.val_crop.to_string()),
            ("max-test-images", d.data.max_test_images.to_string()),
            ("seed", d.seed.to_string()),
        ];
        let cli = super::super::Cli::command();
        for name in ["finetune", "compare", "eval"] {
            let cmd = cli.find_subcommand(name).expect("subcommand");
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                assert!(!help.is_empty(), "ifp {name} --{id} has no help text");
                let long = arg.get_long().unwrap_or_default();
                // `eval --sigma/--blur` override the model's values, not the config defaults.
                if name != "eval" {
                    if let Some((_, want)) = defaults.iter().find(|(f, _)| *f == long) {
                        assert!(
                            help.contains(&format!("default {want}")),
                            "ifp {name} --{long}: `{help}` does not state the default {want}"
                        );
                    }
                }
                if !arg.get_action().takes_values() || arg.is_required_set() {
                    continue;
                }
                let clap_default: Vec<_> = arg.get_default_values().iter().collect();
                if clap_default.is_empty() {
                    assert!(
                        help.contains("default") || help.contains("required"),
                        "ifp {name} --{long}: `{help}` states neither its default nor that it \
                         is required"
                    );
                } else if clap_default.iter().any(|v| *v == "0") {
                    assert!(
                        help.contains("0 =") || help.contains("0:"),
                        "ifp {name} --{long}: `{help}` does not say what its default 0 means"
                    );
                }
            }
        }
    }
}
