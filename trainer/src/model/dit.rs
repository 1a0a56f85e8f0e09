//! The video diffusion transformer.
//!
//! ```text
//! x (B, T, H, W, C) ─patchify─▶ (B, N, P) ─linear─▶ (B, N, C) ─blocks─▶ LN ─modulate─▶ linear
//!   ─▶ (B, N, P) ─unpatchify─▶ prediction (B, T, H, W, C)
//! c = MLP(timestep_features(1000·t)) + class_table[y] (+ text_proj(e));  blocks read silu(c)
//! ```
//! `N = T/pt·H/ph·W/pw` tokens of `P = pt·ph·pw·C` values; 3-D RoPE over the token grid.
//!
//! Training objective (rectified flow): `x_t = (1−t)·x0 + t·ε`, the network predicts the
//! velocity `v = ε − x0` under a mean-squared error, with `t = σ(m + s·z)`, `z ~ N(0, 1)`
//! (logit-normal). With `precondition = true` the EDM-style scalings of the velocity
//! parametrization apply (σ = `sigma_data`, `var = (1−t)²σ² + t²`):
//! input `c_in = 1/√var`, skip `c_skip = (t − (1−t)σ²)/var`, output `c_out = σ/√var`, and the
//! network is trained on `F* = (v − c_skip·x_t)/c_out`, whose variance is 1 for every `t`.

use super::block::{Block, BlockParams, BlockSpec, Mlp};
use super::trunk::Trunk;
use super::{at, download_f64, pair, r, rebase, upload_f32, upload_f64, w, Alloc, Flat, Model, Par, Weights};
use crate::config::DitConfig;
use crate::layout::{Init, Layout, Role};
use crate::Result;
use std::ops::Range;
use weft_kernels::{
    Backend, DType, EmbeddingDims, MatmulDims, ModDims, NormDims, Ops, PatchDims, RopeTable, Slice,
    TimestepDims,
};

mod cost;

/// Width of the sinusoidal timestep features.
pub const FREQ_DIM: usize = 256;
/// Timesteps in `[0, 1]` are scaled by this before the sinusoidal features.
pub const T_SCALE: f64 = 1000.0;

/// One micro-batch for the DiT, on the host.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DitBatch {
    /// The network input `(B, T, H, W, C)`: `x_t`, or `c_in·x_t` when preconditioned.
    pub x: Vec<f32>,
    /// Timesteps in `[0, 1]` `(B)`.
    pub t: Vec<f32>,
    /// Class ids `(B)`; `num_classes` is the null (unconditional) class.
    pub class: Vec<i32>,
    /// Pooled text embeddings `(B, E)` when the model has `text_dim > 0`.
    pub text: Option<Vec<f32>>,
    /// Regression target `(B, T, H, W, C)`; empty for prediction only.
    pub target: Vec<f32>,
}

/// EDM-style scalings `(c_in, c_skip, c_out)` of the velocity parametrization at time `t`.
pub fn precondition(t: f64, sigma: f64) -> (f64, f64, f64) {
    let var = (1.0 - t).powi(2) * sigma * sigma + t * t;
    (
        1.0 / var.sqrt(),
        (t - (1.0 - t) * sigma * sigma) / var,
        sigma / var.sqrt(),
    )
}

struct DitParams {
    x_w: Range<usize>,
    x_b: Range<usize>,
    t1_w: Range<usize>,
    t1_b: Range<usize>,
    t2_w: Range<usize>,
    t2_b: Range<usize>,
    y_table: Range<usize>,
    text: Option<(Range<usize>, Range<usize>)>,
    f_ada_w: [Range<usize>; 2],
    f_ada_b: [Range<usize>; 2],
    f_w: Range<usize>,
    f_b: Range<usize>,
}

