//! What a DiT costs, from its config alone (no model is built): the bytes of activations it
//! allocates and the FLOPs of a micro-batch. `weft config`, the memory check and the sweep's
//! compute budgets use these; tests hold them equal to the built model's own accounting.

use super::{Dit, FREQ_DIM};
use crate::config::DitConfig;
use crate::model::trunk::Trunk;
use weft_kernels::{DType, Ops};
use weft_parallel::SeqSplit;

impl<B: Ops> Dit<B> {
    /// The bytes of activations [`Dit::new_par`] allocates (what [`Model::activation_bytes`](crate::model::Model::activation_bytes)
    /// then reports) for micro-batches of `b` clips in a dtype of `dtype_size` bytes under
    /// `split`, computed from the config alone.
    pub fn activation_bytes_of(
        cfg: &DitConfig,
        b: usize,
        dtype: DType,
        recompute: bool,
        split: SeqSplit,
    ) -> f64 {
        let cp = split.ring * split.ulysses;
        let (spec, pd) = Self::spec(cfg, b, split.tp, cp);
        let f = |x: usize| x as f64;
        let (b, c, n, pdim) = (f(b), f(cfg.width), f(split.local_len()), f(pd.token_dim()));
        let clip: f64 = f(pd.b) * [pd.t, pd.h, pd.w, pd.c].iter().map(|&x| f(x)).product::<f64>();
        let sharded = if split.local_len() != split.t { 1.0 } else { 0.0 };
        let text = if cfg.text_dim > 0 {
            b * f(cfg.text_dim) + b * c
        } else {
            0.0
        };
        // x, tokens, pred, target, dpred; local, target_tokens (sharded); tf; the (B, C)
        // conditioning buffers (t1, t2, temb, yemb, c, silu_c, fmod ×2; dfmod ×2, dsilu_c,
        // dc, dtmp, dt2, dt1); lnf, hf, dhf, dlnf, dres; out, dout. Statistics: t; meanf,
        // rstdf; loss, dloss.
        let own = 5.0 * clip
            + sharded * (b * n * pdim + clip)
            + b * f(FREQ_DIM)
            + 15.0 * b * c
            + text
            + 5.0 * b * n * c
            + 2.0 * b * n * pdim;
        let own_stats = b + 2.0 * b * n + 2.0;
        let (values, stats) = Trunk::<B>::elems(&spec, cfg.depth, recompute);
        (values + own) * dtype.size() as f64
            + (stats + own_stats) * weft_kernels::stat_dtype(dtype).size() as f64
    }

    /// Model FLOPs of one forward+backward over `b` clips of the whole model (what
    /// [`Model::flops_per_micro_batch`](crate::model::Model::flops_per_micro_batch) reports in one process), from the config alone.
    pub fn flops_of(cfg: &DitConfig, b: usize) -> f64 {
        let (spec, pd) = Self::spec(cfg, b, 1, 1);
        cfg.depth as f64 * spec.flops() + Self::io_flops(cfg, b, pd.tokens(), pd.token_dim())
    }

    /// FLOPs outside the blocks: patch embedding and read-out of `n` tokens per clip, and the
    /// conditioning MLPs.
    pub(super) fn io_flops(cfg: &DitConfig, b: usize, n: usize, pdim: usize) -> f64 {
        use crate::model::linear_flops as lf;
        let c = cfg.width;
        lf(b * n, pdim, c)
            + lf(b * n, c, pdim)
            + lf(b, FREQ_DIM, c)
            + lf(b, c, c) * 3.0
            + lf(b, cfg.text_dim, c)
    }
}
