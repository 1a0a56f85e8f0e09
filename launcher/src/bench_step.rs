//! `weft bench step`: one training step (forward, backward, clipped AdamW) of the tiny DiT and
//! GPT in weft (the trainer's own step, on a mesh of one) and in PyTorch on this CPU, in the
//! same run; prints steps/s and the ratio.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Instant;
use weft_kernels::{Backend, CpuBackend, Ops};
use weft_parallel::comm::shared::{self, SharedComm};
use weft_trainer::config::ModelConfig;
use weft_trainer::data::{shapes::Shapes, Source, Split};
use weft_trainer::job::Precision;
use weft_trainer::mesh::{check_mesh, Groups};
use weft_trainer::model::{Dit, Gpt, Model, TokenBatch};
use weft_trainer::step::Step;
use weft_trainer::Config;

#[derive(clap::Args)]
pub struct StepBenchArgs {
    #[arg(long, default_value = "configs/dit-tiny.toml")]
    pub dit: PathBuf,
    #[arg(long, default_value = "configs/gpt-tiny.toml")]
    pub gpt: PathBuf,
    /// Timed steps per model (the median is reported).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// The PyTorch side.
    #[arg(long, default_value = "tools/bench_torch.py")]
    pub script: PathBuf,
    #[arg(long, default_value = "python3")]
    pub python: String,
}

/// Median seconds of `steps` weft training steps (after 2 warm-up steps) on `be`: the
/// trainer's own [`Step`] on a mesh of one, with the model `make` builds and batches from
/// `src`. The data communicator is the shared-device one, so any backend runs it.
pub(crate) fn weft_steps<B, M, S>(
    cfg: &Config,
    be: &B,
    make: impl Fn() -> Result<M> + Sync,
    src: &S,
    steps: usize,
) -> Result<f64>
where
    B: Ops,
    M: Model<B>,
    S: Source<Batch = M::Batch> + Sync,
{
    let mut times = shared::run(1, |_, control, data: SharedComm<B>| {
        let mesh = check_mesh(cfg, 1)?;
        let (groups, _) = Groups::split(&mesh, &control, &data)?;
        let mut model = make()?;
        let layout = cfg.parametrize(model.layout().clone());
        let mut st = Step::new(cfg, be, &groups, (mesh, 0), &layout, true)?;
        let mut times = vec![];
        for i in 0..steps + 2 {
            let t0 = Instant::now();
            st.run(cfg, be, &mut model, src, i as u64)?;
            be.synchronize()?;
            if i >= 2 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        anyhow::Ok(times)
    })?
    .remove(0);
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Run the PyTorch side (`script` with the JSON `spec`) and read its JSON answer. `Ok(Err(why))`
/// when it cannot run here (no Python, or the script's status 3: PyTorch or its CUDA support
/// is missing); `Err` when it ran and failed.
pub(crate) fn pytorch_side(
    python: &str,
    script: &std::path::Path,
    spec: &serde_json::Value,
) -> Result<std::result::Result<serde_json::Value, String>> {
    let out = match std::process::Command::new(python)
        .arg(script)
        .arg(spec.to_string())
        .output()
    {
        Ok(o) => o,
        Err(e) => return Ok(Err(format!("cannot run {python}: {e}"))),
    };
    match out.status.code() {
        Some(0) => Ok(Ok(serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{}: unreadable output", script.display()))?)),
        Some(3) => Ok(Err(String::from_utf8_lossy(&out.stderr).trim().to_string())),
        _ => bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

/// Tokens that need no file: a fixed pattern per sample index.
pub(crate) struct SyntheticTokens {
    pub seq_len: usize,
    pub vocab: u64,
}

impl Source for SyntheticTokens {
    type Batch = TokenBatch;
    fn batch(&self, _: Split, indices: &[u64]) -> weft_trainer::Result<TokenBatch> {
        let n = indices.len() * self.seq_len;
        let i = indices.first().copied().unwrap_or(0);
        Ok(TokenBatch {
            ids: (0..n as u64)
                .map(|j| ((j * 31 + i * 7) % self.vocab) as i32)
                .collect(),
            targets: (0..n as u64)
                .map(|j| ((j * 17 + i * 3) % self.vocab) as i32)
                .collect(),
        })
    }
}

pub fn step(a: &StepBenchArgs) -> Result<()> {
    let dc = Config::load(&a.dit, &[])?;
    let gc = Config::load(&a.gpt, &[])?;
    let (ModelConfig::Dit(dm), ModelConfig::Gpt(gm)) = (&dc.model, &gc.model) else {
        bail!("--dit must be a DiT config and --gpt a GPT config");
    };
    // The configs' training.device, as `weft train` would resolve it.
    weft_trainer::train::cpu_device(&dc)?;
    weft_trainer::train::cpu_device(&gc)?;
    let be = CpuBackend::new();
    let (db, gb) = (dc.training.micro_batch, gc.training.micro_batch);
    let shapes = Shapes {
        cfg: dm.clone(),
        seed: 0,
    };
    let prec = |c: &Config| Precision::of(c).param;
    let dit = || Ok(Dit::new(&be, dm, db, prec(&dc), false)?);
    let dit_s = weft_steps(&dc, &be, dit, &shapes, a.steps)?;
    let n = gb * gm.seq_len;
    let tokens = SyntheticTokens {
        seq_len: gm.seq_len,
        vocab: gm.vocab_size as u64,
    };
    let gpt = || Ok(Gpt::new(&be, gm, gb, prec(&gc), false)?);
    let gpt_s = weft_steps(&gc, &be, gpt, &tokens, a.steps)?;
    println!(
        "weft    {}: DiT {:.1} ms/step ({:.0} clips/s), GPT {:.1} ms/step ({:.0} tokens/s)",
        be.name(),
        dit_s * 1e3,
        db as f64 / dit_s,
        gpt_s * 1e3,
        n as f64 / gpt_s
    );
    let spec = serde_json::json!({"dit": dm, "gpt": gm, "dit_batch": db, "gpt_batch": gb, "steps": a.steps});
    let r = match pytorch_side(&a.python, &a.script, &spec)? {
        Ok(r) => r,
        Err(why) => {
            println!("PyTorch: skipped — {why}");
            return Ok(());
        }
    };
    let (td, tg) = (
        r["dit_step_s"].as_f64().unwrap_or(f64::NAN),
        r["gpt_step_s"].as_f64().unwrap_or(f64::NAN),
    );
    println!(
        "PyTorch {} ({} threads): DiT {:.1} ms/step, GPT {:.1} ms/step",
        r["torch"],
        r["threads"],
        td * 1e3,
        tg * 1e3
    );
    println!(
        "weft / PyTorch throughput: DiT {:.2}×, GPT {:.2}×",
        td / dit_s,
        tg / gpt_s
    );
    Ok(())
}
