//! The GPT / Llama-style language model.
//!
//! ```text
//! ids (B, T) ─table─▶ (B, T, C) ─blocks (RMSNorm, causal GQA + RoPE, SwiGLU)─▶ RMSNorm
//!   ─head─▶ logits (B, T, V) ─▶ cross-entropy + z·lse²  (mean over non-ignored targets)
//! ```
//! With `tie_embeddings` the head is the token table itself (its gradient receives both the
//! embedding scatter and the head matmul).
//!
//! Under sequence or context parallelism ([`Par`]) a rank embeds, normalizes, projects and
//! scores only its own tokens; its loss is its share of the micro-batch mean (summed over
//! tokens, divided by the micro-batch's count of scored targets), so the shares add up.

use super::block::{Block, BlockParams, BlockSpec, Mlp};
use super::trunk::Trunk;
use super::{at, download_f64, r, rebase, w, Alloc, Flat, Model, Par, Weights};
use crate::config::GptConfig;
use crate::layout::{Init, Layout, Role};
use crate::Result;
use std::ops::Range;
use weft_kernels::{Backend, CrossEntropyDims, DType, EmbeddingDims, MatmulDims, NormDims, Ops, RopeTable};
use weft_parallel::SeqSplit;

/// One micro-batch of token sequences: `ids (B, T)` and next-token `targets (B, T)`
/// (negative = ignored).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenBatch {
    pub ids: Vec<i32>,
    pub targets: Vec<i32>,
}

/// SwiGLU hidden size: configured, or `8/3·C` rounded up to a multiple of 64.
pub fn mlp_hidden(cfg: &GptConfig) -> usize {
    cfg.mlp_hidden
        .unwrap_or_else(|| (8 * cfg.width / 3).div_ceil(64) * 64)
}

/// Offsets within their units: the table in unit 0, `norm_f` in the last unit, the head in
/// `head_unit` (0 when tied to the table).
struct GptParams {
    table: Range<usize>,
    norm_f: Range<usize>,
    head: Range<usize>,
    head_unit: usize,
}

pub struct Gpt<B: Backend> {
    pub cfg: GptConfig,
    layout: Layout,
    p: GptParams,
    b: usize,
    trunk: Trunk<B>,
    ids: B::Buffer,     // (B, T) i32
    targets: B::Buffer, // (B, T) i32
    hf: B::Buffer,      // (B, T, C)
    rstdf: B::Buffer,   // (B·T)
    logits: B::Buffer,  // (B, T, V)
    losses: B::Buffer,  // (B·T)
    lse: B::Buffer,     // (B·T)
    dlosses: B::Buffer, // (B·T)
    dlogits: B::Buffer, // (B, T, V)
    dhf: B::Buffer,     // (B, T, C)
    dres: B::Buffer,    // (B, T, C)
    valid: usize,
    /// Global positions of this rank's tokens (all of them without SP/CP).
    positions: Vec<usize>,
    act_bytes: usize,
}

impl<B: Ops> Gpt<B> {
    pub fn layout_of(cfg: &GptConfig) -> Layout {
        Self::plan(cfg, 1, 1, cfg.seq_len).0
    }

    /// This tp rank's parameter layout under tensor parallelism of `tp` (no allocation).
    pub fn layout_tp(cfg: &GptConfig, tp: usize) -> Layout {
        Self::plan(cfg, 1, tp, cfg.seq_len).0
    }

    /// The bytes of activations [`Gpt::new_par`] allocates (what [`Model::activation_bytes`]
    /// then reports) for micro-batches of `b` in a dtype of `dtype_size` bytes under `split`,
    /// computed from the config alone.
    pub fn activation_bytes_of(
        cfg: &GptConfig,
        b: usize,
        dtype: DType,
        recompute: bool,
        split: SeqSplit,
    ) -> f64 {
        let spec = Self::spec(cfg, b, split.tp, split.cp_len());
        let (n, c, v) = (
            b as f64 * split.local_len() as f64,
            cfg.width as f64,
            cfg.vocab_size as f64,
        );
        // hf, dhf, dres; logits, dlogits; statistics: rstdf, losses, lse, dlosses.
        let (values, stats) = Trunk::<B>::elems(&spec, cfg.depth, recompute);
        let values = values + 3.0 * n * c + 2.0 * n * v;
        values * dtype.size() as f64 + (stats + 4.0 * n) * weft_kernels::stat_dtype(dtype).size() as f64
    }

    /// Model FLOPs of one forward+backward over `b` sequences of the whole model (what
    /// [`Model::flops_per_micro_batch`] reports in one process), from the config alone.
    pub fn flops_of(cfg: &GptConfig, b: usize) -> f64 {
        let spec = Self::spec(cfg, b, 1, cfg.seq_len);
        cfg.depth as f64 * spec.flops() + Self::head_flops(b * cfg.seq_len, cfg)
    }

    fn head_flops(rows: usize, cfg: &GptConfig) -> f64 {
        super::linear_flops(rows, cfg.width, cfg.vocab_size)
    }

