//! The training loop: build → train (micro-batches, accumulate, clip, step, log, validate)
//! → export.
//!
//! Every step appends one JSON line to `<run>/metrics.jsonl` (loss, grad norm, lr,
//! samples/s, tokens/s, FLOP/s, MFU); validations append `{"val_loss", "val_baseline"}` lines,
//! where the baseline is the best constant predictor on the same held-out samples (per-value
//! mean for flow matching, the unigram distribution for language modelling). The peak used for
//! MFU is `training.peak_flops`, or the f32 GEMM rate measured on this machine at start; the
//! log says which.

use crate::config::{DataConfig, ModelConfig};
use crate::data::{latents::Latents, sample_indices, shapes::Shapes, tokens::Tokens, Source, Split};
use crate::model::{download_f64, Dit, Gpt, Model, Par};
use crate::optim::{lr_at, AdamWState};
use crate::{ckpt, export, Config, Error, Layout, Result};
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;
use weft_kernels::{Backend, CpuBackend, DType, ElementwiseOps, HostVec, MatmulDims, MatmulOps, Ops};

/// How the loop reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrainOptions {
    /// Draw a progress bar (otherwise plain log lines).
    pub progress: bool,
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct Summary {
    pub dir: PathBuf,
    pub steps: u64,
    /// Every step's training loss (of this attempt: from the resumed step on).
    pub losses: Vec<f64>,
    pub val_loss: f64,
    pub val_baseline: f64,
    pub weights: PathBuf,
}

/// The parameter layout a config describes.
pub fn layout_of(cfg: &Config) -> Layout {
    match &cfg.model {
        ModelConfig::Dit(m) => Dit::<CpuBackend>::layout_of(m),
        ModelConfig::Gpt(m) => Gpt::<CpuBackend>::layout_of(m),
    }
}

/// Train `cfg` in this process on the CPU and export the final weights.
pub fn train(cfg: &Config, opts: TrainOptions) -> Result<Summary> {
    if cfg.parallel.world() != 1 {
        return Err(Error::config(
            "parallel",
            format!(
                "describes {} ranks; a single process runs with every size 1",
                cfg.parallel.world()
            ),
        ));
    }
    with_model(cfg, &CpuBackend::new(), None, Single { cfg, opts })
}

struct Single<'a> {
    cfg: &'a Config,
    opts: TrainOptions,
}

impl ModelJob for Single<'_> {
    type Out = Summary;
    fn run<M, S>(
        self,
        be: &CpuBackend,
        model: M,
        src: &S,
        baseline: fn(&[M::Batch]) -> f64,
    ) -> Result<Summary>
    where
        M: Model<CpuBackend>,
        S: Source<Batch = M::Batch>,
    {
        run(self.cfg, be, model, src, self.opts, baseline)
    }
}

/// The compute dtype `training.dtype` names.
pub fn dtype_of(cfg: &Config) -> DType {
    if cfg.training.dtype == "f64" {
        DType::F64
    } else {
        DType::F32
    }
}

/// Something to do with the model and data source a config describes, for [`with_model`].
pub trait ModelJob {
    type Out;
    /// `baseline` is the loss of the best constant predictor on held-out batches.
    fn run<M, S>(
        self,
        be: &CpuBackend,
        model: M,
        src: &S,
        baseline: fn(&[M::Batch]) -> f64,
    ) -> Result<Self::Out>
    where
        M: Model<CpuBackend>,
        S: Source<Batch = M::Batch>;
}

