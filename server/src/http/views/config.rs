//! A job's stored config as its page shows it: only the settings that apply to the run.

/// The stored config as the page shows it: only what applies to the run. The job keeps every
/// key (clones start from it); the page leaves out the network blocks the `MODEL.TYPE` does not
/// build (and, in a fine-tuning config, the pre-training decoder and loss, which the task head
/// replaces), and `EPOCHS` where `STEPS` sets the run's length.
pub fn applicable(config: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    fn prune(v: &mut Value, finetune: bool) {
        let Value::Object(m) = v else { return };
        if let Some(Value::Object(model)) = m.get_mut("MODEL") {
            match model.get("TYPE").and_then(Value::as_str) {
                Some("restormer") => {
                    model.remove("UFORMER");
                }
                Some("uformer") => {
                    model.remove("RESTORMER");
                    model.remove("DECODER");
                }
                _ => {}
            }
            if finetune {
                model.remove("DECODER");
                model.remove("RECOVER_TARGET_TYPE");
            }
        }
        if let Some(Value::Object(train)) = m.get_mut("TRAIN") {
            if train.get("STEPS").is_some_and(|s| !s.is_null()) {
                train.remove("EPOCHS");
            }
        }
        for (k, child) in m.iter_mut() {
            prune(child, finetune || k == "FINETUNE");
        }
    }
    let mut v = config.clone();
    prune(&mut v, false);
    v
}

#[cfg(test)]
mod tests {
    use super::applicable;
    use serde_json::json;

    #[test]
    fn the_page_shows_only_what_applies() {
        let stored = json!({
            "MODEL": {"TYPE": "restormer", "RESTORMER": {"DIM": 8}, "DECODER": {"IN_NC": 8},
                      "UFORMER": {"EMBED_DIM": 16}},
            "TRAIN": {"EPOCHS": 300, "STEPS": 40, "WARMUP_EPOCHS": 5},
        });
        assert_eq!(
            applicable(&stored),
            json!({"MODEL": {"TYPE": "restormer", "RESTORMER": {"DIM": 8}, "DECODER": {"IN_NC": 8}},
                   "TRAIN": {"STEPS": 40, "WARMUP_EPOCHS": 5}})
        );
        let uformer = json!({"MODEL": {"TYPE": "uformer", "RESTORMER": {}, "DECODER": {},
                                       "UFORMER": {"EMBED_DIM": 16}},
                             "TRAIN": {"EPOCHS": 3, "STEPS": null}});
        assert_eq!(
            applicable(&uformer),
            json!({"MODEL": {"TYPE": "uformer", "UFORMER": {"EMBED_DIM": 16}},
                   "TRAIN": {"EPOCHS": 3, "STEPS": null}})
        );
        let compare = json!({
            "PRETRAIN": {"MODEL": {"TYPE": "restormer", "DECODER": {}, "UFORMER": {}}},
            "FINETUNE": {"MODEL": {"TYPE": "restormer", "DECODER": {}, "UFORMER": {},
                                   "RECOVER_TARGET_TYPE": "m_masked", "RESTORMER": {}},
                         "TRAIN": {"EPOCHS": 1, "STEPS": 5}},
        });
        assert_eq!(
            applicable(&compare),
            json!({"PRETRAIN": {"MODEL": {"TYPE": "restormer", "DECODER": {}}},
                   "FINETUNE": {"MODEL": {"TYPE": "restormer", "RESTORMER": {}},
                                "TRAIN": {"STEPS": 5}}})
        );
    }
}
