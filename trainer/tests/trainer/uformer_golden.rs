//! Parity of the Uformer encoder + decoder with the PyTorch reference
//! (`golden/uformer_tiny.safetensors`, and `golden/uformer_tiny_shift.safetensors` for shifted
//! windows): output and the gradient of `sum(output * probe)` for the input and for every
//! parameter within `common::parity_bounds` (relative L2). Also: the strict load accounts for the int64
//! `relative_position_index` buffers, a fresh network's state_dict has the reference key set,
//! and the reshaped downsampling / upsampling match candle's convolutions.

use crate::common;

use std::collections::{BTreeSet, HashMap};

use candle_core::{DType, Device, Module, Tensor, Var};
use ifp_trainer::models::uformer::{Downsample, Upsample};
use ifp_trainer::models::{load_weights, Network, WeightSource};
use ifp_trainer::Config;

const FILES: [(&str, &str, usize); 2] = [
    ("uformer_tiny", "configs/uformer_tiny.yaml", 177),
    ("uformer_tiny_shift", "configs/uformer_tiny_shift.yaml", 245),
];

fn config(rel: &str) -> Config {
    let path = common::golden_dir().join(rel);
    Config::load(path.to_str().expect("path")).expect("config")
}

fn setup(name: &str, cfg: &str) -> (HashMap<String, Tensor>, Network) {
    let dir = common::golden_dir();
    let file = dir.join(format!("{name}.safetensors"));
    let dev = common::test_device();
    let all = candle_core::safetensors::load(&file, &dev).expect("golden file");
    let weights = load_weights(&file, &dev).expect("weights");
    let net = Network::build(&config(cfg), WeightSource::Tensors(weights), &dev).expect("network");
    (all, net)
}

#[test]
fn forward_matches_reference() {
    let (out_tol, _) = common::parity_bounds(&common::test_device());
    for (name, cfg, _) in FILES {
        let (g, net) = setup(name, cfg);
        let enc = net.encode_all(&g["input"]).expect("encode");
        assert_eq!(enc.len(), 5, "{name}: encoder outputs");
        for (k, t) in enc.iter().enumerate() {
            let e = common::rel_l2(t, &g[&format!("encoder_output.{k}")]);
            eprintln!("{name}: encoder_output.{k} rel L2 {e:.3e}");
            assert!(e < out_tol, "{name}: encoder output {k} error {e}");
        }
        let out = net.forward(&g["input"]).expect("forward");
        let o = common::rel_l2(&out, &g["output"]);
        eprintln!("{name}: output rel L2 {o:.3e}");
        assert!(o < out_tol, "{name}: output error {o}");
    }
}

#[test]
fn gradients_match_reference() {
    let (_, grad_tol) = common::parity_bounds(&common::test_device());
    for (name, cfg, count) in FILES {
        let (g, net) = setup(name, cfg);
        common::check_gradients(name, &g, &net, count, grad_tol);
    }
}

/// The golden weights load strictly (parameters and the 9 / 13 buffers, no key left over), and
/// the state_dict gives back exactly the file's `encoder.*` / `decoder.*` keys with the buffers
/// as int64.
#[test]
fn state_dict_round_trips_with_buffers() {
    for ((name, cfg, count), buffers) in FILES.into_iter().zip([9usize, 13]) {
        let (g, net) = setup(name, cfg);
        let sd = net.state_dict().expect("state_dict");
        let want: BTreeSet<&String> = g
            .keys()
            .filter(|k| k.starts_with("encoder.") || k.starts_with("decoder."))
            .collect();
        let got: BTreeSet<&String> = sd.keys().collect();
        assert_eq!(got, want, "{name}: state_dict keys");
        assert_eq!(sd.len(), count + buffers, "{name}: key count");
        let idx: Vec<_> = sd
            .iter()
            .filter(|(k, _)| k.ends_with("relative_position_index"))
            .collect();
        assert_eq!(idx.len(), buffers, "{name}: buffers");
        for (k, t) in idx {
            assert_eq!(t.dtype(), DType::I64, "{k}");
            assert_eq!(
                t.flatten_all()
                    .and_then(|t| t.to_vec1::<i64>())
                    .expect("i64"),
                g[k].flatten_all()
                    .and_then(|t| t.to_vec1::<i64>())
                    .expect("i64"),
                "{k}"
            );
        }
        // Buffers are not trainable.
        assert!(net
            .vars()
            .expect("vars")
            .iter()
            .all(|(k, _)| !k.ends_with("relative_position_index")));
        // A fresh network has the same keys and shapes (what a checkpoint of it holds).
        let fresh = Network::build(&config(cfg), WeightSource::Init(7), &Device::Cpu)
            .expect("fresh network")
            .state_dict()
            .expect("state_dict");
        for (k, t) in &sd {
            assert_eq!(fresh[k].dims(), t.dims(), "{name}: shape of {k}");
            assert_eq!(fresh[k].dtype(), t.dtype(), "{name}: dtype of {k}");
        }
        assert_eq!(fresh.len(), sd.len());
    }
}

