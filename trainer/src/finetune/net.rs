//! The fine-tuning networks of both backbones. Input and output are images in [0, 1]; the
//! network sees the ImageNet-normalised degraded image, as it did during pre-training.
//!
//! - **Restormer**, DegAE style: the pre-training encoder (`encoder.*`) followed by a task head
//!   of ONE 3x3 convolution from the encoder's `OUT_CHANNELS` to RGB (`head.conv.weight`
//!   (3, OUT_CHANNELS, 3, 3), `head.conv.bias` (3)), which replaces the SRResNet reconstruction
//!   decoder of pre-training. With `residual` (the default) the head's output, in image space, is
//!   added to the degraded input: a one-convolution head cannot learn the identity quickly, and
//!   short fine-tuning budgets would otherwise measure how fast each arm learns to copy its input.
//! - **Uformer** (Wang et al., CVPR 2022), as IFP pre-trains and fine-tunes it: the whole
//!   pre-trained network, encoder (`encoder.*`) and decoder (`decoder.*`), trained end to end
//!   with the reference's names. Its output is a residual as in the Uformer paper (`x + y`), taken
//!   in the normalised space the network was pre-trained in: `restored = degraded + std * y`.
//!   Without `residual` the output is `y` de-normalised. The network only takes square inputs
//!   whose every level is tiled by its windows, so other images are zero-padded (in normalised
//!   space, i.e. with the mean colour) at the bottom and right to the next side that fits, and
//!   the output cropped back; Uformer's own test code pads to a square the same way.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Module, Tensor, Var};

use crate::config::{ModelConfig, ModelType, UformerConfig};
use crate::error::{Result, TrainerError};
use crate::models::layers::Conv2d;
use crate::models::restormer::Restormer;
use crate::models::uformer::{self, DropPathRng, UformerDecoder, UformerEncoder};
use crate::models::{ParamStore, WeightSource};

/// ImageNet statistics: the pre-training normalises its input with them, so a fine-tuned
/// network must see inputs normalised the same way.
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The backbone and what follows it, per `MODEL.TYPE`.
enum Body {
    /// Encoder + one-convolution head (`head.conv.*`).
    Restormer {
        encoder: Box<Restormer>,
        head: Conv2d,
    },
    /// The pre-training network itself, encoder + decoder (`decoder.*`).
    Uformer {
        cfg: Box<UformerConfig>,
        encoder: Box<UformerEncoder>,
        decoder: UformerDecoder,
    },
}

/// A fine-tuning network: backbone, then head (Restormer) or decoder (Uformer).
pub struct FinetuneNet {
    body: Body,
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

/// The part of `src` under `prefix`; loaded weights must hold some (`what` names the part).
fn part(src: WeightSource, prefix: &str, what: &str) -> Result<WeightSource> {
    match src {
        WeightSource::Init(s) => Ok(WeightSource::Init(s)),
        WeightSource::Tensors(t) => {
            let t = keep_prefix(t, prefix);
            if t.is_empty() {
                return Err(TrainerError::Unsupported(format!(
                    "the initial weights hold no `{prefix}*` tensors (the {what})"
                )));
            }
            Ok(WeightSource::Tensors(t))
        }
    }
}

impl FinetuneNet {
    /// What follows the backbone for `model`: its tensors' prefix (`head.` for Restormer's new
    /// convolution, `decoder.` for Uformer's pre-trained decoder). A fine-tuning run starting from
    /// a pre-training checkpoint loads this part from it when it is `decoder.`.
    pub fn head_prefix(model: &ModelConfig) -> &'static str {
        match model.kind {
            ModelType::Restormer => "head.",
            ModelType::Uformer => "decoder.",
        }
    }

