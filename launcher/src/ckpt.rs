//! `weft ckpt`: look inside, verify and export checkpoints.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use weft_checkpoint::{choose, reason, step_dirs, Checkpoint};

#[derive(Subcommand)]
pub enum CkptWhat {
    /// Step, mesh, config hash, sizes and every tensor of a checkpoint (of a run directory or
    /// checkpoint root: the newest one that verifies).
    Inspect(PathArg),
    /// Check every checkpoint under a run directory or checkpoint root (or one checkpoint): its
    /// manifest and every byte's checksum, one line each; exit 1 if any is damaged.
    Verify(PathArg),
    /// Write the model parameters as one consolidated safetensors file.
    Export(ExportArgs),
}

#[derive(Args)]
pub struct PathArg {
    /// A run directory (its checkpoints are in `checkpoints/`, or where its `config.toml` says),
    /// a checkpoint root, or one checkpoint directory (`…/step_00000120`).
    pub path: PathBuf,
}

#[derive(Args)]
pub struct ExportArgs {
    /// A run directory, checkpoint root or checkpoint directory, as for `inspect`.
    pub path: PathBuf,
    /// The safetensors file to write.
    #[arg(long)]
    pub to: PathBuf,
}

/// What a path names: one checkpoint, or a root holding `step_<N>` checkpoints.
enum Target {
    One(PathBuf),
    Root(PathBuf),
}

fn target(path: &Path) -> Result<Target> {
    if !path.is_dir() {
        bail!(
            "{}: not a directory (give a run directory, a checkpoint root or a checkpoint)",
            path.display()
        );
    }
    let step_name = path.file_name().is_some_and(|n| {
        n.to_string_lossy()
            .strip_prefix("step_")
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
    });
    if step_name || path.join("manifest.json").exists() {
        return Ok(Target::One(path.to_path_buf()));
    }
    // A run directory: `checkpoints/`, or the checkpoint directory its config names.
    let own = path.join("checkpoints");
    if own.is_dir() {
        return Ok(Target::Root(own));
    }
    if let Ok(cfg) = weft_trainer::Config::load(&path.join("config.toml"), &[]) {
        if cfg.checkpoint_dir().is_dir() {
            return Ok(Target::Root(cfg.checkpoint_dir()));
        }
    }
    Ok(Target::Root(path.to_path_buf()))
}

/// One checkpoint, or the newest under a root that verifies (saying which were refused).
fn open(path: &Path) -> Result<Checkpoint> {
    let root = match target(path)? {
        Target::One(dir) => return Ok(Checkpoint::open(&dir)?),
        Target::Root(root) => root,
    };
    let r = choose(&root)?;
    if let Some(line) = r.latest_disagrees() {
        eprintln!("note: {line}");
    }
    for (dir, why) in &r.refused {
        eprintln!("note: refused {}: {why}", dir.display());
    }
    match r.chosen {
        Some(c) => Ok(c),
        None if r.refused.is_empty() => bail!("{}: no checkpoints here", root.display()),
        None => bail!(
            "{}: none of the {} checkpoints here verifies",
            root.display(),
            r.refused.len()
        ),
    }
}

/// Verify every checkpoint `path` names, one line each; an error if any is damaged.
fn verify(path: &Path) -> Result<()> {
    let (root, dirs) = match target(path)? {
        Target::One(dir) => (None, vec![dir]),
        Target::Root(root) => {
            let dirs: Vec<PathBuf> = step_dirs(&root)?.into_iter().map(|(_, d)| d).collect();
            (Some(root), dirs)
        }
    };
    let mut damaged = 0;
    let mut newest_ok = None;
    for dir in &dirs {
        match Checkpoint::open(dir).and_then(|c| c.verify_data().map(|n| (c, n))) {
            Ok((c, n)) => {
                println!(
                    "{}: ok (step {}, {} pieces, {:.3} MiB checked)",
                    dir.display(),
                    c.manifest.step,
                    c.manifest.pieces.len(),
                    n as f64 / (1 << 20) as f64
                );
                newest_ok = dir.file_name().map(|n| n.to_string_lossy().into_owned());
            }
            Err(e) => {
                damaged += 1;
                println!("{}: damaged: {}", dir.display(), reason(dir, &e));
            }
        }
    }
    let Some(root) = root else {
        if damaged > 0 {
            bail!("{}: damaged", dirs[0].display());
        }
        return Ok(());
    };
    let mut bad_latest = false;
    let latest = root.join("latest");
    match std::fs::read_to_string(&latest) {
        Ok(name) => {
            let name = name.trim();
            if !dirs.iter().any(|d| d.file_name().is_some_and(|n| n == name)) {
                bad_latest = true;
                println!(
                    "{}: damaged: names {name:?}, which is not a checkpoint here",
                    latest.display()
                );
            } else if let Some(newest) = newest_ok.as_deref().filter(|&n| n != name) {
                println!(
                    "{}: names {name}; --resume auto takes {newest}, the newest that verifies",
                    latest.display()
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            bad_latest = true;
            println!("{}: damaged: {e}", latest.display());
        }
    }
    if dirs.is_empty() && !bad_latest {
        bail!("{}: no checkpoints here", root.display());
    }
    if damaged > 0 || bad_latest {
        bail!(
            "{}: {damaged} of {} checkpoints damaged{}",
            root.display(),
            dirs.len(),
            if bad_latest {
                ", and `latest` is unusable"
            } else {
                ""
            }
        );
    }
    Ok(())
}

pub fn run(what: &CkptWhat) -> Result<()> {
    match what {
        CkptWhat::Inspect(a) => {
            let c = open(&a.path)?;
            let m = &c.manifest;
            let bytes: u64 = m.pieces.iter().map(|p| p.bytes).sum();
            let files: std::collections::BTreeSet<&str> = m.pieces.iter().map(|p| p.file.as_str()).collect();
            println!("checkpoint {}", c.dir.display());
            println!(
                "  format v{}, step {}, mesh (dp_replicate, dp_shard, cp, tp) = {:?}",
                m.version, m.step, m.mesh
            );
            println!("  config hash {}; state {}", m.config_hash, summary(&m.state));
            println!(
                "  {} tensors, {} pieces in {} files, {:.3} MiB",
                m.tensors.len(),
                m.pieces.len(),
                files.len(),
                bytes as f64 / (1 << 20) as f64
            );
            for t in &m.tensors {
                let n = m.pieces.iter().filter(|p| p.tensor == t.key).count();
                println!("  {:<48} {:?} {:?} ({n} pieces)", t.key, t.dtype, t.shape);
            }
        }
        CkptWhat::Verify(a) => verify(&a.path)?,
        CkptWhat::Export(a) => {
            let c = open(&a.path)?;
            let (cfg, layout, params) = weft_trainer::ckpt::read_model(&c)?;
            weft_trainer::export::save(&a.to, &layout, &params, &cfg, c.manifest.step)?;
            println!(
                "{}: {} tensors of step {} → {}",
                c.dir.display(),
                layout.entries.len(),
                c.manifest.step,
                a.to.display()
            );
        }
    }
    Ok(())
}

/// The state without the embedded config.
fn summary(state: &serde_json::Value) -> String {
    let mut s = state.clone();
    if let Some(o) = s.as_object_mut() {
        o.remove("config");
    }
    s.to_string()
}
