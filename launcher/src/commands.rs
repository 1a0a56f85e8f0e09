//! `weft train`, `weft sample`, `weft config`, `weft data`: thin wrappers over weft-trainer.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use weft_trainer::job::layout_of;
use weft_trainer::train::TrainOptions;
use weft_trainer::{Config, Role};

#[derive(Args)]
pub struct TrainArgs {
    /// The run config (TOML).
    pub config: PathBuf,
    /// Override a config value: `--set training.steps=100` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Plain log lines instead of a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Continue from a checkpoint: `auto` (the newest one that verifies; refuses to start if
    /// there are checkpoints and none verifies; starts at step 0 if there are none), `fresh`
    /// (start at step 0, moving existing checkpoints aside) or a checkpoint directory. Same as
    /// `--set checkpoint.resume=…`.
    #[arg(long, value_name = "auto|fresh|PATH")]
    pub resume: Option<String>,
}

pub fn train(a: &TrainArgs) -> Result<()> {
    let mut sets = a.set.clone();
    if let Some(r) = &a.resume {
        sets.push(format!("checkpoint.resume={}", toml_string(r)));
    }
    let cfg = Config::load(&a.config, &sets)?;
    // A device this machine cannot run is refused before anything starts or is written.
    weft_trainer::device::check(&cfg)?;
    // One owner per run directory: this process, unless a `weft launch` driver holds it for
    // its ranks; under a bare `mpirun`, rank 0 holds it for the run.
    let mpi_rank = cfg!(feature = "mpi") && crate::dist::under_mpi();
    let _lock = if crate::runlock::under_launch() || (mpi_rank && crate::rankside::env_rank() != 0) {
        None
    } else {
        Some(crate::runlock::RunLock::acquire(&cfg.run_dir(), "weft train")?)
    };
    // Refuse a run that cannot fit this machine before anything is allocated.
    weft_trainer::memory::check(
        &cfg,
        weft_trainer::memory::ranks_here(&cfg, crate::dist::under_mpi()),
    )?;
    // Started by `weft launch`: join its store and send heartbeats.
    crate::rankside::attach(&cfg)?;
    // SIGTERM / SIGUSR1 (SLURM preemption, scancel): save at the next step boundary and exit 0.
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGUSR1] {
        signal_hook::flag::register(sig, weft_trainer::ckpt::stop_flag())?;
    }
    if cfg.parallel.world() > 1 || crate::dist::under_mpi() {
        return crate::dist::train(&cfg);
    }
    let s = weft_trainer::train::train(
        &cfg,
        TrainOptions {
            progress: !a.no_progress,
            ..TrainOptions::default()
        },
    )?;
    if s.steps < cfg.training.steps {
        println!(
            "{}: stopped after step {} of {} with a checkpoint in {}; continue with --resume auto",
            cfg.job.name,
            s.steps,
            cfg.training.steps,
            cfg.checkpoint_dir().display()
        );
        return Ok(());
    }
    println!(
        "{}: {} steps, final train loss {:.4}, {}, weights {}",
        cfg.job.name,
        s.steps,
        s.losses.last().copied().unwrap_or(f64::NAN),
        weft_trainer::eval::versus_baseline(s.val_loss, s.val_baseline),
        s.weights.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct SampleArgs {
    /// A run directory (uses its model.safetensors) or a weights file.
    pub path: PathBuf,
    /// Where to write outputs (default: `<run>/samples`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// DiT: classes to generate (default: all).
    #[arg(long, value_delimiter = ',')]
    pub classes: Vec<usize>,
    /// DiT: clips per class.
    #[arg(long, default_value_t = 2)]
    pub per_class: usize,
    /// DiT: Euler steps of the flow ODE.
    #[arg(long, default_value_t = 40)]
    pub steps: usize,
    /// DiT: classifier-free guidance scale (1 = none).
    #[arg(long, default_value_t = 3.0)]
    pub guidance: f64,
    /// GPT: the prompt.
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// GPT: tokens to generate.
    #[arg(long, default_value_t = 200)]
    pub tokens: usize,
    /// GPT: sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn sample(a: &SampleArgs) -> Result<()> {
    let file = if a.path.is_dir() {
        a.path.join("model.safetensors")
    } else {
        a.path.clone()
    };
    let run_dir = file.parent().map(PathBuf::from).unwrap_or_default();
    let out = a.out.clone().unwrap_or_else(|| run_dir.join("samples"));
    let opts = weft_trainer::sample::SampleOptions {
        classes: a.classes.clone(),
        per_class: a.per_class,
        steps: a.steps,
        guidance: a.guidance,
        prompt: a.prompt.clone(),
        tokens: a.tokens,
        temperature: a.temperature,
        seed: a.seed,
    };
    let written = weft_trainer::sample::sample(&file, &out, &opts)
        .with_context(|| format!("sampling {}", file.display()))?;
    for w in written {
        println!("{w}");
    }
    Ok(())
}

#[derive(Args)]
pub struct ConfigArgs {
    pub config: PathBuf,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Ranks sharing this machine's memory for the memory check (default: every rank of the
    /// mesh, as a local launch runs them).
    #[arg(long, value_name = "N")]
    pub ranks_here: Option<usize>,
}

pub fn config(a: &ConfigArgs) -> Result<()> {
    let cfg = Config::load(&a.config, &a.set)?;
    let l = layout_of(&cfg);
    println!("{}: valid", a.config.display());
    println!("parameters: {} ({:.3} B)", l.params(), l.params() as f64 / 1e9);
    for role in [Role::Embedding, Role::Hidden, Role::Vector, Role::Output] {
        println!("  {role:?}: {}", l.count(role));
    }
    println!("blocks: {}", l.blocks.len());
    weft_trainer::mesh::check_mesh(&cfg, cfg.parallel.world())?;
    let est = weft_trainer::memory::estimate(&cfg, a.ranks_here.unwrap_or(cfg.parallel.world()));
    println!("{est}");
    let host = weft_trainer::memory::host_memory();
    if let Err(why) = weft_trainer::memory::fits(&est, host.as_ref()) {
        anyhow::bail!(
            "{}: does not fit: {why}\n{}",
            a.config.display(),
            weft_trainer::memory::ADVICE
        );
    }
    match host {
        Some(h) => println!("{h}: fits"),
        None => println!("this machine's memory could not be read: not checked"),
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum DataWhat {
    /// Turn text files into a byte-level token shard.
    Tokenize {
        /// Text files (each one document).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// The shard to write.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn data(w: &DataWhat) -> Result<()> {
    match w {
        DataWhat::Tokenize { inputs, out } => {
            let n = weft_trainer::data::tokens::tokenize(inputs, out)?;
            println!("{}: {n} tokens (byte-level, vocab 257)", out.display());
        }
    }
    Ok(())
}

/// `s` as a TOML string literal.
fn toml_string(s: &str) -> String {
    format!("{:?}", s)
}
