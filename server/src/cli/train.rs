//! `ifp train`: one IFP pre-training run with a progress bar, checkpoints and `--resume`.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;
use ifp_trainer::train::Started;
use ifp_trainer::{train, Control, Event};
use indicatif::{ProgressBar, ProgressStyle};

use super::{classify, load_config, parse_device, run_options, Failure};

#[derive(Args)]
pub struct TrainArgs {
    /// Config file in the reference YAML schema, or a preset name (see below).
    #[arg(long, value_name = "FILE|PRESET")]
    config: String,
    /// Output folder for checkpoints (model, training state, sample PNG).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Total optimiser steps (overrides TRAIN.STEPS / TRAIN.EPOCHS).
    #[arg(long, value_name = "N")]
    steps: Option<usize>,
    /// Where to train: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Continue from the newest complete checkpoint in --out (exactly where it stopped).
    #[arg(long)]
    resume: bool,
}

pub fn run(a: TrainArgs) -> Result<(), Failure> {
    let mut cfg = load_config(&a.config)?;
    if let Some(n) = a.steps {
        cfg.train.steps = Some(n);
        cfg.validate()
            .map_err(|e| Failure::usage(anyhow::anyhow!("--steps {n}: {e}")))?;
    }
    let device = parse_device(&a.device)?;
    let opts = run_options(&a.out, device, a.resume)?;
    let tty = std::io::stderr().is_terminal();
    let pb = ProgressBar::new(cfg.total_steps() as u64);
    if tty {
        pb.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
    } else {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let say = |line: String| {
        if tty {
            pb.println(line);
        } else {
            eprintln!("{line}");
        }
    };
    let print_freq = cfg.print_freq;
    let summary = train(&cfg, &opts, |ev| {
        match ev {
            Event::Started(Started {
                start_step,
                total_steps,
                parameters,
            }) => {
                pb.set_position(start_step as u64);
                say(format!(
                    "training {} ({parameters} parameters) for {total_steps} steps{} into {}",
                    a.config,
                    if start_step > 0 {
                        format!(", resuming at step {start_step}")
                    } else {
                        String::new()
                    },
                    a.out.display()
                ));
            }
            Event::Step(p) => {
                pb.set_position(p.step as u64);
                pb.set_message(format!(
                    "loss {:.5} lr {:.3e} {:.1} img/s",
                    p.loss, p.lr, p.images_per_sec
                ));
                if p.step % print_freq == 0 || p.step == p.total_steps || p.step == 1 {
                    say(format!(
                        "step {:>6}/{} loss {:.6} lr {:.4e} grad_norm {:.4} {:.1} img/s eta {:.0}s",
                        p.step,
                        p.total_steps,
                        p.loss,
                        p.lr,
                        p.grad_norm,
                        p.images_per_sec,
                        p.eta.as_secs_f64()
                    ));
                }
            }
            Event::Checkpoint(c) => say(format!(
                "checkpoint step {}: {} (sha256 {})",
                c.step,
                c.model.path.display(),
                &c.model.sha256[..16]
            )),
        }
        Control::Continue
    })
    .map_err(classify)?;
    pb.finish_and_clear();
    match summary.final_loss {
        Some(l) => eprintln!("done: {} steps, final loss {l:.6}", summary.steps_done),
        None => eprintln!(
            "nothing to do: {} already has all {} steps",
            a.out.display(),
            summary.steps_done
        ),
    }
    Ok(())
}
