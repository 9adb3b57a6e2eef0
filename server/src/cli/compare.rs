//! `ifp compare`: "does IFP help here?" — pre-train (or take given pre-training weights), then
//! fine-tune from IFP and from scratch with identical budget, seeds and data (optionally a third
//! arm from a checkpoint), score each arm's best checkpoint on the test set, print a table and
//! write report.json, per_image.csv, val_curve.csv and showcase PNGs into --out.

use std::path::PathBuf;

use clap::Args;
use ifp_trainer::finetune::compare::{self, CompareEvent, CompareSpec, Pretrain};
use ifp_trainer::train::Started;
use ifp_trainer::{Control, Event};

use super::finetune::{print_event, say, TaskArgs, TestArgs};
use super::{classify, load_config, parse_device, Failure};

#[derive(Args)]
pub struct CompareArgs {
    #[command(flatten)]
    task: TaskArgs,
    #[command(flatten)]
    test: TestArgs,
    /// Pre-training config or preset to run first (its MODEL is also the fine-tuning MODEL).
    /// One of --pretrain and --pretrained is required.
    #[arg(long, value_name = "FILE|PRESET", conflicts_with = "pretrained")]
    pretrain: Option<String>,
    /// Pre-training steps (overrides the pre-training config's TRAIN.STEPS); only with
    /// --pretrain, since --pretrained runs no pre-training (default: the config's own).
    #[arg(long, value_name = "N", conflicts_with = "pretrained")]
    pretrain_steps: Option<usize>,
    /// Use this pre-training model file instead of running pre-training. One of --pretrain and
    /// --pretrained is required.
    #[arg(long, value_name = "W.safetensors")]
    pretrained: Option<PathBuf>,
    /// A third arm initialised from this model file (default: none, two arms).
    #[arg(long, value_name = "W.safetensors")]
    extra_arm: Option<PathBuf>,
    /// Test images rendered side by side (degraded | arms | target).
    #[arg(long, value_name = "N", default_value_t = 3)]
    showcase: usize,
    /// Restore test images in overlapping tiles of this side, to bound memory (default: whole
    /// images).
    #[arg(long, value_name = "PIXELS")]
    tile: Option<usize>,
    /// Output folder; re-running the same command continues an interrupted comparison.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Where to train: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Run the comparison with N fine-tuning seeds (SEED, SEED+1, ...), each into
    /// OUT/seed-S/, and report means over seeds with 95% confidence intervals, the paired
    /// difference per seed and how many seeds favour IFP (seeds.json, seeds.csv).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=20))]
    seeds: u64,
    /// With --seeds: pre-train once per seed with that seed too, instead of sharing one
    /// pre-training (needs --pretrain).
    #[arg(long)]
    vary_pretrain_seed: bool,
}

/// The refusal of a `--ft-config` whose MODEL is not the network that `flag` (`value`)
/// gives every arm.
fn ft_model_differs(task: &TaskArgs, flag: &str, value: impl std::fmt::Display) -> Failure {
    let file = task
        .ft_config
        .as_deref()
        .unwrap_or(std::path::Path::new(""));
    Failure::usage(anyhow::anyhow!(
        "--ft-config {}: MODEL differs from the network of {flag} {value}, which every arm \
         fine-tunes; leave MODEL out to inherit it",
        file.display()
    ))
}

