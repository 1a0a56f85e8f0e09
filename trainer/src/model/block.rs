//! One pre-norm transformer block, shared by the DiT and the GPT.
//!
//! ```text
//! DiT (adaln):  h = modulate(LN(x), shift1, scale1)     GPT:  h = RMSNorm(x)·g1
//!               x' = x + gate1 · Attn(h)                      x' = x + Attn(h)
//!               h' = modulate(LN(x'), shift2, scale2)         h' = RMSNorm(x')·g2
//!               y = x' + gate2 · MLP(h')                      y = x' + MLP(h')
//! Attn(h) = Wo · attention(rope(qknorm(Wq h)), rope(qknorm(Wk h)), Wv h)
//! MLP: GELU (DiT, 4× width, biases) or SwiGLU (GPT, fused [gate | up], no biases)
//! ```
//! `(shift, scale, gate)×2` are six `(B, C)` chunks of the block's AdaLN projection of the
//! conditioning `silu(c)`, zero-initialized (AdaLN-Zero: every block starts as the identity).
//!
//! Shapes: `B` batch, `T` tokens, `C` width, `NH`/`NKV` query/kv heads, `HD` head dim,
//! `F` MLP hidden size.
//!
//! **Tensor + sequence parallel** (Megatron-style, `tp > 1`): `NH`, `NKV` and `F` are this
//! rank's share; QKV and fc1 are column-parallel, the output projection and fc2
//! row-parallel. On the residual stream each tp rank holds `T/tp` tokens; the norm output is
//! all-gathered into each parallel region and the region's partial output reduce-scattered
//! back ([`weft_parallel::sp`]); backward does the conjugate collectives. Row-parallel biases
//! are added by tp rank 0 only.
//!
//! **Context parallel** (`cp > 1`): `T` is the cp rank's tokens and attention runs over the
//! whole sequence through [`weft_parallel::cp`] (ring, Ulysses or both).

pub use super::acts::{BlockActs, BlockGrads};
pub use super::block_params::BlockParams;
pub use super::spec::{BlockSpec, Mlp};
use super::{at, pair, r, w, Par};
use crate::Result;
use std::ops::Range;
use weft_kernels::{AttnDims, Backend, MatmulDims, ModDims, NormDims, Ops, RopeDims, SwigluDims};
use weft_parallel::{cp, sp};

/// Inputs every block shares: the RoPE table of the cp rank's tokens, for AdaLN `silu(c)`
/// `(B, C)`, and the rank's parallel groups.
pub struct Shared<'t, 'c, B: Backend> {
    pub cos: B::Ref<'t>,
    pub sin: B::Ref<'t>,
    pub cond: Option<B::Ref<'c>>,
    pub par: &'t Par<B>,
}

/// A block: its spec and where its parameters are.
pub struct Block {
    pub spec: BlockSpec,
    pub params: BlockParams,
}

impl Block {
    fn norm(&self) -> NormDims {
        NormDims {
            n: self.spec.sp_rows(),
            c: self.spec.c,
            eps: self.spec.eps,
        }
    }
    fn moddims(&self) -> ModDims {
        ModDims::new(self.spec.b, self.spec.t / self.spec.tp, self.spec.c)
    }
    fn seq(&self) -> sp::SeqDims {
        sp::SeqDims {
            b: self.spec.b,
            t: self.spec.t,
            c: self.spec.c,
        }
    }
    /// Into a parallel region: `out ← x` of every tp rank (nothing when `tp = 1`).
    fn gather<B: Ops>(
        &self,
        be: &B,
        sh: &Shared<'_, '_, B>,
        x: &B::Buffer,
        out: Option<&mut B::Buffer>,
        stage: &mut Option<B::Buffer>,
    ) -> Result<()> {
        if let (Some(tp), Some(out), Some(st)) = (&sh.par.tp, out, stage.as_mut()) {
            sp::gather_seq(be, tp.as_ref(), r::<B>(x), w::<B>(out), w::<B>(st), self.seq())?;
        }
        Ok(())
    }
    /// Out of a parallel region: `out ← Σ_tp x`, this rank's tokens (nothing when `tp = 1`).
    fn scatter<B: Ops>(
        &self,
        be: &B,
        sh: &Shared<'_, '_, B>,
        x: &B::Buffer,
        out: Option<&mut B::Buffer>,
        stage: &mut Option<B::Buffer>,
    ) -> Result<()> {
        if let (Some(tp), Some(out), Some(st)) = (&sh.par.tp, out, stage.as_mut()) {
            sp::scatter_seq(be, tp.as_ref(), r::<B>(x), w::<B>(out), w::<B>(st), self.seq())?;
        }
        Ok(())
    }
    fn attn(&self) -> AttnDims {
        let s = &self.spec;
        AttnDims {
            scale: s.attn_scale,
            ..AttnDims::new(s.b, s.t, s.nh, s.nkv, s.hd, s.causal)
        }
    }

