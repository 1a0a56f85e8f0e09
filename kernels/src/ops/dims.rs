//! Dimensions of each op and their rules.

use super::Role;
use crate::backend::{Check, Slice};
use crate::{DType, Result};

/// `out (batch, M, N) = op(a) (batch, M, K) · op(b) (batch, K, N)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulDims {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// `a` is stored `(batch, K, M)`.
    pub trans_a: bool,
    /// `b` is stored `(batch, N, K)` (a `Linear` weight `(out, in)`).
    pub trans_b: bool,
}

impl MatmulDims {
    /// A `Linear` layer: `x (rows, in) · Wᵀ` with `W (out, in)`.
    pub fn linear(rows: usize, inp: usize, out: usize) -> Self {
        MatmulDims {
            batch: 1,
            m: rows,
            n: out,
            k: inp,
            trans_a: false,
            trans_b: true,
        }
    }

    fn shape(&self, which: char) -> String {
        let (b, m, n, k) = (self.batch, self.m, self.n, self.k);
        match which {
            'a' if self.trans_a => format!("(batch={b}, K={k}, M={m}) [trans_a]"),
            'a' => format!("(batch={b}, M={m}, K={k})"),
            'b' if self.trans_b => format!("(batch={b}, N={n}, K={k}) [trans_b]"),
            'b' => format!("(batch={b}, K={k}, N={n})"),
            'o' => format!("(batch={b}, M={m}, N={n})"),
            _ => format!("(N={n})"),
        }
    }

    /// Input dtypes: f64, f32, bf16, f16 (`a` and `b` alike). Output: the input dtype, or f32
    /// for 16-bit inputs. Bias: the output dtype. Returns `(input, output)` dtypes.
    /// In backward, `dout` and `dbias` have the output dtype and `da` the input dtype; `db`
    /// is a parameter gradient ([`Role::ParamGrad`]: bf16 inputs may accumulate it in f32), and
    /// so is `dbias` for bf16 inputs (bf16 or f32 whatever the output dtype).
    pub(crate) fn check_forward<O: Slice, R: Slice>(
        &self,
        op: &'static str,
        out: &O,
        a: &R,
        b: &R,
        bias: Option<&R>,
    ) -> Result<(DType, DType)> {
        let c = Check { op };
        let dt = c.dtype_in("a", a.dtype(), &[DType::F64, DType::F32, DType::BF16, DType::F16])?;
        let (bt, m, n, k) = (self.batch, self.m, self.n, self.k);
        c.arg("a", a, dt, bt * m * k, || self.shape('a'))?;
        c.arg("b", b, dt, bt * k * n, || self.shape('b'))?;
        let allowed_out: &[DType] = match dt {
            DType::BF16 | DType::F16 => &[dt, DType::F32],
            _ => &[dt],
        };
        let odt = c.dtype_in("out", out.dtype(), allowed_out)?;
        c.arg("out", out, odt, bt * m * n, || self.shape('o'))?;
        c.opt("bias", bias, odt, n, || self.shape('n'))?;
        Ok((dt, odt))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check_backward<M: Slice, R: Slice>(
        &self,
        op: &'static str,
        da: Option<&M>,
        db: Option<&M>,
        dbias: Option<&M>,
        dout: &R,
        a: &R,
        b: &R,
    ) -> Result<(DType, DType)> {
        let (dt, odt) = self.check_forward(op, dout, a, b, None)?;
        let c = Check { op };
        let (bt, m, n, k) = (self.batch, self.m, self.n, self.k);
        let grad = |arg: &'static str, v: Option<&M>, allowed: &[DType], len: usize, shape: char| match v {
            Some(v) => {
                c.dtype_in(arg, v.dtype(), allowed)?;
                c.len(arg, v.len(), len, || self.shape(shape))
            }
            None => Ok(()),
        };
        c.opt("da", da, dt, bt * m * k, || self.shape('a'))?;
        grad("db", db, Role::ParamGrad.allowed(dt), bt * k * n, 'b')?;
        let dbias_allowed = if dt == DType::BF16 {
            Role::ParamGrad.allowed(dt)
        } else {
            std::slice::from_ref(&odt)
        };
        grad("dbias", dbias, dbias_allowed, n, 'n')?;
        Ok((dt, odt))
    }
}

