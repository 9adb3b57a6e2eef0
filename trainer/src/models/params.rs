//! Where a network's parameters come from: a seeded initialiser (new runs) or a set of named
//! tensors (checkpoints, reference weights). Either way every parameter becomes a candle `Var`
//! recorded under its reference name, so the optimiser and the checkpoint writer see the same
//! list, and a load is strict like PyTorch's `load_state_dict(strict=True)`.
//!
//! Buffers (PyTorch `register_buffer`, e.g. Uformer's integer `relative_position_index`) are
//! computed by the network, not learned: they are recorded next to the parameters so that the
//! state_dict carries them (a strict PyTorch load needs them), and when loading they must be
//! present and equal to the computed value. They are never trainable.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

enum Source {
    Init(Box<ChaCha8Rng>),
    Load(HashMap<String, Tensor>),
}

struct Inner {
    source: Source,
    vars: Vec<(String, Var)>,
    buffers: Vec<(String, Tensor)>,
}

/// A `VarBuilder` backend that creates and records the parameters of one network.
#[derive(Clone)]
pub struct ParamStore {
    inner: Arc<Mutex<Inner>>,
    dtype: DType,
    device: Device,
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("parameter store lock poisoned".into())
}

impl ParamStore {
    /// Fresh parameters drawn from `seed` (the same seed gives the same network on any device).
    pub fn init(seed: u64, dtype: DType, device: &Device) -> Self {
        Self::new(
            Source::Init(Box::new(ChaCha8Rng::seed_from_u64(seed))),
            dtype,
            device,
        )
    }

    /// Parameters taken from named tensors (already stripped of nothing: full reference names).
    pub fn load(tensors: HashMap<String, Tensor>, dtype: DType, device: &Device) -> Self {
        Self::new(Source::Load(tensors), dtype, device)
    }

    fn new(source: Source, dtype: DType, device: &Device) -> Self {
        ParamStore {
            inner: Arc::new(Mutex::new(Inner {
                source,
                vars: Vec::new(),
                buffers: Vec::new(),
            })),
            dtype,
            device: device.clone(),
        }
    }

    /// A builder rooted at this store.
    pub fn var_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), self.dtype, self.device.clone())
    }

    /// Every parameter created so far, in creation order, with its full name.
    pub fn vars(&self) -> Result<Vec<(String, Var)>> {
        Ok(self.inner.lock().map_err(|_| poisoned())?.vars.clone())
    }

    /// After a load: the tensors of the source that no parameter asked for (strict loading
    /// reports them as unexpected keys).
    pub fn unused_keys(&self) -> Result<Vec<String>> {
        let inner = self.inner.lock().map_err(|_| poisoned())?;
        let mut out = Vec::new();
        if let Source::Load(map) = &inner.source {
            let used: std::collections::HashSet<&str> = inner
                .vars
                .iter()
                .map(|(n, _)| n.as_str())
                .chain(inner.buffers.iter().map(|(n, _)| n.as_str()))
                .collect();
            out = map
                .keys()
                .filter(|k| !used.contains(k.as_str()))
                .cloned()
                .collect();
        }
        out.sort();
        Ok(out)
    }

    /// The current values of parameters and buffers, keyed by name (for writing checkpoints).
    pub fn tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let inner = self.inner.lock().map_err(|_| poisoned())?;
        Ok(inner
            .vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .chain(inner.buffers.iter().map(|(n, t)| (n.clone(), t.clone())))
            .collect())
    }

    /// Records the buffer `name` with the value the network computed (kept as given, e.g. int64
    /// on the CPU). When loading, the source must hold a tensor of that name with the same shape
    /// and values (compared exactly, as int64), and the key then counts as used. Registering
    /// the same name twice with the same value is a no-op.
    pub fn register_buffer(&self, name: &str, value: &Tensor) -> Result<()> {
        let mut inner = self.inner.lock().map_err(|_| poisoned())?;
        if let Some((_, old)) = inner.buffers.iter().find(|(n, _)| n == name) {
            if !same_values(old, value)? {
                return Err(candle_core::Error::Msg(format!(
                    "buffer `{name}` registered twice with different values"
                )));
            }
            return Ok(());
        }
        if let Source::Load(map) = &inner.source {
            let stored = map.get(name).ok_or_else(|| {
                candle_core::Error::Msg(format!("missing key `{name}` in the weights"))
            })?;
            if stored.shape() != value.shape() {
                return Err(candle_core::Error::Msg(format!(
                    "key `{name}` has shape {:?} in the weights, the network needs {:?}",
                    stored.dims(),
                    value.dims()
                )));
            }
            if !same_values(stored, value)? {
                return Err(candle_core::Error::Msg(format!(
                    "buffer `{name}` in the weights differs from the one this network computes"
                )));
            }
        }
        inner.buffers.push((name.to_string(), value.clone()));
        Ok(())
    }

    /// Every buffer registered so far, in registration order.
    pub fn buffers(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self.inner.lock().map_err(|_| poisoned())?.buffers.clone())
    }
}

