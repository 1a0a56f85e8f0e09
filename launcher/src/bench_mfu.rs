//! `weft bench mfu CONFIG`: the training step of a config's model on its `training.device`
//! (the trainer's own step, on a mesh of one, on synthetic data of the model's shapes) —
//! steps/s, tokens/s, model TFLOP/s and MFU against the GEMM peak measured on the same device
//! in the same run — next to the same model in PyTorch (eager, and `torch.compile` where it
//! works) on the same device, as ratios. Writes `bench_mfu.json` in the run directory.

use crate::bench_step::{pytorch_side, weft_steps, SyntheticTokens};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::PathBuf;
use weft_kernels::{DType, Ops};
use weft_trainer::config::ModelConfig;
use weft_trainer::data::shapes::Shapes;
use weft_trainer::device::Device;
use weft_trainer::job::Precision;
use weft_trainer::model::{Dit, Gpt};
use weft_trainer::Config;

#[derive(clap::Args)]
pub struct MfuBenchArgs {
    /// The run's config (its model, micro-batch, dtypes and device; its mesh is ignored: one
    /// device is measured).
    pub config: PathBuf,
    /// `key=value` overrides, as for `weft train`.
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// Timed steps (the median is reported), after 2 warm-up steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// The PyTorch side.
    #[arg(long, default_value = "tools/bench_torch.py")]
    pub script: PathBuf,
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Also time PyTorch under `torch.compile`.
    #[arg(long)]
    pub compile: bool,
}

/// One row of the table: median seconds per step and what it implies.
struct Row {
    name: String,
    step_s: f64,
}

pub fn mfu(a: &MfuBenchArgs) -> Result<()> {
    let mut cfg = Config::load(&a.config, &a.sets)?;
    // One device: the mesh of one the step runs on.
    let p = &mut cfg.parallel;
    (p.dp_replicate, p.dp_shard, p.cp, p.tp, p.ulysses) = (1, 1, 1, 1, 1);
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    match weft_trainer::device::check(&cfg)? {
        Device::Cpu => run(&cfg, &weft_kernels::CpuBackend::new(), a),
        Device::Cuda(n) => on_cuda(&cfg, n, a),
    }
}

#[cfg(any(feature = "cuda", feature = "cuda-12"))]
fn on_cuda(cfg: &Config, n: usize, a: &MfuBenchArgs) -> Result<()> {
    run(cfg, &weft_kernels::cuda::CudaBackend::new(n)?, a)
}

#[cfg(not(any(feature = "cuda", feature = "cuda-12")))]
fn on_cuda(_: &Config, _: usize, _: &MfuBenchArgs) -> Result<()> {
    unreachable!("device::check refuses CUDA in a build without it")
}