/// `N` rows of `C` channels, normalized over `C`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormDims {
    pub n: usize,
    pub c: usize,
    /// Added to the variance (mean square) before the square root.
    pub eps: f64,
}

impl NormDims {
    pub(crate) fn rows(&self) -> String {
        format!("(N={})", self.n)
    }
    pub(crate) fn full(&self) -> String {
        format!("(N={}, C={})", self.n, self.c)
    }
    pub(crate) fn chan(&self) -> String {
        format!("(C={})", self.c)
    }
    pub(crate) fn rule(&self, op: &'static str) -> Result<()> {
        let c = Check { op };
        c.rule(self.c > 0, "c", || {
            "the normalized dimension must not be empty".into()
        })?;
        c.rule(self.eps >= 0.0, "eps", || {
            format!("must be ≥ 0, got {}", self.eps)
        })
    }
}

/// `N` rows, SwiGLU hidden size `H` (input rows hold `2H`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwigluDims {
    pub n: usize,
    pub h: usize,
}

/// A 3-d tensor `(a, b, inner)` whose two outer axes [`crate::ShapeOps::swap_axes`] swaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwapDims {
    pub a: usize,
    pub b: usize,
    pub inner: usize,
}

impl SwapDims {
    pub fn numel(&self) -> usize {
        self.a * self.b * self.inner
    }
    /// The dims of the inverse swap.
    pub fn inverse(&self) -> Self {
        SwapDims {
            a: self.b,
            b: self.a,
            inner: self.inner,
        }
    }
}

/// AdaLN on a `(B, T, C)` stream; conditioning rows of `C` values, `cond_stride` apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModDims {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    /// Distance between sample `i` and `i+1` in the shift/scale/gate buffers (`C` when they
    /// are separate `(B, C)` buffers, `6C` for chunks of a fused AdaLN projection).
    pub cond_stride: usize,
}

impl ModDims {
    /// Separate, contiguous `(B, C)` conditioning buffers.
    pub fn new(b: usize, t: usize, c: usize) -> Self {
        ModDims {
            b,
            t,
            c,
            cond_stride: c,
        }
    }
    /// Length of a strided conditioning view: `(B−1)·stride + C`.
    pub fn cond_len(&self) -> usize {
        if self.b == 0 {
            0
        } else {
            (self.b - 1) * self.cond_stride + self.c
        }
    }
    pub(crate) fn stream(&self) -> String {
        format!("(B={}, T={}, C={})", self.b, self.t, self.c)
    }
    pub(crate) fn cond(&self) -> String {
        format!("(B={}, C={}) with stride {}", self.b, self.c, self.cond_stride)
    }
    pub(crate) fn rule(&self, op: &'static str) -> Result<()> {
        Check { op }.rule(self.cond_stride >= self.c, "cond_stride", || {
            format!("must be ≥ C={}, got {}", self.c, self.cond_stride)
        })
    }
}

/// RoPE on `(B, T, H, HD)` with a `(T, HD/2)` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeDims {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub hd: usize,
}

impl RopeDims {
    pub(crate) fn x(&self) -> String {
        format!("(B={}, T={}, H={}, HD={})", self.b, self.t, self.h, self.hd)
    }
    pub(crate) fn table(&self) -> String {
        format!("(T={}, HD/2={})", self.t, self.hd / 2)
    }
    pub(crate) fn rule(&self, op: &'static str) -> Result<()> {
        Check { op }.rule(self.hd.is_multiple_of(2), "hd", || {
            format!("rotary embedding needs an even head dim, got {}", self.hd)
        })
    }
}

/// Grouped-query attention dimensions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnDims {
    pub b: usize,
    /// Query tokens.
    pub tq: usize,
    /// Key/value tokens.
    pub tk: usize,
    /// Query heads.
    pub nh: usize,
    /// Key/value heads; must divide `nh` (query head `h` reads kv head `h / (nh/nkv)`).
    pub nkv: usize,
    pub hd: usize,
    /// Causal masking by global position: query `i` sees key `j` iff
    /// `k_start + j ≤ q_start + i`.
    pub causal: bool,
    /// Score scale, usually `1/√HD` (muP uses `1/HD`).
    pub scale: f64,
    /// Global position of the first query (context-parallel chunks start past 0).
    pub q_start: usize,
    /// Global position of the first key.
    pub k_start: usize,
}

