//! Parsing and validation of configs: defaults, key paths in errors, presets.
use super::*;

fn err(yaml: &str) -> ConfigError {
    match Config::from_yaml(yaml) {
        Ok(c) => panic!("expected an error for {yaml:?}, got {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn defaults_are_the_reference_values() {
    let c = Config::from_yaml("").expect("empty config");
    assert_eq!(c.model.restormer.dim, 48);
    assert_eq!(c.model.restormer.num_blocks, vec![4, 6, 6, 8]);
    assert_eq!(c.train.optimizer.betas, (0.9, 0.95));
    assert_eq!(c.data.batch_size, 1);
    assert_eq!(c.data.mask_mode, "fixed");
    assert_eq!(c.total_steps(), 60000);
    // IFP builds its Uformer without a drop_path_rate: the constructors' 0.1 applies.
    assert_eq!(c.model.uformer.drop_path_rate, 0.1);
}

#[test]
fn steps_override_epochs() {
    let c = Config::from_yaml("TRAIN:\n  EPOCHS: 10\n  STEPS: 3\n").expect("config");
    assert_eq!(c.total_steps(), 3);
    let c = Config::from_yaml("TRAIN:\n  EPOCHS: 10\n").expect("config");
    assert_eq!(c.total_steps(), 10);
}

#[test]
fn unknown_key_names_its_path() {
    let e = err("MODEL:\n  RESTORMER:\n    DIMS: 8\n");
    let s = e.to_string();
    assert!(s.contains("MODEL.RESTORMER"), "{s}");
    assert!(s.contains("DIMS"), "{s}");
}

#[test]
fn wrong_type_names_path_and_value() {
    let e = err("TRAIN:\n  BASE_LR: fast\n");
    assert_eq!(e.key_path(), Some("TRAIN.BASE_LR"), "{e}");
    assert!(e.to_string().contains("fast"), "{e}");
    let e = err("DATA:\n  IMG_SIZE: -3\n");
    assert_eq!(e.key_path(), Some("DATA.IMG_SIZE"), "{e}");
}

#[test]
fn impossible_values_name_path_and_value() {
    let cases = [
        ("DATA:\n  SAMPLE_RATIO: 1.5\n", "DATA.SAMPLE_RATIO", "1.5"),
        ("MODEL:\n  TYPE: resnet\n", "MODEL.TYPE", "resnet"),
        ("DATA:\n  IMG_SIZE: 4\n", "DATA.IMG_SIZE", "4"),
        (
            "MODEL:\n  RECOVER_TARGET_TYPE: l2\n",
            "MODEL.RECOVER_TARGET_TYPE",
            "l2",
        ),
        (
            "MODEL:\n  RESTORMER:\n    DIM: 8\n    HEADS: [1, 3, 4, 8]\n",
            "MODEL.RESTORMER.HEADS",
            "3",
        ),
        (
            "MODEL:\n  DECODER:\n    IN_NC: 32\n",
            "MODEL.DECODER.IN_NC",
            "32",
        ),
        (
            "TRAIN:\n  KEEP_CHECKPOINTS: 0\n",
            "TRAIN.KEEP_CHECKPOINTS",
            "0",
        ),
        ("DATA:\n  MASK_MODE: random\n", "DATA.MASK_MODE", "random"),
        // Refused while parsing (the lenient number reader takes no `.nan`): the key is named.
        ("TRAIN:\n  BASE_LR: .nan\n", "TRAIN.BASE_LR", "TRAIN.BASE_LR"),
        ("TRAIN:\n  MIN_LR: -.inf\n", "TRAIN.MIN_LR", "TRAIN.MIN_LR"),
        (
            "TRAIN:\n  OPTIMIZER:\n    BETAS: [0.9, .inf]\n",
            "TRAIN.OPTIMIZER.BETAS",
            "TRAIN.OPTIMIZER.BETAS",
        ),
        // Optional keys too: JSON has no infinity, so these once became `null` ("not set") and
        // the run took the default (found by bench/http_fuzz.py).
        ("TRAIN:\n  STEPS: .inf\n", "TRAIN.STEPS", "finite number, got inf"),
        ("MODEL:\n  BATCH_SIZE: .inf\n", "MODEL.BATCH_SIZE", "finite"),
        ("DATA:\n  NOISE_IMAGE: .inf\n", "DATA.NOISE_IMAGE", "finite"),
        ("TAG: .nan\n", "TAG", "finite number, got NaN"),
        ("SEED: -.inf\n", "SEED", "finite"),
        // A number too large for a float reads as infinity; the finiteness check names it.
        ("TRAIN:\n  CLIP_GRAD: 1e999\n", "TRAIN.CLIP_GRAD", "finite"),
        ("TRAIN:\n  BASE_LR: \"-1e999\"\n", "TRAIN.BASE_LR", "finite"),
        (
            "TRAIN:\n  OPTIMIZER:\n    BETAS: (0.9, 1.5)\n",
            "TRAIN.OPTIMIZER.BETAS",
            "1.5",
        ),
        (
            "MODEL:\n  TYPE: uformer\nDATA:\n  IMG_SIZE: 100\n",
            "DATA.IMG_SIZE",
            "100",
        ),
        (
            "MODEL:\n  TYPE: uformer\n  UFORMER:\n    DROP_PATH_RATE: 1.0\nDATA:\n  IMG_SIZE: 256\n",
            "MODEL.UFORMER.DROP_PATH_RATE",
            "1",
        ),
        (
            "MODEL:\n  TYPE: uformer\n  UFORMER:\n    DEPTHS: [1, 1, 1, 1, 1, 2, 2, 2, 2]\n\
             DATA:\n  IMG_SIZE: 256\n",
            "MODEL.UFORMER.DEPTHS",
            "[1, 1, 1, 1, 1, 2, 2, 2, 2]",
        ),
        // Sizes and counts have upper bounds, named with the bound.
        (
            "DATA:\n  BATCH_SIZE: 4611686018427387904\n",
            "DATA.BATCH_SIZE",
            "4611686018427387904 is above the limit of 1024",
        ),
        (
            "TRAIN:\n  STEPS: 1000000000000\n",
            "TRAIN.STEPS",
            "limit of 10000000",
        ),
        (
            "MODEL:\n  RESTORMER:\n    NUM_BLOCKS: [1, 1, 100, 1]\n",
            "MODEL.RESTORMER.NUM_BLOCKS",
            "100 is above the limit of 64",
        ),
    ];
    for (yaml, path, value) in cases {
        let e = err(yaml);
        assert_eq!(e.key_path(), Some(path), "{yaml}: {e}");
        assert!(e.to_string().contains(value), "{yaml}: {e}");
    }
}

#[test]
fn betas_as_tuple_string_or_list() {
    let c = Config::from_yaml("TRAIN:\n  OPTIMIZER:\n    BETAS: [0.8, 0.9]\n").expect("list");
    assert_eq!(c.train.optimizer.betas, (0.8, 0.9));
    let c = Config::from_yaml("TRAIN:\n  OPTIMIZER:\n    BETAS: (0.8, 0.99)\n").expect("tuple");
    assert_eq!(c.train.optimizer.betas, (0.8, 0.99));
}

#[test]
fn json_body_and_yaml_agree() {
    let y = Config::from_yaml("TRAIN:\n  BASE_LR: 1e-3\nDATA:\n  IMG_SIZE: 64\n").expect("yaml");
    let j = Config::from_value(
        serde_json::json!({"TRAIN": {"BASE_LR": 1e-3}, "DATA": {"IMG_SIZE": 64}}),
    )
    .expect("json");
    assert_eq!(y, j);
}

#[test]
fn round_trips_through_yaml() {
    for p in PRESETS {
        let c = Config::from_yaml(p.yaml).unwrap_or_else(|e| panic!("preset {}: {e}", p.name));
        let again = Config::from_yaml(&c.to_yaml()).expect("round trip");
        assert_eq!(c, again, "preset {}", p.name);
    }
}

#[test]
fn unknown_preset_lists_known_ones() {
    let e = Config::load("huge").expect_err("unknown preset");
    assert!(e.to_string().contains("tiny"), "{e}");
}

#[test]
fn uformer_sizes_follow_the_reference() {
    use super::validate::uformer_size_ok;
    let ok: Vec<usize> = (1..=256).filter(|&s| uformer_size_ok(s, 4)).collect();
    assert_eq!(ok, vec![32, 64, 128, 192, 256]);
    assert!(uformer_size_ok(256, 8));
    assert!(!uformer_size_ok(48, 4) && !uformer_size_ok(16, 4) && !uformer_size_ok(96, 4));
}

#[test]
fn device_class_and_amp_parse_and_default() {
    let c = Config::from_yaml("").expect("empty config");
    assert_eq!(c.train.device, DeviceClass::Any);
    assert_eq!(c.train.amp, Amp::Off);
    let c = Config::from_yaml("TRAIN:\n  DEVICE: cuda\n  AMP: bf16\n").expect("config");
    assert_eq!(c.train.device, DeviceClass::Cuda);
    assert_eq!(c.train.amp, Amp::Bf16);
    // `off` stays a string in YAML 1.2 (not a boolean).
    let c = Config::from_yaml("TRAIN:\n  DEVICE: cpu\n  AMP: off\n").expect("config");
    assert_eq!((c.train.device, c.train.amp), (DeviceClass::Cpu, Amp::Off));
    let e = err("TRAIN:\n  DEVICE: tpu\n");
    assert_eq!(e.key_path(), Some("TRAIN.DEVICE"), "{e}");
    assert!(e.to_string().contains("tpu"), "{e}");
    let e = err("TRAIN:\n  AMP: fp16\n");
    assert_eq!(e.key_path(), Some("TRAIN.AMP"), "{e}");
    assert!(e.to_string().contains("fp16"), "{e}");
}

#[test]
fn anchors_and_aliases_are_refused_before_parsing() {
    // A classic alias bomb: each level repeats the one before nine times.
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nTAG: *c\n";
    let e = Config::from_yaml(bomb).expect_err("alias bomb");
    assert!(
        e.to_string().contains("line 1") && e.to_string().contains("anchors"),
        "{e}"
    );
    let e = Config::from_yaml("TAG: tiny\nNAME:\n  *x\n").expect_err("alias");
    assert!(e.to_string().contains("line 3"), "{e}");
    // `&` and `*` inside values, quotes and comments are text.
    let ok = "TAG: 'a &b *c' # &anchor in a comment\nMODEL:\n  NAME: r&d-*1\n";
    let cfg = Config::from_yaml(ok).expect("plain text");
    assert_eq!(cfg.tag.as_deref(), Some("a &b *c"));
    assert_eq!(cfg.model.name, "r&d-*1");
}

/// Anchors after a tag and aliases after a JSON-style key (`"k":*a`, no space) are anchors and
/// aliases to the YAML library too, so the scan refuses them as well.
#[test]
fn anchors_after_tags_and_json_style_keys_are_refused() {
    for (yaml, line) in [
        ("a: !!seq &x [1, 2]\nTAG: *x\n", 1),
        ("{\"a\":&a [1, 2], \"b\": [*a, *a]}\n", 1),
        ("TAG: x\n{\"a\": [1, 2],\n \"b\":*a}\n", 3),
        ("TAG: !custom &t tiny\n", 1),
    ] {
        let e = Config::from_yaml(yaml).expect_err(yaml);
        assert!(
            e.to_string().contains(&format!("line {line}")) && e.to_string().contains("anchors"),
            "{yaml}: {e}"
        );
    }
    // Colons and exclamation marks inside values are text.
    let cfg = Config::from_yaml("TAG: 'a:*b'\nMODEL:\n  NAME: hi!*there\n").expect("text");
    assert_eq!(cfg.tag.as_deref(), Some("a:*b"));
    assert_eq!(cfg.model.name, "hi!*there");
}

/// A config text past the size cap is refused before the YAML library reads it, naming both
/// sizes.
#[test]
fn config_text_over_the_size_cap_is_refused() {
    let long = format!("TAG: tiny\n{}", "# padding\n".repeat(30_000));
    let e = Config::from_yaml(&long).expect_err("300 KB");
    assert!(
        e.to_string().contains(&long.len().to_string()) && e.to_string().contains("262144"),
        "{e}"
    );
}

/// A run writes at most 10,000 checkpoints: `SAVE_FREQ: 1` over ten million steps is refused,
/// naming the smallest `SAVE_FREQ` that fits, for pre-training and fine-tuning alike.
#[test]
fn save_freq_is_refused_past_ten_thousand_checkpoints() {
    let e = err("TRAIN:\n  STEPS: 10000000\nSAVE_FREQ: 1\n");
    assert_eq!(e.key_path(), Some("SAVE_FREQ"), "{e}");
    assert!(
        e.to_string().contains("10000000 checkpoints")
            && e.to_string().contains("SAVE_FREQ 1000 or more"),
        "{e}"
    );
    Config::from_yaml("TRAIN:\n  STEPS: 10000000\nSAVE_FREQ: 1000\n").expect("10,000 fit");
    let e = err("TRAIN:\n  STEPS: 20002\nSAVE_FREQ: 2\n");
    assert!(e.to_string().contains("SAVE_FREQ 3 or more"), "{e}");
    Config::from_yaml("TRAIN:\n  STEPS: 20000\nSAVE_FREQ: 2\n").expect("10,000 fit");
    let ft = crate::finetune::FinetuneConfig::from_yaml("TRAIN:\n  STEPS: 100000\nSAVE_FREQ: 5\n")
        .expect_err("20,000 checkpoints");
    assert_eq!(ft.key_path(), Some("SAVE_FREQ"), "{ft}");
}
