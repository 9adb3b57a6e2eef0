//! A job's stored config as its page shows it: only the settings that apply to the run.

/// The stored config as the page shows it: only what applies to the run. The job keeps every
/// key (clones start from it); the page leaves out the network blocks the `MODEL.TYPE` does not
/// build (and, in a fine-tuning config, the pre-training decoder and loss, which the task head
/// replaces), `EPOCHS` where `STEPS` sets the run's length, and the mask settings the
/// `DATA.FILTER_TYPE` never reads: an IFP mask is drawn from `SAMPLE_RATIO` and `MASK_MODE`
/// (the radii are MFM's), an MFM mask from the radii and `SAMPLE_RATIO` (it flips low/high pass
/// per sample whatever the mode).
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
        if let Some(Value::Object(data)) = m.get_mut("DATA") {
            match data.get("FILTER_TYPE").and_then(Value::as_str) {
                Some("IFP") => {
                    data.remove("MASK_RADIUS1");
                    data.remove("MASK_RADIUS2");
                }
                Some("MFM") => {
                    data.remove("MASK_MODE");
                }
                _ => {}
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
        let mask = |filter: &str| {
            json!({"DATA": {"FILTER_TYPE": filter, "SAMPLE_RATIO": 0.5, "MASK_RADIUS1": 16.0,
                            "MASK_RADIUS2": 999.0, "MASK_MODE": "fixed"}})
        };
        assert_eq!(
            applicable(&mask("IFP")),
            json!({"DATA": {"FILTER_TYPE": "IFP", "SAMPLE_RATIO": 0.5, "MASK_MODE": "fixed"}})
        );
        assert_eq!(
            applicable(&mask("MFM")),
            json!({"DATA": {"FILTER_TYPE": "MFM", "SAMPLE_RATIO": 0.5, "MASK_RADIUS1": 16.0,
                            "MASK_RADIUS2": 999.0}})
        );
        let compare = json!({
            "PRETRAIN": {"MODEL": {"TYPE": "restormer", "DECODER": {}, "UFORMER": {}},
                         "DATA": {"FILTER_TYPE": "IFP", "MASK_RADIUS1": 16.0,
                                  "MASK_RADIUS2": 999.0}},
            "FINETUNE": {"MODEL": {"TYPE": "restormer", "DECODER": {}, "UFORMER": {},
                                   "RECOVER_TARGET_TYPE": "m_masked", "RESTORMER": {}},
                         "TRAIN": {"EPOCHS": 1, "STEPS": 5}},
        });
        assert_eq!(
            applicable(&compare),
            json!({"PRETRAIN": {"MODEL": {"TYPE": "restormer", "DECODER": {}},
                                "DATA": {"FILTER_TYPE": "IFP"}},
                   "FINETUNE": {"MODEL": {"TYPE": "restormer", "RESTORMER": {}},
                                "TRAIN": {"STEPS": 5}}})
        );
    }
}
