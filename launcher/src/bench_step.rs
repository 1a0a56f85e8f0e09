//! `weft bench step`: one training step (forward, backward, clipped AdamW) of the tiny DiT and
//! GPT in weft and in PyTorch on this CPU, in the same run; prints steps/s and the ratio.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Instant;
use weft_kernels::{Backend, CpuBackend, DType, ElementwiseOps};
use weft_trainer::config::ModelConfig;
use weft_trainer::data::{shapes::Shapes, Source, Split};
use weft_trainer::model::{upload_f32, Dit, Gpt, Model, TokenBatch};
use weft_trainer::optim::AdamWState;
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

/// Median seconds of `steps` weft training steps (after 2 warm-up steps).
fn weft_steps<M: Model<CpuBackend>>(
    cfg: &Config,
    mut model: M,
    mut batch: impl FnMut(u64) -> M::Batch,
    steps: usize,
) -> Result<f64> {
    let be = CpuBackend::new();
    let layout = model.layout().clone();
    let mut params = weft_kernels::HostVec::zeros(DType::F32, layout.len());
    upload_f32(&be, &layout.init(0)?, params.view_mut())?;
    let mut grads = weft_kernels::HostVec::zeros(DType::F32, layout.len());
    let mut adam = AdamWState::new(&be, DType::F32, layout.len())?;
    let mut times = vec![];
    for i in 0..steps + 2 {
        let b = batch(i as u64);
        let t0 = Instant::now();
        be.fill(grads.view_mut(), 0.0, layout.len())?;
        model.forward(&be, params.view(), &b)?;
        model.backward(&be, params.view(), grads.view_mut(), 1.0)?;
        adam.step(
            &be,
            &cfg.optimizer,
            &layout,
            params.view_mut(),
            grads.view(),
            1e-4,
        )?;
        if i >= 2 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

pub fn step(a: &StepBenchArgs) -> Result<()> {
    let dc = Config::load(&a.dit, &[])?;
    let gc = Config::load(&a.gpt, &[])?;
    let (ModelConfig::Dit(dm), ModelConfig::Gpt(gm)) = (&dc.model, &gc.model) else {
        bail!("--dit must be a DiT config and --gpt a GPT config");
    };
    let be = CpuBackend::new();
    let (db, gb) = (dc.training.micro_batch, gc.training.micro_batch);
    let shapes = Shapes {
        cfg: dm.clone(),
        seed: 0,
    };
    let dit_s = weft_steps(
        &dc,
        Dit::new(&be, dm, db, DType::F32, false)?,
        |i| {
            shapes
                .batch(
                    Split::Train,
                    &(i * db as u64..(i + 1) * db as u64).collect::<Vec<_>>(),
                )
                .expect("procedural data")
        },
        a.steps,
    )?;
    let n = gb * gm.seq_len;
    let gpt_s = weft_steps(
        &gc,
        Gpt::new(&be, gm, gb, DType::F32, false)?,
        |i| TokenBatch {
            ids: (0..n)
                .map(|j| ((j as u64 * 31 + i * 7) % gm.vocab_size as u64) as i32)
                .collect(),
            targets: (0..n)
                .map(|j| ((j as u64 * 17 + i * 3) % gm.vocab_size as u64) as i32)
                .collect(),
        },
        a.steps,
    )?;
    println!(
        "weft    {}: DiT {:.1} ms/step ({:.0} clips/s), GPT {:.1} ms/step ({:.0} tokens/s)",
        be.name(),
        dit_s * 1e3,
        db as f64 / dit_s,
        gpt_s * 1e3,
        n as f64 / gpt_s
    );
    let spec = serde_json::json!({"dit": dm, "gpt": gm, "dit_batch": db, "gpt_batch": gb, "steps": a.steps});
    let out = std::process::Command::new(&a.python)
        .arg(&a.script)
        .arg(spec.to_string())
        .output();
    let out = match out {
        Ok(o) if o.status.code() == Some(3) => {
            println!("PyTorch: skipped — {}", String::from_utf8_lossy(&o.stderr).trim());
            return Ok(());
        }
        Ok(o) if o.status.success() => o,
        Ok(o) => bail!(
            "{} failed: {}",
            a.script.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            println!("PyTorch: skipped — cannot run {}: {e}", a.python);
            return Ok(());
        }
    };
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).context("PyTorch output")?;
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
