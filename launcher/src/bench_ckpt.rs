//! `weft bench ckpt`: what a checkpoint costs the training loop. For the state of a model
//! (parameters and both AdamW moments, f32), it measures in one run:
//! - the disk's own sequential write speed (one file of the same size, written and fsynced);
//! - a synchronous save (the loop blocked until the checkpoint is committed);
//! - a background save: the loop is blocked only while the state is copied to staging, and the
//!   writer's time to durable gives its throughput.

use anyhow::Result;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;
use weft_kernels::HostVec;
use weft_trainer::ckpt::{Checkpointer, ShardMap, State};
use weft_trainer::Config;

#[derive(Args)]
pub struct CkptBenchArgs {
    /// Model whose training state is saved.
    #[arg(long, default_value = "configs/dit-tiny.toml")]
    pub config: PathBuf,
    /// Where to write (a directory on the disk to measure).
    #[arg(long, default_value = "runs/bench-ckpt")]
    pub dir: PathBuf,
    /// Saves per measurement (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

pub fn ckpt(a: &CkptBenchArgs) -> Result<()> {
    std::fs::create_dir_all(&a.dir)?;
    let sets = vec![
        format!("checkpoint.dir=\"{}\"", a.dir.join("checkpoints").display()),
        "checkpoint.interval=1".to_string(),
        "checkpoint.keep=1".to_string(),
    ];
    let cfg = Config::load(&a.config, &sets)?;
    let layout = weft_trainer::job::layout_of(&cfg);
    let n = layout.len();
    let bufs: Vec<HostVec> = (0..3)
        .map(|k| {
            HostVec::from(
                (0..n)
                    .map(|i| ((i * 7 + k) % 1000) as f32 * 1e-3)
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    // What a checkpoint writes: the parameters, not the flat buffer's alignment padding.
    let params = layout.params();
    let bytes = 3 * 4 * params as u64;
    println!(
        "state of {}: {} parameters → {:.1} MiB (parameters + 2 AdamW moments, f32)",
        cfg.job.name,
        params,
        mib(bytes)
    );
    // The disk's own sequential write speed.
    let mut disk = f64::MAX;
    let block = vec![0x5au8; 1 << 20];
    for _ in 0..a.repeats {
        let path = a.dir.join("disk-speed.bin");
        let t = Instant::now();
        let mut f = std::fs::File::create(&path)?;
        let mut left = bytes;
        while left > 0 {
            let k = left.min(block.len() as u64) as usize;
            f.write_all(&block[..k])?;
            left -= k as u64;
        }
        f.sync_all()?;
        disk = disk.min(t.elapsed().as_secs_f64());
        std::fs::remove_file(&path)?;
    }
    let head = || Some(Checkpointer::head(&cfg, &layout, vec![1, 1, 1, 1]));
    let state = |step| State {
        step,
        adam_step: step as u32,
        samples_seen: step,
    };
    let refs = &weft_trainer::ckpt::named(&cfg, &bufs[0], vec![&bufs[1], &bufs[2]]);
    // Synchronous: blocked until durable.
    let mut sync = f64::MAX;
    let mut saver = Checkpointer::new(&cfg, &layout, ShardMap::whole(&layout), 0, 1, head());
    for r in 0..a.repeats {
        let t = Instant::now();
        saver.after_step(state(r as u64 + 1), refs, true)?;
        saver.finish();
        sync = sync.min(t.elapsed().as_secs_f64());
    }
    // Background: blocked while staging; durable later.
    let mut stall = f64::MAX;
    let mut durable = f64::MAX;
    for r in 0..a.repeats {
        let t = Instant::now();
        saver.after_step(state(100 + r as u64), refs, true)?;
        stall = stall.min(t.elapsed().as_secs_f64());
        saver.finish();
        durable = durable.min(t.elapsed().as_secs_f64());
    }
    println!("disk sequential write + fsync: {:.1} MiB/s", mib(bytes) / disk);
    println!(
        "synchronous save: training blocked {:.1} ms per save ({:.1} MiB/s = {:.0}% of the disk)",
        sync * 1e3,
        mib(bytes) / sync,
        100.0 * disk / sync
    );
    let writer = durable - stall;
    println!(
        "background save:  training blocked {:.1} ms per save ({:.1}× less); the writer made it \
         durable {:.1} ms later ({:.1} MiB/s = {:.0}% of the disk)",
        stall * 1e3,
        sync / stall,
        writer * 1e3,
        mib(bytes) / writer,
        100.0 * disk / writer
    );
    Ok(())
}