struct DitActs<B: Backend> {
    x: B::Buffer,                     // (B, T, H, W, C)
    tokens: B::Buffer,                // (B, N, P)
    local: Option<B::Buffer>,         // (B, n, P) this rank's tokens (SP/CP), else `tokens` itself
    target_tokens: Option<B::Buffer>, // (B, N, P) patchified target (SP/CP)
    t: B::Buffer,                     // (B) timesteps × T_SCALE
    tf: B::Buffer,                    // (B, FREQ_DIM)
    t1: B::Buffer,                    // (B, C)
    t2: B::Buffer,                    // (B, C) silu(t1)
    temb: B::Buffer,                  // (B, C)
    ids: B::Buffer,                   // (B) i32
    yemb: B::Buffer,                  // (B, C)
    text: Option<B::Buffer>,          // (B, E)
    temb_txt: Option<B::Buffer>,      // (B, C)
    c: B::Buffer,                     // (B, C)
    silu_c: B::Buffer,                // (B, C)
    fmod: [B::Buffer; 2],             // (B, C) final shift, scale
    lnf: B::Buffer,                   // (B, N, C)
    meanf: B::Buffer,                 // (B·N)
    rstdf: B::Buffer,                 // (B·N)
    hf: B::Buffer,                    // (B, N, C)
    out: B::Buffer,                   // (B, N, P)
    pred: B::Buffer,                  // (B, T, H, W, C)
    target: B::Buffer,                // (B, T, H, W, C)
    loss: B::Buffer,                  // (1)
}

struct DitGrads<B: Backend> {
    dpred: B::Buffer, // (B, T, H, W, C)
    dout: B::Buffer,  // (B, N, P)
    dhf: B::Buffer,   // (B, N, C)
    dlnf: B::Buffer,  // (B, N, C)
    dres: B::Buffer,  // (B, N, C)
    dfmod: [B::Buffer; 2],
    dsilu_c: B::Buffer, // (B, C)
    dc: B::Buffer,      // (B, C)
    dtmp: B::Buffer,    // (B, C)
    dt2: B::Buffer,     // (B, C)
    dt1: B::Buffer,     // (B, C)
    dloss: B::Buffer,   // (1)
}

/// The DiT for one micro-batch size.
pub struct Dit<B: Backend> {
    pub cfg: DitConfig,
    layout: Layout,
    p: DitParams,
    pd: PatchDims,
    /// Global token indices this rank holds (`n` of the `N` per clip).
    positions: Vec<usize>,
    b: usize,
    act_bytes: usize,
    trunk: Trunk<B>,
    a: DitActs<B>,
    g: DitGrads<B>,
    has_target: bool,
}

impl<B: Ops> Dit<B> {
    /// The parameter layout of `cfg` (no allocation).
    pub fn layout_of(cfg: &DitConfig) -> Layout {
        Self::plan(cfg, 1, 1, 1).0
    }

    /// This tp rank's parameter layout under tensor parallelism of `tp` (no allocation).
    pub fn layout_tp(cfg: &DitConfig, tp: usize) -> Layout {
        Self::plan(cfg, 1, tp, 1).0
    }

    /// `tp`: tensor-parallel size; `cp`: context-parallel size (tokens are split `cp` ways).
    fn spec(cfg: &DitConfig, b: usize, tp: usize, cp: usize) -> (BlockSpec, PatchDims) {
        let [t, h, wd, c] = cfg.latent;
        let [pt, ph, pw] = cfg.patch;
        let pd = PatchDims {
            b,
            t,
            h,
            w: wd,
            c,
            pt,
            ph,
            pw,
        };
        let hd = cfg.width / cfg.heads;
        let spec = BlockSpec {
            b,
            t: pd.tokens() / cp,
            c: cfg.width,
            nh: cfg.heads / tp,
            nkv: cfg.heads / tp,
            hd,
            hidden: (cfg.width as f64 * cfg.mlp_ratio).round() as usize / tp,
            tp,
            mlp: Mlp::Gelu,
            adaln: true,
            qk_norm: cfg.qk_norm,
            causal: false,
            bias: true,
            eps: 1e-6,
            attn_scale: crate::config::attn_scale(cfg.attn_base_hd, hd),
        };
        (spec, pd)
    }