#[test]
fn strict_load_checks_buffers() {
    let (name, cfg, _) = FILES[0];
    let file = common::golden_dir().join(format!("{name}.safetensors"));
    let key = "encoder.encoderlayer_0.blocks.0.attn.relative_position_index";
    // Missing buffer.
    let mut w = load_weights(&file, &Device::Cpu).expect("weights");
    w.remove(key);
    let e = Network::build(&config(cfg), WeightSource::Tensors(w), &Device::Cpu)
        .err()
        .expect("must fail");
    assert!(e.to_string().contains(key), "{e}");
    // Wrong values.
    let mut w = load_weights(&file, &Device::Cpu).expect("weights");
    let bad = w[key].zeros_like().expect("zeros");
    w.insert(key.to_string(), bad);
    let e = Network::build(&config(cfg), WeightSource::Tensors(w), &Device::Cpu)
        .err()
        .expect("must fail");
    assert!(e.to_string().contains(key), "{e}");
    // Weights of another config (shift file has extra blocks): unused keys are reported.
    let w = load_weights(
        &common::golden_dir().join("uformer_tiny_shift.safetensors"),
        &Device::Cpu,
    )
    .expect("weights");
    let e = Network::build(&config(cfg), WeightSource::Tensors(w), &Device::Cpu)
        .err()
        .expect("must fail");
    assert!(e.to_string().contains("blocks.1"), "{e}");
}

#[test]
fn rejects_sizes_the_reference_cannot_take() {
    let (name, cfg, _) = FILES[0];
    let (g, net) = setup(name, cfg);
    // Non-square input.
    let x = g["input"].narrow(3, 0, 16).expect("narrow");
    assert!(net.forward(&x).is_err());
    // A size whose levels are not all tiled by the windows built for 32 (48: level 3 is 6x6,
    // window 4).
    let x = Tensor::zeros((1, 3, 48, 48), DType::F32, &Device::Cpu).expect("zeros");
    assert!(net.forward(&x).is_err());
    // Building for 16 with window 4 fails (the decoder's 2x2 level is smaller than a window).
    let mut c = config(cfg);
    c.model.uformer.image_size = 16;
    let e = Network::build(&c, WeightSource::Init(1), &Device::Cpu)
        .err()
        .expect("must fail");
    assert!(e.to_string().contains("IMAGE_SIZE 16"), "{e}");
}

#[test]
fn fresh_network_trains_every_parameter() {
    let (_, cfg, count) = FILES[1];
    let net = Network::build(&config(cfg), WeightSource::Init(3), &Device::Cpu).expect("net");
    let x = Tensor::rand(0f32, 1.0, (1, 3, 32, 32), &Device::Cpu).expect("x");
    let loss = net
        .forward(&x)
        .and_then(|y| y.sqr())
        .and_then(|y| y.sum_all())
        .expect("loss");
    let grads = loss.backward().expect("backward");
    let vars = net.vars().expect("vars");
    assert_eq!(vars.len(), count);
    for (k, v) in vars {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{k}: no gradient"));
        let n = g
            .abs()
            .and_then(|g| g.sum_all())
            .and_then(|g| g.to_scalar::<f32>())
            .expect("norm");
        assert!(n > 0.0 && n.is_finite(), "{k}: gradient sum {n}");
    }
}

// ---- the reshaped convolutions against candle's own, values and gradients -----------------

fn rand(shape: &[usize], seed: u64) -> Tensor {
    // Deterministic data without depending on candle's global RNG.
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f64 / (1u64 << 31) as f64 * 2.0 - 1.0) as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    common::rel_l2(a, b)
}

/// tokens (B, H*W, C) <-> image (B, C, H, W)
fn to_img(t: &Tensor, h: usize) -> Tensor {
    let (b, _, c) = t.dims3().expect("dims");
    t.transpose(1, 2)
        .and_then(|t| t.reshape((b, c, h, h)))
        .expect("img")
}

fn to_tokens(x: &Tensor) -> Tensor {
    let (b, c, h, w) = x.dims4().expect("dims");
    x.reshape((b, c, h * w))
        .and_then(|t| t.transpose(1, 2))
        .expect("tokens")
}

/// Runs `fast` and `slow` on the same input/parameters and compares outputs and the gradients of
/// a random projection of the output w.r.t. every one of them.
fn compare(
    what: &str,
    vars: &[Var],
    fast: impl Fn(&[Tensor]) -> Tensor,
    slow: impl Fn(&[Tensor]) -> Tensor,
) {
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let (yf, ys) = (fast(&ts), slow(&ts));
    assert_eq!(yf.dims(), ys.dims(), "{what}: shapes");
    let e = rel(&yf, &ys);
    assert!(e < 1e-5, "{what}: values rel L2 {e}");
    let probe = rand(yf.dims(), 99);
    let gf = (yf * &probe).and_then(|t| t.sum_all()).expect("loss");
    let gs = (ys * &probe).and_then(|t| t.sum_all()).expect("loss");
    let (gf, gs) = (gf.backward().expect("bwd"), gs.backward().expect("bwd"));
    for (i, v) in vars.iter().enumerate() {
        let a = gf.get(v.as_tensor()).expect("fast grad");
        let b = gs.get(v.as_tensor()).expect("slow grad");
        let e = rel(a, b);
        assert!(e < 1e-5, "{what}: gradient {i} rel L2 {e}");
    }
}