impl AttnDims {
    /// Self-attention over `t` tokens with `1/√HD` scaling.
    pub fn new(b: usize, t: usize, nh: usize, nkv: usize, hd: usize, causal: bool) -> Self {
        AttnDims {
            b,
            tq: t,
            tk: t,
            nh,
            nkv,
            hd,
            causal,
            scale: 1.0 / (hd as f64).sqrt(),
            q_start: 0,
            k_start: 0,
        }
    }
    pub(crate) fn q(&self) -> String {
        format!("(B={}, TQ={}, NH={}, HD={})", self.b, self.tq, self.nh, self.hd)
    }
    pub(crate) fn kv(&self) -> String {
        format!("(B={}, TK={}, NKV={}, HD={})", self.b, self.tk, self.nkv, self.hd)
    }
    pub(crate) fn lse(&self) -> String {
        format!("(B={}, NH={}, TQ={})", self.b, self.nh, self.tq)
    }
    pub(crate) fn rule(&self, op: &'static str) -> Result<()> {
        let c = Check { op };
        c.rule(self.nkv > 0 && self.nh.is_multiple_of(self.nkv), "nkv", || {
            format!("kv heads ({}) must divide query heads ({})", self.nkv, self.nh)
        })?;
        c.rule(self.hd > 0, "hd", || "head dim must be positive".into())
    }
}

/// Cross-entropy over `N` rows of `V` logits, with z-loss weight `z_loss`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrossEntropyDims {
    pub n: usize,
    pub v: usize,
    pub z_loss: f64,
}

/// Embedding lookup of `N` ids into a `(V, C)` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbeddingDims {
    pub n: usize,
    pub v: usize,
    pub c: usize,
}

/// Video `(B, T, H, W, C)` cut into `(pt, ph, pw)` patches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchDims {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub pt: usize,
    pub ph: usize,
    pub pw: usize,
}

impl PatchDims {
    /// Tokens per sample: `T/pt · H/ph · W/pw`.
    pub fn tokens(&self) -> usize {
        (self.t / self.pt) * (self.h / self.ph) * (self.w / self.pw)
    }
    /// Values per token: `pt · ph · pw · C`.
    pub fn token_dim(&self) -> usize {
        self.pt * self.ph * self.pw * self.c
    }
    /// Elements of one side (video or tokens; the same count).
    pub fn numel(&self) -> usize {
        self.b * self.t * self.h * self.w * self.c
    }
    pub(crate) fn video(&self) -> String {
        format!(
            "(B={}, T={}, H={}, W={}, C={})",
            self.b, self.t, self.h, self.w, self.c
        )
    }
    pub(crate) fn patches(&self) -> String {
        format!(
            "(B={}, tokens={}, token_dim={})",
            self.b,
            self.tokens(),
            self.token_dim()
        )
    }
    pub(crate) fn rule(&self, op: &'static str) -> Result<()> {
        let c = Check { op };
        for (what, size, p) in [
            ("pt", self.t, self.pt),
            ("ph", self.h, self.ph),
            ("pw", self.w, self.pw),
        ] {
            c.rule(p > 0 && size.is_multiple_of(p), what, || {
                format!("patch size {p} must be positive and divide the video extent {size}")
            })?;
        }
        Ok(())
    }
}

/// Sinusoidal features of `N` timesteps, `DIM` wide.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimestepDims {
    pub n: usize,
    pub dim: usize,
    pub max_period: f64,
}

/// Hyper-parameters of one AdamW step. They are f64 so an f64 run steps with exactly its
/// values; an f32 kernel converts each once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// 1-based step number (for bias correction).
    pub step: u32,
    /// Multiplies the gradient first (gradient clipping, loss-scale removal).
    pub grad_scale: f64,
}

impl AdamW {
    pub(crate) fn rule(&self, op: &'static str) -> Result<()> {
        let c = Check { op };
        c.rule(self.step >= 1, "step", || "AdamW steps count from 1".into())?;
        c.rule((0.0..1.0).contains(&self.beta1), "beta1", || {
            format!("must be in [0, 1), got {}", self.beta1)
        })?;
        c.rule((0.0..1.0).contains(&self.beta2), "beta2", || {
            format!("must be in [0, 1), got {}", self.beta2)
        })
    }
}

/// AdEMAMix's slow EMA rate `beta3` and mixing weight `alpha` at this step (f64: `1 − β3` is
/// small, and its rounding would dominate the slow EMA).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mix {
    pub beta3: f64,
    pub alpha: f64,
}

