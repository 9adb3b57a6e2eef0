//! The fine-tuning network, DegAE style: the pre-training encoder (Restormer backbone,
//! `encoder.*`) followed by a task head of ONE 3x3 convolution from the encoder's
//! `OUT_CHANNELS` to RGB (`head.conv.weight` (3, OUT_CHANNELS, 3, 3), `head.conv.bias` (3)),
//! which replaces the SRResNet reconstruction decoder of pre-training.
//!
//! The encoder sees the ImageNet-normalised degraded image, as it did during pre-training. The
//! head's output is in [0, 1] image space and, with `residual` (the default), is added to the
//! degraded input: a one-convolution head cannot learn the identity quickly, and short
//! fine-tuning budgets would otherwise measure how fast each arm learns to copy its input.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Module, Tensor, Var};

use crate::config::{ModelConfig, ModelType};
use crate::error::{Result, TrainerError};
use crate::models::layers::Conv2d;
use crate::models::restormer::Restormer;
use crate::models::{ParamStore, WeightSource};

/// ImageNet statistics: the pre-training normalises its input with them, so a fine-tuned
/// encoder must see inputs normalised the same way.
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Encoder + one-convolution head.
pub struct FinetuneNet {
    encoder: Restormer,
    head: Conv2d,
    residual: bool,
    encoder_params: ParamStore,
    head_params: ParamStore,
    mean: Tensor,
    std: Tensor,
}

fn store(init: WeightSource, device: &Device) -> ParamStore {
    match init {
        WeightSource::Init(s) => ParamStore::init(s, DType::F32, device),
        WeightSource::Tensors(t) => ParamStore::load(t, DType::F32, device),
    }
}

fn keep_prefix(t: HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    t.into_iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .collect()
}

impl FinetuneNet {
    /// Builds the network on `device` (float32). The encoder config must be a Restormer one:
    /// Uformer's encoder hands token tensors and skips to its decoder, not one feature map.
    pub fn new(
        model: &ModelConfig,
        encoder: WeightSource,
        head: WeightSource,
        residual: bool,
        device: &Device,
    ) -> Result<Self> {
        if model.kind != ModelType::Restormer {
            return Err(TrainerError::Unsupported(
                "fine-tuning supports MODEL.TYPE restormer only (a Uformer task head is not \
                 implemented)"
                    .into(),
            ));
        }
        let enc_src = match encoder {
            WeightSource::Init(s) => WeightSource::Init(s),
            WeightSource::Tensors(t) => {
                let t = keep_prefix(t, "encoder.");
                if t.is_empty() {
                    return Err(TrainerError::Unsupported(
                        "the initial weights hold no `encoder.*` tensors".into(),
                    ));
                }
                WeightSource::Tensors(t)
            }
        };
        let head_src = match head {
            WeightSource::Init(s) => WeightSource::Init(s),
            WeightSource::Tensors(t) => WeightSource::Tensors(keep_prefix(t, "head.")),
        };
        let (enc_loaded, head_loaded) = (
            matches!(enc_src, WeightSource::Tensors(_)),
            matches!(head_src, WeightSource::Tensors(_)),
        );
        let encoder_params = store(enc_src, device);
        let head_params = store(head_src, device);
        let enc = Restormer::new(&model.restormer, encoder_params.var_builder().pp("encoder"))?;
        // BasicSR's `initialize_weights(scale=0.1)`, as the pre-training head: with the
        // residual, the network starts close to the identity instead of adding a random image.
        let c = model.restormer.out_channels;
        let std = candle_nn::init::NonLinearity::ReLU.gain() / ((c * 9) as f64).sqrt() * 0.1;
        let conv = Conv2d::with_init(
            c,
            3,
            3,
            true,
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: std,
            },
            candle_nn::Init::Const(0.0),
            head_params.var_builder().pp("head").pp("conv"),
        )?;
        if enc_loaded {
            crate::models::check_all_used(&encoder_params, "encoder")?;
        }
        if head_loaded {
            crate::models::check_all_used(&head_params, "head")?;
        }
        Ok(FinetuneNet {
            encoder: enc,
            head: conv,
            residual,
            encoder_params,
            head_params,
            mean: Tensor::from_slice(&MEAN, (1, 3, 1, 1), device)?,
            std: Tensor::from_slice(&STD, (1, 3, 1, 1), device)?,
        })
    }

    /// Restores a degraded batch: (B, 3, H, W) in [0, 1] -> (B, 3, H, W), any H and W (the
    /// encoder reflect-pads to a multiple of 8 and crops back).
    pub fn forward(&self, degraded: &Tensor) -> candle_core::Result<Tensor> {
        let x = degraded
            .broadcast_sub(&self.mean)?
            .broadcast_div(&self.std)?;
        let y = self.head.forward(&self.encoder.forward(&x)?)?;
        if self.residual {
            y + degraded
        } else {
            Ok(y)
        }
    }

    /// Every trainable parameter: encoder first, then head.
    pub fn vars(&self) -> Result<Vec<(String, Var)>> {
        let mut v = self.encoder_params.vars()?;
        v.extend(self.head_params.vars()?);
        Ok(v)
    }

    /// `encoder.*` and `head.conv.*` tensors (what a fine-tuning model file holds).
    pub fn state_dict(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut t = self.encoder_params.tensors()?;
        t.extend(self.head_params.tensors()?);
        Ok(t)
    }

    pub fn num_parameters(&self) -> Result<usize> {
        Ok(self.vars()?.iter().map(|(_, v)| v.elem_count()).sum())
    }
}

/// Reads every tensor of a safetensors file (fine-tuning checkpoints hold `head.*` too, which
/// `models::load_weights` leaves out), as float32 on `device`.
pub fn load_all(path: &std::path::Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let t = candle_core::safetensors::load(path, device).map_err(|e| TrainerError::Weights {
        path: path.to_path_buf(),
        message: format!("cannot read safetensors: {e}"),
    })?;
    t.into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
        .collect()
}

/// The MODEL tree stored in a model file's `ifp_config` metadata (pre-training or fine-tuning
/// checkpoints of this trainer), so `--init W` needs no separate `--model`. `None` for files
/// without it (reference PyTorch weights).
pub fn stored_model_config(path: &std::path::Path) -> Result<Option<ModelConfig>> {
    let bytes = std::fs::read(path).map_err(TrainerError::io(path))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| TrainerError::Weights {
            path: path.to_path_buf(),
            message: format!("not a safetensors file: {e}"),
        })?;
    let Some(yaml) = meta.metadata().as_ref().and_then(|m| m.get("ifp_config")) else {
        return Ok(None);
    };
    if let Ok(c) = crate::Config::from_yaml(yaml) {
        return Ok(Some(c.model));
    }
    Ok(serde_norway::from_str::<super::FinetuneConfig>(yaml)
        .ok()
        .map(|c| c.model))
}

impl crate::eval::Restorer for FinetuneNet {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        FinetuneNet::forward(self, x)
    }

    fn device(&self) -> Result<Device> {
        self.vars()?
            .first()
            .map(|(_, v)| v.device().clone())
            .ok_or_else(|| TrainerError::Unsupported("the network has no parameters".into()))
    }
}