    fn plan(cfg: &DitConfig, b: usize, tp: usize, cp: usize) -> (Layout, DitParams, Vec<Block>, PatchDims) {
        let (spec, pd) = Self::spec(cfg, b, tp, cp);
        let (c, pdim) = (cfg.width, pd.token_dim());
        let mut l = Layout::default();
        let fan = |n: usize| Init::Normal(1.0 / (n as f64).sqrt());
        let x_w = l.add("x_embed.weight", &[c, pdim], Role::Embedding, fan(pdim));
        let x_b = l.add("x_embed.bias", &[c], Role::Vector, Init::Zeros);
        let t1_w = l.add(
            "t_embed.fc1.weight",
            &[c, FREQ_DIM],
            Role::Embedding,
            fan(FREQ_DIM),
        );
        let t1_b = l.add("t_embed.fc1.bias", &[c], Role::Vector, Init::Zeros);
        let t2_w = l.add("t_embed.fc2.weight", &[c, c], Role::Hidden, fan(c));
        let t2_b = l.add("t_embed.fc2.bias", &[c], Role::Vector, Init::Zeros);
        let y_table = l.add(
            "y_embed.table",
            &[cfg.num_classes + 1, c],
            Role::Embedding,
            Init::Normal(0.02),
        );
        let text = (cfg.text_dim > 0).then(|| {
            let e = cfg.text_dim;
            (
                l.add("text_proj.weight", &[c, e], Role::Embedding, fan(e)),
                l.add("text_proj.bias", &[c], Role::Vector, Init::Zeros),
            )
        });
        let blocks = (0..cfg.depth)
            .map(|i| Block {
                spec,
                params: BlockParams::register(&mut l, i, &spec, cfg.depth),
            })
            .collect();
        // The output layers' offsets are relative to their unit (after the last block).
        let s0 = l.len();
        let fw = l.add("final.adaln.weight", &[2 * c, c], Role::Hidden, Init::Zeros);
        let fb = l.add("final.adaln.bias", &[2 * c], Role::Vector, Init::Zeros);
        let f_w = l.add("final.linear.weight", &[pdim, c], Role::Output, Init::Zeros);
        let f_b = l.add("final.linear.bias", &[pdim], Role::Vector, Init::Zeros);
        let half = |r: &Range<usize>, i: usize| {
            let n = (r.end - r.start) / 2;
            r.start - s0 + i * n..r.start - s0 + (i + 1) * n
        };
        let (f_w, f_b) = (rebase(&f_w, s0), rebase(&f_b, s0));
        let p = DitParams {
            x_w,
            x_b,
            t1_w,
            t1_b,
            t2_w,
            t2_b,
            y_table,
            text,
            f_ada_w: [half(&fw, 0), half(&fw, 1)],
            f_ada_b: [half(&fb, 0), half(&fb, 1)],
            f_w,
            f_b,
        };
        (l, p, blocks, pd)
    }

    /// Allocate a DiT for micro-batches of `b` clips in `dtype` (f32, or f64 for checks).
    pub fn new(be: &B, cfg: &DitConfig, b: usize, dtype: DType, recompute: bool) -> Result<Self> {
        let (tokens, _) = Self::spec(cfg, 1, 1, 1);
        Self::new_par(be, cfg, b, dtype, recompute, Par::single(tokens.t, false))
    }

