//! The image files of a fine-tuning data set: listing a folder (paired `input/` + `target/`
//! folders, or clean images alone) in natural name order, checking that the degradation suits
//! the data, and the fixed train/validation/test split.

use std::path::{Path, PathBuf};

use super::super::TaskData;
use crate::config::ConfigError;
use crate::error::{Result, TrainerError};

const EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "bmp", "tif"];

/// One image of a set: the clean target and, for paired data, the degraded input file.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    pub target: PathBuf,
    pub input: Option<PathBuf>,
}

/// "norain-2" < "norain-10": digit runs compare by value, the rest byte-wise.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    for (x, y) in chunks(a).into_iter().zip(chunks(b)) {
        let o = match (x, y) {
            ((true, p), (true, q)) => {
                let (p, q) = (p.trim_start_matches('0'), q.trim_start_matches('0'));
                p.len().cmp(&q.len()).then(p.cmp(q))
            }
            ((_, p), (_, q)) => p.cmp(q),
        };
        if o.is_ne() {
            return o;
        }
    }
    a.len().cmp(&b.len()).then(a.cmp(b))
}

fn images_in(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let rd = std::fs::read_dir(dir).map_err(TrainerError::io(dir))?;
    let mut out = Vec::new();
    for e in rd {
        let p = e.map_err(TrainerError::io(dir))?.path();
        let ext = p
            .extension()
            .map(|x| x.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if p.is_file() && EXTENSIONS.contains(&ext.as_str()) {
            if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                out.push((name.to_string(), p.clone()));
            }
        }
    }
    out.sort_by(|a, b| natural_cmp(&a.0, &b.0));
    Ok(out)
}

/// The images of a folder, naturally sorted by file name: `dir/input/NAME` with
/// `dir/target/NAME` when both subfolders exist (every target needs its input), otherwise the
/// clean images directly in `dir`.
pub fn list_set(dir: &Path) -> Result<Vec<Entry>> {
    if !dir.is_dir() {
        return Err(TrainerError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such folder"),
        });
    }
    let (inp, tgt) = (dir.join("input"), dir.join("target"));
    let entries: Vec<Entry> = if is_paired(dir) {
        images_in(&tgt)?
            .into_iter()
            .map(|(name, target)| {
                let input = inp.join(&name);
                if !input.is_file() {
                    return Err(TrainerError::Io {
                        path: input,
                        source: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "the target has no input of the same name",
                        ),
                    });
                }
                Ok(Entry {
                    name,
                    target,
                    input: Some(input),
                })
            })
            .collect::<Result<_>>()?
    } else {
        images_in(dir)?
            .into_iter()
            .map(|(name, target)| Entry {
                name,
                target,
                input: None,
            })
            .collect()
    };
    if entries.is_empty() {
        return Err(TrainerError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no PNG/JPEG images (nor input/ and target/ subfolders)",
            ),
        });
    }
    Ok(entries)
}

/// Whether `dir` holds paired data (`input/` and `target/` subfolders) rather than clean images.
pub fn is_paired(dir: &Path) -> bool {
    dir.join("input").is_dir() && dir.join("target").is_dir()
}

/// Refuses settings the data cannot mean: clean images with no degradation leave nothing to
/// restore, and a synthetic degradation on paired data would degrade inputs that already are.
/// Checked for `TRAIN_DIR` and, when given, `TEST_DIR` (folders relative to `root`); the error
/// names the key at fault and the folder as the config gives it.
pub fn check_degradation(d: &TaskData, root: &Path) -> std::result::Result<(), ConfigError> {
    let degrades = d.noise_sigma > 0.0 || d.blur_sigma > 0.0;
    let folders = [
        ("DATA.TRAIN_DIR", Some(&d.train_dir)),
        ("DATA.TEST_DIR", d.test_dir.as_ref()),
    ];
    for (key, dir) in folders {
        let Some(dir) = dir else { continue };
        let paired = is_paired(&root.join(dir));
        let bad = |path: &str, message: String| {
            Err(ConfigError::Invalid {
                path: path.into(),
                message,
            })
        };
        if paired && degrades {
            let (k, v) = if d.noise_sigma > 0.0 {
                ("DATA.NOISE_SIGMA", d.noise_sigma)
            } else {
                ("DATA.BLUR_SIGMA", d.blur_sigma)
            };
            return bad(
                k,
                format!(
                    "{v} would degrade the paired inputs of {key} {} a second time: their \
                     input/ images are already degraded; set it to 0 for paired data",
                    dir.display()
                ),
            );
        }
        if !paired && !degrades {
            return bad(
                key,
                format!(
                    "{} holds clean images and neither DATA.NOISE_SIGMA nor DATA.BLUR_SIGMA is \
                     set, so there is nothing to restore: set a degradation (e.g. NOISE_SIGMA: \
                     25) or give a folder with input/ and target/",
                    dir.display()
                ),
            );
        }
    }
    Ok(())
}

/// The fixed split: (train, validation, test). Without a test folder every `split_every`-th
/// image of the training folder (1-based positions k, 2k, ...) is a test image. Validation
/// takes `val_images` training images spread evenly over the remaining list.
pub fn split(d: &TaskData) -> Result<(Vec<Entry>, Vec<Entry>, Vec<Entry>)> {
    check_degradation(d, Path::new(""))?;
    let all = list_set(&d.train_dir)?;
    let (mut train, mut test) = match &d.test_dir {
        Some(t) => (all, list_set(t)?),
        None => {
            let (mut tr, mut te) = (Vec::new(), Vec::new());
            for (i, e) in all.into_iter().enumerate() {
                if (i + 1) % d.split_every == 0 {
                    te.push(e);
                } else {
                    tr.push(e);
                }
            }
            (tr, te)
        }
    };
    if d.max_test_images > 0 {
        test.truncate(d.max_test_images);
    }
    let v = d.val_images.min(train.len().saturating_sub(1));
    let picks: Vec<usize> = (0..v).map(|j| j * train.len() / v.max(1)).collect();
    let mut val = Vec::new();
    for &i in picks.iter().rev() {
        val.push(train.remove(i));
    }
    val.reverse();
    if train.is_empty() || test.is_empty() {
        return Err(TrainerError::Unsupported(format!(
            "{}: the split leaves {} training and {} test images; both must be non-empty",
            d.train_dir.display(),
            train.len(),
            test.len()
        )));
    }
    Ok((train, val, test))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut v = vec!["norain-10.png", "norain-2.png", "norain-1.png", "a.png"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            vec!["a.png", "norain-1.png", "norain-2.png", "norain-10.png"]
        );
    }
}