    fn spec(cfg: &GptConfig, b: usize, tp: usize, t: usize) -> BlockSpec {
        let c = cfg.width;
        BlockSpec {
            b,
            t,
            c,
            nh: cfg.heads / tp,
            nkv: cfg.kv_heads.unwrap_or(cfg.heads) / tp,
            hd: c / cfg.heads,
            hidden: mlp_hidden(cfg) / tp,
            tp,
            mlp: Mlp::Swiglu,
            adaln: false,
            qk_norm: false,
            causal: true,
            bias: false,
            eps: 1e-5,
            attn_scale: crate::config::attn_scale(cfg.attn_base_hd, c / cfg.heads),
        }
    }

    /// `tp`: tensor-parallel size; `t`: tokens per sample in the parallel regions.
    fn plan(cfg: &GptConfig, b: usize, tp: usize, t: usize) -> (Layout, GptParams, Vec<Block>) {
        let c = cfg.width;
        let spec = Self::spec(cfg, b, tp, t);
        let mut l = Layout::default();
        let table = l.add(
            "tok_embed.table",
            &[cfg.vocab_size, c],
            Role::Embedding,
            Init::Normal(0.02),
        );
        let blocks = (0..cfg.depth)
            .map(|i| Block {
                spec,
                params: BlockParams::register(&mut l, i, &spec, cfg.depth),
            })
            .collect();
        let s0 = l.len();
        let norm_f = rebase(&l.add("norm_f.weight", &[c], Role::Vector, Init::Ones), s0);
        let (head, head_unit) = if cfg.tie_embeddings {
            (table.clone(), 0)
        } else {
            let h = l.add(
                "head.weight",
                &[cfg.vocab_size, c],
                Role::Output,
                Init::Normal(1.0 / (c as f64).sqrt()),
            );
            (rebase(&h, s0), cfg.depth + 1)
        };
        let p = GptParams {
            table,
            norm_f,
            head,
            head_unit,
        };
        (l, p, blocks)
    }

    pub fn new(be: &B, cfg: &GptConfig, b: usize, dtype: DType, recompute: bool) -> Result<Self> {
        Self::new_par(be, cfg, b, dtype, recompute, Par::single(cfg.seq_len, true))
    }

    /// This rank's part of the model under the tensor/sequence/context split `par`.
    pub fn new_par(
        be: &B,
        cfg: &GptConfig,
        b: usize,
        dtype: DType,
        recompute: bool,
        par: Par<B>,
    ) -> Result<Self> {
        let (layout, p, blocks) = Self::plan(cfg, b, par.tp_size(), par.split.cp_len());
        let al = Alloc::new(be, dtype);
        let rope = RopeTable::one_d(&par.cp_positions(), cfg.width / cfg.heads, cfg.rope_theta);
        let positions = par.local_positions();
        let trunk = Trunk::new(&al, blocks, recompute, (&rope.cos, &rope.sin), par)?;
        let (n, c, v) = (b * positions.len(), cfg.width, cfg.vocab_size);
        Ok(Gpt {
            cfg: cfg.clone(),
            layout,
            p,
            b,
            trunk,
            ids: be.alloc(DType::I32, n)?,
            targets: be.alloc(DType::I32, n)?,
            hf: al.buf(n * c)?,
            rstdf: al.stat(n)?,
            logits: al.buf(n * v)?,
            losses: al.stat(n)?,
            lse: al.stat(n)?,
            dlosses: al.stat(n)?,
            dlogits: al.buf(n * v)?,
            dhf: al.buf(n * c)?,
            dres: al.buf(n * c)?,
            valid: 0,
            positions,
            act_bytes: al.bytes.get(),
        })
    }

    fn rows(&self) -> usize {
        self.b * self.positions.len()
    }

    /// This rank's tokens of `(B, T)` values.
    fn local(&self, x: &[i32]) -> Vec<i32> {
        let t = self.cfg.seq_len;
        (0..self.b)
            .flat_map(|s| self.positions.iter().map(move |&p| x[s * t + p]))
            .collect()
    }

    /// Forward without a loss; returns the logits `(B, T, V)`.
    pub fn logits(&mut self, be: &B, params: B::Ref<'_>, ids: &[i32]) -> Result<Vec<f64>> {
        self.run(be, &mut Flat::new(&self.layout, params, None), ids)?;
        download_f64(be, r::<B>(&self.logits))
    }

