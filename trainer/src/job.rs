//! What a config builds: its model's layout and cost, its precision policy, and the model and
//! data source themselves ([`with_model`]), on any backend.

use crate::config::{DataConfig, ModelConfig};
use crate::data::baseline::{flow_baseline, unigram_baseline};
use crate::data::{latents::Latents, shapes::Shapes, tokens::Tokens, Source};
use crate::model::{Dit, Gpt, Model, Par};
use crate::{Config, Error, Layout, Result};
use std::path::Path;
use weft_kernels::{CpuBackend, DType, Ops};

/// Which dtype holds what (torchtitan's mixed-precision policy).
///
/// - `master`: the parameters the optimizer updates, the gradients accumulated over
///   micro-batches, and the optimizer state; what checkpoints hold.
/// - `param`: what FSDP gathers and the model computes in (weights and activations). Norm
///   statistics, log-sum-exps and losses stay in f32 under bf16 (the kernels' contract).
/// - `reduce`: what FSDP reduce-scatters each unit's gradient in (the sums over replicas, cp
///   and tp that follow, on the shard, stay in the master dtype).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Precision {
    pub master: DType,
    pub param: DType,
    pub reduce: DType,
}

impl Precision {
    /// The policy `training.dtype`, `training.param_dtype` and `training.reduce_dtype` name
    /// (validated by [`Config::validate`]).
    pub fn of(cfg: &Config) -> Self {
        let t = &cfg.training;
        let master = dtype_named(&t.dtype);
        let or_master = |v: &Option<String>| v.as_deref().map_or(master, dtype_named);
        Precision {
            master,
            param: or_master(&t.param_dtype),
            reduce: or_master(&t.reduce_dtype),
        }
    }

    /// Every buffer in one dtype.
    pub fn uniform(dt: DType) -> Self {
        Precision {
            master: dt,
            param: dt,
            reduce: dt,
        }
    }
}

fn dtype_named(name: &str) -> DType {
    match name {
        "f64" => DType::F64,
        "bf16" => DType::BF16,
        _ => DType::F32,
    }
}

/// The master dtype `training.dtype` names (what checkpoints hold).
pub fn dtype_of(cfg: &Config) -> DType {
    Precision::of(cfg).master
}

/// The parameter layout a config describes, before its parametrization (muP multipliers and
/// learning-rate factors).
pub fn layout_of(cfg: &Config) -> Layout {
    match &cfg.model {
        ModelConfig::Dit(m) => Dit::<CpuBackend>::layout_of(m),
        ModelConfig::Gpt(m) => Gpt::<CpuBackend>::layout_of(m),
    }
}

/// The whole model's layout as trained: every tensor at its global shape, parametrized.
pub fn global_layout(cfg: &Config) -> Layout {
    cfg.parametrize(layout_of(cfg))
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
        params: layout_of(cfg).params(),
        tokens: samples * crate::mesh::seq_split(cfg).t,
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

/// The loss of the best constant predictor on held-out batches.
pub type Baseline<T> = fn(&[T]) -> f64;

/// Something to do with the model and data source a config describes, for [`with_model`].
pub trait ModelJob<B: Ops> {
    type Out;
    fn run<M, S>(self, be: &B, model: M, src: &S, baseline: Baseline<M::Batch>) -> Result<Self::Out>
    where
        M: Model<B>,
        S: Source<Batch = M::Batch>;
}

/// Build the model (for `training.micro_batch`, computing in `training.param_dtype`; this
/// rank's part of it under `par`, else the whole model) and the data source of `cfg`, and
/// run `job`.
pub fn with_model<B: Ops, J: ModelJob<B>>(
    cfg: &Config,
    be: &B,
    par: Option<Par<B>>,
    job: J,
) -> Result<J::Out> {
    let dt = Precision::of(cfg).param;
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
