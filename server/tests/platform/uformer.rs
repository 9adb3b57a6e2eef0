//! Uformer on the platform and through the CLI: a tiny Uformer job trains on a real worker
//! (real PostgreSQL, the real trainer on the CPU) with a falling loss and checkpoints holding
//! the reference's Uformer keys; `ifp train`, `ifp bench` and `ifp forward` take a Uformer
//! config.

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use candle_core::{DType, Device};
use ifp_server::queue::{self, NewJob};

use common::{argv, ifp, stderr};

/// The golden `uformer_tiny` network (EMBED_DIM 8, depth 1 everywhere, window 4, 32x32) as a
/// training job: batch 4, `steps` steps, LR as the tiny preset's (0.128 * 4 / 512 = 1e-3).
const STEPS: usize = 40;

fn tiny_uformer_yaml(steps: usize) -> String {
    format!(
        "MODEL:
  TYPE: uformer
  RECOVER_TARGET_TYPE: m_masked
  UFORMER:
    INP_CHANNELS: 3
    IMAGE_SIZE: 32
    PATCH_SIZE: 1
    EMBED_DIM: 8
    DEPTHS: [1, 1, 1, 1, 1, 1, 1, 1, 1]
    WIN_SIZE: 4
DATA:
  IMG_SIZE: 32
  BATCH_SIZE: 4
TRAIN:
  STEPS: {steps}
  WARMUP_EPOCHS: 5
  BASE_LR: 0.128
  CLIP_GRAD: 3.0
  OPTIMIZER:
    BETAS: (0.9, 0.95)
PRINT_FREQ: 1
SAVE_FREQ: {steps}
SEED: 0
"
    )
}

/// The reference Uformer keys of the golden file (parameters and relative_position_index
/// buffers) with their shapes.
fn golden_keys() -> BTreeSet<(String, Vec<usize>)> {
    candle_core::safetensors::load(
        common::golden().join("uformer_tiny.safetensors"),
        &Device::Cpu,
    )
    .expect("golden file")
    .into_iter()
    .filter(|(k, _)| k.starts_with("encoder.") || k.starts_with("decoder."))
    .map(|(k, t)| (k, t.dims().to_vec()))
    .collect()
}