pub fn run(a: CompareArgs) -> Result<(), Failure> {
    if a.vary_pretrain_seed && (a.pretrain.is_none() || a.seeds < 2) {
        return Err(Failure::usage(anyhow::anyhow!(
            "--vary-pretrain-seed needs --pretrain (a pre-training to run per seed) and --seeds \
             of 2 or more"
        )));
    }
    let (mut ft, model_stated) = a.task.config(&a.test)?;
    let pretrain = match (&a.pretrain, &a.pretrained) {
        (_, Some(p)) => {
            if !p.is_file() {
                return Err(Failure::usage(anyhow::anyhow!(
                    "--pretrained {}: no such file",
                    p.display()
                )));
            }
            // Without --model, the weights' stored config gives the network; a MODEL in
            // --ft-config must then be that network, or it would be ignored.
            if a.task.model.is_none() {
                match ifp_trainer::finetune::net::stored_model_config(p).map_err(classify)? {
                    Some(m) => {
                        if model_stated && !m.same_backbone(&ft.model) {
                            return Err(ft_model_differs(&a.task, "--pretrained", p.display()));
                        }
                        ft.model = m;
                    }
                    None if !model_stated => {
                        return Err(Failure::usage(anyhow::anyhow!(
                            "--model is required: {} has no stored config beside it to take \
                             the network from",
                            p.display()
                        )))
                    }
                    None => {}
                }
            }
            Pretrain::Weights(p.clone())
        }
        (Some(name), None) => {
            let mut cfg = load_config(name)?;
            if let Some(n) = a.pretrain_steps {
                cfg.train.steps = Some(n);
                cfg.validate()
                    .map_err(|e| Failure::usage(anyhow::anyhow!("--pretrain-steps {n}: {e}")))?;
            }
            if a.task.model.is_none() {
                // A MODEL in --ft-config must be the network pre-trained here, or it would be
                // ignored.
                if model_stated && !ft.model.same_backbone(&cfg.model) {
                    return Err(ft_model_differs(&a.task, "--pretrain", name));
                }
                ft.model = cfg.model.clone();
            } else if !ft.model.same_backbone(&cfg.model) {
                return Err(Failure::usage(anyhow::anyhow!(
                    "--model and --pretrain describe different networks; give one of them"
                )));
            }
            Pretrain::Run(Box::new(cfg))
        }
        (None, None) => {
            return Err(Failure::usage(anyhow::anyhow!(
                "give --pretrain CONFIG (run IFP pre-training) or --pretrained W.safetensors"
            )))
        }
    };
    if let Some(p) = &a.extra_arm {
        if !p.is_file() {
            return Err(Failure::usage(anyhow::anyhow!(
                "--extra-arm {}: no such file",
                p.display()
            )));
        }
    }
    if a.out.exists() && !a.out.is_dir() {
        return Err(Failure::usage(anyhow::anyhow!(
            "--out {}: exists and is not a folder",
            a.out.display()
        )));
    }
    let device = parse_device(&a.device)?;
    let spec = CompareSpec {
        finetune: ft,
        pretrain,
        extra_arm: a.extra_arm.clone(),
        tile: a.tile,
        showcase: a.showcase,
    };
    let pf = spec
        .finetune
        .print_freq
        .max(spec.finetune.save_freq / 2)
        .max(1);
    let print = |ev: CompareEvent<'_>| {
        match ev {
            CompareEvent::Pretrain(Event::Started(Started {
                total_steps,
                start_step,
                ..
            })) => say(&format!(
                "[pretrain] IFP pre-training for {total_steps} steps (from step {start_step})"
            )),
            CompareEvent::Pretrain(Event::Step(p)) => {
                if p.step % 100 == 0 || p.step == p.total_steps {
                    say(&format!(
                        "[pretrain] step {}/{} loss {:.5}",
                        p.step, p.total_steps, p.loss
                    ));
                }
            }
            CompareEvent::Pretrain(Event::Checkpoint(_)) => {}
            CompareEvent::Finetune { arm, event } => print_event(&format!("[{arm}] "), pf, &event),
            CompareEvent::Evaluated { arm, mean } => say(&format!(
                "[{arm}] test: PSNR {:.3} dB SSIM {:.4} (Y: {:.3} dB, {:.4})",
                mean.psnr, mean.ssim, mean.psnr_y, mean.ssim_y
            )),
        }
        Control::Continue
    };
    if a.seeds > 1 {
        let seeds: Vec<u64> = (0..a.seeds).map(|k| spec.finetune.seed + k).collect();
        let (reports, summary) = ifp_trainer::finetune::seeds::compare_seeds(
            &spec,
            &seeds,
            a.vary_pretrain_seed,
            &a.out,
            &device,
            |seed, ev| {
                if let CompareEvent::Evaluated { .. } = ev {
                    say(&format!("[seed {seed}]"));
                }
                print(ev)
            },
        )
        .map_err(classify)?;
        for (seed, r) in seeds.iter().zip(&reports) {
            println!("seed {seed}:\n{}", compare::table(r));
        }
        println!("{}", ifp_trainer::finetune::seeds::seeds_table(&summary));
        println!(
            "wrote {0}/seeds.json, seeds.csv and one comparison per seed in {0}/seed-S/",
            a.out.display()
        );
        return Ok(());
    }
    let report = compare::compare(&spec, &a.out, &device, print).map_err(classify)?;
    println!("{}", compare::table(&report));
    println!(
        "wrote {}/report.json, per_image.csv, val_curve.csv",
        a.out.display()
    );
    Ok(())
}