/// Exact equality of two tensors of the same shape, compared as int64 (buffers are indices;
/// a float copy of one still compares equal when it holds the same integers).
fn same_values(a: &Tensor, b: &Tensor) -> Result<bool> {
    if a.shape() != b.shape() {
        return Ok(false);
    }
    let as_i64 = |t: &Tensor| -> Result<Vec<i64>> {
        t.to_device(&Device::Cpu)?
            .to_dtype(DType::I64)?
            .flatten_all()?
            .to_vec1::<i64>()
    };
    Ok(as_i64(a)? == as_i64(b)?)
}

fn draw(rng: &mut ChaCha8Rng, shape: &Shape, init: Init) -> Result<Vec<f32>> {
    let n = shape.elem_count();
    Ok(match init {
        Init::Const(v) => vec![v as f32; n],
        Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up) as f32).collect(),
        Init::Randn { mean, stdev } => {
            let d = Normal::new(mean, stdev).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            (0..n).map(|_| d.sample(rng) as f32).collect()
        }
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            let init = match dist {
                candle_nn::init::NormalOrUniform::Normal => Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
                candle_nn::init::NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    Init::Uniform { lo: -b, up: b }
                }
            };
            return draw(rng, shape, init);
        }
    })
}

impl candle_nn::var_builder::SimpleBackend for ParamStore {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut inner = self.inner.lock().map_err(|_| poisoned())?;
        if let Some((_, v)) = inner.vars.iter().find(|(n, _)| n == name) {
            return Ok(v.as_tensor().clone());
        }
        let tensor = match &mut inner.source {
            Source::Init(rng) => {
                let values = draw(rng, &s, h)?;
                Tensor::from_vec(values, s, &Device::Cpu)?
            }
            Source::Load(map) => {
                let t = map.get(name).ok_or_else(|| {
                    candle_core::Error::Msg(format!("missing key `{name}` in the weights"))
                })?;
                if t.shape() != &s {
                    return Err(candle_core::Error::Msg(format!(
                        "key `{name}` has shape {:?} in the weights, the network needs {:?}",
                        t.dims(),
                        s.dims()
                    )));
                }
                t.clone()
            }
        };
        let var = Var::from_tensor(&tensor.to_dtype(dtype)?.to_device(dev)?)?;
        let t = var.as_tensor().clone();
        inner.vars.push((name.to_string(), var));
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let inner = self.inner.lock().map_err(|_| poisoned())?;
        match &inner.source {
            Source::Load(map) => map
                .get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("missing key `{name}`")))?
                .to_dtype(dtype)?
                .to_device(dev),
            Source::Init(_) => Err(candle_core::Error::Msg(format!(
                "`{name}` has no shape to initialise from"
            ))),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match self.inner.lock() {
            Ok(inner) => match &inner.source {
                Source::Load(map) => map.contains_key(name),
                Source::Init(_) => true,
            },
            Err(_) => false,
        }
    }
}
