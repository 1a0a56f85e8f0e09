//! A block's static shape and options ([`BlockSpec`]): what its parameters, activations and
//! FLOPs are computed from.

/// The MLP's nonlinearity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mlp {
    Gelu,
    Swiglu,
}

/// Static shape and options of a block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockSpec {
    pub b: usize,
    /// Tokens per sample inside the parallel regions (the cp rank's share of the sequence).
    pub t: usize,
    pub c: usize,
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
    /// MLP hidden size `F`.
    pub hidden: usize,
    pub mlp: Mlp,
    /// AdaLN-Zero conditioning (DiT) instead of RMSNorm gains (GPT).
    pub adaln: bool,
    pub qk_norm: bool,
    pub causal: bool,
    pub bias: bool,
    pub eps: f64,
    /// Tensor-parallel size: `nh`, `nkv`, `hidden` are local; the residual stream holds `t/tp`
    /// tokens per sample.
    pub tp: usize,
    /// Attention score scale: `1/√HD`, or muP's `√HD_base/HD`.
    pub attn_scale: f64,
}

impl BlockSpec {
    /// Rows inside the parallel regions.
    pub(super) fn rows(&self) -> usize {
        self.b * self.t
    }
    /// Rows on the residual stream (sequence-parallel).
    pub(super) fn sp_rows(&self) -> usize {
        self.b * self.t / self.tp
    }
    pub(super) fn fc1_out(&self) -> usize {
        match self.mlp {
            Mlp::Gelu => self.hidden,
            Mlp::Swiglu => 2 * self.hidden,
        }
    }
    /// Forward+backward matmul and attention FLOPs of one block.
    pub fn flops(&self) -> f64 {
        let (n, c) = (self.rows(), self.c);
        let qkv = (self.nh + 2 * self.nkv) * self.hd;
        let lin = super::linear_flops(n, c, qkv)
            + super::linear_flops(n, self.nh * self.hd, c)
            + super::linear_flops(n, c, self.fc1_out())
            + super::linear_flops(n, self.hidden, c)
            + if self.adaln {
                super::linear_flops(self.b, c, 6 * c)
            } else {
                0.0
            };
        // QKᵀ and PV: 2·2·T²·HD per head forward, ×3 for forward+backward (halved if causal).
        let mut attn = 12.0 * (self.b * self.nh * self.hd) as f64 * (self.t * self.t) as f64;
        if self.causal {
            attn /= 2.0;
        }
        lin + attn
    }
}
