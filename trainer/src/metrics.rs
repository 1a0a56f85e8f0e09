//! `<run>/metrics.jsonl`, written by the single-process trainer and by rank 0 of a mesh with
//! the same fields: a `start` event (parameters, peak FLOP/s and where it came from, FLOPs per
//! step), one line per optimizer step (`loss`, `grad_norm`, `lr`, `samples_per_s`,
//! `tokens_per_s`, `flops_per_s`, `mfu`, `elapsed_s`), validation lines (`val_loss`,
//! `val_baseline`) and a `diverged` event when the loss stops being a number.

use crate::{Error, Result};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use weft_kernels::{DType, MatmulDims, Ops};

/// The open metrics file of a run.
pub(crate) struct Metrics {
    file: std::fs::File,
    path: PathBuf,
}

impl Metrics {
    /// Open `<dir>/metrics.jsonl`: continued when the run resumes, started afresh otherwise.
    pub fn open(dir: &Path, resumed: bool) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let path = dir.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(resumed)
            .write(true)
            .truncate(!resumed)
            .open(&path)
            .map_err(Error::io(&path))?;
        Ok(Metrics { file, path })
    }

    pub fn write(&mut self, v: Value) -> Result<()> {
        writeln!(self.file, "{v}").map_err(Error::io(&self.path))
    }
}

/// What one optimizer step processes: the global batch's samples, tokens and model FLOPs
/// (matmuls and attention of the whole model, as MFU is quoted), and the peak FLOP/s of all
/// the devices running it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rate {
    pub samples: f64,
    pub tokens: f64,
    pub flops: f64,
    pub peak: f64,
}

impl Rate {
    /// Model FLOPs utilization of a step that took `secs`.
    pub fn mfu(&self, secs: f64) -> f64 {
        self.flops / secs / self.peak
    }

    /// The metrics line of a step that took `secs`.
    pub fn step_line(&self, step: u64, loss: f64, grad_norm: f64, lr: f64, secs: f64, elapsed: f64) -> Value {
        json!({"step": step, "loss": loss, "grad_norm": grad_norm, "lr": lr,
            "samples_per_s": self.samples / secs, "tokens_per_s": self.tokens / secs,
            "flops_per_s": self.flops / secs, "mfu": self.mfu(secs), "elapsed_s": elapsed})
    }

    /// The `start` event of a run of `params` parameters whose devices each peak at
    /// `device_peak` FLOP/s (`peak_source`: where that figure came from).
    pub fn start_event(&self, params: usize, device_peak: f64, peak_source: &str, device: &str) -> Value {
        json!({"event": "start", "params": params, "peak_flops": device_peak,
            "peak_source": peak_source, "flops_per_step": self.flops, "device": device})
    }
}

/// The peak FLOP/s of one device for MFU: `training.peak_flops`, or the GEMM rate measured on
/// this device in the run's compute dtype ([`measure_peak`]); and where the figure came from.
pub(crate) fn device_peak<B: Ops>(cfg: &crate::Config, be: &B) -> Result<(f64, String)> {
    Ok(match cfg.training.peak_flops {
        Some(p) => (p, "configured (training.peak_flops)".into()),
        None => {
            let dt = crate::job::Precision::of(cfg).param;
            let p = measure_peak(be, dt)?;
            (
                p.flops,
                format!("measured: best {dt} GEMM {n}³ on this device", n = p.n),
            )
        }
    })
}

/// A measured GEMM rate: FLOP/s of the best square `n³` product.
#[derive(Clone, Copy, Debug)]
pub struct Peak {
    pub flops: f64,
    pub n: usize,
}