/// One momentum step of a matrix optimizer (Muon, Scion): `g = grads·grad_scale`,
/// `m = mu·m + dampening·g`, then the update direction `u = g + mu·m` (Nesterov) or `u = m`.
/// Muon's dampening is 1, Scion's `1 − mu`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Momentum {
    pub mu: f64,
    pub dampening: f64,
    pub nesterov: bool,
    /// Multiplies the gradient first (gradient clipping).
    pub grad_scale: f64,
}

impl Momentum {
    pub(crate) fn rule(&self, op: &'static str) -> Result<()> {
        Check { op }.rule((0.0..1.0).contains(&self.mu), "mu", || {
            format!("momentum must be in [0, 1), got {}", self.mu)
        })
    }
}

/// The quintic Newton–Schulz iteration (coefficients 3.4445, −4.7750, 2.0315) on a row-major
/// `(rows, cols)` matrix `G`: `X₀ = G/(‖G‖_F + 10⁻⁷)` in the wide orientation (`Gᵀ` when
/// `rows > cols`), `steps` times `A = X·Xᵀ`, `X = a·X + (b·A + c·A·A)·X`, and `scale·X`
/// stored back in `G`'s orientation: an approximation of `scale·UVᵀ` for `G = UΣVᵀ`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NewtonSchulz {
    pub rows: usize,
    pub cols: usize,
    pub steps: usize,
    pub scale: f64,
}

impl NewtonSchulz {
    /// The coefficients `(a, b, c)`.
    pub const COEFFICIENTS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);
    /// `‖G‖_F` is offset by this before dividing.
    pub const EPS: f64 = 1e-7;

    /// `(r, k)`: the short and the long side.
    pub fn sides(&self) -> (usize, usize) {
        (self.rows.min(self.cols), self.rows.max(self.cols))
    }

    /// Elements of the `work` buffer: two `(r, k)` iterates and two `(r, r)` Gram matrices.
    pub fn work_len(&self) -> usize {
        let (r, k) = self.sides();
        2 * r * k + 2 * r * r
    }
}

/// What [`crate::OptimOps::matrix_normalize`] divides by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalize {
    /// The whole matrix by its Frobenius norm.
    Frobenius,
    /// Each row by its norm.
    Rows,
    /// Each column by its norm.
    Cols,
    /// Each element by its magnitude (its sign; zero stays zero).
    Sign,
}

/// `x (rows, cols)` row-major scaled to `scale·x/(‖part‖ + eps)` per part (`Sign`:
/// `scale·sign(x)`), norms summed in f64. A part of zeros stays zeros, also with `eps = 0`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormalizeDims {
    pub rows: usize,
    pub cols: usize,
    pub mode: Normalize,
    pub scale: f64,
    pub eps: f64,
}

impl NormalizeDims {
    pub(crate) fn rule(&self, op: &'static str) -> Result<()> {
        Check { op }.rule(self.eps >= 0.0, "eps", || {
            format!("must be ≥ 0, got {}", self.eps)
        })
    }
}

/// A RoPE angle table `(T, HD/2)` as `cos` and `sin`, computed in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeTable {
    pub cos: Vec<f64>,
    pub sin: Vec<f64>,
    pub tokens: usize,
    pub half: usize,
}

