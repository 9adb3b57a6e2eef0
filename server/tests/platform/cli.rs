//! The `ifp` binary as a user runs it: help, exit codes and one-line errors, `forward` on the
//! golden file, `train` with checkpoints and `--resume`, and `bench`'s last line.

use crate::common;

use candle_core::Device;

use std::path::Path;

use common::{argv, ifp, stderr};

#[test]
fn train_help_lists_the_presets_and_flags() {
    let o = ifp(&["train", "--help"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for word in [
        "tiny",
        "restormer-paper",
        "uformer-paper",
        "--config",
        "--out",
        "--steps",
        "--device",
        "--resume",
    ] {
        assert!(
            text.contains(word),
            "`ifp train --help` lacks {word}:\n{text}"
        );
    }
}

#[test]
fn bad_inputs_exit_2_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad_yaml = dir.path().join("bad.yaml");
    std::fs::write(&bad_yaml, "DATA:\n  SAMPLE_RATIO: 2.0\n").expect("write");
    let out = dir.path().join("out");
    let (bad, out) = (bad_yaml.as_path(), out.as_path());
    let nowhere = std::path::Path::new("/nonexistent/data");
    let data = common::datasets();
    let (clean, rain) = (data.join("clean/CBSD68"), data.join("rain/Rain100H"));
    let (clean, rain) = (clean.as_path(), rain.as_path());
    let cases = [
        (argv("train --config {} --out {}", &[Path::new("/nonexistent/x.yaml"), out]), "/nonexistent/x.yaml"),
        (argv("train --config huge --out {}", &[out]), "unknown preset"),
        (argv("train --config {} --out {}", &[bad, out]), "DATA.SAMPLE_RATIO"),
        (argv("train --config tiny --out {} --device tpu", &[out]), "--device"),
        (
            argv("forward --config tiny --weights {} --input {} --output {}", &[Path::new("/nonexistent/w.safetensors"), bad, out]),
            "/nonexistent/w.safetensors",
        ),
        (
            argv("forward --config tiny --weights {} --input {} --output {}", &[bad, bad, out]),
            "safetensors",
        ),
        (argv("bench --config tiny --steps 0", &[]), "--steps"),
        (
            argv("serve --data-dir {} --datasets-dir {}", &[out, nowhere]),
            "IFP_DATASETS_DIR /nonexistent/data",
        ),
        (
            argv("serve --data-dir {} --public-url ifp.example.org", &[out]),
            "IFP_PUBLIC_URL \"ifp.example.org\" is not an absolute http or https URL",
        ),
        (
            argv("serve --data-dir {} --webhook-url hooks.example/x", &[out]),
            "IFP_WEBHOOK_URL \"hooks.example/x\" is not an absolute URL",
        ),
        (
            argv("worker --database-url postgres://nobody@127.0.0.1:1/none --data-dir {} --datasets-dir {}", &[out, nowhere]),
            "IFP_DATASETS_DIR /nonexistent/data",
        ),
        // Fine-tuning states its network, degrades only clean images, and tests on a folder.
        (
            argv("finetune --train {} --sigma 25 --out {}", &[clean, out]),
            "--model is required",
        ),
        (
            argv("finetune --model tiny --train {} --out {}", &[clean, out]),
            "nothing to restore",
        ),
        (
            argv("finetune --model tiny --train {} --sigma 25 --out {}", &[rain, out]),
            "DATA.NOISE_SIGMA",
        ),
        (
            argv("finetune --model tiny --train {} --sigma 25 --test {} --out {}", &[clean, nowhere, out]),
            "--test /nonexistent/data",
        ),
    ];
    for (args, needle) in cases {
        let o = ifp(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
        assert!(
            err.contains(needle),
            "{args:?}: `{err}` does not mention {needle}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn forward_reproduces_the_golden_output() {
    let g = common::golden();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.safetensors");
    let weights = g.join("restormer_tiny.safetensors");
    let cfg = g.join("configs/restormer_tiny.yaml");
    let o = ifp(&argv(
        "forward --config {} --weights {} --input {} --output {}",
        &[&cfg, &weights, &weights, &out],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let got = candle_core::safetensors::load(&out, &Device::Cpu).expect("output file");
    let want = candle_core::safetensors::load(&weights, &Device::Cpu).expect("golden");
    let d = (&got["output"] - &want["output"])
        .and_then(|d| d.sqr())
        .and_then(|d| d.sum_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff");
    let n = want["output"]
        .sqr()
        .and_then(|d| d.sum_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("norm");
    let rel = (d / n).sqrt();
    assert!(rel < 1e-4, "relative L2 error {rel}");
}

#[test]
fn train_writes_checkpoints_and_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("run");
    let cfg = dir.path().join("small.yaml");
    let tiny =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../presets/tiny.yaml"))
            .expect("preset");
    std::fs::write(
        &cfg,
        tiny.replace("IMG_SIZE: 32", "IMG_SIZE: 16")
            .replace("SAVE_FREQ: 200", "SAVE_FREQ: 2"),
    )
    .expect("write");
    let o = ifp(&argv("train --config {} --out {} --steps 2", &[&cfg, &out]));
    assert!(o.status.success(), "{}", stderr(&o));
    let log = stderr(&o);
    assert!(
        log.contains("step      1/2") && log.contains("checkpoint step 2"),
        "{log}"
    );
    for f in [
        "model-000002.safetensors",
        "state-000002.safetensors",
        "sample-000002.png",
        "model-000002.safetensors.sha256",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    // A second run into the same folder must not silently overwrite it.
    let o = ifp(&argv("train --config {} --out {} --steps 4", &[&cfg, &out]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--resume"));
    let o = ifp(&argv(
        "train --config {} --out {} --steps 4 --resume",
        &[&cfg, &out],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming at step 2"), "{}", stderr(&o));
    assert!(out.join("model-000004.safetensors").is_file());
}

#[test]
fn bench_ends_with_the_median() {
    // `--sync` (device-synchronised phases) prints the same lines; `gpu-check.sh profile`
    // reads the phases from them.
    for flags in ["", " --sync"] {
        let o = ifp(&argv(
            &format!("bench --config tiny --batch 1 --size 16 --steps 2{flags}"),
            &[],
        ));
        common::bench_median_ms(&o);
        let text = String::from_utf8_lossy(&o.stdout);
        let steps: Vec<&str> = text.lines().filter(|l| l.starts_with("step ")).collect();
        assert_eq!(steps.len(), 2, "{flags}: {text}");
        for line in steps {
            for phase in ["(data ", ", forward ", ", backward ", ", optimizer "] {
                assert!(line.contains(phase), "{flags}: {line}");
            }
        }
    }
}

#[test]
fn candles_elementwise_pool_is_one_thread_on_two_cores_unless_set() {
    // (RAYON_NUM_THREADS, CANDLE_NUM_THREADS) -> the header's count of candle's elementwise
    // threads: the `ifp` binary drops candle's second pool on two threads or fewer only, and
    // never overrides the variable.
    for (rayon, candle, want) in [
        ("2", None, "threads 2 (candle's elementwise ops: 1)"),
        ("1", None, "threads 1 (candle's elementwise ops: 1)"),
        ("3", None, "threads 3 (candle's elementwise ops: 3)"),
        ("2", Some("2"), "threads 2 (candle's elementwise ops: 2)"),
    ] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ifp"));
        cmd.args([
            "bench", "--config", "tiny", "--batch", "1", "--size", "16", "--steps", "1",
        ])
        .env("RAYON_NUM_THREADS", rayon)
        .env_remove("CANDLE_NUM_THREADS");
        if let Some(c) = candle {
            cmd.env("CANDLE_NUM_THREADS", c);
        }
        let o = cmd.output().expect("run ifp");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", stderr(&o));
        let header = text.lines().next().unwrap_or_default();
        assert!(header.contains(want), "{rayon}/{candle:?}: {header}");
    }
}

#[test]
fn a_cuda_switch_value_it_cannot_mean_stops_any_command() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ifp"))
        .args(["bench", "--config", "tiny", "--steps", "1"])
        .env("IFP_CUDA_FUSED", "yes")
        .output()
        .expect("run ifp");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(
        err.trim(),
        "error: IFP_CUDA_FUSED=\"yes\": expected 0, 1 or a comma-separated list of optim, pool, \
         gate, norm, im2col, bias, token, normalize, dense, window, mixed, attention, dwconv, mdta, \
         linear"
    );
    assert!(o.stdout.is_empty(), "nothing ran");
}

#[test]
fn an_input_too_small_is_one_clear_line() {
    let g = common::golden();
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.safetensors");
    let t =
        candle_core::Tensor::zeros((1, 3, 4, 4), candle_core::DType::F32, &Device::Cpu).expect("t");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("input".to_string(), t)]),
        &input,
    )
    .expect("save");
    let weights = g.join("restormer_tiny.safetensors");
    let (cfg, out) = (
        g.join("configs/restormer_tiny.yaml"),
        dir.path().join("out.safetensors"),
    );
    let o = ifp(&argv(
        "forward --config {} --weights {} --input {} --output {}",
        &[&cfg, &weights, &input, &out],
    ));
    let err = stderr(&o);
    assert!(!o.status.success());
    assert_eq!(err.matches("reflect padding").count(), 1, "{err}");
}

#[test]
fn serve_refuses_a_short_admin_token_before_starting_anything() {
    let data = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ifp"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            common::p(data.path()),
        ])
        .env("IFP_ADMIN_TOKEN", "hunter2")
        .output()
        .expect("run ifp");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("IFP_ADMIN_TOKEN is 7 characters"), "{err}");
    // No database was started for it.
    assert!(!data.path().join("pg").exists());
}

/// `ifp token create | list | revoke` against a real database: the listing shows ids and
/// states but never a token, a revoked token is refused by the API, bad input exits 2.
#[tokio::test]
async fn token_cli_creates_lists_and_revokes() {
    let (pool, url) = common::fresh_database().await;
    let token = |args: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ifp"))
            .arg("token")
            .args(args.split_whitespace())
            .env("DATABASE_URL", &url)
            .output()
            .expect("run ifp token")
    };
    let made = token("create --name carol --expires-in 30d");
    assert!(made.status.success(), "{}", stderr(&made));
    let secret = String::from_utf8(made.stdout).unwrap().trim().to_string();
    assert!(secret.starts_with("ifp_"), "{secret}");

    let listed = token("list");
    assert!(listed.status.success(), "{}", stderr(&listed));
    let out = String::from_utf8(listed.stdout).unwrap();
    let line = out.lines().find(|l| l.contains("carol")).expect(&out);
    assert!(line.ends_with("active"), "{line}");
    assert!(
        !out.contains(&secret[4..]),
        "the listing shows the token: {out}"
    );
    let expires = (chrono::Utc::now() + chrono::Duration::days(30))
        .format("%Y-%m-%d")
        .to_string();
    assert!(line.contains(&expires), "expected expiry {expires}: {line}");

    let caller = ifp_server::tokens::authenticate(&pool, None, &secret).await;
    assert_eq!(caller.unwrap().map(|c| c.name), Some("carol".into()));
    let id = &line[..8];
    let revoked = token(&format!("revoke {id}"));
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    assert!(String::from_utf8_lossy(&revoked.stdout).contains("user carol"));
    let caller = ifp_server::tokens::authenticate(&pool, None, &secret).await;
    assert_eq!(caller.unwrap(), None, "a revoked token still works");
    let out = String::from_utf8(token("list").stdout).unwrap();
    assert!(
        out.lines()
            .any(|l| l.contains("carol") && l.ends_with("revoked")),
        "{out}"
    );

    for (args, says) in [
        ("revoke nothex", "is not a token id"),
        (
            "revoke 00000000",
            "no token has an id starting with 00000000",
        ),
        ("create --name dave --expires-in soon", "--expires-in"),
        ("create --name dave --expires-in 0s", "between 1 second"),
    ] {
        let o = token(args);
        assert_eq!(o.status.code(), Some(2), "{args}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args}: {}", stderr(&o));
    }
}

/// Issue 17: `ifp eval --save-outputs DIR` writes each restored image, full size, named after
/// its test image; a file in the way is refused before anything runs. Issue 18: `ifp finetune`
/// ends by scoring its best checkpoint on `--test`, as `ifp eval` scores that model file.
#[test]
fn finetune_tests_its_best_checkpoint_and_eval_saves_the_restored_images() {
    let dir = tempfile::tempdir().unwrap();
    let (run, outputs) = (dir.path().join("run"), dir.path().join("restored"));
    let train = common::datasets().join("clean/CBSD68");
    let kodak = common::datasets().join("clean/Kodak24");
    let o = ifp(&argv(
        "finetune --model tiny --train {} --sigma 25 --crop 24 --batch 2 --steps 2 --save-freq 2 \
         --test {} --max-test-images 2 --out {}",
        &[&train, &kodak, &run],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("test (2 images, best checkpoint step 2): PSNR"),
        "{}",
        stderr(&o)
    );
    let weights = run.join("model-000002.safetensors");
    let scores = dir.path().join("eval.json");
    let o = ifp(&argv(
        "eval --weights {} --data {} --max-images 2 --json {}",
        &[&weights, &kodak, &scores],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let eval: serde_json::Value = serde_json::from_slice(&std::fs::read(&scores).unwrap()).unwrap();
    let test: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("test.json")).unwrap()).unwrap();
    assert_eq!(test["best_step"], 2);
    assert_eq!(
        test["per_image"], eval,
        "the run's test scores are eval's of its best model"
    );
    let o = ifp(&argv(
        "eval --weights {} --data {} --max-images 2 --save-outputs {}",
        &[&weights, &kodak, &outputs],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    for name in ["kodim01.png", "kodim02.png"] {
        use image::GenericImageView;
        let saved = image::open(outputs.join(name)).expect("a restored image");
        let target = image::open(kodak.join(name)).unwrap();
        assert_eq!(saved.dimensions(), target.dimensions(), "{name}");
    }
    assert_eq!(std::fs::read_dir(&outputs).unwrap().count(), 2);

    let in_the_way = dir.path().join("file");
    std::fs::write(&in_the_way, "x").unwrap();
    let o = ifp(&argv(
        "eval --weights {} --data {} --save-outputs {}",
        &[&weights, &kodak, &in_the_way],
    ));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is not a folder"), "{}", stderr(&o));
}

/// Issue 18: `ifp compare --seeds 2` runs one comparison per seed, shares the pre-training,
/// prints the summary with confidence intervals and writes seeds.json / seeds.csv.
#[test]
fn compare_over_two_seeds_summarises_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let train = common::datasets().join("clean/CBSD68");
    let o = ifp(&argv(
        "compare --pretrain tiny --pretrain-steps 2 --train {} --sigma 25 --crop 24 --batch 2 \
         --steps 2 --save-freq 2 --val-images 1 --val-crop 32 --max-test-images 2 --showcase 0 \
         --seed 3 --seeds 2 --out {}",
        &[&train, &out],
    ));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}\n{stdout}", stderr(&o));
    assert!(stdout.contains("2 seeds (3, 4)"), "{stdout}");
    assert!(stdout.contains("95% confidence intervals"), "{stdout}");
    assert!(stdout.contains("of 2 seeds and"), "{stdout}");
    for f in [
        "seeds.json",
        "seeds.csv",
        "seed-3/report.json",
        "seed-4/report.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert!(out.join("seed-3/pretrain").is_dir() && !out.join("seed-4/pretrain").exists());
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("seeds.json")).unwrap()).unwrap();
    assert_eq!(v["seeds"], serde_json::json!([3, 4]));
    assert_eq!(
        v["deltas"][0]["psnr"]["per_seed"].as_array().unwrap().len(),
        2
    );

    // --vary-pretrain-seed needs a pre-training to vary.
    let o = ifp(&argv(
        "compare --pretrained {} --train {} --sigma 25 --seeds 2 --vary-pretrain-seed --out {}",
        &[
            &out.join("seed-3/pretrain/model-000002.safetensors"),
            &train,
            &out,
        ],
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--pretrain"), "{}", stderr(&o));
}

/// Issue 18: fine-tuning refuses what it would ignore, before anything starts: a MODEL in
/// `--ft-config` that is not the network the initial or pre-trained weights store (or that
/// `--pretrain` runs), settings of TRAIN fine-tuning never reads, and `--pretrain-steps`
/// beside `--pretrained`, which runs no pre-training.
#[test]
fn fine_tuning_refuses_what_it_would_ignore() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // Weights that store the `tiny` network (as every checkpoint of this trainer does), and
    // no tensors: the refusals come before anything is loaded.
    let weights = dir.path().join("tiny.safetensors");
    let tiny = ifp_trainer::config::PRESETS
        .iter()
        .find(|p| p.name == "tiny")
        .unwrap()
        .yaml;
    let mut header = serde_json::json!({"__metadata__": {"ifp_config": tiny}})
        .to_string()
        .into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    std::fs::write(&weights, file).unwrap();
    // The paper Restormer, not `tiny`.
    let paper = dir.path().join("paper.yaml");
    std::fs::write(&paper, "MODEL: {TYPE: restormer}\n").unwrap();
    let amp = dir.path().join("amp.yaml");
    std::fs::write(&amp, "TRAIN: {AMP: bf16}\n").unwrap();
    let train = common::datasets().join("clean/CBSD68");
    let task = "--train {} --sigma 25 --out {}";
    let cases = [
        (
            argv(
                &format!("finetune --ft-config {{}} --init {{}} {task}"),
                &[&paper, &weights, &train, &out],
            ),
            "MODEL differs from the network stored in --init",
        ),
        (
            argv(
                &format!("compare --ft-config {{}} --pretrained {{}} {task}"),
                &[&paper, &weights, &train, &out],
            ),
            "MODEL differs from the network of --pretrained",
        ),
        (
            argv(
                &format!("compare --ft-config {{}} --pretrain tiny {task}"),
                &[&paper, &train, &out],
            ),
            "MODEL differs from the network of --pretrain tiny",
        ),
        (
            argv(
                &format!("finetune --model tiny --ft-config {{}} {task}"),
                &[&amp, &train, &out],
            ),
            "TRAIN.AMP",
        ),
        (
            argv(
                &format!("compare --pretrained {{}} --pretrain-steps 5 {task}"),
                &[&weights, &train, &out],
            ),
            "cannot be used with",
        ),
    ];
    for (args, needle) in cases {
        let o = ifp(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: `{err}` does not mention {needle}"
        );
    }
    assert!(!out.exists(), "nothing was started");
    // The weights' own network, stated, is accepted (the run then fails on the empty file).
    let same = dir.path().join("same.yaml");
    let model = serde_json::to_string(&ifp_trainer::config::preset("tiny").unwrap().model).unwrap();
    std::fs::write(&same, format!("MODEL: {model}\n")).unwrap();
    let o = ifp(&argv(
        &format!("finetune --ft-config {{}} --init {{}} {task}"),
        &[&same, &weights, &train, &out],
    ));
    assert!(!stderr(&o).contains("MODEL differs"), "{}", stderr(&o));
}

/// The flags and commands added for issues 16, 17 and 18 refuse out-of-range values before
/// anything starts, naming the flag and the value.
#[test]
fn new_flags_refuse_out_of_range_values() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cases = [
        (
            argv("serve --max-connections 0 --data-dir {}", &[&data]),
            "'--max-connections <MAX_CONNECTIONS>': 0 is not in 1..=100000",
        ),
        (
            argv("serve --header-timeout-secs 0 --data-dir {}", &[&data]),
            "'--header-timeout-secs <HEADER_TIMEOUT_SECS>': 0 is not in 1..=600",
        ),
        (
            argv("serve --attempt-memory-mib 10 --data-dir {}", &[&data]),
            "10 MiB is too little for any training run: give at least 256, or 0 for no limit",
        ),
        (
            argv("worker --attempt-memory-mib lots --data-dir {}", &[&data]),
            "\"lots\" is not a whole number of MiB",
        ),
        (
            argv(
                "compare --pretrain tiny --train {} --seeds 0 --out {}",
                &[&data, &data],
            ),
            "'--seeds <N>': 0 is not in 1..=20",
        ),
        (
            argv(
                "compare --pretrain tiny --train {} --seeds 21 --out {}",
                &[&data, &data],
            ),
            "'--seeds <N>': 21 is not in 1..=20",
        ),
        // `ifp gpu-usage` (issue 17): a GPU index, and a GPU that NVML can read.
        (argv("gpu-usage x", &[]), "invalid value 'x' for '[INDEX]'"),
        (
            argv("gpu-usage 4096", &[]),
            "no reading of GPU 4096: the NVIDIA driver's management library (NVML)",
        ),
    ];
    for (args, needle) in cases {
        let o = ifp(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    assert!(!data.exists(), "nothing was started");
}

/// The PyTorch module the server ships (`web/static/ifp_models.py`) loads checkpoints of every
/// kind with `strict=True` and computes what the trainer computes: pre-training, a fine-tuned
/// Restormer and a fine-tuned Uformer (`bench/check_ifp_models_load.py` runs this binary).
/// It needs a Python with torch (IFP_TORCH_PYTHON; `.ci/run` sets one up); elsewhere it says
/// it was skipped, and under CI it fails instead.
#[test]
fn pytorch_loads_checkpoints() {
    let Some(python) = std::env::var_os("IFP_TORCH_PYTHON") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set IFP_TORCH_PYTHON (a Python with bench/requirements.txt; .ci/run does)"
        );
        eprintln!("skipped: set IFP_TORCH_PYTHON to a Python with bench/requirements.txt");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let o = std::process::Command::new(python)
        .arg(root.join("bench/check_ifp_models_load.py"))
        .args(["--ifp", env!("CARGO_BIN_EXE_ifp"), "--data"])
        .arg(common::datasets())
        .output()
        .expect("run python");
    let out = String::from_utf8_lossy(&o.stdout);
    eprintln!("{out}");
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    for net in ["IFPNet", "FinetuneNet", "UformerFinetuneNet"] {
        assert!(
            out.contains(&format!("ok  fine-tuning: {net}"))
                || out.contains(&format!("ok  pre-training: {net}")),
            "{net}: {out}"
        );
    }
}