/// The device's own GEMM rate in `dtype`, through its matmul op: square products from 1024³,
/// doubling the size (up to 8192³) while one takes under 20 ms, so a GPU is measured at a size
/// that fills it and a CPU at one that finishes quickly; the best of four at the final size.
pub fn measure_peak<B: Ops>(be: &B, dtype: DType) -> Result<Peak> {
    let mut n = 1024;
    loop {
        let mut a = be.alloc(dtype, n * n)?;
        be.fill(B::view_mut(&mut a), 0.5, n * n)?;
        let mut c = be.alloc(dtype, n * n)?;
        let (x, d) = (B::view(&a), MatmulDims::linear(n, n, n));
        // Warm-up (kernel selection, first-touch of the memory).
        be.matmul_forward(B::view_mut(&mut c), x, x, None, d)?;
        be.synchronize()?;
        let mut best = f64::INFINITY;
        for _ in 0..4 {
            let t = Instant::now();
            be.matmul_forward(B::view_mut(&mut c), x, x, None, d)?;
            be.synchronize()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        if best >= 0.02 || n >= 8192 {
            return Ok(Peak {
                flops: 2.0 * (n * n * n) as f64 / best,
                n,
            });
        }
        n *= 2;
    }
}

/// The metrics line of a run stopped at 0-based `step` by a non-finite loss or gradient norm,
/// with its cause (`None` for other errors).
pub(crate) fn diverged(step: u64, e: &Error) -> Option<serde_json::Value> {
    let (key, value, cause) = match e {
        Error::NonFinite { loss, .. } => ("loss", *loss, "divergence"),
        Error::NonFiniteNorm { norm, .. } => ("grad_norm", *norm, "divergence"),
        Error::NonFiniteInput { .. } => ("loss", f64::NAN, "non-finite input data"),
        Error::NonFiniteElsewhere { .. } => ("loss", f64::NAN, "divergence"),
        _ => return None,
    };
    Some(
        json!({"event": "diverged", "step": step + 1, key: value.to_string(), "cause": cause,
           "message": e.to_string()}),
    )
}

/// What rank 0 of a mesh writes to `<run>/metrics.jsonl`, with the single-process trainer's fields.
pub(crate) struct MeshReport {
    pub metrics: Metrics,
    /// The global batch: every data-parallel replica's samples, the whole model's FLOPs, and
    /// the peak of all the mesh's devices.
    pub rate: Rate,
    pub val_loss: f64,
    pub val_baseline: f64,
}

impl MeshReport {
    /// Open the metrics (continued when `resumed`) and write the `start` event; `(b, tokens)`:
    /// a rank's micro-batch shape.
    pub fn start<B: Ops>(
        cfg: &crate::Config,
        be: &B,
        val_baseline: f64,
        (b, tokens): (usize, usize),
        resumed: bool,
    ) -> Result<Self> {
        let t = &cfg.training;
        let mut metrics = Metrics::open(&cfg.run_dir(), resumed)?;
        let (peak, source) = crate::metrics::device_peak(cfg, be)?;
        let samples = (b * t.grad_accum * cfg.parallel.dp()) as f64;
        let rate = Rate {
            samples,
            tokens: samples * tokens as f64,
            flops: crate::job::model_flops(cfg, b) * (t.grad_accum * cfg.parallel.dp()) as f64,
            peak: peak * cfg.parallel.world() as f64,
        };
        let params = crate::job::global_layout(cfg).params();
        metrics.write(rate.start_event(params, peak, &source, &be.name()))?;
        let prec = crate::job::Precision::of(cfg);
        tracing::info!(
            run = %cfg.run_dir().display(),
            params,
            device = be.name(),
            "training {} for {} steps on {} rank(s) ({} master weights, computing in {}); global batch {} × {} tokens; {:.3} GFLOP/step; peak {:.1} GFLOP/s per device ({source})",
            cfg.job.name,
            t.steps,
            cfg.parallel.world(),
            prec.master,
            prec.param,
            samples,
            tokens,
            rate.flops / 1e9,
            peak / 1e9
        );
        Ok(MeshReport {
            metrics,
            rate,
            val_loss: f64::NAN,
            val_baseline,
        })
    }

    /// Record the validation loss after `step`; returns it in words for the log.
    pub fn validated(&mut self, step: u64, loss: f64) -> Result<String> {
        self.val_loss = loss;
        self.metrics
            .write(crate::eval::val_line(step, loss, self.val_baseline))?;
        Ok(format!(
            "val {loss:.4} (constant predictor {:.4})",
            self.val_baseline
        ))
    }
}
