//! The op set, as one trait per family, each op a `<op>_forward` / `<op>_backward` pair.
//!
//! Shape legend (as in llm.c): `B` batch, `T` tokens (or frames), `C` channels, `NH` query
//! heads, `NKV` key/value heads, `HD` head dim, `V` vocabulary, `N` rows of a 2-D op.
//! Every buffer is row-major and contiguous; a layer passes ranges of its flat buffers.
//!
//! Gradient convention (said once, here): gradients of *parameters* (`dweight`, `dbias`,
//! `dtable`, the `db` of a matmul) **accumulate** (`+=`) so micro-batches add up without
//! extra buffers; gradients of *activations* are **overwritten** (`=`), except on the residual
//! stream, where [`ElementwiseOps::add_backward`] accumulates into both inputs and
//! [`ModulationOps::gate_backward`] leaves the residual gradient to flow through unchanged.
//!
//! Dtypes (the mixed-precision contract, checked alike by every backend). Each argument has a
//! [`Role`], and a call's *activation dtype* `A` ∈ {f64, f32, bf16} fixes what each role takes:
//!
//! | role | arguments | dtype |
//! |---|---|---|
//! | [`Role::Act`] | inputs, outputs, activation gradients, and parameter inputs (norm `weight`/`bias`, embedding `table`, matmul operands) | `A` |
//! | [`Role::Stat`] | layernorm `mean`/`rstd`, rmsnorm `rstd`, attention `lse` and `part_lse`, cross-entropy `losses`/`lse`/`dlosses`, mse `loss`/`dloss`, timesteps `t`/`dt`, RoPE `cos`/`sin` | f32 if `A` = bf16, else `A` ([`stat_dtype`]) |
//! | [`Role::ParamGrad`] | matmul `db`, layernorm/rmsnorm `dweight`/`dbias`, embedding `dtable`, the `acc` of [`ElementwiseOps::accumulate`] | `A`, or f32 if `A` = bf16 |
//!
//! A bf16 call loads bf16, computes in f32 and stores each bf16 result rounded once to nearest
//! even ([`crate::f32_to_bf16_rne`]): its bf16 outputs are the rounded outputs of the f32 call on
//! the same values, and its f32 statistics and f32 parameter gradients equal the f32 call's.
//! Accumulating outputs (`+=`) add in f32 before that one rounding. AdaLN's `dshift`, `dscale`
//! and `dgate` are activation gradients (`A`). Exceptions:
//! - the matmul also takes f16 inputs; 16-bit inputs may write an f32 `out` (then `bias`,
//!   `dout` and `dbias` are f32), and bf16 inputs may write `dbias` in bf16 or f32
//!   ([`MatmulDims`] states it);
//! - [`ElementwiseOps::cast`] converts any float dtype (f16 included) to any other;
//! - the optimizer ([`OptimOps`]) is f32 or f64 only, every argument alike, except that
//!   [`OptimOps::sum_squares`] reads a bf16 `x` into an f32 or f64 `acc`.
//!
//! Integer ids and targets are i32. Scalars in the dims structs ([`NormDims::eps`],
//! [`AttnDims::scale`], [`AdamW`], …) are f64, so an f64 call computes with exactly their value;
//! an f32 or bf16 call converts each once. Calls that break a rule return [`crate::Error`]
//! naming the op and the argument; nothing is broadcast implicitly.

pub(crate) mod check;
mod contract;
mod dims;

pub use contract::*;
pub use dims::*;

use crate::{Backend, Result};

