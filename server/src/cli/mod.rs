//! Argument parsing and dispatch of the `ifp` subcommands. Usage errors (bad flags,
//! paths or configs) print one line and exit with code 2; failures while running exit with 1.

mod bench;
mod compare;
mod eval;
mod finetune;
mod forward;
mod serve;
mod slots;
mod token;
mod train;
mod worker;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use ifp_trainer::config::PRESETS;

#[derive(Parser)]
#[command(
    name = "ifp",
    version,
    about = "Image-free Pre-training (IFP) for image-restoration networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pre-train a network with IFP and write checkpoints.
    Train(train::TrainArgs),
    /// Run a network (encoder then decoder) on the tensor `input` of a safetensors file.
    Forward(forward::ForwardArgs),
    /// Time full training steps (forward, loss, backward, clipping, AdamW).
    Bench(bench::BenchArgs),
    /// Run the job platform: HTTP API, in-process workers, and PostgreSQL unless DATABASE_URL.
    Serve(serve::ServeArgs),
    /// Run worker slots against a shared DATABASE_URL and artifact directory.
    Worker(worker::WorkerArgs),
    /// Manage API tokens.
    Token(token::TokenArgs),
    /// Fine-tune a network (IFP-pre-trained or from scratch): a Restormer encoder with a
    /// 3x3-conv task head, or a whole Uformer (encoder and decoder).
    Finetune(finetune::FinetuneArgs),
    /// Score a fine-tuned model on test images (PSNR/SSIM, RGB and Y, per image).
    Eval(eval::EvalArgs),
    /// Does IFP help here? Fine-tune from IFP and from scratch with the same budget and compare.
    Compare(compare::CompareArgs),
    /// One training attempt, run by a worker in a process of its own (JSON lines on stdin and
    /// stdout; not for direct use).
    #[command(hide = true)]
    Attempt,
    /// What a worker samples of GPU INDEX (utilisation, memory in use), as one JSON line; a
    /// check that the NVIDIA driver's management library can be read (`bench/gpu-check.sh`).
    #[command(hide = true)]
    GpuUsage {
        #[arg(default_value_t = 0)]
        index: u32,
    },
}

/// An error and the exit code it deserves.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    /// Something the user must fix (path, config, flag): exit code 2.
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 2,
            error: error.into(),
        }
    }

    /// Something that went wrong while running: exit code 1.
    pub fn runtime(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 1,
            error: error.into(),
        }
    }
}

/// Classifies a trainer error: bad inputs are usage errors, the rest runtime failures.
pub fn classify(e: ifp_trainer::TrainerError) -> Failure {
    use ifp_trainer::TrainerError as E;
    match e {
        E::Config(_)
        | E::Data(_)
        | E::Io { .. }
        | E::Weights { .. }
        | E::Unsupported(_)
        | E::Resume(_) => Failure::usage(e),
        E::Candle(_) | E::NonFinite { .. } => Failure::runtime(e),
    }
}

fn presets_help() -> String {
    let mut s = String::from("Presets (use the name as --config):\n");
    for p in PRESETS {
        s.push_str(&format!("  {:<16} {}\n", p.name, p.description));
    }
    s
}

pub fn run() -> ExitCode {
    let cmd = Cli::command().mut_subcommand("train", |c| c.after_help(presets_help()));
    let matches = cmd.get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // Every command may train, so a switch value it cannot mean stops it before anything runs.
    let result = match ifp_trainer::kernels::cuda_fused_setting() {
        Err(e) => Err(Failure::usage(anyhow::anyhow!("{e}"))),
        Ok(_) => dispatch(cli.command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", one_line(&f.error));
            ExitCode::from(f.code)
        }
    }
}