    /// `x_out = block(x_in)`, keeping what backward needs in `a` (`g` lends its staging).
    #[allow(clippy::too_many_arguments)]
    pub fn forward<B: Ops>(
        &self,
        be: &B,
        p: B::Ref<'_>,
        x_in: B::Ref<'_>,
        x_out: B::Mut<'_>,
        a: &mut BlockActs<B>,
        g: &mut BlockGrads<B>,
        sh: &Shared<'_, '_, B>,
    ) -> Result<()> {
        let (s, bp) = (&self.spec, &self.params);
        let (n, c) = (s.rows(), s.c);
        let opt = |r: &Option<Range<usize>>| r.as_ref().map(|r| at(p, r));
        let owned = |r: &Option<Range<usize>>| if sh.par.owns_bias() { opt(r) } else { None };
        if s.adaln {
            let cond = sh.cond.expect("AdaLN blocks need the conditioning");
            for (i, m) in a.modv.iter_mut().enumerate() {
                let d = MatmulDims::linear(s.b, c, c);
                be.matmul_forward(w::<B>(m), cond, at(p, &bp.ada_w[i]), Some(at(p, &bp.ada_b[i])), d)?;
            }
        }
        // Attention branch.
        let outs = (a.ln1.as_mut(), &mut a.mean1, &mut a.rstd1, &mut a.h1);
        self.norm_forward(be, p, x_in, outs, &a.modv, 0)?;
        self.gather(be, sh, &a.h1, a.h1g.as_mut(), &mut g.stage)?;
        let h1 = r::<B>(a.h1g.as_ref().unwrap_or(&a.h1));
        let (nq, nk) = (s.nh * s.hd, s.nkv * s.hd);
        be.matmul_forward(
            w::<B>(&mut a.q),
            h1,
            at(p, &bp.wq),
            opt(&bp.bq),
            MatmulDims::linear(n, c, nq),
        )?;
        be.matmul_forward(
            w::<B>(&mut a.k),
            h1,
            at(p, &bp.wk),
            opt(&bp.bk),
            MatmulDims::linear(n, c, nk),
        )?;
        be.matmul_forward(
            w::<B>(&mut a.v),
            h1,
            at(p, &bp.wv),
            opt(&bp.bv),
            MatmulDims::linear(n, c, nk),
        )?;
        if s.qk_norm {
            let (qn, kn) = (a.qn.as_mut().unwrap(), a.kn.as_mut().unwrap());
            let dq = NormDims {
                n: n * s.nh,
                c: s.hd,
                eps: s.eps,
            };
            let dk = NormDims {
                n: n * s.nkv,
                c: s.hd,
                eps: s.eps,
            };
            be.rmsnorm_forward(
                w::<B>(qn),
                w::<B>(&mut a.q_rstd),
                r::<B>(&a.q),
                opt(&bp.q_norm),
                dq,
            )?;
            be.rmsnorm_forward(
                w::<B>(kn),
                w::<B>(&mut a.k_rstd),
                r::<B>(&a.k),
                opt(&bp.k_norm),
                dk,
            )?;
        }
        let qn = r::<B>(a.qn.as_ref().unwrap_or(&a.q));
        let kn = r::<B>(a.kn.as_ref().unwrap_or(&a.k));
        let rq = RopeDims {
            b: s.b,
            t: s.t,
            h: s.nh,
            hd: s.hd,
        };
        let rk = RopeDims { h: s.nkv, ..rq };
        be.rope_forward(w::<B>(&mut a.qr), qn, sh.cos, sh.sin, rq)?;
        be.rope_forward(w::<B>(&mut a.kr), kn, sh.cos, sh.sin, rk)?;
        let (att, lse) = (w::<B>(&mut a.att), w::<B>(&mut a.lse));
        let (qr, kr, v) = (r::<B>(&a.qr), r::<B>(&a.kr), r::<B>(&a.v));
        match sh.par.cp_group() {
            Some(grp) => cp::attention_forward(be, &grp, att, lse, qr, kr, v, self.attn())?,
            None => be.attention_forward(att, lse, qr, kr, v, self.attn())?,
        }
        let d = MatmulDims::linear(n, nq, c);
        be.matmul_forward(w::<B>(&mut a.y1), r::<B>(&a.att), at(p, &bp.wo), owned(&bp.bo), d)?;
        self.scatter(be, sh, &a.y1, a.y1s.as_mut(), &mut g.stage)?;
        let y1 = r::<B>(a.y1s.as_ref().unwrap_or(&a.y1));
        super::note(be, "attn_out", y1)?;
        self.residual_forward(be, w::<B>(&mut a.x_mid), x_in, y1, a.modv.get(2))?;
        // MLP branch.
        let x_mid = r::<B>(&a.x_mid);
        let outs = (a.ln2.as_mut(), &mut a.mean2, &mut a.rstd2, &mut a.h2);
        self.norm_forward(be, p, x_mid, outs, &a.modv, 1)?;
        self.gather(be, sh, &a.h2, a.h2g.as_mut(), &mut g.stage)?;
        let h2 = r::<B>(a.h2g.as_ref().unwrap_or(&a.h2));
        let d = MatmulDims::linear(n, c, s.fc1_out());
        be.matmul_forward(w::<B>(&mut a.f), h2, at(p, &bp.w1), opt(&bp.b1), d)?;
        match s.mlp {
            Mlp::Gelu => be.gelu_forward(w::<B>(&mut a.a), r::<B>(&a.f), n * s.hidden)?,
            Mlp::Swiglu => {
                be.swiglu_forward(w::<B>(&mut a.a), r::<B>(&a.f), SwigluDims { n, h: s.hidden })?
            }
        }
        let d = MatmulDims::linear(n, s.hidden, c);
        be.matmul_forward(w::<B>(&mut a.y2), r::<B>(&a.a), at(p, &bp.w2), owned(&bp.b2), d)?;
        self.scatter(be, sh, &a.y2, a.y2s.as_mut(), &mut g.stage)?;
        let y2 = r::<B>(a.y2s.as_ref().unwrap_or(&a.y2));
        super::note(be, "mlp_out", y2)?;
        self.residual_forward(be, x_out, r::<B>(&a.x_mid), y2, a.modv.get(5))
    }