/// `out = op(a)·op(b) (+ bias)`, batched, with optional transposes.
pub trait MatmulOps: Backend {
    /// `out[b] = op(a[b])·op(b[b]) + bias` with `op(a): (M, K)`, `op(b): (K, N)`, `bias: (N)`.
    /// `a` is stored `(batch, M, K)`, or `(batch, K, M)` when `trans_a`; `b` is stored
    /// `(batch, K, N)`, or `(batch, N, K)` when `trans_b` (a PyTorch `Linear` weight).
    fn matmul_forward(
        &self,
        out: Self::Mut<'_>,
        a: Self::Ref<'_>,
        b: Self::Ref<'_>,
        bias: Option<Self::Ref<'_>>,
        d: MatmulDims,
    ) -> Result<()>;
    /// `da = dout·op(b)ᵀ` (overwrite, laid out like `a`); `db += op(a)ᵀ·dout` (laid out like
    /// `b`); `dbias += Σ_rows dout`.
    #[allow(clippy::too_many_arguments)]
    fn matmul_backward(
        &self,
        da: Option<Self::Mut<'_>>,
        db: Option<Self::Mut<'_>>,
        dbias: Option<Self::Mut<'_>>,
        dout: Self::Ref<'_>,
        a: Self::Ref<'_>,
        b: Self::Ref<'_>,
        d: MatmulDims,
    ) -> Result<()>;
}

/// LayerNorm and RMSNorm over the last dimension `C` of `N` rows (QK-norm is RMSNorm with
/// `N = B·T·NH`, `C = HD`).
#[allow(clippy::too_many_arguments)]
pub trait NormOps: Backend {
    /// `out = (x − mean)·rstd·w + b`, saving `mean (N)` and `rstd (N)` for backward.
    fn layernorm_forward(
        &self,
        out: Self::Mut<'_>,
        mean: Self::Mut<'_>,
        rstd: Self::Mut<'_>,
        inp: Self::Ref<'_>,
        weight: Option<Self::Ref<'_>>,
        bias: Option<Self::Ref<'_>>,
        d: NormDims,
    ) -> Result<()>;
    fn layernorm_backward(
        &self,
        dinp: Self::Mut<'_>,
        dweight: Option<Self::Mut<'_>>,
        dbias: Option<Self::Mut<'_>>,
        dout: Self::Ref<'_>,
        inp: Self::Ref<'_>,
        weight: Option<Self::Ref<'_>>,
        mean: Self::Ref<'_>,
        rstd: Self::Ref<'_>,
        d: NormDims,
    ) -> Result<()>;
    /// `out = x·rstd·w` with `rstd = 1/√(mean(x²) + eps)`, saving `rstd (N)`.
    fn rmsnorm_forward(
        &self,
        out: Self::Mut<'_>,
        rstd: Self::Mut<'_>,
        inp: Self::Ref<'_>,
        weight: Option<Self::Ref<'_>>,
        d: NormDims,
    ) -> Result<()>;
    fn rmsnorm_backward(
        &self,
        dinp: Self::Mut<'_>,
        dweight: Option<Self::Mut<'_>>,
        dout: Self::Ref<'_>,
        inp: Self::Ref<'_>,
        weight: Option<Self::Ref<'_>>,
        rstd: Self::Ref<'_>,
        d: NormDims,
    ) -> Result<()>;
}

/// Pointwise activations. `n` is the element count (for SwiGLU: `N` rows of hidden size `H`).
pub trait ActivationOps: Backend {
    /// GELU, tanh approximation: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    fn gelu_forward(&self, out: Self::Mut<'_>, inp: Self::Ref<'_>, n: usize) -> Result<()>;
    fn gelu_backward(
        &self,
        dinp: Self::Mut<'_>,
        dout: Self::Ref<'_>,
        inp: Self::Ref<'_>,
        n: usize,
    ) -> Result<()>;
    /// SiLU: `x·σ(x)`.
    fn silu_forward(&self, out: Self::Mut<'_>, inp: Self::Ref<'_>, n: usize) -> Result<()>;
    fn silu_backward(
        &self,
        dinp: Self::Mut<'_>,
        dout: Self::Ref<'_>,
        inp: Self::Ref<'_>,
        n: usize,
    ) -> Result<()>;
    /// SwiGLU over a fused projection: `inp (N, 2H)` holds `[gate | up]` per row,
    /// `out (N, H) = silu(gate)·up`.
    fn swiglu_forward(&self, out: Self::Mut<'_>, inp: Self::Ref<'_>, d: SwigluDims) -> Result<()>;
    fn swiglu_backward(
        &self,
        dinp: Self::Mut<'_>,
        dout: Self::Ref<'_>,
        inp: Self::Ref<'_>,
        d: SwigluDims,
    ) -> Result<()>;
}

