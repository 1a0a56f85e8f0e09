//! What a block keeps between forward and backward, and the gradient scratch its backward
//! reuses. Shapes as in [`super::block`].

use super::spec::BlockSpec;
use super::Alloc;
use crate::Result;
use weft_kernels::Backend;

/// What forward keeps for backward (one per block, or one shared set when recomputing).
/// `T` is the tokens of the parallel regions (the cp rank's); between them, on the residual
/// stream, each tp rank holds `T/tp` (sequence parallelism).
pub struct BlockActs<B: Backend> {
    pub(super) ln1: Option<B::Buffer>, // (B, T/tp, C) LN(x) before modulation (adaln)
    pub(super) mean1: B::Buffer,       // (B·T/tp)
    pub(super) rstd1: B::Buffer,       // (B·T/tp)
    pub(super) h1: B::Buffer,          // (B, T/tp, C) attention input
    pub(super) h1g: Option<B::Buffer>, // (B, T, C) h1 of all tp ranks (tp > 1)
    pub(super) q: B::Buffer,           // (B, T, NH, HD)
    pub(super) k: B::Buffer,           // (B, T, NKV, HD)
    pub(super) v: B::Buffer,           // (B, T, NKV, HD)
    pub(super) qn: Option<B::Buffer>,  // (B, T, NH, HD) after QK-norm
    pub(super) kn: Option<B::Buffer>,  // (B, T, NKV, HD)
    pub(super) q_rstd: B::Buffer,      // (B·T·NH)
    pub(super) k_rstd: B::Buffer,      // (B·T·NKV)
    pub(super) qr: B::Buffer,          // (B, T, NH, HD) after RoPE
    pub(super) kr: B::Buffer,          // (B, T, NKV, HD)
    pub(super) att: B::Buffer,         // (B, T, NH, HD)
    pub(super) lse: B::Buffer,         // (B, NH, T)
    pub(super) y1: B::Buffer,          // (B, T, C) attention output projection (partial if tp > 1)
    pub(super) y1s: Option<B::Buffer>, // (B, T/tp, C) y1 summed over tp, this rank's tokens
    pub(super) x_mid: B::Buffer,       // (B, T/tp, C) residual after attention
    pub(super) ln2: Option<B::Buffer>, // (B, T/tp, C)
    pub(super) mean2: B::Buffer,       // (B·T/tp)
    pub(super) rstd2: B::Buffer,       // (B·T/tp)
    pub(super) h2: B::Buffer,          // (B, T/tp, C) MLP input
    pub(super) h2g: Option<B::Buffer>, // (B, T, C)
    pub(super) f: B::Buffer,           // (B, T, F) or (B, T, 2F) for SwiGLU
    pub(super) a: B::Buffer,           // (B, T, F)
    pub(super) y2: B::Buffer,          // (B, T, C) (partial if tp > 1)
    pub(super) y2s: Option<B::Buffer>, // (B, T/tp, C)
    pub(super) modv: Vec<B::Buffer>,   // 6 × (B, C) AdaLN chunks
}

impl<B: Backend> BlockActs<B> {
    pub(crate) fn new(al: &Alloc<'_, B>, s: &BlockSpec) -> Result<Self> {
        let (n, c, ns) = (s.rows(), s.c, s.sp_rows());
        let (nq, nk) = (n * s.nh * s.hd, n * s.nkv * s.hd);
        let tp = s.tp > 1;
        Ok(BlockActs {
            ln1: al.opt(s.adaln, ns * c)?,
            mean1: al.stat(ns)?,
            rstd1: al.stat(ns)?,
            h1: al.buf(ns * c)?,
            h1g: al.opt(tp, n * c)?,
            q: al.buf(nq)?,
            k: al.buf(nk)?,
            v: al.buf(nk)?,
            qn: al.opt(s.qk_norm, nq)?,
            kn: al.opt(s.qk_norm, nk)?,
            q_rstd: al.stat(n * s.nh)?,
            k_rstd: al.stat(n * s.nkv)?,
            qr: al.buf(nq)?,
            kr: al.buf(nk)?,
            att: al.buf(nq)?,
            lse: al.stat(n * s.nh)?,
            y1: al.buf(n * c)?,
            y1s: al.opt(tp, ns * c)?,
            x_mid: al.buf(ns * c)?,
            ln2: al.opt(s.adaln, ns * c)?,
            mean2: al.stat(ns)?,
            rstd2: al.stat(ns)?,
            h2: al.buf(ns * c)?,
            h2g: al.opt(tp, n * c)?,
            f: al.buf(n * s.fc1_out())?,
            a: al.buf(n * s.hidden)?,
            y2: al.buf(n * c)?,
            y2s: al.opt(tp, ns * c)?,
            modv: (0..if s.adaln { 6 } else { 0 })
                .map(|_| al.buf(s.b * c))
                .collect::<Result<_>>()?,
        })
    }
}