    /// Pre-norm `which` (0: before attention, 1: before the MLP) of `x` into
    /// `(LN(x), mean, rstd, h)`.
    #[allow(clippy::type_complexity)]
    fn norm_forward<B: Ops>(
        &self,
        be: &B,
        p: B::Ref<'_>,
        x: B::Ref<'_>,
        (ln, mean, rstd, h): (
            Option<&mut B::Buffer>,
            &mut B::Buffer,
            &mut B::Buffer,
            &mut B::Buffer,
        ),
        modv: &[B::Buffer],
        which: usize,
    ) -> Result<()> {
        let gain = if which == 0 {
            &self.params.norm1
        } else {
            &self.params.norm2
        };
        if self.spec.adaln {
            let ln = ln.expect("adaln keeps LN(x)");
            be.layernorm_forward(w::<B>(ln), w::<B>(mean), w::<B>(rstd), x, None, None, self.norm())?;
            let (shift, scale) = (r::<B>(&modv[3 * which]), r::<B>(&modv[3 * which + 1]));
            be.modulate_forward(w::<B>(h), r::<B>(ln), shift, scale, self.moddims())?;
        } else {
            let g = gain.as_ref().map(|g| at(p, g));
            be.rmsnorm_forward(w::<B>(h), w::<B>(rstd), x, g, self.norm())?;
        }
        Ok(())
    }

