//! Checkpoint files. Every `SAVE_FREQ` steps a run writes, in its output folder:
//! - `model-SSSSSS.safetensors`: the weights under the reference key names (loadable by
//!   PyTorch's `load_state_dict(strict=True)`), with the step and config as metadata;
//! - `state-SSSSSS.safetensors`: AdamW moments as tensors, plus a JSON `ifp_state` metadata
//!   entry (step, random-stream positions, the mask radii, the config) for exact resumption;
//! - `sample-SSSSSS.png`: one sample as input | corrupted | reconstruction | target | error
//!   map, above their log-magnitude spectra (see `train::sample_strip`).
//!
//! Each file is written atomically (temporary file, fsync, rename, fsync of the folder) and gets
//! a `sha256sum`-compatible `.sha256` sidecar written after it, so a crash leaves either a
//! complete, verifiable checkpoint or none: resumption takes the newest step whose model and
//! state both verify.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::batch::SamplerState;
use crate::error::{Result, TrainerError};

/// Bumped when the training-state layout changes incompatibly.
pub const STATE_VERSION: u32 = 1;

/// The non-tensor part of a training state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    pub version: u32,
    /// Optimiser steps completed.
    pub step: usize,
    pub sampler: SamplerState,
    /// The fixed IFP mask radii of the run, when there are any (informational; they are
    /// redrawn identically from the seed).
    pub mask_radii: Option<Vec<usize>>,
    /// The run's config, as YAML.
    pub config_yaml: String,
}

/// One file written for a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WrittenFile {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

/// The files of one checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub step: usize,
    pub model: WrittenFile,
    pub state: WrittenFile,
    pub sample: Option<WrittenFile>,
}

pub fn model_path(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("model-{step:06}.safetensors"))
}

pub fn state_path(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("state-{step:06}.safetensors"))
}

pub fn sample_path(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("sample-{step:06}.png"))
}

