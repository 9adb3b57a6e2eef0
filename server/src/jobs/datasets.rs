//! The datasets folder (`--datasets-dir`, `IFP_DATASETS_DIR`) that fine-tuning data of
//! `compare` and `finetune` jobs must come from: job configs name folders relative to it, the
//! API checks them at submission, and each worker resolves them against its own copy.

use std::path::{Component, Path};

use ifp_trainer::config::ConfigError;
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

/// Checks what every fine-tuning job needs: a config that is valid with the network it ends up
/// with (a comparison takes its pre-training's, and a Uformer needs crops its windows tile),
/// data folders that exist under `root`, and a degradation that fits them (clean images need
/// one, paired ones take none).
pub fn check_task(ft: &FinetuneConfig, root: &Path) -> Result<()> {
    ft.validate().map_err(|e| match e {
        ConfigError::Invalid { path, message } => {
            Error::invalid(Some(&format!("FINETUNE.{path}")), message)
        }
        other => Error::invalid(Some("finetune"), other.to_string()),
    })?;
    check_folder(root, "FINETUNE.DATA.TRAIN_DIR", &ft.data.train_dir)?;
    if let Some(t) = &ft.data.test_dir {
        check_folder(root, "FINETUNE.DATA.TEST_DIR", t)?;
    }
    ifp_trainer::finetune::data::check_degradation(&ft.data, root).map_err(|e| match e {
        ConfigError::Invalid { path, message } => {
            Error::invalid(Some(&format!("FINETUNE.{path}")), message)
        }
        other => Error::invalid(Some("finetune"), other.to_string()),
    })
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
    // A symbolic link inside the datasets folder must not lead out of it.
    let (Ok(real), Ok(real_root)) = (root.join(rel).canonicalize(), root.canonicalize()) else {
        return Err(Error::invalid(
            Some(key),
            format!("`{}` cannot be resolved", rel.display()),
        ));
    };
    if !real.starts_with(&real_root) {
        return Err(Error::invalid(
            Some(key),
            format!(
                "`{}` leads outside the server's datasets folder (through a symbolic link)",
                rel.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symbolic_link_cannot_lead_out_of_the_datasets_folder() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("clean/set")).expect("mkdir");
        std::os::unix::fs::symlink(outside.path(), root.path().join("clean/away")).expect("link");
        std::os::unix::fs::symlink(
            root.path().join("clean/set"),
            root.path().join("clean/alias"),
        )
        .expect("link");
        check_folder(root.path(), "K", Path::new("clean/set")).expect("a real folder");
        check_folder(root.path(), "K", Path::new("clean/alias")).expect("a link that stays inside");
        let e = check_folder(root.path(), "K", Path::new("clean/away")).expect_err("outside");
        assert!(e.to_string().contains("leads outside"), "{e}");
    }
}
