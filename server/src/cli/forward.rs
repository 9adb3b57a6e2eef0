//! `ifp forward`: run a network on stored input tensors (parity checks, inference).

use std::path::PathBuf;

use clap::Args;

use super::{classify, load_config, parse_device, Failure};

#[derive(Args)]
pub struct ForwardArgs {
    /// Config (file or preset) describing the network.
    #[arg(long, value_name = "FILE|PRESET")]
    config: String,
    /// Weights: a checkpoint's model file, or any safetensors with `encoder.*`/`decoder.*` keys.
    #[arg(long, value_name = "W.safetensors")]
    weights: PathBuf,
    /// safetensors file holding an (N, 3, H, W) float tensor named `input`.
    #[arg(long, value_name = "IN.safetensors")]
    input: PathBuf,
    /// Where to write the tensor `output`.
    #[arg(long, value_name = "OUT.safetensors")]
    output: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(a: ForwardArgs) -> Result<(), Failure> {
    let cfg = load_config(&a.config)?;
    let device = parse_device(&a.device)?;
    for (flag, p) in [("--weights", &a.weights), ("--input", &a.input)] {
        if !p.is_file() {
            return Err(Failure::usage(anyhow::anyhow!(
                "{flag} {}: no such file",
                p.display()
            )));
        }
    }
    let written = ifp_trainer::infer::forward_file(&cfg, &a.weights, &a.input, &a.output, &device)
        .map_err(classify)?;
    eprintln!(
        "wrote {} ({} bytes, sha256 {})",
        written.path.display(),
        written.bytes,
        written.sha256
    );
    Ok(())
}