/// AdaLN conditioning of a `(B, T, C)` stream by per-sample vectors. `shift`, `scale`, `gate`
/// are `(B, C)` rows read with stride `cond_stride`, so they can be chunks of one fused
/// `(B, 6C)` AdaLN projection without a copy.
#[allow(clippy::too_many_arguments)]
pub trait ModulationOps: Backend {
    /// `out = x·(1 + scale) + shift`, broadcast over `T`.
    fn modulate_forward(
        &self,
        out: Self::Mut<'_>,
        x: Self::Ref<'_>,
        shift: Self::Ref<'_>,
        scale: Self::Ref<'_>,
        d: ModDims,
    ) -> Result<()>;
    /// `dx = dout·(1 + scale)`, `dshift = Σ_T dout`, `dscale = Σ_T dout·x` (all overwrite).
    fn modulate_backward(
        &self,
        dx: Self::Mut<'_>,
        dshift: Self::Mut<'_>,
        dscale: Self::Mut<'_>,
        dout: Self::Ref<'_>,
        x: Self::Ref<'_>,
        scale: Self::Ref<'_>,
        d: ModDims,
    ) -> Result<()>;
    /// Gated residual, in place: `residual += gate·y`, broadcast over `T`.
    fn gate_forward(
        &self,
        residual: Self::Mut<'_>,
        gate: Self::Ref<'_>,
        y: Self::Ref<'_>,
        d: ModDims,
    ) -> Result<()>;
    /// `dy = dout·gate`, `dgate = Σ_T dout·y` (overwrite). The residual's gradient is `dout`
    /// itself: the caller keeps using the residual-stream gradient buffer.
    fn gate_backward(
        &self,
        dy: Self::Mut<'_>,
        dgate: Self::Mut<'_>,
        dout: Self::Ref<'_>,
        gate: Self::Ref<'_>,
        y: Self::Ref<'_>,
        d: ModDims,
    ) -> Result<()>;
}

/// Rotary position embedding on `(B, T, H, HD)` with a `(T, HD/2)` table of angles given as
/// `cos` and `sin` (see [`RopeTable`]: 1-D for text, 3-D bands for video). Pairs are
/// `(x[i], x[i + HD/2])` (the "rotate half" layout).
pub trait RopeOps: Backend {
    fn rope_forward(
        &self,
        out: Self::Mut<'_>,
        inp: Self::Ref<'_>,
        cos: Self::Ref<'_>,
        sin: Self::Ref<'_>,
        d: RopeDims,
    ) -> Result<()>;
    /// The inverse rotation of `dout`.
    fn rope_backward(
        &self,
        dinp: Self::Mut<'_>,
        dout: Self::Ref<'_>,
        cos: Self::Ref<'_>,
        sin: Self::Ref<'_>,
        d: RopeDims,
    ) -> Result<()>;
}