/// Build the model (for `training.micro_batch`; this rank's part of it under `par`, else
/// the whole model) and the data source of `cfg`, and run `job`.
pub fn with_model<J: ModelJob>(
    cfg: &Config,
    be: &CpuBackend,
    par: Option<Par<CpuBackend>>,
    job: J,
) -> Result<J::Out> {
    let dt = dtype_of(cfg);
    let (mb, rc, seed) = (cfg.training.micro_batch, cfg.training.recompute, cfg.job.seed);
    let dit = |m, par| match par {
        Some(p) => Dit::new_par(be, m, mb, dt, rc, p),
        None => Dit::new(be, m, mb, dt, rc),
    };
    match (&cfg.model, &cfg.data) {
        (ModelConfig::Dit(m), DataConfig::Shapes) => {
            let src = Shapes { cfg: m.clone(), seed };
            job.run(be, dit(m, par)?, &src, flow_baseline)
        }
        (ModelConfig::Dit(m), DataConfig::Latents { path, val_fraction }) => {
            let src = Latents::new(Path::new(path), m, *val_fraction, seed)?;
            job.run(be, dit(m, par)?, &src, flow_baseline)
        }
        (ModelConfig::Gpt(m), DataConfig::Tokens { path, val_fraction }) => {
            let src = Tokens::new(Path::new(path), m.seq_len, m.vocab_size, *val_fraction, seed)?;
            let model = match par {
                Some(p) => Gpt::new_par(be, m, mb, dt, rc, p)?,
                None => Gpt::new(be, m, mb, dt, rc)?,
            };
            job.run(be, model, &src, unigram_baseline)
        }
        _ => Err(Error::config("data.kind", "does not match model.kind")),
    }
}

fn flow_baseline(batches: &[crate::model::DitBatch]) -> f64 {
    let n = batches[0].target.len() / batches[0].t.len();
    let all: Vec<&[f32]> = batches.iter().flat_map(|b| b.target.chunks(n)).collect();
    let mean: Vec<f64> = (0..n)
        .map(|j| all.iter().map(|s| s[j] as f64).sum::<f64>() / all.len() as f64)
        .collect();
    let sq: f64 = all
        .iter()
        .map(|s| {
            s.iter()
                .zip(&mean)
                .map(|(&v, m)| (v as f64 - m).powi(2))
                .sum::<f64>()
        })
        .sum();
    sq / (all.len() * n) as f64
}

/// Language modelling: the cross-entropy of the held-out unigram distribution.
fn unigram_baseline(batches: &[crate::model::TokenBatch]) -> f64 {
    let mut counts = std::collections::HashMap::new();
    let mut total = 0usize;
    for t in batches.iter().flat_map(|b| &b.targets).filter(|&&t| t >= 0) {
        *counts.entry(*t).or_insert(0usize) += 1;
        total += 1;
    }
    counts
        .values()
        .map(|&c| c as f64 / total as f64)
        .map(|p| -p * p.ln())
        .sum()
}

/// Best of a few f32 GEMMs (1024³) on this backend, in FLOP/s.
pub fn measure_peak(be: &CpuBackend) -> Result<f64> {
    let n = 1024;
    let a = HostVec::from(vec![0.5f32; n * n]);
    let mut c = be.alloc(DType::F32, n * n)?;
    let mut best = 0f64;
    for _ in 0..4 {
        let t = Instant::now();
        be.matmul_forward(
            CpuBackend::view_mut(&mut c),
            a.view(),
            a.view(),
            None,
            MatmulDims::linear(n, n, n),
        )?;
        best = best.max(2.0 * (n * n * n) as f64 / t.elapsed().as_secs_f64());
    }
    Ok(best)
}

struct Metrics {
    file: std::fs::File,
    path: PathBuf,
}

impl Metrics {
    fn write(&mut self, v: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}").map_err(Error::io(&self.path))
    }
}