fn run<B: Ops>(cfg: &Config, be: &B, a: &MfuBenchArgs) -> Result<()> {
    let t = &cfg.training;
    let prec = Precision::of(cfg);
    let samples = t.micro_batch * t.grad_accum;
    let (tokens, weft_s, spec) = match &cfg.model {
        ModelConfig::Dit(m) => {
            let shapes = Shapes {
                cfg: m.clone(),
                seed: 0,
            };
            let make = || Ok(Dit::new(be, m, t.micro_batch, prec.param, t.recompute)?);
            let s = weft_steps(cfg, be, make, &shapes, a.steps)?;
            let toks = m.latent[0] / m.patch[0] * (m.latent[1] / m.patch[1]) * (m.latent[2] / m.patch[2]);
            (toks, s, json!({"kind": "dit", "model": m}))
        }
        ModelConfig::Gpt(m) => {
            let src = SyntheticTokens {
                seq_len: m.seq_len,
                vocab: m.vocab_size as u64,
            };
            let make = || Ok(Gpt::new(be, m, t.micro_batch, prec.param, t.recompute)?);
            let s = weft_steps(cfg, be, make, &src, a.steps)?;
            (m.seq_len, s, json!({"kind": "gpt", "model": m}))
        }
    };
    let flops = weft_trainer::job::model_flops(cfg, samples);
    let peak = weft_trainer::measure_peak(be, prec.param)?;
    let device = be.name();
    println!(
        "{}: {} on {device}, {} compute, {} samples × {tokens} tokens per step, {:.3} TFLOP per step",
        cfg.job.name,
        a.config.display(),
        prec.param,
        samples,
        flops / 1e12
    );
    println!(
        "GEMM peak on this device: {:.2} TFLOP/s ({} {n}³ through the backend's matmul)",
        peak.flops / 1e12,
        prec.param,
        n = peak.n
    );
    let mut rows = vec![Row {
        name: "weft".into(),
        step_s: weft_s,
    }];
    let torch = pytorch(cfg, a, &spec, &device, prec.param, samples);
    match &torch {
        Ok(r) => {
            for (key, name) in [
                ("eager_step_s", "PyTorch eager"),
                ("compile_step_s", "PyTorch compile"),
            ] {
                if let Some(s) = r[key].as_f64() {
                    rows.push(Row {
                        name: format!("{name} {}", r["torch"].as_str().unwrap_or("")),
                        step_s: s,
                    });
                }
            }
            if let Some(why) = r["compile_error"].as_str() {
                println!("torch.compile: not measured — {why}");
            }
        }
        Err(why) => println!("PyTorch: skipped — {why}"),
    }
    println!(
        "{:<28} {:>10} {:>9} {:>12} {:>9} {:>7} {:>10}",
        "", "ms/step", "steps/s", "tokens/s", "TFLOP/s", "MFU", "weft ×"
    );
    let mut table = vec![];
    for r in &rows {
        let (tf, mfu) = (flops / r.step_s, flops / r.step_s / peak.flops);
        println!(
            "{:<28} {:>10.2} {:>9.3} {:>12.0} {:>9.3} {:>6.1}% {:>9.2}×",
            r.name,
            r.step_s * 1e3,
            1.0 / r.step_s,
            (samples * tokens) as f64 / r.step_s,
            tf / 1e12,
            mfu * 100.0,
            r.step_s / weft_s,
        );
        table.push(
            json!({"name": r.name, "step_s": r.step_s, "tokens_per_s": (samples * tokens) as f64 / r.step_s,
            "flops_per_s": tf, "mfu": mfu, "weft_speedup": r.step_s / weft_s}),
        );
    }
    let out = json!({
        "schema": "weft-bench-mfu/1",
        "config": a.config, "device": device, "compute_dtype": prec.param.name(),
        "samples_per_step": samples, "tokens_per_sample": tokens, "flops_per_step": flops,
        "peak_flops": peak.flops, "peak_gemm_n": peak.n, "rows": table,
        "pytorch": torch.as_ref().ok(), "pytorch_skipped": torch.as_ref().err(),
    });
    let dir = cfg.run_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("bench_mfu.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The same model, batch and compute dtype in PyTorch on the same kind of device; `Err` says
/// why it was not measured (not installed, no CUDA build).
fn pytorch(
    cfg: &Config,
    a: &MfuBenchArgs,
    spec: &Value,
    device: &str,
    dt: DType,
    samples: usize,
) -> std::result::Result<Value, String> {
    let mut spec = spec.clone();
    spec["batch"] = json!(cfg.training.micro_batch);
    spec["grad_accum"] = json!(samples / cfg.training.micro_batch.max(1));
    spec["steps"] = json!(a.steps);
    spec["device"] = json!(if device.starts_with("cuda") { "cuda" } else { "cpu" });
    spec["dtype"] = json!(dt.name());
    spec["compile"] = json!(a.compile);
    // A failed PyTorch run does not lose weft's numbers: it is reported in the table's stead.
    match pytorch_side(&a.python, &a.script, &json!({ "mfu": spec })) {
        Ok(r) => r,
        Err(e) => Err(format!("{e:#}")),
    }
}