    /// Builds the network on `device` (float32): the backbone's weights from `encoder`, the
    /// head's (Restormer) or decoder's (Uformer) from `head`. Loaded weights are strict: every
    /// tensor under the part's prefix must be used.
    pub fn new(
        model: &ModelConfig,
        encoder: WeightSource,
        head: WeightSource,
        residual: bool,
        device: &Device,
    ) -> Result<Self> {
        let enc_src = part(encoder, "encoder.", "encoder")?;
        let head_src = part(head, Self::head_prefix(model), "head")?;
        let (enc_loaded, head_loaded) = (
            matches!(enc_src, WeightSource::Tensors(_)),
            matches!(head_src, WeightSource::Tensors(_)),
        );
        let encoder_params = store(enc_src, device);
        let head_params = store(head_src, device);
        let body = match model.kind {
            ModelType::Restormer => Self::restormer(model, &encoder_params, &head_params)?,
            ModelType::Uformer => {
                let u = &model.uformer;
                let encoder = UformerEncoder::new(u, encoder_params.var_builder().pp("encoder"))?;
                let decoder = UformerDecoder::new(u, head_params.var_builder().pp("decoder"))?;
                for (name, value) in encoder.buffers() {
                    encoder_params.register_buffer(&name, &value)?;
                }
                for (name, value) in decoder.buffers() {
                    head_params.register_buffer(&name, &value)?;
                }
                Body::Uformer {
                    cfg: Box::new(u.clone()),
                    encoder: Box::new(encoder),
                    decoder,
                }
            }
        };
        if enc_loaded {
            crate::models::check_all_used(&encoder_params, "encoder")?;
        }
        if head_loaded {
            crate::models::check_all_used(&head_params, "head")?;
        }
        Ok(FinetuneNet {
            body,
            residual,
            encoder_params,
            head_params,
            mean: Tensor::from_slice(&MEAN, (1, 3, 1, 1), device)?,
            std: Tensor::from_slice(&STD, (1, 3, 1, 1), device)?,
        })
    }

    fn restormer(model: &ModelConfig, enc: &ParamStore, head: &ParamStore) -> Result<Body> {
        let encoder = Restormer::new(&model.restormer, enc.var_builder().pp("encoder"))?;
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
            head.var_builder().pp("head").pp("conv"),
        )?;
        Ok(Body::Restormer {
            encoder: Box::new(encoder),
            head: conv,
        })
    }

    /// Restores a degraded batch: (B, 3, H, W) in [0, 1] -> (B, 3, H, W), any H and W (the
    /// Restormer encoder reflect-pads to a multiple of 8, Uformer's input is zero-padded to a
    /// square that fits; both crop back). Eval mode.
    pub fn forward(&self, degraded: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_t(degraded, None)
    }

    /// `forward`; with `rng`, in training mode (Uformer's stochastic depth draws from it).
    pub fn forward_t(
        &self,
        degraded: &Tensor,
        rng: Option<&mut DropPathRng>,
    ) -> candle_core::Result<Tensor> {
        let x = degraded
            .broadcast_sub(&self.mean)?
            .broadcast_div(&self.std)?;
        match &self.body {
            Body::Restormer { encoder, head } => {
                let y = head.forward(&encoder.forward(&x)?)?;
                if self.residual {
                    y + degraded
                } else {
                    Ok(y)
                }
            }
            Body::Uformer {
                cfg,
                encoder,
                decoder,
            } => {
                let (_, _, h, w) = x.dims4()?;
                let s = uformer::padded_side(cfg, h, w).map_err(candle_core::Error::wrap)?;
                let xp = x.pad_with_zeros(2, 0, s - h)?.pad_with_zeros(3, 0, s - w)?;
                let mut rng = rng;
                let tokens = encoder.forward_t(&xp, rng.as_deref_mut())?;
                let y = decoder.forward_t(&tokens, rng)?;
                let y = y
                    .narrow(2, 0, h)?
                    .narrow(3, 0, w)?
                    .broadcast_mul(&self.std)?;
                if self.residual {
                    y + degraded
                } else {
                    y.broadcast_add(&self.mean)
                }
            }
        }
    }

    /// Every trainable parameter: encoder first, then head (or decoder).
    pub fn vars(&self) -> Result<Vec<(String, Var)>> {
        let mut v = self.encoder_params.vars()?;
        v.extend(self.head_params.vars()?);
        Ok(v)
    }

    /// What a fine-tuning model file holds: `encoder.*` and `head.conv.*` (Restormer), or
    /// `encoder.*` and `decoder.*` with their buffers (Uformer; the pre-training checkpoint's
    /// names, so the reference's Uformer loads it strictly).
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