fn run<M, S>(
    cfg: &Config,
    be: &CpuBackend,
    mut model: M,
    src: &S,
    opts: TrainOptions,
    baseline: fn(&[M::Batch]) -> f64,
) -> Result<Summary>
where
    M: Model<CpuBackend>,
    S: Source<Batch = M::Batch>,
{
    let t = &cfg.training;
    let dir = cfg.run_dir();
    std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    std::fs::write(dir.join("config.toml"), cfg.to_toml()).map_err(Error::io(dir.join("config.toml")))?;
    let resume = ckpt::find_resume(cfg)?;
    let mpath = dir.join("metrics.jsonl");
    let mut metrics = Metrics {
        // A resumed run appends to its metrics.
        file: std::fs::OpenOptions::new()
            .create(true)
            .append(resume.is_some())
            .write(true)
            .truncate(resume.is_none())
            .open(&mpath)
            .map_err(Error::io(&mpath))?,
        path: mpath,
    };
    let layout = cfg.parametrize(model.layout().clone());
    let dt = dtype_of(cfg);
    // Parameters from the documented per-role initialization, gradients, AdamW state.
    let init = layout.init(cfg.job.seed);
    let mut params = be.alloc(dt, layout.len())?;
    crate::model::upload_f32(be, &init, CpuBackend::view_mut(&mut params))?;
    let mut grads = be.alloc(dt, layout.len())?;
    let mut adam = AdamWState::for_config(be, dt, layout.len(), cfg)?;
    let map = ckpt::ShardMap::whole(&layout);
    if ["muon", "scion"].contains(&cfg.optimizer.kind.as_str()) {
        let runs = vec![map.runs.clone()];
        adam.set_matrix(crate::optim::matrix::MatrixOpt::new(
            &layout,
            &cfg.optimizer,
            runs,
            0,
        ));
    }
    let mut start = 0;
    if let Some(c) = &resume {
        let s = ckpt::load(
            c,
            &map,
            &layout,
            ckpt::named(cfg, &mut params, adam.buffers_mut()),
        )?;
        (start, adam.step) = (s.step, s.adam_step);
        tracing::info!(step = start, from = %c.dir.display(), "resumed");
    }
    weft_checkpoint::clean_partial(&cfg.checkpoint_dir())?;
    let head = ckpt::Checkpointer::head(cfg, &layout, vec![1, 1, 1, 1]);
    let mut saver = ckpt::Checkpointer::new(cfg, &layout, map, 0, 1, Some(head));
    let (peak, peak_src) = match t.peak_flops {
        Some(p) => (p, "configured (training.peak_flops)"),
        None => (measure_peak(be)?, "measured: best f32 GEMM 1024³ on this CPU"),
    };
    let (b, tokens) = model.batch_shape();
    let flops_step = model.flops_per_micro_batch() * t.grad_accum as f64;
    tracing::info!(
        run = %dir.display(),
        params = layout.len(),
        device = be.name(),
        "training {} for {} steps; global batch {} × {} tokens; {:.3} GFLOP/step; peak {:.1} GFLOP/s ({peak_src})",
        cfg.job.name, t.steps, b * t.grad_accum, tokens, flops_step / 1e9, peak / 1e9
    );
    metrics.write(
        json!({"event": "start", "params": layout.len(), "peak_flops": peak, "peak_source": peak_src,
        "flops_per_step": flops_step, "device": be.name()}),
    )?;
    let val: Vec<M::Batch> = (0..t.val_batches)
        .map(|k| {
            src.batch(
                Split::Val,
                &(0..b as u64).map(|i| (k * b) as u64 + i).collect::<Vec<_>>(),
            )
        })
        .collect::<Result<_>>()?;
    let val_baseline = baseline(&val);
    let bar = opts.progress && std::io::stderr().is_terminal();
    let pb = bar.then(|| {
        let pb = indicatif::ProgressBar::new(t.steps);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ETA {eta} {msg}",
            )
            .expect("valid template"),
        );
        pb
    });
    let log_every = (t.steps / 20).max(1);
    let started = Instant::now();
    let mut losses = Vec::with_capacity(t.steps as usize);
    let mut val_loss = f64::NAN;
    if let Some(pb) = &pb {
        pb.set_position(start);
    }
    for step in start..t.steps {
        let t0 = Instant::now();
        be.fill(CpuBackend::view_mut(&mut grads), 0.0, layout.len())?;
        let mut loss = 0.0;
        for micro in 0..t.grad_accum {
            let batch = src.batch(Split::Train, &sample_indices(step, micro, t.grad_accum, 0, 1, b))?;
            let p = CpuBackend::view(&params);
            let l = model.forward(be, p, &batch)?;
            if !l.is_finite() {
                metrics.write(json!({"event": "diverged", "step": step + 1, "loss": l.to_string()}))?;
                return Err(Error::NonFinite { step, loss: l });
            }
            loss += l / t.grad_accum as f64;
            model.backward(be, p, CpuBackend::view_mut(&mut grads), 1.0 / t.grad_accum as f64)?;
        }
        let lr = lr_at(&cfg.optimizer, t.steps, step);
        let gnorm = if adam.is_matrix() {
            adam.step_matrix(None, &cfg.optimizer, &mut params, &grads, lr, None)?
        } else {
            adam.step(
                be,
                &cfg.optimizer,
                &layout,
                CpuBackend::view_mut(&mut params),
                CpuBackend::view(&grads),
                lr,
            )?
        };
        if !gnorm.is_finite() {
            metrics.write(json!({"event": "diverged", "step": step + 1, "grad_norm": gnorm.to_string()}))?;
            return Err(Error::NonFinite { step, loss: gnorm });
        }
        let state = ckpt::State {
            step: step + 1,
            adam_step: adam.step,
            samples_seen: (step + 1) * (b * t.grad_accum) as u64,
        };
        crate::observe::step_done(0, step + 1, t0.elapsed().as_secs_f64(), 0.0);
        let exit = step + 1 < t.steps
            && ((t.exit_after > 0 && step + 1 - start >= t.exit_after) || ckpt::stop_requested());
        saver.after_step(state, &ckpt::named(cfg, &params, adam.buffers()), exit)?;
        if exit {
            tracing::info!(
                step = step + 1,
                "stopping early (training.exit_after or a stop signal)"
            );
            losses.push(loss);
            break;
        }
        let dt_s = t0.elapsed().as_secs_f64();
        let samples = (b * t.grad_accum) as f64;
        let fps = flops_step / dt_s;
        losses.push(loss);
        metrics.write(
            json!({"step": step + 1, "loss": loss, "grad_norm": gnorm, "lr": lr,
            "samples_per_s": samples / dt_s, "tokens_per_s": samples * tokens as f64 / dt_s,
            "flops_per_s": fps, "mfu": fps / peak, "elapsed_s": started.elapsed().as_secs_f64()}),
        )?;
        let last = step + 1 == t.steps;
        if last || (t.val_every > 0 && (step + 1) % t.val_every == 0) {
            val_loss = validate(be, &mut model, &params, &val)?;
            metrics.write(json!({"step": step + 1, "val_loss": val_loss, "val_baseline": val_baseline}))?;
            let msg = format!("val {val_loss:.4} (constant predictor {val_baseline:.4})");
            match &pb {
                Some(pb) => pb.println(format!("step {}: {msg}", step + 1)),
                None => tracing::info!(step = step + 1, "{msg}"),
            }
        }
        match &pb {
            Some(pb) => {
                pb.set_message(format!(
                    "loss {loss:.4} | {:.0} samples/s | MFU {:.1}%",
                    samples / dt_s,
                    100.0 * fps / peak
                ));
                pb.inc(1);
            }
            None if (step + 1) % log_every == 0 || last => tracing::info!(
                step = step + 1,
                loss = format!("{loss:.4}"),
                grad_norm = format!("{gnorm:.3}"),
                lr = format!("{lr:.2e}"),
                samples_per_s = format!("{:.1}", samples / dt_s),
                mfu = format!("{:.1}%", 100.0 * fps / peak),
                "train"
            ),
            None => {}
        }
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    saver.finish();
    let host = download_f64(be, CpuBackend::view(&params))?;
    let flat: Vec<f32> = host.iter().map(|&v| v as f32).collect();
    let weights = dir.join("model.safetensors");
    let done = start + losses.len() as u64;
    export::save(&weights, &layout, &flat, cfg, done)?;
    tracing::info!(
        "done in {:.1}s: val loss {val_loss:.4} vs constant predictor {val_baseline:.4} ({:.0}% below); weights {}",
        started.elapsed().as_secs_f64(),
        100.0 * (1.0 - val_loss / val_baseline),
        weights.display()
    );
    Ok(Summary {
        dir,
        steps: done,
        losses,
        val_loss,
        val_baseline,
        weights,
    })
}