/// Elements [`BlockActs::new`] allocates for `s` (counted without allocating; the tests hold
/// the two equal): `(values, statistics)`, the statistics being the norms' means and
/// reciprocal deviations and attention's log-sum-exps.
pub(crate) fn act_elems(s: &BlockSpec) -> (f64, f64) {
    let f = |x: usize| x as f64;
    let (n, c, ns, b) = (f(s.rows()), f(s.c), f(s.sp_rows()), f(s.b));
    let (nq, nk) = (n * f(s.nh) * f(s.hd), n * f(s.nkv) * f(s.hd));
    let on = |yes: bool, x: f64| if yes { x } else { 0.0 };
    let tp = s.tp > 1;
    let stats = 4.0 * ns // mean1, rstd1, mean2, rstd2
        + 2.0 * n * f(s.nh) + n * f(s.nkv); // q_rstd, lse; k_rstd
    let values = on(s.adaln, ns * c) * 2.0 // ln1, ln2
        + 3.0 * ns * c // h1, x_mid, h2
        + on(tp, 2.0 * n * c) // h1g, h2g
        + 3.0 * nq + 3.0 * nk // q, qr, att; k, v, kr
        + on(s.qk_norm, nq + nk) // qn, kn
        + 2.0 * n * c // y1, y2
        + on(tp, 2.0 * ns * c) // y1s, y2s
        + n * f(s.fc1_out()) + n * f(s.hidden) // f, a
        + on(s.adaln, 6.0 * b * c); // modv
    (values, stats)
}

/// Elements [`BlockGrads::new`] allocates for `s`.
pub(crate) fn grad_elems(s: &BlockSpec) -> f64 {
    let f = |x: usize| x as f64;
    let (n, c, ns, b) = (f(s.rows()), f(s.c), f(s.sp_rows()), f(s.b));
    let (nq, nk) = (n * f(s.nh) * f(s.hd), n * f(s.nkv) * f(s.hd));
    let tp = if s.tp > 1 { 1.0 } else { 0.0 };
    2.0 * n * c // d_h, d_tmp
        + tp * (ns * c + 2.0 * n * c) // d_hs; d_yg, stage
        + 3.0 * ns * c // d_x, d_ln, d_y
        + 3.0 * nq + 3.0 * nk // dq, dqr, d_att; dk, dv, dkr
        + n * f(s.fc1_out()) + n * f(s.hidden) // d_f, d_a
        + 7.0 * b * c // dmod, d_c
}

/// Gradient scratch shared by all blocks (backward runs one block at a time).
pub struct BlockGrads<B: Backend> {
    pub(super) d_h: B::Buffer,           // (B, T, C)
    pub(super) d_hs: Option<B::Buffer>,  // (B, T/tp, C) d_h summed over tp (tp > 1)
    pub(super) d_x: B::Buffer,           // (B, T/tp, C)
    pub(super) d_tmp: B::Buffer,         // (B, T, C)
    pub(super) d_ln: B::Buffer,          // (B, T/tp, C)
    pub(super) d_y: B::Buffer,           // (B, T/tp, C)
    pub(super) d_yg: Option<B::Buffer>,  // (B, T, C) d_y of all tp ranks
    pub(super) stage: Option<B::Buffer>, // (B, T, C) rank-major staging of the SP collectives
    pub(super) dq: B::Buffer,            // (B, T, NH, HD)
    pub(super) dk: B::Buffer,            // (B, T, NKV, HD)
    pub(super) dv: B::Buffer,            // (B, T, NKV, HD)
    pub(super) dqr: B::Buffer,           // (B, T, NH, HD)
    pub(super) dkr: B::Buffer,           // (B, T, NKV, HD)
    pub(super) d_att: B::Buffer,         // (B, T, NH, HD)
    pub(super) d_f: B::Buffer,           // (B, T, F or 2F)
    pub(super) d_a: B::Buffer,           // (B, T, F)
    pub(super) dmod: Vec<B::Buffer>,     // 6 × (B, C)
    pub(super) d_c: B::Buffer,           // (B, C)
}

impl<B: Backend> BlockGrads<B> {
    pub(crate) fn new(al: &Alloc<'_, B>, s: &BlockSpec) -> Result<Self> {
        let (n, c, ns) = (s.rows(), s.c, s.sp_rows());
        let (nq, nk) = (n * s.nh * s.hd, n * s.nkv * s.hd);
        let tp = s.tp > 1;
        Ok(BlockGrads {
            d_h: al.buf(n * c)?,
            d_hs: al.opt(tp, ns * c)?,
            d_x: al.buf(ns * c)?,
            d_tmp: al.buf(n * c)?,
            d_ln: al.buf(ns * c)?,
            d_y: al.buf(ns * c)?,
            d_yg: al.opt(tp, n * c)?,
            stage: al.opt(tp, n * c)?,
            dq: al.buf(nq)?,
            dk: al.buf(nk)?,
            dv: al.buf(nk)?,
            dqr: al.buf(nq)?,
            dkr: al.buf(nk)?,
            d_att: al.buf(nq)?,
            d_f: al.buf(n * s.fc1_out())?,
            d_a: al.buf(n * s.hidden)?,
            dmod: (0..6).map(|_| al.buf(s.b * c)).collect::<Result<_>>()?,
            d_c: al.buf(s.b * c)?,
        })
    }
}