#[test]
fn downsample_matches_candle_conv2d() {
    for (i, &(b, c, o, h)) in [(2, 3, 5, 8), (1, 4, 8, 2), (2, 8, 16, 6)]
        .iter()
        .enumerate()
    {
        let x = Var::from_tensor(&rand(&[b, c, h, h], i as u64)).expect("x");
        let w = Var::from_tensor(&rand(&[o, c, 4, 4], 10 + i as u64)).expect("w");
        let bias = Var::from_tensor(&rand(&[o], 20 + i as u64)).expect("b");
        compare(
            &format!("downsample {i}"),
            &[x, w, bias],
            |t| {
                let d = Downsample::from_weights(t[1].clone(), t[2].clone()).expect("d");
                to_img(&d.forward(&to_tokens(&t[0])).expect("fast"), h / 2)
            },
            |t| {
                t[0].conv2d(&t[1], 1, 2, 1, 1)
                    .and_then(|y| y.broadcast_add(&t[2].reshape((1, o, 1, 1))?))
                    .expect("slow")
            },
        );
    }
}

#[test]
fn upsample_matches_candle_conv_transpose2d() {
    for (i, &(b, c, o, h)) in [(2, 3, 5, 4), (1, 8, 4, 1), (2, 16, 8, 3)]
        .iter()
        .enumerate()
    {
        let x = Var::from_tensor(&rand(&[b, c, h, h], i as u64)).expect("x");
        let w = Var::from_tensor(&rand(&[c, o, 2, 2], 10 + i as u64)).expect("w");
        let bias = Var::from_tensor(&rand(&[o], 20 + i as u64)).expect("b");
        compare(
            &format!("upsample {i}"),
            &[x, w, bias],
            |t| {
                let u = Upsample::from_weights(t[1].clone(), t[2].clone()).expect("u");
                to_img(&u.forward(&to_tokens(&t[0])).expect("fast"), 2 * h)
            },
            |t| {
                t[0].conv_transpose2d(&t[1], 0, 0, 2, 1)
                    .and_then(|y| y.broadcast_add(&t[2].reshape((1, o, 1, 1))?))
                    .expect("slow")
            },
        );
    }
}

/// Timing of forward and backward at batch 2, 32x32 (`cargo test --release ... -- --ignored
/// --nocapture timing`); prints the best of 10.
#[test]
#[ignore]
fn timing() {
    let (_, cfg, _) = FILES[0];
    let net = Network::build(&config(cfg), WeightSource::Init(3), &Device::Cpu).expect("net");
    let x = Tensor::rand(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).expect("x");
    let (mut f, mut b) = (f64::MAX, f64::MAX);
    for _ in 0..10 {
        let t0 = std::time::Instant::now();
        let loss = net
            .forward(&x)
            .and_then(|y| y.sqr()?.sum_all())
            .expect("fwd");
        let t1 = std::time::Instant::now();
        let _ = loss.backward().expect("bwd");
        let t2 = std::time::Instant::now();
        f = f.min((t1 - t0).as_secs_f64() * 1e3);
        b = b.min((t2 - t1).as_secs_f64() * 1e3);
    }
    eprintln!("uformer_tiny batch 2 32x32: forward {f:.2} ms, backward {b:.2} ms");
}

/// Training mode (`forward_train`) applies the reference's stochastic depth: the masks are a
/// function of the stream (same stream, same output; another step, other masks), the output
/// differs from eval mode, and with `DROP_PATH_RATE: 0` training mode is eval mode bit for bit.
#[test]
fn training_mode_applies_stochastic_depth() {
    use ifp_trainer::models::uformer::DropPathRng;
    let (name, cfg, _) = FILES[1];
    let (g, net) = setup(name, cfg);
    let x = &g["input"];
    let values = |t: Tensor| {
        t.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("values")
    };
    let eval = values(net.forward(x).expect("eval"));
    let train = |step| {
        values(
            net.forward_train(x, &mut DropPathRng::for_step(5, step))
                .expect("train"),
        )
    };
    let a = train(0);
    assert_eq!(a, train(0), "same stream, same masks");
    assert_ne!(a, eval, "{name}: no branch dropped in training mode");
    assert_ne!(a, train(1), "another step draws other masks");

    let mut c = config(cfg);
    assert_eq!(c.model.uformer.drop_path_rate, 0.1, "reference default");
    c.model.uformer.drop_path_rate = 0.0;
    // On the device the parity tests run on (IFP_TEST_DEVICE), like `x`.
    let dev = x.device();
    let weights = load_weights(
        &common::golden_dir().join(format!("{name}.safetensors")),
        dev,
    )
    .expect("weights");
    let net0 = Network::build(&c, WeightSource::Tensors(weights), dev).expect("net");
    let y = net0
        .forward_train(x, &mut DropPathRng::for_step(5, 0))
        .expect("train");
    assert_eq!(values(y), eval);
}