fn sidecar(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::File::create(&tmp).map_err(TrainerError::io(&tmp))?;
    f.write_all(bytes).map_err(TrainerError::io(&tmp))?;
    f.sync_all().map_err(TrainerError::io(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(TrainerError::io(path))?;
    // The rename is only durable once the folder entry is.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically, then its SHA-256 sidecar.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<WrittenFile> {
    let sha256 = hex::encode(Sha256::digest(bytes));
    write_durably(path, bytes)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    write_durably(&sidecar(path), format!("{sha256}  {name}\n").as_bytes())?;
    Ok(WrittenFile {
        path: path.to_path_buf(),
        bytes: bytes.len() as u64,
        sha256,
    })
}

/// What one checkpoint holds besides the files' names: the weights, the optimiser moments, the
/// training state (data streams, config) and, when there is one, the sample strip.
pub struct Contents<'a> {
    pub weights: &'a BTreeMap<String, Tensor>,
    pub optimizer: &'a BTreeMap<String, Tensor>,
    pub state: &'a TrainingState,
    pub sample: Option<&'a crate::data::image::Image>,
}

/// Writes the checkpoint of `contents.state.step` into `dir`: model, state, then the sample
/// strip, each atomically with its SHA-256 side file.
pub fn write(dir: &Path, contents: &Contents<'_>) -> Result<Checkpoint> {
    let step = contents.state.step;
    let model = save_model(
        &model_path(dir, step),
        contents.weights,
        step,
        &contents.state.config_yaml,
    )?;
    let state = save_state(&state_path(dir, step), contents.optimizer, contents.state)?;
    let sample = match contents.sample {
        Some(strip) => Some(write_atomic(&sample_path(dir, step), &png_bytes(strip)?)?),
        None => None,
    };
    Ok(Checkpoint {
        step,
        model,
        state,
        sample,
    })
}

/// Whether `path` exists, has a sidecar and matches it.
pub fn verify(path: &Path) -> bool {
    let (Ok(bytes), Ok(side)) = (fs::read(path), fs::read_to_string(sidecar(path))) else {
        return false;
    };
    let want = side.split_whitespace().next().unwrap_or("");
    hex::encode(Sha256::digest(&bytes)) == want
}

/// What a weights file holds, independent of where it lies: its SHA-256 (from its sidecar when
/// it has one, else computed), or its path when it cannot be read.
pub fn content_id(path: &Path) -> String {
    if let Ok(side) = fs::read_to_string(sidecar(path)) {
        if let Some(sha) = side.split_whitespace().next() {
            return format!("sha256:{sha}");
        }
    }
    match fs::read(path) {
        Ok(bytes) => format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
        Err(_) => path.display().to_string(),
    }
}

fn serialize(
    tensors: &BTreeMap<String, Tensor>,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    // safetensors wants contiguous CPU data; checkpoints are written from any device.
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    safetensors::serialize(cpu.iter().map(|(k, t)| (k.as_str(), t)), Some(metadata))
        .map_err(|e| TrainerError::Unsupported(format!("cannot serialise safetensors: {e}")))
}

/// Writes a model file (weights only; PyTorch loads it with `safetensors.torch.load_file`).
/// The config is stored as the `ifp_config` metadata entry; the step only in the file name.
pub fn save_model(
    path: &Path,
    weights: &BTreeMap<String, Tensor>,
    _step: usize,
    config_yaml: &str,
) -> Result<WrittenFile> {
    // One metadata entry only: safetensors writes its metadata map in hash order, and a run
    // must produce the same bytes (and SHA-256) every time. The step is in the file name.
    let meta = HashMap::from([("ifp_config".to_string(), config_yaml.to_string())]);
    write_atomic(path, &serialize(weights, meta)?)
}

/// Writes a training state: optimiser tensors plus the JSON-encoded `TrainingState`.
pub fn save_state(
    path: &Path,
    optimizer: &BTreeMap<String, Tensor>,
    state: &TrainingState,
) -> Result<WrittenFile> {
    let json = serde_json::to_string(state)
        .map_err(|e| TrainerError::Unsupported(format!("cannot encode training state: {e}")))?;
    let meta = HashMap::from([("ifp_state".to_string(), json)]);
    write_atomic(path, &serialize(optimizer, meta)?)
}

/// Reads a training state written by `save_state`.
pub fn load_state(
    path: &Path,
    device: &Device,
) -> Result<(BTreeMap<String, Tensor>, TrainingState)> {
    let bytes = fs::read(path).map_err(TrainerError::io(path))?;
    let bad = |message: String| TrainerError::Weights {
        path: path.to_path_buf(),
        message,
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("ifp_state"))
        .ok_or_else(|| bad("no `ifp_state` metadata: not an ifp training state".into()))?;
    let state: TrainingState =
        serde_json::from_str(json).map_err(|e| bad(format!("unreadable training state: {e}")))?;
    if state.version != STATE_VERSION {
        return Err(bad(format!(
            "training state version {} is not supported (expected {STATE_VERSION})",
            state.version
        )));
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)?
        .into_iter()
        .collect();
    Ok((tensors, state))
}

/// The newest step in `dir` whose model and state files are both complete and verified.
pub fn latest_complete(dir: &Path) -> Option<usize> {
    let entries = fs::read_dir(dir).ok()?;
    let mut steps: Vec<usize> = entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("state-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()
        })
        .collect();
    steps.sort_unstable();
    steps
        .into_iter()
        .rev()
        .find(|&s| verify(&model_path(dir, s)) && verify(&state_path(dir, s)))
}

/// Encodes a PNG in memory (for atomic writing).
pub fn png_bytes(img: &crate::data::image::Image) -> Result<Vec<u8>> {
    let rgb = img.to_rgb8()?;
    let mut out = std::io::Cursor::new(Vec::new());
    rgb.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| TrainerError::Unsupported(format!("cannot encode PNG: {e}")))?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_verifies_and_detects_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.bin");
        let f = write_atomic(&p, b"hello").expect("write");
        assert_eq!(
            f.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert!(verify(&p));
        fs::write(&p, b"hellO").expect("corrupt");
        assert!(!verify(&p));
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("e").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn latest_complete_skips_broken_checkpoints() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for step in [10, 20] {
            write_atomic(&model_path(d, step), b"m").expect("m");
            write_atomic(&state_path(d, step), b"s").expect("s");
        }
        assert_eq!(latest_complete(d), Some(20));
        fs::remove_file(sidecar(&state_path(d, 20))).expect("rm");
        assert_eq!(latest_complete(d), Some(10));
        write_atomic(&state_path(d, 30), b"s").expect("s"); // model missing
        assert_eq!(latest_complete(d), Some(10));
    }
}