    /// This rank's part of the model under the tensor/sequence/context split `par`.
    pub fn new_par(
        be: &B,
        cfg: &DitConfig,
        b: usize,
        dtype: DType,
        recompute: bool,
        par: Par<B>,
    ) -> Result<Self> {
        let cp = par.split.ring * par.split.ulysses;
        let (layout, p, blocks, pd) = Self::plan(cfg, b, par.tp_size(), cp);
        let al = Alloc::new(be, dtype);
        let positions = par.local_positions();
        let sharded = par.sharded();
        let (c, n, pdim) = (cfg.width, positions.len(), pd.token_dim());
        let hd = cfg.width / cfg.heads;
        let bands = RopeTable::default_bands(hd);
        let grid = RopeTable::grid(pd.t / pd.pt, pd.h / pd.ph, pd.w / pd.pw);
        let mine: Vec<[usize; 3]> = par.cp_positions().iter().map(|&i| grid[i]).collect();
        let rope = RopeTable::three_d(&mine, bands, cfg.rope_theta);
        let trunk = Trunk::new(&al, blocks, recompute, (&rope.cos, &rope.sin), par)?;
        let bc = || al.buf(b * c);
        let a = DitActs {
            x: al.buf(pd.numel())?,
            tokens: al.buf(pd.numel())?,
            local: al.opt(sharded, b * n * pdim)?,
            target_tokens: al.opt(sharded, pd.numel())?,
            t: al.stat(b)?,
            tf: al.buf(b * FREQ_DIM)?,
            t1: bc()?,
            t2: bc()?,
            temb: bc()?,
            ids: be.alloc(DType::I32, b)?,
            yemb: bc()?,
            text: al.opt(cfg.text_dim > 0, b * cfg.text_dim)?,
            temb_txt: al.opt(cfg.text_dim > 0, b * c)?,
            c: bc()?,
            silu_c: bc()?,
            fmod: [bc()?, bc()?],
            lnf: al.buf(b * n * c)?,
            meanf: al.stat(b * n)?,
            rstdf: al.stat(b * n)?,
            hf: al.buf(b * n * c)?,
            out: al.buf(b * n * pdim)?,
            pred: al.buf(pd.numel())?,
            target: al.buf(pd.numel())?,
            loss: al.stat(1)?,
        };
        let g = DitGrads {
            dpred: al.buf(pd.numel())?,
            dout: al.buf(b * n * pdim)?,
            dhf: al.buf(b * n * c)?,
            dlnf: al.buf(b * n * c)?,
            dres: al.buf(b * n * c)?,
            dfmod: [bc()?, bc()?],
            dsilu_c: bc()?,
            dc: bc()?,
            dtmp: bc()?,
            dt2: bc()?,
            dt1: bc()?,
            dloss: al.stat(1)?,
        };
        Ok(Dit {
            cfg: cfg.clone(),
            layout,
            p,
            pd,
            positions,
            act_bytes: al.bytes.get(),
            b,
            trunk,
            a,
            g,
            has_target: false,
        })
    }

    /// This rank's share of the clip's tokens (1 without SP/CP).
    fn share(&self) -> f64 {
        self.positions.len() as f64 / self.pd.tokens() as f64
    }

    /// Values per clip `T·H·W·C`.
    pub fn clip_len(&self) -> usize {
        self.pd.numel() / self.b
    }

    /// Run the network on `batch` and return its raw output `(B, T, H, W, C)` (the velocity,
    /// or `F` when preconditioned).
    pub fn predict(&mut self, be: &B, params: B::Ref<'_>, batch: &DitBatch) -> Result<Vec<f64>> {
        self.run(be, &mut Flat::new(&self.layout, params, None), batch)?;
        download_f64(be, r::<B>(&self.a.pred))
    }

    fn last_unit(&self) -> usize {
        self.cfg.depth + 1
    }