/// Scaled dot-product attention with grouped-query heads, causal or full.
///
/// `q (B, TQ, NH, HD)`, `k`, `v (B, TK, NKV, HD)`, `out (B, TQ, NH, HD)`, and
/// `lse (B, NH, TQ)`: the log-sum-exp of each query row's scaled scores, which lets ring
/// attention merge partial results and lets backward recompute the probabilities.
/// A row whose keys are all masked gets `out = 0`, `lse = −∞`.
#[allow(clippy::too_many_arguments)]
pub trait AttentionOps: Backend {
    fn attention_forward(
        &self,
        out: Self::Mut<'_>,
        lse: Self::Mut<'_>,
        q: Self::Ref<'_>,
        k: Self::Ref<'_>,
        v: Self::Ref<'_>,
        d: AttnDims,
    ) -> Result<()>;
    /// Merge the partial result of the same queries over another set of keys into a running
    /// one (ring attention): `lse ← log(e^lse + e^part_lse)`,
    /// `out ← out·e^(lse_old − lse) + part·e^(part_lse − lse)`. Reads `b, tq, nh, hd` of `d`.
    /// Rows with both log-sum-exps at `−∞` stay `out = 0`, `lse = −∞`.
    fn attention_merge(
        &self,
        out: Self::Mut<'_>,
        lse: Self::Mut<'_>,
        part: Self::Ref<'_>,
        part_lse: Self::Ref<'_>,
        d: AttnDims,
    ) -> Result<()>;
    /// `dq`, `dk`, `dv` overwrite.
    fn attention_backward(
        &self,
        dq: Self::Mut<'_>,
        dk: Self::Mut<'_>,
        dv: Self::Mut<'_>,
        dout: Self::Ref<'_>,
        q: Self::Ref<'_>,
        k: Self::Ref<'_>,
        v: Self::Ref<'_>,
        out: Self::Ref<'_>,
        lse: Self::Ref<'_>,
        d: AttnDims,
    ) -> Result<()>;
}

/// Losses.
#[allow(clippy::too_many_arguments)]
pub trait LossOps: Backend {
    /// Fused softmax cross-entropy with z-loss over `logits (N, V)` and `targets (N)` (i32;
    /// negative = ignored row, loss 0): `loss_i = lse_i − logit_i[y_i] + z·lse_i²`.
    /// Writes per-row `losses (N)` and `lse (N)`.
    fn cross_entropy_forward(
        &self,
        losses: Self::Mut<'_>,
        lse: Self::Mut<'_>,
        logits: Self::Ref<'_>,
        targets: Self::Ref<'_>,
        d: CrossEntropyDims,
    ) -> Result<()>;
    /// `dlogits = dloss_i·(softmax·(1 + 2z·lse_i) − onehot(y_i))` (overwrite).
    fn cross_entropy_backward(
        &self,
        dlogits: Self::Mut<'_>,
        dlosses: Self::Ref<'_>,
        logits: Self::Ref<'_>,
        targets: Self::Ref<'_>,
        lse: Self::Ref<'_>,
        d: CrossEntropyDims,
    ) -> Result<()>;
    /// Mean squared error `loss[0] = Σ (pred − target)² / n` (the flow-matching loss; summed in
    /// f64 on the CPU).
    fn mse_forward(
        &self,
        loss: Self::Mut<'_>,
        pred: Self::Ref<'_>,
        target: Self::Ref<'_>,
        n: usize,
    ) -> Result<()>;
    /// `dpred = dloss[0]·2·(pred − target)/n` (overwrite).
    fn mse_backward(
        &self,
        dpred: Self::Mut<'_>,
        dloss: Self::Ref<'_>,
        pred: Self::Ref<'_>,
        target: Self::Ref<'_>,
        n: usize,
    ) -> Result<()>;
}

/// Getting data into the model: token embeddings, video patches, timestep features.
pub trait EmbedOps: Backend {
    /// `out (N, C) = table (V, C)[ids (N)]`; an id outside `0..V` is an error.
    fn embedding_forward(
        &self,
        out: Self::Mut<'_>,
        ids: Self::Ref<'_>,
        table: Self::Ref<'_>,
        d: EmbeddingDims,
    ) -> Result<()>;
    /// `dtable[ids[i]] += dout[i]` (scatter-add, deterministic order).
    fn embedding_backward(
        &self,
        dtable: Self::Mut<'_>,
        dout: Self::Ref<'_>,
        ids: Self::Ref<'_>,
        d: EmbeddingDims,
    ) -> Result<()>;
    /// 3-D patchify: video `(B, T, H, W, C)` → tokens `(B, T/pt·H/ph·W/pw, pt·ph·pw·C)`.
    /// Tokens are ordered `(t, h, w)`; inside a token, values are ordered `(dt, dh, dw, c)`.
    fn patchify_forward(&self, out: Self::Mut<'_>, x: Self::Ref<'_>, d: PatchDims) -> Result<()>;
    fn patchify_backward(&self, dx: Self::Mut<'_>, dout: Self::Ref<'_>, d: PatchDims) -> Result<()>;
    /// The inverse of patchify: tokens → video.
    fn unpatchify_forward(&self, out: Self::Mut<'_>, tokens: Self::Ref<'_>, d: PatchDims) -> Result<()>;
    fn unpatchify_backward(&self, dtokens: Self::Mut<'_>, dout: Self::Ref<'_>, d: PatchDims) -> Result<()>;
    /// Sinusoidal timestep features `out (N, DIM) = [cos(t·f_j) | sin(t·f_j)]`,
    /// `f_j = max_period^(−j/(DIM/2))`, as in DiT; an odd `DIM` gets a zero last column.
    fn timestep_embedding_forward(&self, out: Self::Mut<'_>, t: Self::Ref<'_>, d: TimestepDims)
        -> Result<()>;
    /// Gradient with respect to the timesteps `dt (N)` (overwrite).
    fn timestep_embedding_backward(
        &self,
        dt: Self::Mut<'_>,
        dout: Self::Ref<'_>,
        t: Self::Ref<'_>,
        d: TimestepDims,
    ) -> Result<()>;
}

