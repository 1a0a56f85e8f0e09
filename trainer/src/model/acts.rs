//! What a block keeps between forward and backward, and the gradient scratch its backward
//! reuses. Shapes as in [`super::block`].

use super::block::BlockSpec;
use super::Alloc;
use crate::Result;
use weft_kernels::Backend;

/// What forward keeps for backward (one per block, or one shared set when recomputing).
pub struct BlockActs<B: Backend> {
    pub(super) ln1: Option<B::Buffer>, // (B, T, C) LN(x) before modulation (adaln)
    pub(super) mean1: B::Buffer,       // (B·T)
    pub(super) rstd1: B::Buffer,       // (B·T)
    pub(super) h1: B::Buffer,          // (B, T, C) attention input
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
    pub(super) y1: B::Buffer,          // (B, T, C) attention output projection
    pub(super) x_mid: B::Buffer,       // (B, T, C) residual after attention
    pub(super) ln2: Option<B::Buffer>, // (B, T, C)
    pub(super) mean2: B::Buffer,       // (B·T)
    pub(super) rstd2: B::Buffer,       // (B·T)
    pub(super) h2: B::Buffer,          // (B, T, C) MLP input
    pub(super) f: B::Buffer,           // (B, T, F) or (B, T, 2F) for SwiGLU
    pub(super) a: B::Buffer,           // (B, T, F)
    pub(super) y2: B::Buffer,          // (B, T, C)
    pub(super) modv: Vec<B::Buffer>,   // 6 × (B, C) AdaLN chunks
}

impl<B: Backend> BlockActs<B> {
    pub(crate) fn new(al: &Alloc<'_, B>, s: &BlockSpec) -> Result<Self> {
        let (n, c) = (s.rows(), s.c);
        let (nq, nk) = (n * s.nh * s.hd, n * s.nkv * s.hd);
        Ok(BlockActs {
            ln1: al.opt(s.adaln, n * c)?,
            mean1: al.buf(n)?,
            rstd1: al.buf(n)?,
            h1: al.buf(n * c)?,
            q: al.buf(nq)?,
            k: al.buf(nk)?,
            v: al.buf(nk)?,
            qn: al.opt(s.qk_norm, nq)?,
            kn: al.opt(s.qk_norm, nk)?,
            q_rstd: al.buf(n * s.nh)?,
            k_rstd: al.buf(n * s.nkv)?,
            qr: al.buf(nq)?,
            kr: al.buf(nk)?,
            att: al.buf(nq)?,
            lse: al.buf(n * s.nh)?,
            y1: al.buf(n * c)?,
            x_mid: al.buf(n * c)?,
            ln2: al.opt(s.adaln, n * c)?,
            mean2: al.buf(n)?,
            rstd2: al.buf(n)?,
            h2: al.buf(n * c)?,
            f: al.buf(n * s.fc1_out())?,
            a: al.buf(n * s.hidden)?,
            y2: al.buf(n * c)?,
            modv: (0..if s.adaln { 6 } else { 0 })
                .map(|_| al.buf(s.b * c))
                .collect::<Result<_>>()?,
        })
    }
}

/// Gradient scratch shared by all blocks (backward runs one block at a time).
pub struct BlockGrads<B: Backend> {
    pub(super) d_h: B::Buffer,       // (B, T, C)
    pub(super) d_x: B::Buffer,       // (B, T, C)
    pub(super) d_tmp: B::Buffer,     // (B, T, C)
    pub(super) d_ln: B::Buffer,      // (B, T, C)
    pub(super) d_y: B::Buffer,       // (B, T, C)
    pub(super) dq: B::Buffer,        // (B, T, NH, HD)
    pub(super) dk: B::Buffer,        // (B, T, NKV, HD)
    pub(super) dv: B::Buffer,        // (B, T, NKV, HD)
    pub(super) dqr: B::Buffer,       // (B, T, NH, HD)
    pub(super) dkr: B::Buffer,       // (B, T, NKV, HD)
    pub(super) d_att: B::Buffer,     // (B, T, NH, HD)
    pub(super) d_f: B::Buffer,       // (B, T, F or 2F)
    pub(super) d_a: B::Buffer,       // (B, T, F)
    pub(super) dmod: Vec<B::Buffer>, // 6 × (B, C)
    pub(super) d_c: B::Buffer,       // (B, C)
}

impl<B: Backend> BlockGrads<B> {
    pub(crate) fn new(al: &Alloc<'_, B>, s: &BlockSpec) -> Result<Self> {
        let (n, c) = (s.rows(), s.c);
        let (nq, nk) = (n * s.nh * s.hd, n * s.nkv * s.hd);
        Ok(BlockGrads {
            d_h: al.buf(n * c)?,
            d_x: al.buf(n * c)?,
            d_tmp: al.buf(n * c)?,
            d_ln: al.buf(n * c)?,
            d_y: al.buf(n * c)?,
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
