//! The accuracy cases: every op of every family, each case a generic function run once on the
//! backend under test and again on the CPU reference.

mod attention;
mod data;
mod layer;
mod optim;

use super::ctx::Ctx;
use super::sizes::Sizes;
use anyhow::Result;
use weft_kernels::{DType, Ops};

/// Runs a case on one backend, recording its outputs in the context.
pub type RunFn<B> = fn(&mut Ctx<'_, B>, &Sizes) -> Result<()>;

/// One accuracy case: the family it belongs to, a name, the activation dtypes it runs in, and
/// the function that runs it.
pub struct Case<B: Ops> {
    pub family: &'static str,
    pub name: &'static str,
    pub dtypes: &'static [DType],
    pub run: RunFn<B>,
}

const BOTH: &[DType] = &[DType::F32, DType::BF16];
const F32: &[DType] = &[DType::F32];
const BF16: &[DType] = &[DType::BF16];

/// Every case, in report order. The table is the same for every backend (the runner pairs the
/// backend's entries with the CPU's by position).
pub fn cases<B: Ops>() -> Vec<Case<B>> {
    let c = |family, name, dtypes, run: RunFn<B>| Case {
        family,
        name,
        dtypes,
        run,
    };
    vec![
        c("matmul", "linear", BOTH, layer::matmul_linear),
        c("matmul", "batched, a transposed", BOTH, layer::matmul_batched),
        c("norm", "layernorm", BOTH, layer::layernorm),
        c("norm", "rmsnorm", BOTH, layer::rmsnorm),
        c("activation", "gelu, silu", BOTH, layer::gelu_silu),
        c("activation", "swiglu", BOTH, layer::swiglu),
        c("modulation", "adaln", BOTH, layer::modulation),
        c("rope", "1-d", BOTH, layer::rope),
        c("attention", "causal, chunk, cross", BOTH, attention::attention),
        c("attention", "ring merge", BOTH, attention::merge),
        c("loss", "cross-entropy", BOTH, data::cross_entropy),
        c("loss", "mse", BOTH, data::mse),
        c("embed", "tokens", BOTH, data::embedding),
        c("embed", "patches", BOTH, data::patches),
        c("embed", "timesteps", BOTH, data::timestep),
        c("elementwise", "pointwise", BOTH, data::elementwise),
        c("shape", "swap axes", BOTH, data::swap_axes),
        c("optim", "adamw, ademamix, norms", F32, optim::optimizer),
        c("optim", "sums of bf16 values", BF16, optim::sum_squares_bf16),
        c("optim", "muon, scion", F32, optim::matrix_optimizer),
    ]
}

/// Every method of [`Ops`]: the report must have a row for each (a test holds it to this).
pub const ALL_OPS: &[&str] = &[
    "matmul_forward",
    "matmul_backward",
    "layernorm_forward",
    "layernorm_backward",
    "rmsnorm_forward",
    "rmsnorm_backward",
    "gelu_forward",
    "gelu_backward",
    "silu_forward",
    "silu_backward",
    "swiglu_forward",
    "swiglu_backward",
    "modulate_forward",
    "modulate_backward",
    "gate_forward",
    "gate_backward",
    "rope_forward",
    "rope_backward",
    "attention_forward",
    "attention_merge",
    "attention_backward",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "mse_forward",
    "mse_backward",
    "embedding_forward",
    "embedding_backward",
    "patchify_forward",
    "patchify_backward",
    "unpatchify_forward",
    "unpatchify_backward",
    "timestep_embedding_forward",
    "timestep_embedding_backward",
    "add_forward",
    "add_backward",
    "scale_forward",
    "scale_backward",
    "accumulate",
    "fill",
    "cast",
    "swap_axes",
    "sum_squares",
    "sum",
    "l2norm_forward",
    "l2norm_backward",
    "adamw_update",
    "ademamix_update",
    "momentum_update",
    "newton_schulz",
    "matrix_normalize",
    "apply_direction",
];
