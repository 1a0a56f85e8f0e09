//! `weft ckpt`: look inside, verify and export checkpoints.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use weft_checkpoint::{latest_valid, Checkpoint};

#[derive(Subcommand)]
pub enum CkptWhat {
    /// Step, mesh, config hash, sizes and every tensor of a checkpoint.
    Inspect(PathArg),
    /// Check the manifest and every byte's checksum; exit 1 if anything is wrong.
    Verify(PathArg),
    /// Write the model parameters as one consolidated safetensors file.
    Export(ExportArgs),
}

#[derive(Args)]
pub struct PathArg {
    /// A checkpoint directory (`…/step_00000120`) or a checkpoint root (uses the newest
    /// checkpoint that verifies).
    pub path: PathBuf,
}

#[derive(Args)]
pub struct ExportArgs {
    /// A checkpoint directory or root, as for `inspect`.
    pub path: PathBuf,
    /// The safetensors file to write.
    #[arg(long)]
    pub to: PathBuf,
}

fn open(path: &Path) -> Result<Checkpoint> {
    if path.join("manifest.json").exists()
        || path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("step_"))
    {
        return Ok(Checkpoint::open(path)?);
    }
    match latest_valid(path)? {
        Some(c) => Ok(c),
        None => bail!("{}: no checkpoint that verifies", path.display()),
    }
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
        CkptWhat::Verify(a) => {
            let c = open(&a.path)?;
            let n = c.verify_data()?;
            println!(
                "{}: ok (step {}, {} pieces, {:.3} MiB checked)",
                c.dir.display(),
                c.manifest.step,
                c.manifest.pieces.len(),
                n as f64 / (1 << 20) as f64
            );
        }
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
