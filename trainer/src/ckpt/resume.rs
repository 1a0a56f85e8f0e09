//! Which checkpoint a run starts from (`checkpoint.resume`): the newest that verifies, one
//! named by path, or none (step 0), and what happens to the checkpoints already there.

use super::config_hash;
use crate::{Config, Error, Result};
use std::path::{Path, PathBuf};
use weft_checkpoint as ck;

/// The checkpoint `checkpoint.resume` asks for, opened and verified (`None`: start at step 0).
///
/// - `auto`: the newest checkpoint under the run's checkpoint directory that verifies (manifest
///   and every byte), by step whatever `latest` names (a line says so when they disagree).
///   Checkpoints refused on the way are moved, with their reasons, to `<dir>/refused_<time>/`.
///   When checkpoints exist (or `latest` does) and none verifies, an error names each and why,
///   and nothing is changed. With none at all the run starts at step 0.
/// - `fresh`: start at step 0, saying so; checkpoints already there are moved to
///   `<dir>/replaced_<time>/` (kept, never deleted), so none of them is resumed or pruned later.
/// - `""` (not set): start at step 0 the same way, saying so when there were checkpoints.
/// - a checkpoint directory: that one, which must verify.
///
/// A checkpoint of another model config is refused.
pub fn find_resume(cfg: &Config) -> Result<Option<ck::Checkpoint>> {
    let root = cfg.checkpoint_dir();
    let c = match cfg.checkpoint.resume.as_str() {
        mode @ ("" | "fresh") => {
            start_over(&root, mode == "fresh")?;
            return Ok(None);
        }
        "auto" => {
            let r = ck::choose(&root)?;
            let disagrees = r.latest_disagrees();
            let Some(c) = r.chosen else {
                if r.refused.is_empty() {
                    tracing::info!(dir = %root.display(), "no checkpoint to resume from: starting at step 0");
                    return Ok(None);
                }
                return Err(refusal(&root, &r.refused));
            };
            check_compatible(cfg, &c)?;
            if let Some(line) = disagrees {
                tracing::warn!("{line}");
            }
            if !r.refused.is_empty() {
                for (dir, why) in &r.refused {
                    tracing::warn!("refused checkpoint {}: {why}", dir.display());
                }
                if let Some(aside) = ck::set_aside(&root, &r.refused, "refused")? {
                    tracing::warn!(
                        "moved the refused checkpoints to {} (kept, not deleted); resuming from {}",
                        aside.display(),
                        c.dir.display()
                    );
                }
            }
            return Ok(Some(c));
        }
        path => {
            let c = ck::Checkpoint::open(Path::new(path))?;
            c.verify_data()?;
            c
        }
    };
    check_compatible(cfg, &c)?;
    Ok(Some(c))
}

/// `--resume auto` with checkpoints of which none verifies: the error naming each.
fn refusal(root: &Path, refused: &[(PathBuf, String)]) -> Error {
    let mut why = format!(
        "--resume auto: none of the {} checkpoints here verifies, so the run does not start \
         (nothing was changed or deleted):",
        refused.len()
    );
    for (dir, reason) in refused {
        let name = dir
            .file_name()
            .map_or(dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        why.push_str(&format!("\n  {name}: {reason}"));
    }
    why.push_str(
        "\nrepair or remove them, resume from one checkpoint by path (--resume DIR), or start over \
         with --resume fresh (which moves them aside)",
    );
    Error::Checkpoint(ck::Error::Invalid {
        path: root.to_path_buf(),
        why,
    })
}

/// A run that starts at step 0 (`fresh`, or no `checkpoint.resume`): move the checkpoints
/// already under `root` aside, saying so.
fn start_over(root: &Path, fresh: bool) -> Result<()> {
    let key = if fresh {
        "checkpoint.resume = fresh"
    } else {
        "checkpoint.resume is not set"
    };
    let old: Vec<(PathBuf, String)> = ck::step_dirs(root)?
        .into_iter()
        .map(|(_, p)| (p, format!("set aside by a run started at step 0 ({key})")))
        .collect();
    match ck::set_aside(root, &old, "replaced")? {
        Some(aside) => tracing::warn!(
            "{key}: starting at step 0; the {} checkpoints in {} were moved to {} (kept, not deleted){}",
            old.len(),
            root.display(),
            aside.display(),
            if fresh {
                ""
            } else {
                "; --resume auto continues from the newest one instead"
            }
        ),
        None if fresh => tracing::warn!("{key}: starting at step 0"),
        None => {}
    }
    Ok(())
}

/// Open step `step`'s checkpoint (chosen and fully verified by another rank).
pub fn open_step(cfg: &Config, step: u64) -> Result<ck::Checkpoint> {
    let dir = match cfg.checkpoint.resume.as_str() {
        "auto" => cfg.checkpoint_dir().join(ck::step_dir_name(step)),
        path => PathBuf::from(path),
    };
    let c = ck::Checkpoint::open(&dir)?;
    check_compatible(cfg, &c)?;
    Ok(c)
}

fn check_compatible(cfg: &Config, c: &ck::Checkpoint) -> Result<()> {
    let want = config_hash(cfg);
    if c.manifest.config_hash != want {
        return Err(Error::config(
            "checkpoint.resume",
            format!(
                "names {}, saved by a different model or dtype (config hash {}, this run {want})",
                c.dir.display(),
                c.manifest.config_hash
            ),
        ));
    }
    Ok(())
}