/// What one optimizer step of a config costs.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct StepCost {
    /// Parameters of the whole model.
    pub params: usize,
    /// Tokens in the global batch (micro-batch × accumulation × data-parallel ranks).
    pub tokens: usize,
    /// Forward + backward FLOPs of the global batch (matmuls and attention, as the training
    /// log's MFU counts them).
    pub flops: f64,
}

/// The cost of one step of `cfg`, from a one-sample instance of its model (cheap to build).
pub fn step_cost(cfg: &Config) -> Result<StepCost> {
    let be = CpuBackend::new();
    let (params, flops, tokens) = match &cfg.model {
        ModelConfig::Dit(m) => {
            let d = Dit::new(&be, m, 1, DType::F32, false)?;
            (d.layout().len(), d.flops_per_micro_batch(), d.batch_shape().1)
        }
        ModelConfig::Gpt(m) => {
            let g = Gpt::new(&be, m, 1, DType::F32, false)?;
            (g.layout().len(), g.flops_per_micro_batch(), g.batch_shape().1)
        }
    };
    let (t, p) = (&cfg.training, &cfg.parallel);
    let samples = t.micro_batch * t.grad_accum * p.dp_replicate * p.dp_shard;
    Ok(StepCost {
        params,
        tokens: samples * tokens,
        flops: flops * samples as f64,
    })
}