    /// `out = x + gate·y` (AdaLN) or `out = x + y`.
    fn residual_forward<B: Ops>(
        &self,
        be: &B,
        mut out: B::Mut<'_>,
        x: B::Ref<'_>,
        y: B::Ref<'_>,
        gate: Option<&B::Buffer>,
    ) -> Result<()> {
        let n = self.spec.sp_rows() * self.spec.c;
        match gate {
            Some(g) => {
                be.cast(B::rb(&mut out), x, n)?;
                be.gate_forward(out, r::<B>(g), y, self.moddims())?;
            }
            None => be.add_forward(out, x, y, n)?,
        }
        Ok(())
    }

    /// Reverse walk. On entry `dres` holds `d x_out`; on exit `d x_in`. Parameter gradients
    /// accumulate into `dp`; with AdaLN, `d silu(c)` accumulates into `dcond`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<B: Ops>(
        &self,
        be: &B,
        p: B::Ref<'_>,
        mut dp: B::Mut<'_>,
        x_in: B::Ref<'_>,
        dres: &mut B::Buffer,
        a: &BlockActs<B>,
        g: &mut BlockGrads<B>,
        sh: &Shared<'_, '_, B>,
        dcond: Option<&mut B::Buffer>,
    ) -> Result<()> {
        let (s, bp) = (&self.spec, &self.params);
        let (n, c) = (s.rows(), s.c);
        let (nq, nk) = (s.nh * s.hd, s.nkv * s.hd);
        let ns = s.sp_rows();
        let opt = |r: &Option<Range<usize>>| r.as_ref().map(|r| at(p, r));
        let owner = sh.par.owns_bias();
        // MLP branch: y = x' + gate2·MLP(h').
        let y2 = r::<B>(a.y2s.as_ref().unwrap_or(&a.y2));
        let dy2 = self.residual_backward(be, dres, &mut g.d_y, &mut g.dmod, y2, a, 5)?;
        self.gather(be, sh, dy2, g.d_yg.as_mut(), &mut g.stage)?;
        let dy2 = g.d_yg.as_ref().unwrap_or(dy2);
        let (dw, db) = pair(B::rb(&mut dp), &bp.w2, bp.b2.as_ref());
        let d = MatmulDims::linear(n, s.hidden, c);
        be.matmul_backward(
            Some(w::<B>(&mut g.d_a)),
            Some(dw),
            db.filter(|_| owner),
            r::<B>(dy2),
            r::<B>(&a.a),
            at(p, &bp.w2),
            d,
        )?;
        match s.mlp {
            Mlp::Gelu => be.gelu_backward(w::<B>(&mut g.d_f), r::<B>(&g.d_a), r::<B>(&a.f), n * s.hidden)?,
            Mlp::Swiglu => be.swiglu_backward(
                w::<B>(&mut g.d_f),
                r::<B>(&g.d_a),
                r::<B>(&a.f),
                SwigluDims { n, h: s.hidden },
            )?,
        }
        let (dw, db) = pair(B::rb(&mut dp), &bp.w1, bp.b1.as_ref());
        let d = MatmulDims::linear(n, c, s.fc1_out());
        be.matmul_backward(
            Some(w::<B>(&mut g.d_h)),
            Some(dw),
            db,
            r::<B>(&g.d_f),
            r::<B>(a.h2g.as_ref().unwrap_or(&a.h2)),
            at(p, &bp.w1),
            d,
        )?;
        self.scatter(be, sh, &g.d_h, g.d_hs.as_mut(), &mut g.stage)?;
        self.norm_backward(be, p, B::rb(&mut dp), r::<B>(&a.x_mid), a, g, 1)?;
        be.accumulate(w::<B>(dres), r::<B>(&g.d_x), ns * c)?;
        // Attention branch: x' = x + gate1·Attn(h).
        let y1 = r::<B>(a.y1s.as_ref().unwrap_or(&a.y1));
        let dy1 = self.residual_backward(be, dres, &mut g.d_y, &mut g.dmod, y1, a, 2)?;
        self.gather(be, sh, dy1, g.d_yg.as_mut(), &mut g.stage)?;
        let dy1 = g.d_yg.as_ref().unwrap_or(dy1);
        let (dw, db) = pair(B::rb(&mut dp), &bp.wo, bp.bo.as_ref());
        let d = MatmulDims::linear(n, nq, c);
        be.matmul_backward(
            Some(w::<B>(&mut g.d_att)),
            Some(dw),
            db.filter(|_| owner),
            r::<B>(dy1),
            r::<B>(&a.att),
            at(p, &bp.wo),
            d,
        )?;
        let (dqr, dkr, dv) = (w::<B>(&mut g.dqr), w::<B>(&mut g.dkr), w::<B>(&mut g.dv));
        let (datt, qr, kr, v) = (r::<B>(&g.d_att), r::<B>(&a.qr), r::<B>(&a.kr), r::<B>(&a.v));
        let (att, lse) = (r::<B>(&a.att), r::<B>(&a.lse));
        match sh.par.cp_group() {
            Some(grp) => {
                cp::attention_backward(be, &grp, dqr, dkr, dv, datt, qr, kr, v, att, lse, self.attn())?
            }
            None => be.attention_backward(dqr, dkr, dv, datt, qr, kr, v, att, lse, self.attn())?,
        }
        let rq = RopeDims {
            b: s.b,
            t: s.t,
            h: s.nh,
            hd: s.hd,
        };
        let rk = RopeDims { h: s.nkv, ..rq };
        // RoPE backward into the pre-rope gradient; with QK-norm that is d(qn), and the norm's
        // backward then writes d(q) into `dq` (the rope output buffers are free again).
        if s.qk_norm {
            be.rope_backward(w::<B>(&mut g.dq), r::<B>(&g.dqr), sh.cos, sh.sin, rq)?;
            be.rope_backward(w::<B>(&mut g.dk), r::<B>(&g.dkr), sh.cos, sh.sin, rk)?;
            let dqd = NormDims {
                n: n * s.nh,
                c: s.hd,
                eps: s.eps,
            };
            let dkd = NormDims {
                n: n * s.nkv,
                c: s.hd,
                eps: s.eps,
            };
            let gq = bp.q_norm.as_ref().map(|r| at(B::rb(&mut dp), r));
            be.rmsnorm_backward(
                w::<B>(&mut g.dqr),
                gq,
                r::<B>(&g.dq),
                r::<B>(&a.q),
                opt(&bp.q_norm),
                r::<B>(&a.q_rstd),
                dqd,
            )?;
            let gk = bp.k_norm.as_ref().map(|r| at(B::rb(&mut dp), r));
            be.rmsnorm_backward(
                w::<B>(&mut g.dkr),
                gk,
                r::<B>(&g.dk),
                r::<B>(&a.k),
                opt(&bp.k_norm),
                r::<B>(&a.k_rstd),
                dkd,
            )?;
        } else {
            be.rope_backward(w::<B>(&mut g.dq), r::<B>(&g.dqr), sh.cos, sh.sin, rq)?;
            be.rope_backward(w::<B>(&mut g.dk), r::<B>(&g.dkr), sh.cos, sh.sin, rk)?;
        }
        // d(q), d(k) now sit in `dqr`/`dkr` (QK-norm) or `dq`/`dk` (no QK-norm).
        let (dq, dk) = if s.qk_norm {
            (&g.dqr, &g.dkr)
        } else {
            (&g.dq, &g.dk)
        };
        let h1 = r::<B>(a.h1g.as_ref().unwrap_or(&a.h1));
        let (dw, db) = pair(B::rb(&mut dp), &bp.wq, bp.bq.as_ref());
        be.matmul_backward(
            Some(w::<B>(&mut g.d_h)),
            Some(dw),
            db,
            r::<B>(dq),
            h1,
            at(p, &bp.wq),
            MatmulDims::linear(n, c, nq),
        )?;
        for (dsrc, wr, br) in [(dk, &bp.wk, &bp.bk), (&g.dv, &bp.wv, &bp.bv)] {
            let (dw, db) = pair(B::rb(&mut dp), wr, br.as_ref());
            let d = MatmulDims::linear(n, c, nk);
            be.matmul_backward(
                Some(w::<B>(&mut g.d_tmp)),
                Some(dw),
                db,
                r::<B>(dsrc),
                h1,
                at(p, wr),
                d,
            )?;
            be.accumulate(w::<B>(&mut g.d_h), r::<B>(&g.d_tmp), n * c)?;
        }
        self.scatter(be, sh, &g.d_h, g.d_hs.as_mut(), &mut g.stage)?;
        self.norm_backward(be, p, B::rb(&mut dp), x_in, a, g, 0)?;
        be.accumulate(w::<B>(dres), r::<B>(&g.d_x), ns * c)?;
        // AdaLN projection: d silu(c) = Σ_chunks dmod_i · W_i.
        if s.adaln {
            let cond = sh.cond.expect("AdaLN blocks need the conditioning");
            let dcond = dcond.expect("AdaLN blocks accumulate d silu(c)");
            for i in 0..6 {
                let (dw, db) = pair(B::rb(&mut dp), &bp.ada_w[i], Some(&bp.ada_b[i]));
                let d = MatmulDims::linear(s.b, c, c);
                let dm = r::<B>(&g.dmod[i]);
                be.matmul_backward(
                    Some(w::<B>(&mut g.d_c)),
                    Some(dw),
                    db,
                    dm,
                    cond,
                    at(p, &bp.ada_w[i]),
                    d,
                )?;
                be.accumulate(w::<B>(dcond), r::<B>(&g.d_c), s.b * c)?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    /// Backward of `out = x + gate·y`: returns the buffer holding `dy` (`dres` itself when
    /// there is no gate); `dgate` goes to `dmod[chunk]`. `dres` (= d x) is unchanged.
    fn residual_backward<'g, B: Ops>(
        &self,
        be: &B,
        dres: &'g B::Buffer,
        d_y: &'g mut B::Buffer,
        dmod: &mut [B::Buffer],
        y: B::Ref<'_>,
        a: &BlockActs<B>,
        chunk: usize,
    ) -> Result<&'g B::Buffer> {
        if !self.spec.adaln {
            return Ok(dres);
        }
        let gate = r::<B>(&a.modv[chunk]);
        be.gate_backward(
            w::<B>(d_y),
            w::<B>(&mut dmod[chunk]),
            r::<B>(dres),
            gate,
            y,
            self.moddims(),
        )?;
        Ok(d_y)
    }

    /// Backward of pre-norm `which`: reads `d h` from `g.d_hs` (tp > 1) or `g.d_h`, writes
    /// `d x` into `g.d_x`.
    #[allow(clippy::too_many_arguments)]
    fn norm_backward<B: Ops>(
        &self,
        be: &B,
        p: B::Ref<'_>,
        mut dp: B::Mut<'_>,
        x: B::Ref<'_>,
        a: &BlockActs<B>,
        g: &mut BlockGrads<B>,
        which: usize,
    ) -> Result<()> {
        let (ln, mean, rstd, gain) = if which == 0 {
            (&a.ln1, &a.mean1, &a.rstd1, &self.params.norm1)
        } else {
            (&a.ln2, &a.mean2, &a.rstd2, &self.params.norm2)
        };
        if self.spec.adaln {
            let ln = r::<B>(ln.as_ref().expect("adaln keeps LN(x)"));
            let scale = r::<B>(&a.modv[3 * which + 1]);
            let (dsh, rest) = g.dmod.split_at_mut(3 * which + 1);
            let (dshift, dscale) = (&mut dsh[3 * which], &mut rest[0]);
            be.modulate_backward(
                w::<B>(&mut g.d_ln),
                w::<B>(dshift),
                w::<B>(dscale),
                r::<B>(g.d_hs.as_ref().unwrap_or(&g.d_h)),
                ln,
                scale,
                self.moddims(),
            )?;
            be.layernorm_backward(
                w::<B>(&mut g.d_x),
                None,
                None,
                r::<B>(&g.d_ln),
                x,
                None,
                r::<B>(mean),
                r::<B>(rstd),
                self.norm(),
            )?;
        } else {
            let gr = gain.as_ref().expect("RMSNorm blocks have gains");
            let dgain = at(B::rb(&mut dp), gr);
            be.rmsnorm_backward(
                w::<B>(&mut g.d_x),
                Some(dgain),
                r::<B>(g.d_hs.as_ref().unwrap_or(&g.d_h)),
                x,
                Some(at(p, gr)),
                r::<B>(rstd),
                self.norm(),
            )?;
        }
        Ok(())
    }
}
