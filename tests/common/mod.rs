//! Helpers shared by the end-to-end tests (here) and the launcher's integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A small tmpfs, unmounted when dropped (also when a test fails).
pub struct Mount(pub PathBuf);

impl Mount {
    /// A tmpfs at `dir` with room for one and a half checkpoints of `one` bytes; `None` where
    /// mounting is not permitted (not root).
    pub fn room_for_1_5(dir: &Path, one: u64) -> Option<Mount> {
        Self::with_size(dir, one * 3 / 2 + 8 * 1024)
    }

    /// A tmpfs of `bytes` at `dir`; `None` where mounting is not permitted (not root).
    pub fn with_size(dir: &Path, bytes: u64) -> Option<Mount> {
        std::fs::create_dir_all(dir).unwrap();
        let size = format!("size={}k", bytes.div_ceil(1024));
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped the full-disk case: cannot mount a small tmpfs here (needs root)");
        }
        ok.then(|| Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Bytes of the largest checkpoint (a `step_*` directory) under `root`.
pub fn checkpoint_bytes(root: &Path) -> u64 {
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| {
            std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum::<u64>()
        })
        .max()
        .unwrap()
}

/// `--set` arguments of the tiny 4-rank DiT run the launcher tests use (16 steps, a
/// checkpoint every 4), then `extra`, then the run's directory and name.
pub fn tiny_run(out: &Path, name: &str, extra: &[&str]) -> Vec<String> {
    [
        "model.width=32",
        "model.depth=2",
        "model.heads=2",
        "model.latent=[4, 8, 8, 3]",
        "training.micro_batch=1",
        "training.val_every=0",
        "training.val_batches=1",
        "training.peak_flops=1e11",
        "optimizer.warmup_steps=1",
        "training.steps=16",
        "checkpoint.interval=4",
        "parallel.dp_shard=4",
        "launch.backoff_s=0.1",
        // Tests share two cores: only the straggler tests ask for straggler detection.
        "launch.straggler_factor=1000",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .chain([
        format!("job.out_dir=\"{}\"", out.display()),
        format!("job.name=\"{name}\""),
    ])
    .flat_map(|s| ["--set".to_string(), s])
    .collect()
}
