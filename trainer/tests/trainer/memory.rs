//! The peak-memory estimate against the measurements it was fitted to: the peak resident set
//! of `ifp bench --steps 2` on the CPU (`/usr/bin/time -f %M`, KiB), taken on 2026-12-03 with
//! the optimised dev build. A change to the networks' memory use shows up here as a drift.

use ifp_trainer::config::Config;
use ifp_trainer::memory::pretrain_peak_bytes;

use crate::common;

/// Each measured run: its config and its peak in bytes.
fn measured() -> Vec<(Config, u64)> {
    let tiny = || Config::load("tiny").expect("tiny");
    let mut rows = Vec::new();
    let mut push = |mut c: Config, side: usize, batch: usize, kib: u64| {
        c.data.img_size = side;
        c.data.batch_size = batch;
        rows.push((c, kib * 1024));
    };
    for (side, batch, kib) in [
        (64, 4, 247_548),
        (128, 4, 644_952),
        (64, 16, 638_908),
        (128, 8, 1_296_416),
    ] {
        push(tiny(), side, batch, kib);
    }
    let mut d16 = tiny();
    d16.model.restormer.dim = 16;
    push(d16.clone(), 64, 4, 376_700);
    push(d16, 128, 8, 2_136_164);
    let mut b2 = tiny();
    b2.model.restormer.num_blocks = vec![2, 2, 2, 4];
    b2.model.restormer.num_refinement_blocks = 2;
    push(b2.clone(), 64, 4, 319_252);
    push(b2, 128, 8, 1_810_468);
    let mut nf32 = tiny();
    nf32.model.restormer.out_channels = 32;
    nf32.model.decoder.in_nc = 32;
    nf32.model.decoder.nf = 32;
    push(nf32.clone(), 64, 4, 276_184);
    push(nf32, 128, 8, 1_409_068);
    let uformer = Config::load(
        common::golden_dir()
            .join("configs/uformer_tiny.yaml")
            .to_str()
            .expect("utf-8"),
    )
    .expect("uformer_tiny");
    push(uformer.clone(), 64, 2, 260_072);
    push(uformer, 128, 4, 1_251_368);
    // Held out of the fit: DIM 16 with the doubled blocks at 96x96 x 6 (estimate -4%).
    let mut held = tiny();
    held.model.restormer.dim = 16;
    held.model.restormer.num_blocks = vec![2, 2, 2, 4];
    held.model.restormer.num_refinement_blocks = 2;
    push(held, 96, 6, 1_454_120);
    rows
}

#[test]
fn the_estimate_is_within_12_percent_of_the_measured_peaks() {
    for (cfg, bytes) in measured() {
        let est = pretrain_peak_bytes(&cfg) as f64;
        let err = est / bytes as f64 - 1.0;
        assert!(
            err.abs() < 0.12,
            "{:?} dim {} {}x{} x{}: estimate {est:.0}, measured {bytes} ({:+.1}%)",
            cfg.model.kind,
            cfg.model.restormer.dim,
            cfg.data.img_size,
            cfg.data.img_size,
            cfg.data.batch_size,
            100.0 * err
        );
    }
}

#[test]
fn the_estimate_grows_with_what_costs_memory() {
    let base = Config::load("tiny").expect("tiny");
    let at = |f: &dyn Fn(&mut Config)| {
        let mut c = base.clone();
        f(&mut c);
        pretrain_peak_bytes(&c)
    };
    let b0 = pretrain_peak_bytes(&base);
    assert!(at(&|c| c.data.batch_size *= 2) > b0);
    assert!(at(&|c| c.data.img_size *= 2) > b0);
    assert!(at(&|c| c.model.restormer.dim *= 2) > b0);
    // The noise image: generated at 8192x8192 (about 1.9 GB more), or a file of up to 16 MP.
    let big = at(&|c| {
        c.data.noise.width = 8192;
        c.data.noise.height = 8192;
    });
    assert!(big > b0 + (1800 << 20), "{big} vs {b0}");
    let file = at(&|c| c.data.noise_image = Some("uploads/x.png".into()));
    assert!(file > b0 + (400 << 20), "{file} vs {b0}");
    // The paper network at 224 pixels needs GiB per image of the batch.
    let paper = Config::load("restormer-paper").expect("paper");
    let per_image = pretrain_peak_bytes(&paper) as f64 / paper.data.batch_size as f64;
    assert!(per_image > 4.0 * 1024f64.powi(3), "{per_image} bytes");
}
