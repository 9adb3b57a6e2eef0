//! The datasets folder (`--datasets-dir`, `IFP_DATASETS_DIR`) that fine-tuning data of
//! `compare` and `finetune` jobs must come from: job configs name folders relative to it, the
//! API checks them at submission, and each worker resolves them against its own copy.

use std::path::{Component, Path};

use ifp_trainer::finetune::FinetuneConfig;

use crate::error::{Error, Result};

/// The server's datasets folder, or the error that says how to give it one.
pub fn root(datasets: Option<&Path>) -> Result<&Path> {
    datasets.ok_or_else(|| {
        Error::invalid(
            Some("kind"),
            "this server has no datasets folder for fine-tuning data: start `ifp serve` with \
             --datasets-dir DIR (IFP_DATASETS_DIR)",
        )
    })
}

/// What a worker without a datasets folder says about a fine-tuning job.
pub const WORKER_HAS_NONE: &str =
    "this worker has no datasets folder for fine-tuning data (set IFP_DATASETS_DIR)";

/// Checks what every fine-tuning job needs: a Restormer encoder, and data folders that exist
/// under `root`.
pub fn check_task(ft: &FinetuneConfig, root: &Path) -> Result<()> {
    if ft.model.kind != ifp_trainer::config::ModelType::Restormer {
        return Err(Error::invalid(
            Some("MODEL.TYPE"),
            "fine-tuning takes a Restormer encoder; Uformer fine-tuning is not supported yet",
        ));
    }
    check_folder(root, "FINETUNE.DATA.TRAIN_DIR", &ft.data.train_dir)?;
    if let Some(t) = &ft.data.test_dir {
        check_folder(root, "FINETUNE.DATA.TEST_DIR", t)?;
    }
    Ok(())
}

/// Points a fine-tuning config's data folders at this machine's datasets folder.
pub fn resolve(ft: &mut FinetuneConfig, datasets: &Path) {
    let d = &mut ft.data;
    d.train_dir = datasets.join(&d.train_dir);
    if let Some(t) = &d.test_dir {
        d.test_dir = Some(datasets.join(t));
    }
}

/// A data folder must be a relative path inside the datasets folder, and exist there.
fn check_folder(root: &Path, key: &str, rel: &Path) -> Result<()> {
    let inside =
        !rel.as_os_str().is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !inside {
        return Err(Error::invalid(
            Some(key),
            format!(
                "`{}` must be a folder relative to the server's datasets folder (e.g. \
                 clean/CBSD68)",
                rel.display()
            ),
        ));
    }
    if !root.join(rel).is_dir() {
        return Err(Error::invalid(
            Some(key),
            format!(
                "no folder `{}` in the server's datasets folder",
                rel.display()
            ),
        ));
    }
    Ok(())
}
