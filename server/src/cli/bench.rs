//! `ifp bench`: median time of full training steps for a config at a given batch and size,
//! with each step's phases (device-synchronised with `--sync`).

use clap::Args;
use ifp_trainer::config::{Amp, ModelType};
use ifp_trainer::Trainer;

use super::{classify, load_config, parse_device, Failure};

#[derive(Args)]
pub struct BenchArgs {
    /// Config (file or preset) describing the network and loss.
    #[arg(long, value_name = "FILE|PRESET")]
    config: String,
    /// Crops per step (overrides DATA.BATCH_SIZE).
    #[arg(long)]
    batch: Option<usize>,
    /// Crop size (overrides DATA.IMG_SIZE).
    #[arg(long)]
    size: Option<usize>,
    /// Timed steps (after 2 untimed warm-up steps).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Mixed precision: off or bf16 (overrides TRAIN.AMP).
    #[arg(long, value_name = "off|bf16")]
    amp: Option<String>,
    /// Wait for the device at the end of each phase, so that the phase times are the device's
    /// (on a GPU the host otherwise runs ahead; slower steps).
    #[arg(long)]
    sync: bool,
}

pub fn run(a: BenchArgs) -> Result<(), Failure> {
    let mut cfg = load_config(&a.config)?;
    if let Some(b) = a.batch {
        cfg.data.batch_size = b;
    }
    if let Some(s) = a.size {
        cfg.data.img_size = s;
        if cfg.model.kind == ModelType::Uformer {
            cfg.model.uformer.image_size = s;
        }
    }
    if let Some(amp) = &a.amp {
        cfg.train.amp = match amp.as_str() {
            "off" => Amp::Off,
            "bf16" => Amp::Bf16,
            other => {
                return Err(Failure::usage(anyhow::anyhow!(
                    "--amp {other}: expected off or bf16"
                )))
            }
        };
    }
    if a.steps == 0 {
        return Err(Failure::usage(anyhow::anyhow!(
            "--steps 0: need at least 1 timed step"
        )));
    }
    // The schedule needs room for warm-up + timed steps.
    cfg.train.steps = Some(a.steps + 2);
    cfg.validate()
        .map_err(|e| Failure::usage(anyhow::anyhow!("{e}")))?;
    let device = parse_device(&a.device)?;
    let mut trainer = Trainer::new(&cfg, &device).map_err(classify)?;
    trainer.sync_phases(a.sync);
    // On CUDA, which of the kernels that wait for a GPU run are on (IFP_CUDA_FUSED).
    let cuda = if device.is_cuda() {
        format!(" cuda kernels {}", ifp_trainer::kernels::cuda_kernels())
    } else {
        String::new()
    };
    println!(
        "bench {}: batch {} size {} amp {:?} device {:?} params {} threads {} (candle's \
         elementwise ops: {}){cuda}",
        a.config,
        cfg.data.batch_size,
        cfg.data.img_size,
        cfg.train.amp,
        device.location(),
        trainer.network().num_parameters().map_err(classify)?,
        candle_core::utils::get_num_threads(),
        candle_elementwise_threads()
    );
    for _ in 0..2 {
        ifp_trainer::driver::step(&mut trainer).map_err(classify)?;
    }
    let mut times = Vec::with_capacity(a.steps);
    for i in 0..a.steps {
        let t0 = std::time::Instant::now();
        let s = ifp_trainer::driver::step(&mut trainer).map_err(classify)?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let p = s.phases;
        let f = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        println!(
            "step {i} {ms:.2} ms (data {:.2}, forward {:.2}, backward {:.2}, optimizer {:.2}) loss {:.6}",
            f(p.data),
            f(p.forward),
            f(p.backward),
            f(p.optimizer),
            s.loss
        );
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!("step_ms {median:.3}");
    Ok(())
}

/// The threads of candle's own pool for its elementwise ops, the caller's included: what
/// `CANDLE_NUM_THREADS` says (the `ifp` binary sets it to 1 for two threads or fewer), else one per
/// rayon thread, as candle sizes it.
fn candle_elementwise_threads() -> usize {
    std::env::var("CANDLE_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(candle_core::utils::get_num_threads)
}
