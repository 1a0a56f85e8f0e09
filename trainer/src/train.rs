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
use crate::eval::{flow_baseline, unigram_baseline};
use crate::metrics::{self, diverged, Metrics, Rate};
use crate::model::{Dit, Flat, Gpt, Model, Par};
use crate::optim::{lr_at, AdamWState};
use crate::{ckpt, eval, export, memory, Config, Error, Layout, Result};
use serde_json::json;
use std::io::IsTerminal;
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
        (ModelConfig::Dit(m), DataConfig::Latents(f)) => {
            let src = Latents::new(Path::new(&f.path), m, f.val_fraction, seed)?;
            job.run(be, dit(m, par)?, &src, flow_baseline)
        }
        (ModelConfig::Gpt(m), DataConfig::Tokens(f)) => {
            let src = Tokens::new(Path::new(&f.path), m.seq_len, m.vocab_size, f.val_fraction, seed)?;
            let model = match par {
                Some(p) => Gpt::new_par(be, m, mb, dt, rc, p)?,
                None => Gpt::new(be, m, mb, dt, rc)?,
            };
            job.run(be, model, &src, unigram_baseline)
        }
        _ => Err(Error::config("data.kind", "does not match model.kind")),
    }
}

pub use crate::eval::{evaluate, versus_baseline, Eval};

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
    let mut metrics = Metrics::open(&dir, resume.is_some())?;
    let layout = cfg.parametrize(model.layout().clone());
    let dt = dtype_of(cfg);
    // Parameters from the documented per-role initialization (its f32 draw freed before the
    // gradients and optimizer state exist), gradients, optimizer state.
    let mut params = memory::alloc(be, "the parameters", dt, layout.len())?;
    crate::model::upload_f32(be, &layout.init(cfg.job.seed)?, CpuBackend::view_mut(&mut params))?;
    let mut grads = memory::alloc(be, "the gradients", dt, layout.len())?;
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
    let (peak, peak_src) = metrics::device_peak(cfg, be)?;
    let (b, tokens) = model.batch_shape();
    let flops_step = model.flops_per_micro_batch() * t.grad_accum as f64;
    let samples = (b * t.grad_accum) as f64;
    let rate = Rate {
        samples,
        tokens: samples * tokens as f64,
        flops: flops_step,
        peak,
    };
    tracing::info!(
        run = %dir.display(),
        params = layout.len(),
        device = be.name(),
        "training {} for {} steps; global batch {} × {} tokens; {:.3} GFLOP/step; peak {:.1} GFLOP/s ({peak_src})",
        cfg.job.name, t.steps, b * t.grad_accum, tokens, flops_step / 1e9, peak / 1e9
    );
    metrics.write(rate.start_event(layout.len(), peak, peak_src, &be.name()))?;
    let val = eval::val_batches(src, t.val_batches, b, (0, 1))?;
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
            let idx = sample_indices(step, micro, t.grad_accum, 0, 1, b);
            let batch = src.batch(Split::Train, &idx)?;
            let p = CpuBackend::view(&params);
            let l = model.forward(be, p, &batch)?;
            if !l.is_finite() {
                let e = non_finite_loss(cfg, &model, step, l, &batch, &idx);
                metrics.write(diverged(step, l, &e))?;
                return Err(e);
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
        losses.push(loss);
        let elapsed = started.elapsed().as_secs_f64();
        metrics.write(rate.step_line(step + 1, loss, gnorm, lr, dt_s, elapsed))?;
        let last = step + 1 == t.steps;
        if eval::due(t, step + 1) {
            let mut wt = Flat::new(&layout, CpuBackend::view(&params), None);
            val_loss = eval::validate(be, &mut model, &mut wt, &val)?;
            metrics.write(eval::val_line(step + 1, val_loss, val_baseline))?;
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
                    100.0 * rate.mfu(dt_s)
                ));
                pb.inc(1);
            }
            None if (step + 1) % log_every == 0 || last => tracing::info!(
                step = step + 1,
                loss = format!("{loss:.4}"),
                grad_norm = format!("{gnorm:.3}"),
                lr = format!("{lr:.2e}"),
                samples_per_s = format!("{:.1}", samples / dt_s),
                mfu = format!("{:.1}%", 100.0 * rate.mfu(dt_s)),
                "train"
            ),
            None => {}
        }
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    saver.finish();
    let mut flat = memory::host_zeros::<f32>("the exported weights (f32)", layout.len())?;
    be.cast((&mut flat).into(), CpuBackend::view(&params), layout.len())?;
    let weights = dir.join("model.safetensors");
    let done = start + losses.len() as u64;
    export::save(&weights, &layout, &flat, cfg, done)?;
    tracing::info!(
        "done in {:.1}s: {}; weights {}",
        started.elapsed().as_secs_f64(),
        eval::versus_baseline(val_loss, val_baseline),
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

/// The cost of one step of `cfg`, from the config alone.
pub fn step_cost(cfg: &Config) -> Result<StepCost> {
    let (t, p) = (&cfg.training, &cfg.parallel);
    let samples = t.micro_batch * t.grad_accum * p.dp_replicate * p.dp_shard;
    Ok(StepCost {
        params: layout_of(cfg).len(),
        tokens: samples * crate::memory::seq_split(cfg).t,
        flops: model_flops(cfg, 1) * samples as f64,
    })
}

/// Model FLOPs of one forward+backward over `b` samples of the whole model (what MFU counts).
pub fn model_flops(cfg: &Config, b: usize) -> f64 {
    match &cfg.model {
        ModelConfig::Dit(m) => Dit::<CpuBackend>::flops_of(m, b),
        ModelConfig::Gpt(m) => Gpt::<CpuBackend>::flops_of(m, b),
    }
}

/// The error for a non-finite `loss` at 0-based `step` on `batch` (the training samples
/// `idx`): the data's fault when the batch's inputs hold NaN or infinity, divergence
/// otherwise.
pub(crate) fn non_finite_loss<M: Model<B>, B: Ops>(
    cfg: &Config,
    model: &M,
    step: u64,
    loss: f64,
    batch: &M::Batch,
    idx: &[u64],
) -> Error {
    let bad = model.non_finite_samples(batch);
    if bad.is_empty() {
        return Error::NonFinite { step, loss };
    }
    Error::NonFiniteInput {
        step,
        source_desc: cfg.data.describe(),
        samples: bad.iter().filter_map(|&i| idx.get(i).copied()).collect(),
    }
}
