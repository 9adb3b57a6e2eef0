//! The networks IFP pre-trains: a backbone (`encoder.*`) followed by a reconstruction head
//! (`decoder.*`): Restormer + SRResNet head, or Uformer's encoder + decoder. Built from the
//! config with the reference's parameter (and buffer) names, from fresh seeded weights or from a
//! safetensors file (strict: every key present, none left over).

pub mod head;
pub mod layers;
pub mod params;
pub mod restormer;
pub mod uformer;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, Var};

pub use params::ParamStore;

use crate::config::{Amp, Config, ModelType};
use crate::error::{Result, TrainerError};
use crate::kernels::amp;

/// The backbone/head pair of each `MODEL.TYPE`: Restormer's image-shaped features feed the
/// SRResNet head; Uformer's decoder takes the encoder's five token tensors (skips included).
enum Body {
    Restormer {
        encoder: Box<restormer::Restormer>,
        decoder: head::MsrResNetHead,
    },
    Uformer {
        encoder: Box<uformer::UformerEncoder>,
        decoder: uformer::UformerDecoder,
    },
}

/// Where the parameters of a new network (or of one part of it) come from.
pub enum WeightSource {
    /// Fresh weights drawn from this seed (a pre-training run, the "from scratch" arm of a
    /// comparison, every new fine-tuning head).
    Init(u64),
    /// Named tensors with the reference's full keys (`encoder.`/`decoder.`/`head.` prefixed).
    /// A fine-tuning network takes only each part's own prefix, so a pre-training checkpoint
    /// (its `decoder.*` dropped), a fine-tuning checkpoint or reference PyTorch weights all work.
    Tensors(HashMap<String, Tensor>),
}

/// Backbone + head, the unit that is trained, checkpointed and run by `ifp forward`.
pub struct Network {
    body: Body,
    params: ParamStore,
    /// The dtype of products and convolutions under `TRAIN.AMP` (`None`: float32).
    low: Option<DType>,
}

impl Network {
    /// Builds the network of `cfg` on `device` in float32.
    pub fn build(cfg: &Config, weights: WeightSource, device: &Device) -> Result<Network> {
        let strict = matches!(weights, WeightSource::Tensors(_));
        let params = match weights {
            WeightSource::Init(seed) => ParamStore::init(seed, DType::F32, device),
            WeightSource::Tensors(t) => ParamStore::load(t, DType::F32, device),
        };
        let vb = params.var_builder();
        let body = match cfg.model.kind {
            ModelType::Restormer => Body::Restormer {
                encoder: Box::new(restormer::Restormer::new(
                    &cfg.model.restormer,
                    vb.pp("encoder"),
                )?),
                decoder: head::MsrResNetHead::new(&cfg.model.decoder, vb.pp("decoder"))?,
            },
            ModelType::Uformer => {
                let encoder = uformer::UformerEncoder::new(&cfg.model.uformer, vb.pp("encoder"))?;
                let decoder = uformer::UformerDecoder::new(&cfg.model.uformer, vb.pp("decoder"))?;
                for (name, value) in encoder.buffers().into_iter().chain(decoder.buffers()) {
                    params.register_buffer(&name, &value)?;
                }
                Body::Uformer {
                    encoder: Box::new(encoder),
                    decoder,
                }
            }
        };
        if strict {
            check_all_used(&params, "network")?;
        }
        let low = match cfg.train.amp {
            Amp::Off => None,
            Amp::Bf16 => Some(DType::BF16),
        };
        Ok(Network { body, params, low })
    }

    /// encoder then decoder: (B, 3, H, W) -> (B, 3, H, W), eval mode.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        amp::autocast(self.low, || match &self.body {
            Body::Restormer { encoder, decoder } => decoder.forward(&encoder.forward(x)?),
            Body::Uformer { encoder, decoder } => decoder.forward(&encoder.forward(x)?),
        })
    }

    /// `forward` in training mode: Uformer's stochastic depth draws its masks from `rng`. The
    /// reference Restormer has no training-only layer, so for it this is `forward`.
    pub fn forward_train(
        &self,
        x: &Tensor,
        rng: &mut uformer::DropPathRng,
    ) -> candle_core::Result<Tensor> {
        amp::autocast(self.low, || match &self.body {
            Body::Restormer { encoder, decoder } => decoder.forward(&encoder.forward(x)?),
            Body::Uformer { encoder, decoder } => {
                decoder.forward_t(&encoder.forward_t(x, Some(&mut *rng))?, Some(rng))
            }
        })
    }

    /// The backbone alone. Restormer: (B, 3, H, W) -> (B, OUT_CHANNELS, H, W). Uformer: the
    /// bottleneck tokens (B, (H/16)*(W/16), 16*EMBED_DIM), channel-last (the last of the five
    /// tensors its encoder returns; `encode_all` gives all of them).
    pub fn encode(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.encode_all(x)?
            .pop()
            .ok_or_else(|| candle_core::Error::Msg("the encoder returned nothing".into()))
    }

    /// Everything the backbone hands to the head: Restormer, its one feature map; Uformer, the
    /// five token tensors `(B, (H/2^k)*(W/2^k), EMBED_DIM*2^k)`, k = 0..4 (the reference
    /// encoder's tuple).
    pub fn encode_all(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        amp::autocast(self.low, || match &self.body {
            Body::Restormer { encoder, .. } => Ok(vec![encoder.forward(x)?]),
            Body::Uformer { encoder, .. } => encoder.forward(x),
        })
    }

    /// Every trainable parameter with its reference name.
    pub fn vars(&self) -> Result<Vec<(String, Var)>> {
        Ok(self.params.vars()?)
    }

    /// The state_dict: every tensor a PyTorch `load_state_dict(strict=True)` expects, the
    /// buffers (int64, e.g. Uformer's `relative_position_index`) included.
    pub fn state_dict(&self) -> Result<BTreeMap<String, Tensor>> {
        Ok(self.params.tensors()?)
    }

    /// Number of trainable scalars.
    pub fn num_parameters(&self) -> Result<usize> {
        Ok(self.vars()?.iter().map(|(_, v)| v.elem_count()).sum())
    }
}

/// Reads the `encoder.*` / `decoder.*` tensors of a safetensors file (a checkpoint, or a golden
/// file that also holds inputs and gradients), as float32 on `device`.
pub fn load_weights(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let all = candle_core::safetensors::load(path, device).map_err(|e| TrainerError::Weights {
        path: path.to_path_buf(),
        message: format!("cannot read safetensors: {e}"),
    })?;
    let weights: HashMap<String, Tensor> = all
        .into_iter()
        .filter(|(k, _)| k.starts_with("encoder.") || k.starts_with("decoder."))
        .collect();
    if weights.is_empty() {
        return Err(TrainerError::Weights {
            path: path.to_path_buf(),
            message: "no `encoder.*` or `decoder.*` tensors in this file".into(),
        });
    }
    Ok(weights)
}

/// Strict loading: every tensor of the loaded weights was taken by a parameter or buffer;
/// `what` names the weights in the error (`network`, `encoder`, `head`).
pub(crate) fn check_all_used(params: &ParamStore, what: &str) -> Result<()> {
    let unused = params.unused_keys()?;
    if unused.is_empty() {
        return Ok(());
    }
    Err(TrainerError::Unsupported(format!(
        "the {what} weights have {} key(s) this network does not use (a different MODEL \
         config?): {}",
        unused.len(),
        unused
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    )))
}