/// Pointwise arithmetic and dtype conversion over `n` elements.
pub trait ElementwiseOps: Backend {
    /// `out = a + b` (the residual add).
    fn add_forward(&self, out: Self::Mut<'_>, a: Self::Ref<'_>, b: Self::Ref<'_>, n: usize) -> Result<()>;
    /// `da += dout`, `db += dout` (residual-stream convention).
    fn add_backward(&self, da: Self::Mut<'_>, db: Self::Mut<'_>, dout: Self::Ref<'_>, n: usize)
        -> Result<()>;
    /// `out = alpha·x`.
    fn scale_forward(&self, out: Self::Mut<'_>, x: Self::Ref<'_>, alpha: f64, n: usize) -> Result<()>;
    /// `dx = alpha·dout` (overwrite).
    fn scale_backward(&self, dx: Self::Mut<'_>, dout: Self::Ref<'_>, alpha: f64, n: usize) -> Result<()>;
    /// `acc += x`: sums gradients that reach one activation from several consumers.
    fn accumulate(&self, acc: Self::Mut<'_>, x: Self::Ref<'_>, n: usize) -> Result<()>;
    /// `out = value` for every element (zeroing gradient buffers between steps).
    fn fill(&self, out: Self::Mut<'_>, value: f64, n: usize) -> Result<()>;
    /// Convert between float dtypes, rounding to nearest even (f32 → bf16 as in
    /// [`crate::f32_to_bf16_rne`]). Same-dtype casts copy.
    fn cast(&self, out: Self::Mut<'_>, x: Self::Ref<'_>, n: usize) -> Result<()>;
}

/// Moving blocks of a tensor between layouts: what sequence and context parallelism do
/// around their collectives.
pub trait ShapeOps: Backend {
    /// `out (B, A, inner)[j][i] = x (A, B, inner)[i][j]`: swaps the two outer axes, e.g.
    /// rank-major gathered rows `(ranks, B, T·C)` into `(B, ranks, T·C)`. Its own adjoint
    /// is the swap with `a` and `b` exchanged.
    fn swap_axes(&self, out: Self::Mut<'_>, x: Self::Ref<'_>, d: SwapDims) -> Result<()>;
}

/// Reductions and the optimizer step over flat buffers.
pub trait OptimOps: Backend {
    /// `acc[0] += Σ x²` — the building block of a global gradient norm over many ranges
    /// (and, later, ranks). Accumulates in f64 on CPU.
    fn sum_squares(&self, acc: Self::Mut<'_>, x: Self::Ref<'_>, n: usize) -> Result<()>;
    /// `acc[0] += alpha·Σ x`, summed in f64 and rounded to `acc`'s dtype once: a loss left on
    /// the device (the mean of per-token losses, a share of a micro-batch's) until one
    /// download at the end of the step. Same dtypes as [`OptimOps::sum_squares`].
    fn sum(&self, acc: Self::Mut<'_>, x: Self::Ref<'_>, alpha: f64, n: usize) -> Result<()>;
    /// `out[0] = ‖x‖₂`.
    fn l2norm_forward(&self, out: Self::Mut<'_>, x: Self::Ref<'_>, n: usize) -> Result<()>;
    /// `dx = dout[0]·x/‖x‖` (overwrite; 0 where `‖x‖ = 0`).
    fn l2norm_backward(
        &self,
        dx: Self::Mut<'_>,
        dout: Self::Ref<'_>,
        x: Self::Ref<'_>,
        norm: Self::Ref<'_>,
        n: usize,
    ) -> Result<()>;
    /// One AdamW step over a flat range, PyTorch semantics (decoupled weight decay,
    /// bias-corrected moments): `g = grad·grad_scale`, `m = β1·m + (1−β1)·g`,
    /// `v = β2·v + (1−β2)·g²`, `p = p·(1 − lr·wd) − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + eps)`.
    fn adamw_update(
        &self,
        params: Self::Mut<'_>,
        m: Self::Mut<'_>,
        v: Self::Mut<'_>,
        grads: Self::Ref<'_>,
        h: AdamW,
        n: usize,
    ) -> Result<()>;
    /// One AdEMAMix step (Pagliardini et al., 2024): AdamW with a second, slow EMA of the
    /// gradients `m2 = β3·m2 + (1−β3)·g` mixed into the numerator:
    /// `p = p·(1 − lr·wd) − lr · (m/(1−β1ᵗ) + α·m2) / (√v/√(1−β2ᵗ) + eps)`. `β3` and `α` are
    /// this step's values (the caller applies their warm-up schedules).
    #[allow(clippy::too_many_arguments)]
    fn ademamix_update(
        &self,
        params: Self::Mut<'_>,
        m: Self::Mut<'_>,
        m2: Self::Mut<'_>,
        v: Self::Mut<'_>,
        grads: Self::Ref<'_>,
        h: AdamW,
        mix: Mix,
        n: usize,
    ) -> Result<()>;
    /// Muon's and Scion's momentum over a flat range: `m` and the direction `u` (overwritten),
    /// as [`Momentum`] defines them.
    fn momentum_update(
        &self,
        m: Self::Mut<'_>,
        u: Self::Mut<'_>,
        grads: Self::Ref<'_>,
        h: Momentum,
        n: usize,
    ) -> Result<()>;
    /// Orthogonalize `x (rows, cols)` in place by Newton–Schulz ([`NewtonSchulz`]), with
    /// `work` ([`NewtonSchulz::work_len`] elements of `x`'s dtype) as temporary space.
    fn newton_schulz(&self, x: Self::Mut<'_>, work: Self::Mut<'_>, d: NewtonSchulz) -> Result<()>;
    /// Scale `x (rows, cols)` in place by its norms ([`NormalizeDims`]).
    fn matrix_normalize(&self, x: Self::Mut<'_>, d: NormalizeDims) -> Result<()>;
    /// `params = keep·params − lr·dir`: a matrix optimizer's step along its direction, with
    /// decoupled weight decay (`keep = 1 − lr·wd`) or Scion's constraint (`keep = 1 − lr`).
    fn apply_direction(
        &self,
        params: Self::Mut<'_>,
        dir: Self::Ref<'_>,
        lr: f64,
        keep: f64,
        n: usize,
    ) -> Result<()>;
}

/// Every op family: what a model needs of its backend.
pub trait Ops:
    MatmulOps
    + NormOps
    + ActivationOps
    + ModulationOps
    + RopeOps
    + AttentionOps
    + LossOps
    + EmbedOps
    + ElementwiseOps
    + ShapeOps
    + OptimOps
{
}

impl<B> Ops for B where
    B: MatmulOps
        + NormOps
        + ActivationOps
        + ModulationOps
        + RopeOps
        + AttentionOps
        + LossOps
        + EmbedOps
        + ElementwiseOps
        + ShapeOps
        + OptimOps
{
}