#[tokio::test]
async fn a_tiny_uformer_job_trains_with_a_falling_loss() {
    let pool = common::fresh_pool().await;
    let artifacts = tempfile::tempdir().unwrap();
    let cfg = ifp_trainer::Config::from_yaml(&tiny_uformer_yaml(STEPS)).expect("config");
    assert_eq!(
        cfg.model.uformer.drop_path_rate, 0.1,
        "trains as the reference"
    );
    let job = queue::enqueue(
        &pool,
        &NewJob {
            kind: ifp_server::db::values::JobKind::Pretrain,
            device_class: ifp_trainer::config::DeviceClass::Any,
            parent_id: None,
            memory_need: None,
            name: "tiny-uformer".into(),
            owner: "alice".into(),
            priority: 0,
            config: serde_json::to_value(&cfg).unwrap(),
            total_steps: STEPS as i64,
            max_attempts: 1,
        },
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    let stop = common::start_worker(&pool, "w-uformer", artifacts.path());
    let done = common::wait_for(&pool, job.id, "the Uformer job", |j| !j.status.is_active()).await;
    stop.send(true).unwrap();
    assert_eq!(done.status.as_str(), "succeeded", "{:?}", done.error);
    assert_eq!(done.step, STEPS as i64);

    let losses: Vec<f64> =
        sqlx::query_scalar("select loss from metric where job_id = $1 order by step")
            .bind(job.id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(losses.len(), STEPS, "one metric row per step");
    assert!(losses.iter().all(|l| l.is_finite()));
    let head = losses[..5].iter().sum::<f64>() / 5.0;
    let tail = losses[STEPS - 5..].iter().sum::<f64>() / 5.0;
    eprintln!(
        "tiny Uformer job: {STEPS} steps in {:.1} s, mean loss of steps 1-5 {head:.5}, of the \
         last 5 {tail:.5}",
        t0.elapsed().as_secs_f64()
    );
    assert!(tail < 0.8 * head, "loss did not fall: {head} -> {tail}");

    // The final model checkpoint holds exactly the reference Uformer's state_dict keys and
    // shapes (what PyTorch's load_state_dict(strict=True) needs), buffers as int64.
    let (name, ck) = newest_model(&pool, artifacts.path(), &job.id.to_string()).await;
    assert_eq!(name, format!("model-{STEPS:06}.safetensors"));
    assert_eq!(
        keys_and_shapes(&ck),
        golden_keys(),
        "checkpoint keys and shapes"
    );
    for (k, t) in &ck {
        let want = if k.ends_with("relative_position_index") {
            DType::I64
        } else {
            DType::F32
        };
        assert_eq!(t.dtype(), want, "{k}");
    }
}

#[test]
fn cli_train_bench_and_forward_take_a_uformer_config() {
    let g = common::golden();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("uformer.yaml");
    std::fs::write(&cfg, tiny_uformer_yaml(2)).expect("write");
    let out = dir.path().join("run");
    let o = ifp(&argv("train --config {} --out {}", &[&cfg, &out]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("model-000002.safetensors").is_file());
    // The checkpoint runs through `ifp forward` (strict load, buffers included).
    let fwd = dir.path().join("fwd.safetensors");
    let (model, input) = (
        out.join("model-000002.safetensors"),
        g.join("uformer_tiny.safetensors"),
    );
    let o = ifp(&argv(
        "forward --config {} --weights {} --input {} --output {}",
        &[&cfg, &model, &input, &fwd],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let y = candle_core::safetensors::load(&fwd, &Device::Cpu).expect("output");
    assert_eq!(y["output"].dims(), [2, 3, 32, 32]);

    // `ifp bench` on the golden Uformer config at another size (IMAGE_SIZE follows --size).
    let cfg = g.join("configs/uformer_tiny.yaml");
    let o = ifp(&argv(
        "bench --config {} --batch 1 --size 64 --steps 2",
        &[&cfg],
    ));
    common::bench_median_ms(&o);
}

/// Issue 18 on the platform: a `compare` job on the tiny Uformer (IFP pre-training, both arms
/// fine-tuning the whole Uformer) runs through a real worker and reports; a `finetune` job on
/// a Uformer writes checkpoints with the reference Uformer's keys; a crop its windows cannot
/// tile is refused naming the key.
#[tokio::test]
async fn uformer_compare_and_finetune_jobs_run() {
    use crate::compare_support::{
        api_with_datasets, call, finetune, finetune_job, report_of, run_to_end, submit_ok,
    };
    use axum::http::StatusCode;

    use serde_json::json;

    let (pool, artifacts, api) = api_with_datasets().await;
    let pre = ifp_trainer::Config::from_yaml(&tiny_uformer_yaml(4)).expect("config");
    let pre = serde_json::to_value(&pre).unwrap();
    let mut ft = finetune("clean/CBSD68");
    ft["DATA"]["MAX_TEST_IMAGES"] = json!(1);

    let (s, b) = call(
        &api,
        "POST",
        "/api/v1/jobs",
        Some(json!({"kind": "compare", "config": pre, "finetune": ft})),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "CROP 16: {b}");
    assert!(
        b.contains("FINETUNE.DATA.CROP") && b.contains("32 does"),
        "{b}"
    );

    ft["DATA"]["CROP"] = json!(32);
    let body = json!({"kind": "compare", "name": "uformer", "config": pre, "finetune": ft});
    let id = submit_ok(&api, body).await;
    let job = run_to_end(&api, &pool, artifacts.path(), "w-uf-cmp", &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["step"], 4 + 2 * 4);
    let report = report_of(&api, &id).await;
    assert_eq!(report["config"]["MODEL"]["TYPE"], "uformer");
    assert_eq!(report["arms"].as_array().map(Vec::len), Some(2));
    assert!(report["deltas"][0]["diff"]["psnr"]["mean"].is_number());

    // A finetune job on a Uformer, from scratch: its checkpoints carry the reference's names.
    let mut ftj = finetune_job("clean/CBSD68", Some(pre["MODEL"].clone()));
    ftj["DATA"]["CROP"] = json!(32);
    let body = json!({"kind": "finetune", "name": "uformer-ft", "finetune": ftj});
    let id = submit_ok(&api, body).await;
    let job = run_to_end(&api, &pool, artifacts.path(), "w-uf-ft", &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let (_, ck) = newest_model(&pool, artifacts.path(), &id).await;
    assert_eq!(
        keys_and_shapes(&ck),
        golden_keys(),
        "fine-tuned Uformer keys and shapes"
    );
}

/// The name and tensors of job `id`'s newest model checkpoint.
async fn newest_model(
    pool: &sqlx::PgPool,
    artifacts: &std::path::Path,
    id: &str,
) -> (String, HashMap<String, candle_core::Tensor>) {
    let (name, path): (String, String) = sqlx::query_as(
        "select name, path from checkpoint where job_id = $1::uuid and kind = 'model' \
         order by step desc limit 1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    let ck =
        candle_core::safetensors::load(artifacts.join(&path), &Device::Cpu).expect("checkpoint");
    (name, ck)
}

fn keys_and_shapes(ck: &HashMap<String, candle_core::Tensor>) -> BTreeSet<(String, Vec<usize>)> {
    ck.iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect()
}