/// A model's loss on held-out data and the best constant predictor's on the same samples.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Eval {
    pub loss: f64,
    pub baseline: f64,
}

/// The loss of the weights `params` (f32, in the layout of `cfg`, as exported) on the first
/// `samples` held-out samples (rounded up to batches of 16), in one process on the CPU. The
/// samples do not depend on the run's batch size, so runs of a sweep are compared on the same
/// data.
pub fn evaluate(cfg: &Config, params: &[f32], samples: usize) -> Result<Eval> {
    struct Job<'a>(&'a [f32], usize, DType);
    impl ModelJob for Job<'_> {
        type Out = Eval;
        fn run<M, S>(
            self,
            be: &CpuBackend,
            mut model: M,
            src: &S,
            baseline: fn(&[M::Batch]) -> f64,
        ) -> Result<Eval>
        where
            M: Model<CpuBackend>,
            S: Source<Batch = M::Batch>,
        {
            let (b, _) = model.batch_shape();
            let val: Vec<M::Batch> = (0..self.1.div_ceil(b) as u64)
                .map(|k| {
                    src.batch(
                        Split::Val,
                        &(k * b as u64..(k + 1) * b as u64).collect::<Vec<_>>(),
                    )
                })
                .collect::<Result<_>>()?;
            let mut p = be.alloc(self.2, self.0.len())?;
            crate::model::upload_f32(be, self.0, CpuBackend::view_mut(&mut p))?;
            Ok(Eval {
                loss: validate(be, &mut model, &p, &val)?,
                baseline: baseline(&val),
            })
        }
    }
    let mut c = cfg.clone();
    c.training.micro_batch = 16;
    c.training.recompute = false;
    let n = layout_of(&c).len();
    if params.len() != n {
        return Err(Error::Other(format!(
            "evaluate: {} parameters given, the config's model has {n}",
            params.len()
        )));
    }
    with_model(
        &c,
        &CpuBackend::new(),
        None,
        Job(params, samples.max(1), dtype_of(&c)),
    )
}

/// Mean loss over the held-out batches.
fn validate<M: Model<B>, B: Ops>(be: &B, model: &mut M, params: &B::Buffer, val: &[M::Batch]) -> Result<f64> {
    let mut sum = 0.0;
    for b in val {
        sum += model.forward(be, B::view(params), b)?;
    }
    Ok(sum / val.len() as f64)
}
