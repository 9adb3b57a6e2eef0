//! Resuming a job in a new attempt: the checkpoints of its earlier attempts are linked into the
//! new attempt's folder, where the trainer finds them and continues. A run folder is the attempt
//! folder itself (pre-training, fine-tuning) or one of its subfolders (a comparison's
//! `pretrain/`, `ifp/` and `scratch/` phases, under `seed-S/` for each seed of a comparison
//! over seeds); each is seeded from the earlier attempt that got
//! furthest in it, so a rescued comparison resumes in the phase it reached, and finished phases
//! are not run again. Every verified checkpoint is linked, not only the newest: a fine-tuning
//! run's best checkpoint (by validation) can be an older one, and its history goes with it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ifp_trainer::checkpoint as ck;

use super::attempt_dir;
use crate::error::{Error, Result};
use crate::queue::Fence;

/// Seeds `dir` from the job's earlier attempts. Returns the step it resumes from on the job's
/// step axis (a comparison's phases run one after another, so their steps add up), or `None`
/// when nothing was there to resume.
pub fn seed_from_previous(artifacts: &Path, fence: &Fence, dir: &Path) -> Result<Option<usize>> {
    let earlier: Vec<PathBuf> = (1..fence.attempt)
        .map(|a| attempt_dir(artifacts, fence.job_id, a))
        .filter(|d| d.is_dir())
        .collect();
    // "" is the attempt folder itself; run folders sit one level below it (a comparison's
    // phases) or two (a comparison over seeds: `seed-S/<phase>`).
    let mut runs: BTreeSet<PathBuf> = BTreeSet::from([PathBuf::new()]);
    let subfolders = |d: &Path| -> Result<Vec<PathBuf>> {
        let entries = std::fs::read_dir(d).map_err(Error::io(format!("read {}", d.display())))?;
        Ok(entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| PathBuf::from(e.file_name()))
            .collect())
    };
    for d in &earlier {
        for rel in subfolders(d)? {
            for inner in subfolders(&d.join(&rel))? {
                runs.insert(rel.join(inner));
            }
            runs.insert(rel);
        }
    }
    let mut resumed: Option<usize> = None;
    for rel in runs {
        let furthest = earlier
            .iter()
            .filter_map(|d| {
                let from = d.join(&rel);
                ck::latest_complete(&from).map(|s| (s, from))
            })
            .max_by_key(|(s, _)| *s);
        let Some((step, from)) = furthest else {
            continue;
        };
        let to = dir.join(&rel);
        std::fs::create_dir_all(&to).map_err(Error::io(format!("create {}", to.display())))?;
        link_run(&from, &to)?;
        resumed = Some(resumed.unwrap_or(0) + step);
    }
    Ok(resumed)
}

/// Links every verified checkpoint of the run folder `from` (model, state and their SHA-256
/// side files) and its validation history into `to`.
fn link_run(from: &Path, to: &Path) -> Result<()> {
    let entries = std::fs::read_dir(from).map_err(Error::io(format!("read {}", from.display())))?;
    let steps: BTreeSet<usize> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("state-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()
        })
        .filter(|&s| ck::verify(&ck::model_path(from, s)) && ck::verify(&ck::state_path(from, s)))
        .collect();
    let mut files = vec![ifp_trainer::finetune::history_path(from)];
    for s in steps {
        for p in [ck::model_path(from, s), ck::state_path(from, s)] {
            let mut sidecar = p.as_os_str().to_owned();
            sidecar.push(".sha256");
            files.push(PathBuf::from(sidecar));
            files.push(p);
        }
    }
    for src in files.iter().filter(|p| p.is_file()) {
        let Some(name) = src.file_name() else {
            continue;
        };
        let dst = to.join(name);
        if dst.exists() {
            continue;
        }
        // Checkpoint files are never modified after their atomic rename, so a hard link is a
        // safe, free copy; other filesystems get a real copy. The history is rewritten whole
        // (atomically) by the resumed run, which leaves the linked original untouched.
        if std::fs::hard_link(src, &dst).is_err() {
            std::fs::copy(src, &dst).map_err(Error::io(format!(
                "copy {} to {}",
                src.display(),
                dst.display()
            )))?;
        }
    }
    Ok(())
}