    fn run(&mut self, be: &B, wt: &mut dyn Weights<B>, batch: &DitBatch) -> Result<()> {
        let last = self.last_unit();
        let (b, c, pd) = (self.b, self.cfg.width, self.pd);
        let n = self.positions.len();
        let (a, pr) = (&mut self.a, &self.p);
        let bad = |what: &str, got: usize, want: usize| {
            crate::Error::Other(format!("DiT batch: `{what}` has {got} values, expected {want}"))
        };
        if batch.x.len() != pd.numel() {
            return Err(bad("x", batch.x.len(), pd.numel()));
        }
        if batch.t.len() != b || batch.class.len() != b {
            return Err(bad("t/class", batch.t.len().min(batch.class.len()), b));
        }
        upload_f32(be, &batch.x, w::<B>(&mut a.x))?;
        let p = wt.get(be, 0)?;
        let ts: Vec<f64> = batch.t.iter().map(|&t| t as f64 * T_SCALE).collect();
        upload_f64(be, &ts, w::<B>(&mut a.t))?;
        be.upload((&batch.class).into(), w::<B>(&mut a.ids))?;
        // Conditioning c (B, C).
        let td = TimestepDims {
            n: b,
            dim: FREQ_DIM,
            max_period: 10000.0,
        };
        be.timestep_embedding_forward(w::<B>(&mut a.tf), r::<B>(&a.t), td)?;
        let lin = |rows, i, o| MatmulDims::linear(rows, i, o);
        be.matmul_forward(
            w::<B>(&mut a.t1),
            r::<B>(&a.tf),
            at(p, &pr.t1_w),
            Some(at(p, &pr.t1_b)),
            lin(b, FREQ_DIM, c),
        )?;
        be.silu_forward(w::<B>(&mut a.t2), r::<B>(&a.t1), b * c)?;
        be.matmul_forward(
            w::<B>(&mut a.temb),
            r::<B>(&a.t2),
            at(p, &pr.t2_w),
            Some(at(p, &pr.t2_b)),
            lin(b, c, c),
        )?;
        let ed = EmbeddingDims {
            n: b,
            v: self.cfg.num_classes + 1,
            c,
        };
        be.embedding_forward(w::<B>(&mut a.yemb), r::<B>(&a.ids), at(p, &pr.y_table), ed)?;
        be.add_forward(w::<B>(&mut a.c), r::<B>(&a.temb), r::<B>(&a.yemb), b * c)?;
        if let (Some((tw, tb)), Some(text), Some(te)) = (&pr.text, a.text.as_mut(), a.temb_txt.as_mut()) {
            let e = self.cfg.text_dim;
            let src = batch.text.as_ref().ok_or_else(|| bad("text", 0, b * e))?;
            if src.len() != b * e {
                return Err(bad("text", src.len(), b * e));
            }
            upload_f32(be, src, w::<B>(text))?;
            be.matmul_forward(w::<B>(te), r::<B>(text), at(p, tw), Some(at(p, tb)), lin(b, e, c))?;
            be.accumulate(w::<B>(&mut a.c), r::<B>(te), b * c)?;
        }
        be.silu_forward(w::<B>(&mut a.silu_c), r::<B>(&a.c), b * c)?;
        // Patch embedding into the trunk.
        be.patchify_forward(w::<B>(&mut a.tokens), r::<B>(&a.x), pd)?;
        if let Some(local) = a.local.as_mut() {
            let rows = (pd.tokens(), pd.token_dim());
            super::select_rows(be, r::<B>(&a.tokens), w::<B>(local), b, rows, &self.positions)?;
        }
        let d = lin(b * n, pd.token_dim(), c);
        be.matmul_forward(
            self.trunk.input_mut(),
            r::<B>(a.local.as_ref().unwrap_or(&a.tokens)),
            at(p, &pr.x_w),
            Some(at(p, &pr.x_b)),
            d,
        )?;
        super::note(be, "embed", self.trunk.input())?;
        self.trunk.forward(be, wt, Some(r::<B>(&a.silu_c)))?;
        super::note(be, "residual", self.trunk.output())?;
        let p = wt.get(be, last)?;
        // Final AdaLN + linear + unpatchify.
        for i in 0..2 {
            let (wr, br) = (&pr.f_ada_w[i], &pr.f_ada_b[i]);
            be.matmul_forward(
                w::<B>(&mut a.fmod[i]),
                r::<B>(&a.silu_c),
                at(p, wr),
                Some(at(p, br)),
                lin(b, c, c),
            )?;
        }
        let nd = NormDims {
            n: b * n,
            c,
            eps: 1e-6,
        };
        let x_l = self.trunk.output();
        be.layernorm_forward(
            w::<B>(&mut a.lnf),
            w::<B>(&mut a.meanf),
            w::<B>(&mut a.rstdf),
            x_l,
            None,
            None,
            nd,
        )?;
        let md = ModDims::new(b, n, c);
        be.modulate_forward(
            w::<B>(&mut a.hf),
            r::<B>(&a.lnf),
            r::<B>(&a.fmod[0]),
            r::<B>(&a.fmod[1]),
            md,
        )?;
        let d = lin(b * n, c, pd.token_dim());
        be.matmul_forward(
            w::<B>(&mut a.out),
            r::<B>(&a.hf),
            at(p, &pr.f_w),
            Some(at(p, &pr.f_b)),
            d,
        )?;
        super::note(be, "readout", r::<B>(&a.out))?;
        if a.local.is_none() {
            be.unpatchify_forward(w::<B>(&mut a.pred), r::<B>(&a.out), pd)?;
        }
        Ok(())
    }
}

