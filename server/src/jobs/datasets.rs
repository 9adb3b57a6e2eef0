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

/// A data set found in the datasets folder, for the forms' pickers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// Relative to the datasets folder, `/`-separated (what a config's `TRAIN_DIR` names).
    pub path: String,
    /// `input/` + `target/` pairs; otherwise clean images that need a synthetic degradation.
    pub paired: bool,
    pub images: usize,
}

/// The data sets in the top two levels of `root` (e.g. `clean/CBSD68`, `rain/Rain100H`), in
/// name order: folders of images or of `input/`+`target/` pairs. Symbolic links are not
/// followed, as fine-tuning data must lie inside the folder.
pub fn known(root: &Path) -> Vec<Known> {
    fn dirs(d: &Path) -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }
    let mut out = Vec::new();
    let mut visit = |d: &Path| -> bool {
        let Ok(entries) = ifp_trainer::finetune::data::list_set(d) else {
            return false;
        };
        let Ok(rel) = d.strip_prefix(root) else {
            return false;
        };
        out.push(Known {
            path: rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/"),
            paired: ifp_trainer::finetune::data::is_paired(d),
            images: entries.len(),
        });
        true
    };
    for top in dirs(root) {
        if !visit(&top) {
            for sub in dirs(&top) {
                visit(&sub);
            }
        }
    }
    out
}

/// Checks what every fine-tuning job needs: a config that is valid with the network it ends up
/// with (a comparison takes its pre-training's, and a Uformer needs crops its windows tile),
/// data folders that exist under `root`, and a degradation that fits them (clean images need
/// one, paired ones take none), and no `TRAIN` setting that fine-tuning never reads.
pub fn check_task(ft: &FinetuneConfig, root: &Path) -> Result<()> {
    let keyed = |e: ConfigError| match e {
        ConfigError::Invalid { path, message } => {
            Error::invalid(Some(&format!("FINETUNE.{path}")), message)
        }
        other => Error::invalid(Some("finetune"), other.to_string()),
    };
    ft.validate().map_err(keyed)?;
    ft.refuse_unread().map_err(keyed)?;
    check_folder(root, "FINETUNE.DATA.TRAIN_DIR", &ft.data.train_dir)?;
    if let Some(t) = &ft.data.test_dir {
        check_folder(root, "FINETUNE.DATA.TEST_DIR", t)?;
    }
    ifp_trainer::finetune::data::check_degradation(&ft.data, root).map_err(keyed)
}

/// Points a fine-tuning config's data folders at this machine's datasets folder, checking them
/// there as the API checked them at submission: the worker's copy is another folder, and links
/// in it may have changed since.
pub fn resolve(ft: &mut FinetuneConfig, datasets: &Path) -> std::result::Result<(), String> {
    let on_worker = |key: &str, rel: &Path| {
        check_folder(datasets, key, rel).map_err(|e| format!("{key}: {e} (on this worker)"))?;
        Ok::<_, String>(datasets.join(rel))
    };
    let d = &mut ft.data;
    d.train_dir = on_worker("FINETUNE.DATA.TRAIN_DIR", &d.train_dir)?;
    if let Some(t) = &d.test_dir {
        d.test_dir = Some(on_worker("FINETUNE.DATA.TEST_DIR", t)?);
    }
    Ok(())
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
    // Nor may the files the trainer reads from it: its images, and those of its `input/` and
    // `target/` folders (a paired set).
    for folder in [real.clone(), real.join("input"), real.join("target")] {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for e in entries.flatten() {
            let inside = e
                .path()
                .canonicalize()
                .is_ok_and(|p| p.starts_with(&real_root));
            if !inside {
                let shown = e.path();
                let shown = shown.strip_prefix(&real_root).unwrap_or(&shown);
                return Err(Error::invalid(
                    Some(key),
                    format!(
                        "`{}` leads outside the server's datasets folder (through a symbolic \
                         link) or cannot be resolved",
                        shown.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod known_tests {
    #[test]
    fn data_sets_two_levels_down_are_found_with_their_kind() {
        let root = tempfile::tempdir().expect("tempdir");
        let png = |p: &std::path::Path| {
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            image::RgbImage::new(4, 4).save(p).expect("png");
        };
        png(&root.path().join("clean/set/a.png"));
        png(&root.path().join("rain/pairs/input/1.png"));
        png(&root.path().join("rain/pairs/target/1.png"));
        std::fs::create_dir_all(root.path().join("empty/nothing")).expect("mkdir");
        let found = super::known(root.path());
        let got: Vec<(&str, bool, usize)> = found
            .iter()
            .map(|k| (k.path.as_str(), k.paired, k.images))
            .collect();
        assert_eq!(got, [("clean/set", false, 1), ("rain/pairs", true, 1)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker checks the folders again in its own copy of the datasets folder: a link that
    /// leads out of it there fails the attempt, naming the key, instead of being followed.
    #[test]
    fn a_worker_checks_the_folders_again_before_it_resolves_them() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("clean/set")).expect("mkdir");
        std::os::unix::fs::symlink(outside.path(), root.path().join("clean/away")).expect("link");
        let mut ft = FinetuneConfig::default();
        ft.data.train_dir = "clean/set".into();
        resolve(&mut ft, root.path()).expect("a folder inside");
        assert_eq!(ft.data.train_dir, root.path().join("clean/set"));
        ft.data.train_dir = "clean/set".into();
        ft.data.test_dir = Some("clean/away".into());
        let e = resolve(&mut ft, root.path()).expect_err("a link out");
        assert!(
            e.starts_with("FINETUNE.DATA.TEST_DIR: ") && e.contains("leads outside"),
            "{e}"
        );
        ft.data.train_dir = "clean/set".into();
        ft.data.test_dir = Some("clean/gone".into());
        let e = resolve(&mut ft, root.path()).expect_err("missing on this worker");
        assert!(e.contains("no folder `clean/gone`"), "{e}");
    }

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
        // A file, or a paired set's `target/` folder, linked to outside.
        std::fs::write(outside.path().join("secret.png"), b"x").expect("file");
        std::os::unix::fs::symlink(
            outside.path().join("secret.png"),
            root.path().join("clean/set/a.png"),
        )
        .expect("link");
        let e = check_folder(root.path(), "K", Path::new("clean/set")).expect_err("file");
        assert!(e.to_string().contains("clean/set/a.png"), "{e}");
        std::fs::create_dir_all(root.path().join("rain/pairs/input")).expect("mkdir");
        std::os::unix::fs::symlink(outside.path(), root.path().join("rain/pairs/target"))
            .expect("link");
        let e = check_folder(root.path(), "K", Path::new("rain/pairs")).expect_err("target/");
        assert!(e.to_string().contains("rain/pairs/target"), "{e}");
    }
}