/// Runs one command.
fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::Train(a) => train::run(a),
        Command::Forward(a) => forward::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Worker(a) => worker::run(a),
        Command::Token(a) => token::run(a),
        Command::Finetune(a) => finetune::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Attempt => ifp_server::worker::process::child_main()
            .map_err(|e| Failure::usage(anyhow::anyhow!("ifp attempt: {e}"))),
        Command::GpuUsage { index } => match ifp_server::worker::gpu_usage::read(index) {
            Some(r) => {
                let line = serde_json::json!({
                    "gpu": index, "percent": r.percent, "memory_bytes": r.memory_bytes,
                });
                println!("{line}");
                Ok(())
            }
            None => Err(Failure::usage(anyhow::anyhow!(
                "no reading of GPU {index}: the NVIDIA driver's management library (NVML) is \
                 not installed or cannot read that device"
            ))),
        },
    }
}

/// The error and its causes on one line, skipping causes whose text the message already
/// contains (many of our messages embed their cause, and `{:#}` would repeat it).
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg.replace('\n', " ")
}

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<candle_core::Device, Failure> {
    let s = s.trim();
    if s == "cpu" {
        return Ok(candle_core::Device::Cpu);
    }
    let ordinal = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                Failure::usage(anyhow::anyhow!(
                    "--device `{s}`: expected cpu, cuda or cuda:N"
                ))
            })?,
        None => {
            return Err(Failure::usage(anyhow::anyhow!(
                "--device `{s}`: expected cpu, cuda or cuda:N"
            )))
        }
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(Failure::usage(anyhow::anyhow!(
            "--device {s}: this ifp was built without CUDA support (build with `--features cuda`)"
        )));
    }
    candle_core::Device::new_cuda(ordinal).map_err(|e| {
        // candle appends a backtrace (RUST_BACKTRACE) after the first line: not for users.
        let msg = e.to_string();
        let first = msg.lines().next().unwrap_or_default();
        Failure::usage(anyhow::anyhow!("--device {s}: {first}{}", cuda_hint(first)))
    })
}

/// What to do about a CUDA start-up error. (A missing CUDA *library* stops the process before
/// `main` with the loader's message naming it; README "GPU worker" and
/// `docker/cuda-libs.sh` say where each one comes from.)
fn cuda_hint(err: &str) -> &'static str {
    if err.contains("NO_DEVICE") || err.contains("INVALID_DEVICE") {
        " (no such NVIDIA GPU is visible: check `nvidia-smi`, CUDA_VISIBLE_DEVICES, or `--gpus` for a container)"
    } else if err.contains("INSUFFICIENT_DRIVER") || err.contains("UNSUPPORTED_PTX_VERSION") {
        " (the NVIDIA driver is older than this build's CUDA 13.0: install driver 580 or newer)"
    } else if err.contains("STUB_LIBRARY") {
        " (libcuda.so.1 is the build-time stub: put the NVIDIA driver's libcuda before it on LD_LIBRARY_PATH)"
    } else if err.contains("NOT_INITIALIZED") || err.contains("OPERATING_SYSTEM") {
        " (the NVIDIA driver did not initialise: check `nvidia-smi`)"
    } else {
        ""
    }
}

/// Loads a config file or preset, as a usage error when it fails.
/// Where and how `train` and `finetune` run: `--out` must be a folder, and one that already
/// holds checkpoints only with `--resume` (so a typo cannot mix two runs).
pub fn run_options(
    out: &std::path::Path,
    device: candle_core::Device,
    resume: bool,
) -> Result<ifp_trainer::TrainOptions, Failure> {
    if out.exists() && !out.is_dir() {
        return Err(Failure::usage(anyhow::anyhow!(
            "--out {}: exists and is not a folder",
            out.display()
        )));
    }
    if !resume && ifp_trainer::checkpoint::latest_complete(out).is_some() {
        return Err(Failure::usage(anyhow::anyhow!(
            "--out {}: already holds checkpoints; pass --resume to continue, or choose another folder",
            out.display()
        )));
    }
    Ok(ifp_trainer::TrainOptions {
        out_dir: out.to_path_buf(),
        device,
        resume,
    })
}

pub fn load_config(name_or_path: &str) -> Result<ifp_trainer::Config, Failure> {
    ifp_trainer::Config::load(name_or_path)
        .map_err(|e| Failure::usage(anyhow::anyhow!("--config {name_or_path}: {e}")))
}