    fn run(&mut self, be: &B, wt: &mut dyn Weights<B>, ids: &[i32]) -> Result<()> {
        let last = self.cfg.depth + 1;
        let (n, c, v) = (self.rows(), self.cfg.width, self.cfg.vocab_size);
        let want = self.b * self.cfg.seq_len;
        if ids.len() != want {
            return Err(crate::Error::Other(format!(
                "GPT batch: {} ids, expected B·T = {want}",
                ids.len()
            )));
        }
        be.upload((&self.local(ids)).into(), w::<B>(&mut self.ids))?;
        let ed = EmbeddingDims { n, v, c };
        let p = wt.get(be, 0)?;
        be.embedding_forward(
            self.trunk.input_mut(),
            r::<B>(&self.ids),
            at(p, &self.p.table),
            ed,
        )?;
        super::note(be, "embed", self.trunk.input())?;
        self.trunk.forward(be, wt, None)?;
        super::note(be, "residual", self.trunk.output())?;
        let nd = NormDims { n, c, eps: 1e-5 };
        let p = wt.get(be, last)?;
        let x_l = self.trunk.output();
        be.rmsnorm_forward(
            w::<B>(&mut self.hf),
            w::<B>(&mut self.rstdf),
            x_l,
            Some(at(p, &self.p.norm_f)),
            nd,
        )?;
        let d = MatmulDims::linear(n, c, v);
        let p = wt.get(be, self.p.head_unit)?;
        be.matmul_forward(
            w::<B>(&mut self.logits),
            r::<B>(&self.hf),
            at(p, &self.p.head),
            None,
            d,
        )?;
        super::note(be, "readout", r::<B>(&self.logits))
    }
}

impl<B: Ops> Model<B> for Gpt<B> {
    type Batch = TokenBatch;

    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn forward_into(
        &mut self,
        be: &B,
        wt: &mut dyn Weights<B>,
        batch: &TokenBatch,
        acc: B::Mut<'_>,
    ) -> Result<()> {
        self.run(be, wt, &batch.ids)?;
        let (n, v) = (self.rows(), self.cfg.vocab_size);
        if batch.targets.len() != batch.ids.len() {
            return Err(crate::Error::Other(format!(
                "GPT batch: {} targets, expected {}",
                batch.targets.len(),
                batch.ids.len()
            )));
        }
        be.upload((&self.local(&batch.targets)).into(), w::<B>(&mut self.targets))?;
        let d = CrossEntropyDims {
            n,
            v,
            z_loss: self.cfg.z_loss,
        };
        be.cross_entropy_forward(
            w::<B>(&mut self.losses),
            w::<B>(&mut self.lse),
            r::<B>(&self.logits),
            r::<B>(&self.targets),
            d,
        )?;
        self.valid = batch.targets.iter().filter(|&&t| t >= 0).count();
        be.sum(acc, r::<B>(&self.losses), 1.0 / self.valid.max(1) as f64, n)?;
        Ok(())
    }

    fn backward_with(&mut self, be: &B, wt: &mut dyn Weights<B>, dloss: f64) -> Result<()> {
        let (n, c, v) = (self.rows(), self.cfg.width, self.cfg.vocab_size);
        let last = self.cfg.depth + 1;
        // Mean over valid rows; ignored rows get zero gradient from the kernel.
        be.fill(w::<B>(&mut self.dlosses), dloss / self.valid.max(1) as f64, n)?;
        let d = CrossEntropyDims {
            n,
            v,
            z_loss: self.cfg.z_loss,
        };
        be.cross_entropy_backward(
            w::<B>(&mut self.dlogits),
            r::<B>(&self.dlosses),
            r::<B>(&self.logits),
            r::<B>(&self.targets),
            r::<B>(&self.lse),
            d,
        )?;
        let dm = MatmulDims::linear(n, c, v);
        let (p, mut dp) = wt.get_mut(be, self.p.head_unit)?;
        let dhead = at(B::rb(&mut dp), &self.p.head);
        be.matmul_backward(
            Some(w::<B>(&mut self.dhf)),
            Some(dhead),
            None,
            r::<B>(&self.dlogits),
            r::<B>(&self.hf),
            at(p, &self.p.head),
            dm,
        )?;
        let nd = NormDims { n, c, eps: 1e-5 };
        drop(dp);
        let (p, mut dp) = wt.get_mut(be, last)?;
        let dg = at(B::rb(&mut dp), &self.p.norm_f);
        let x_l = self.trunk.output();
        be.rmsnorm_backward(
            w::<B>(&mut self.dres),
            Some(dg),
            r::<B>(&self.dhf),
            x_l,
            Some(at(p, &self.p.norm_f)),
            r::<B>(&self.rstdf),
            nd,
        )?;
        drop(dp);
        wt.grads_done(be, last)?;
        self.trunk.backward(be, wt, &mut self.dres, None, None)?;
        let ed = EmbeddingDims { n, v, c };
        let (_, mut dp) = wt.get_mut(be, 0)?;
        be.embedding_backward(
            at(B::rb(&mut dp), &self.p.table),
            r::<B>(&self.dres),
            r::<B>(&self.ids),
            ed,
        )?;
        drop(dp);
        wt.grads_done(be, 0)
    }

    fn flops_per_micro_batch(&self) -> f64 {
        self.trunk.flops() + Self::head_flops(self.rows(), &self.cfg)
    }

    fn activation_bytes(&self) -> usize {
        self.act_bytes
    }

    fn non_finite_samples(&self, _: &TokenBatch) -> Vec<usize> {
        // Token ids are integers, checked against the vocabulary when read.
        Vec::new()
    }

    fn batch_shape(&self) -> (usize, usize) {
        (self.b, self.cfg.seq_len)
    }
}
