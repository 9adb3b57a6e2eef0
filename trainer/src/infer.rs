//! Inference on stored tensors (`ifp forward`): the config's network with given weights, run
//! on the tensor `input` of a safetensors file, written as the tensor `output`.

use std::path::Path;

use candle_core::{DType, Device};

use crate::checkpoint::{write_atomic, WrittenFile};
use crate::config::Config;
use crate::error::{Result, TrainerError};
use crate::models::{load_weights, Network, WeightSource};

/// Runs `encoder` then `decoder` on `input` (NCHW f32) of `input_path` and writes `output`.
pub fn forward_file(
    cfg: &Config,
    weights: &Path,
    input_path: &Path,
    output_path: &Path,
    device: &Device,
) -> Result<WrittenFile> {
    let net = Network::build(
        cfg,
        WeightSource::Tensors(load_weights(weights, device)?),
        device,
    )
    .map_err(|e| match e {
        TrainerError::Candle(inner) => TrainerError::Weights {
            path: weights.to_path_buf(),
            message: inner.to_string(),
        },
        other => other,
    })?;
    let tensors =
        candle_core::safetensors::load(input_path, device).map_err(|e| TrainerError::Weights {
            path: input_path.to_path_buf(),
            message: format!("cannot read safetensors: {e}"),
        })?;
    let bad = |message: String| TrainerError::Weights {
        path: input_path.to_path_buf(),
        message,
    };
    let input = tensors
        .get("input")
        .ok_or_else(|| bad("no tensor named `input`".into()))?;
    let dims = input.dims();
    if dims.len() != 4 || dims[1] != 3 {
        return Err(bad(format!("`input` must be (N, 3, H, W), got {dims:?}")));
    }
    let input = input.to_dtype(DType::F32)?;
    let output = crate::threads::on_workers(|| net.forward(&input))?;
    let bytes = safetensors::serialize(
        [("output", &output.to_device(&Device::Cpu)?.contiguous()?)],
        None,
    )
    .map_err(|e| TrainerError::Unsupported(format!("cannot serialise output: {e}")))?;
    write_atomic(output_path, &bytes)
}