impl RopeTable {
    /// 1-D RoPE (text): pair `j` of a token at position `p` turns by `p·θ^(−2j/HD)`.
    pub fn one_d(positions: &[usize], head_dim: usize, theta: f64) -> Self {
        let half = head_dim / 2;
        let mut angles = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for j in 0..half {
                angles.push(p as f64 * theta.powf(-2.0 * j as f64 / head_dim as f64));
            }
        }
        Self::from_angles(angles, positions.len(), half)
    }

    /// 3-D RoPE (video): the `HD/2` pairs are cut into three bands (`bands[0]` pairs for time,
    /// `bands[1]` for height, `bands[2]` for width); within a band of `n` pairs, pair `j` of a
    /// token at coordinate `p` along that axis turns by `p·θ^(−j/n)`.
    /// `positions` lists each token's `(t, h, w)`.
    pub fn three_d(positions: &[[usize; 3]], bands: [usize; 3], theta: f64) -> Self {
        let half: usize = bands.iter().sum();
        let mut angles = Vec::with_capacity(positions.len() * half);
        for pos in positions {
            for (axis, &n) in bands.iter().enumerate() {
                for j in 0..n {
                    angles.push(pos[axis] as f64 * theta.powf(-(j as f64) / n as f64));
                }
            }
        }
        Self::from_angles(angles, positions.len(), half)
    }

    /// The default band split for a head dim: height and width get `⌊HD/6⌋` pairs each
    /// (rounded down), time gets the rest — time and space weigh about equally.
    pub fn default_bands(head_dim: usize) -> [usize; 3] {
        let half = head_dim / 2;
        let hw = half / 3;
        [half - 2 * hw, hw, hw]
    }

    /// Token coordinates of a `(T, H, W)` grid in row-major order (the patchify order).
    pub fn grid(t: usize, h: usize, w: usize) -> Vec<[usize; 3]> {
        let mut v = Vec::with_capacity(t * h * w);
        for i in 0..t {
            for j in 0..h {
                for k in 0..w {
                    v.push([i, j, k]);
                }
            }
        }
        v
    }

    fn from_angles(angles: Vec<f64>, tokens: usize, half: usize) -> Self {
        RopeTable {
            cos: angles.iter().map(|a| a.cos()).collect(),
            sin: angles.iter().map(|a| a.sin()).collect(),
            tokens,
            half,
        }
    }

    /// The table narrowed to f32.
    pub fn to_f32(&self) -> (Vec<f32>, Vec<f32>) {
        (
            self.cos.iter().map(|&x| x as f32).collect(),
            self.sin.iter().map(|&x| x as f32).collect(),
        )
    }
}

/// Which matmul operand a GEMM of a plan reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operand {
    A,
    B,
    DOut,
}

/// One row-major GEMM: `dst (m, n) (+)= op(lhs) (m, k) · op(rhs) (k, n)`, where `op(x) = xᵀ`
/// when the flag is set (then `x` is stored `(k, m)` or `(n, k)`). Every backend executes the
/// same plans, so forward and backward transposes are derived once, here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lhs: Operand,
    pub lhs_t: bool,
    pub rhs: Operand,
    pub rhs_t: bool,
    pub accumulate: bool,
}

impl MatmulDims {
    /// `out = op(a)·op(b)`.
    pub(crate) fn forward_gemm(&self) -> Gemm {
        let (m, n, k) = (self.m, self.n, self.k);
        Gemm {
            m,
            n,
            k,
            lhs: Operand::A,
            lhs_t: self.trans_a,
            rhs: Operand::B,
            rhs_t: self.trans_b,
            accumulate: false,
        }
    }
    /// `da = dout·op(b)ᵀ`, written in `a`'s layout (so transposed when `trans_a`).
    pub(crate) fn da_gemm(&self) -> Gemm {
        let (m, n, k) = (self.m, self.n, self.k);
        if self.trans_a {
            // da (K, M) = op(b) (K, N) · doutᵀ (N, M)
            Gemm {
                m: k,
                n: m,
                k: n,
                lhs: Operand::B,
                lhs_t: self.trans_b,
                rhs: Operand::DOut,
                rhs_t: true,
                accumulate: false,
            }
        } else {
            // da (M, K) = dout (M, N) · op(b)ᵀ (N, K)
            Gemm {
                m,
                n: k,
                k: n,
                lhs: Operand::DOut,
                lhs_t: false,
                rhs: Operand::B,
                rhs_t: !self.trans_b,
                accumulate: false,
            }
        }
    }
    /// `db += op(a)ᵀ·dout`, written in `b`'s layout.
    pub(crate) fn db_gemm(&self) -> Gemm {
        let (m, n, k) = (self.m, self.n, self.k);
        if self.trans_b {
            // db (N, K) += doutᵀ (N, M) · op(a) (M, K)
            Gemm {
                m: n,
                n: k,
                k: m,
                lhs: Operand::DOut,
                lhs_t: true,
                rhs: Operand::A,
                rhs_t: self.trans_a,
                accumulate: true,
            }
        } else {
            // db (K, N) += op(a)ᵀ (K, M) · dout (M, N)
            Gemm {
                m: k,
                n,
                k: m,
                lhs: Operand::A,
                lhs_t: !self.trans_a,
                rhs: Operand::DOut,
                rhs_t: false,
                accumulate: true,
            }
        }
    }
}