impl<B: Ops> Model<B> for Dit<B> {
    type Batch = DitBatch;

    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn forward_into(
        &mut self,
        be: &B,
        wt: &mut dyn Weights<B>,
        batch: &DitBatch,
        acc: B::Mut<'_>,
    ) -> Result<()> {
        self.run(be, wt, batch)?;
        let n = self.pd.numel();
        if batch.target.len() != n {
            return Err(crate::Error::Other(format!(
                "DiT batch: `target` has {} values, expected {n}",
                batch.target.len()
            )));
        }
        upload_f32(be, &batch.target, w::<B>(&mut self.a.target))?;
        let share = self.share();
        let a = &mut self.a;
        self.has_target = true;
        if let Some(tt) = a.target_tokens.as_mut() {
            // This rank's tokens only: the MSE in token space (patchify is a permutation), as
            // its share `n/N` of the micro-batch mean.
            let (pd, m) = (self.pd, r::<B>(&a.out).len());
            be.patchify_forward(w::<B>(tt), r::<B>(&a.target), pd)?;
            let local = w::<B>(&mut a.target).range(0..m);
            let rows = (pd.tokens(), pd.token_dim());
            super::select_rows(be, r::<B>(tt), local, self.b, rows, &self.positions)?;
            let target = r::<B>(&a.target).range(0..m);
            be.mse_forward(w::<B>(&mut a.loss), r::<B>(&a.out), target, m)?;
            be.sum(acc, r::<B>(&a.loss), share, 1)?;
            return Ok(());
        }
        be.mse_forward(w::<B>(&mut a.loss), r::<B>(&a.pred), r::<B>(&a.target), n)?;
        be.sum(acc, r::<B>(&a.loss), 1.0, 1)?;
        Ok(())
    }

    fn backward_with(&mut self, be: &B, wt: &mut dyn Weights<B>, dloss: f64) -> Result<()> {
        assert!(self.has_target, "backward needs a forward with a target first");
        let last = self.last_unit();
        let (p, mut dp) = wt.get_mut(be, last)?;
        let (b, c, pd) = (self.b, self.cfg.width, self.pd);
        let n = self.positions.len();
        let share = self.share();
        let (a, g, pr) = (&self.a, &mut self.g, &self.p);
        let lin = |rows, i, o| MatmulDims::linear(rows, i, o);
        if a.local.is_some() {
            be.fill(w::<B>(&mut g.dloss), dloss * share, 1)?;
            let m = r::<B>(&a.out).len();
            let target = r::<B>(&a.target).range(0..m);
            be.mse_backward(w::<B>(&mut g.dout), r::<B>(&g.dloss), r::<B>(&a.out), target, m)?;
        } else {
            be.fill(w::<B>(&mut g.dloss), dloss, 1)?;
            let numel = pd.numel();
            be.mse_backward(
                w::<B>(&mut g.dpred),
                r::<B>(&g.dloss),
                r::<B>(&a.pred),
                r::<B>(&a.target),
                numel,
            )?;
            be.unpatchify_backward(w::<B>(&mut g.dout), r::<B>(&g.dpred), pd)?;
        }
        let (dw, db) = pair(B::rb(&mut dp), &pr.f_w, Some(&pr.f_b));
        let d = lin(b * n, c, pd.token_dim());
        be.matmul_backward(
            Some(w::<B>(&mut g.dhf)),
            Some(dw),
            db,
            r::<B>(&g.dout),
            r::<B>(&a.hf),
            at(p, &pr.f_w),
            d,
        )?;
        let md = ModDims::new(b, n, c);
        let [ds, dsc] = &mut g.dfmod;
        be.modulate_backward(
            w::<B>(&mut g.dlnf),
            w::<B>(ds),
            w::<B>(dsc),
            r::<B>(&g.dhf),
            r::<B>(&a.lnf),
            r::<B>(&a.fmod[1]),
            md,
        )?;
        let nd = NormDims {
            n: b * n,
            c,
            eps: 1e-6,
        };
        let x_l = self.trunk.output();
        be.layernorm_backward(
            w::<B>(&mut g.dres),
            None,
            None,
            r::<B>(&g.dlnf),
            x_l,
            None,
            r::<B>(&a.meanf),
            r::<B>(&a.rstdf),
            nd,
        )?;
        be.fill(w::<B>(&mut g.dsilu_c), 0.0, b * c)?;
        for i in 0..2 {
            let (dw, db) = pair(B::rb(&mut dp), &pr.f_ada_w[i], Some(&pr.f_ada_b[i]));
            let wr = at(p, &pr.f_ada_w[i]);
            be.matmul_backward(
                Some(w::<B>(&mut g.dtmp)),
                Some(dw),
                db,
                r::<B>(&g.dfmod[i]),
                r::<B>(&a.silu_c),
                wr,
                lin(b, c, c),
            )?;
            be.accumulate(w::<B>(&mut g.dsilu_c), r::<B>(&g.dtmp), b * c)?;
        }
        drop(dp);
        wt.grads_done(be, last)?;
        self.trunk
            .backward(be, wt, &mut g.dres, Some(r::<B>(&a.silu_c)), Some(&mut g.dsilu_c))?;
        let (p, mut dp) = wt.get_mut(be, 0)?;
        // Patch embedding (the input itself needs no gradient).
        let (dw, db) = pair(B::rb(&mut dp), &pr.x_w, Some(&pr.x_b));
        let d = lin(b * n, pd.token_dim(), c);
        be.matmul_backward(
            None,
            Some(dw),
            db,
            r::<B>(&g.dres),
            r::<B>(a.local.as_ref().unwrap_or(&a.tokens)),
            at(p, &pr.x_w),
            d,
        )?;
        // Conditioning: c = temb + yemb (+ text).
        be.silu_backward(w::<B>(&mut g.dc), r::<B>(&g.dsilu_c), r::<B>(&a.c), b * c)?;
        let ed = EmbeddingDims {
            n: b,
            v: self.cfg.num_classes + 1,
            c,
        };
        be.embedding_backward(at(B::rb(&mut dp), &pr.y_table), r::<B>(&g.dc), r::<B>(&a.ids), ed)?;
        if let (Some((tw, tb)), Some(text)) = (&pr.text, a.text.as_ref()) {
            let (dw, db) = pair(B::rb(&mut dp), tw, Some(tb));
            let d = lin(b, self.cfg.text_dim, c);
            be.matmul_backward(None, Some(dw), db, r::<B>(&g.dc), r::<B>(text), at(p, tw), d)?;
        }
        let (dw, db) = pair(B::rb(&mut dp), &pr.t2_w, Some(&pr.t2_b));
        be.matmul_backward(
            Some(w::<B>(&mut g.dt2)),
            Some(dw),
            db,
            r::<B>(&g.dc),
            r::<B>(&a.t2),
            at(p, &pr.t2_w),
            lin(b, c, c),
        )?;
        be.silu_backward(w::<B>(&mut g.dt1), r::<B>(&g.dt2), r::<B>(&a.t1), b * c)?;
        let (dw, db) = pair(B::rb(&mut dp), &pr.t1_w, Some(&pr.t1_b));
        be.matmul_backward(
            None,
            Some(dw),
            db,
            r::<B>(&g.dt1),
            r::<B>(&a.tf),
            at(p, &pr.t1_w),
            lin(b, FREQ_DIM, c),
        )?;
        drop(dp);
        wt.grads_done(be, 0)
    }

    fn flops_per_micro_batch(&self) -> f64 {
        let (n, pdim) = (self.positions.len(), self.pd.token_dim());
        self.trunk.flops() + Self::io_flops(&self.cfg, self.b, n, pdim)
    }

    fn activation_bytes(&self) -> usize {
        self.act_bytes
    }

    fn non_finite_samples(&self, batch: &DitBatch) -> Vec<usize> {
        let b = batch.t.len();
        let bad = |v: &[f32], i: usize| {
            let per = v.len() / b.max(1);
            v.get(i * per..(i + 1) * per)
                .is_some_and(|s| s.iter().any(|x| !x.is_finite()))
        };
        (0..b)
            .filter(|&i| {
                !batch.t[i].is_finite()
                    || bad(&batch.x, i)
                    || bad(&batch.target, i)
                    || batch.text.as_deref().is_some_and(|e| bad(e, i))
            })
            .collect()
    }

    fn batch_shape(&self) -> (usize, usize) {
        (self.b, self.pd.tokens())
    }
}
