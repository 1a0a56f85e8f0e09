//! CUDA implementation of the optimizer ops (`kernels/cuda/optim.cu`): f32 parameters and
//! state, with the CPU backend's argument checks. Newton–Schulz's products run on cuBLASLt.
//!
//! The update kernels step a rank's flat shard through a device segment table; an op's one
//! range is a table of one segment (the whole range, learning-rate scale 1, decay on),
//! uploaded to scratch through the pinned staging ring without waiting. Σx² is a
//! deterministic two-pass f64 sum: per-chunk partials in scratch, then one block adds them in
//! order.

use super::device::{grid_dim, suffix, CudaBackend, CudaMut, CudaRef, KArg};
use super::modules::Module;
use crate::backend::Check;
use crate::ops::{
    check, AdamW, Gemm, Mix, Momentum, NewtonSchulz, Normalize, NormalizeDims, Operand, OptimOps,
    REFERENCE_FLOATS,
};
use crate::{DType, Result};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::LaunchConfig;

/// The optimizer dtypes of the CUDA kernels: f32 master weights and state.
const OPTIM_FLOATS: &[DType] = &[DType::F32];

/// Elements per block-iteration of the updates (`OPTIM_ITEMS · 256` in optim.cu).
const UPDATE_CHUNK: usize = 16 * 256;

/// Elements per partial of Σx² (`OPTIM_SUM_CHUNK` in optim.cu).
const SUM_CHUNK: usize = 8192;

/// One entry of optim.cu's segment table (24 bytes, little-endian): the whole range `0..n`,
/// learning-rate scale 1, weight decay on.
pub(crate) fn one_segment(n: usize) -> [u8; 24] {
    let mut s = [0u8; 24];
    s[8..16].copy_from_slice(&(n as u64).to_le_bytes());
    s[16..20].copy_from_slice(&1.0f32.to_le_bytes());
    s[20..24].copy_from_slice(&1u32.to_le_bytes());
    s
}

/// `1 − β^step` in f64, as the CPU computes the bias corrections.
fn correction(beta: f64, step: u32) -> f64 {
    1.0 - beta.powi(step as i32)
}

impl CudaBackend {
    /// An update over `n` elements: the one-segment table in scratch, then `args(table)`.
    fn update(
        &self,
        op: &'static str,
        kernel: &str,
        n: usize,
        args: impl FnOnce(CUdeviceptr) -> Vec<KArg>,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig {
            grid_dim: (grid_dim(op, "n", n.div_ceil(UPDATE_CHUNK))?, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        self.with_scratch(24, |table| {
            self.upload_bytes(&one_segment(n), table)?;
            // SAFETY: every state buffer holds n f32 (checked); the table one segment within
            // 0..n, enqueued before the launch on the same stream.
            unsafe { self.launch(op, Module::Optim, kernel, cfg, &args(table)) }
        })
    }

    /// `partials[b] = Σ x²` over chunks of `x` (in scratch), then `then(partials, parts)`.
    fn with_partials(
        &self,
        op: &'static str,
        x: (CUdeviceptr, DType),
        n: usize,
        then: impl FnOnce(CUdeviceptr, usize) -> Result<()>,
    ) -> Result<()> {
        self.with_chunk_sums(op, "sum_squares_partial", x, n, then)
    }

    /// The first pass of a two-pass sum: `partial` (`sum_squares_partial` or `sum_partial`)
    /// writes one f64 per chunk of `x` into scratch, then `then(partials, parts)`.
    fn with_chunk_sums(
        &self,
        op: &'static str,
        partial: &str,
        x: (CUdeviceptr, DType),
        n: usize,
        then: impl FnOnce(CUdeviceptr, usize) -> Result<()>,
    ) -> Result<()> {
        let parts = n.div_ceil(SUM_CHUNK);
        self.with_scratch(parts * 8, |partials| {
            if parts > 0 {
                let cfg = LaunchConfig {
                    grid_dim: (grid_dim(op, "n", parts)?, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                let args = [KArg::U64(partials), KArg::U64(x.0), KArg::U64(n as u64)];
                let kernel = format!("{partial}_{}", suffix(x.1));
                // SAFETY: `x` holds n elements; the scratch ceil(n / SUM_CHUNK) doubles.
                unsafe { self.launch(op, Module::Optim, &kernel, cfg, &args)? };
            }
            then(partials, parts)
        })
    }

    /// Σ x² by [`CudaBackend::with_partials`], then `finish(acc, partials, parts)`.
    fn sum_squares_into(
        &self,
        op: &'static str,
        x: (CUdeviceptr, DType),
        n: usize,
        finish: &str,
        acc: CUdeviceptr,
    ) -> Result<()> {
        self.with_partials(op, x, n, |partials, parts| {
            let cfg = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (1024, 1, 1),
                shared_mem_bytes: 0,
            };
            let args = [KArg::U64(acc), KArg::U64(partials), KArg::U64(parts as u64)];
            // SAFETY: `acc` holds one element of the kernel's dtype (checked).
            unsafe { self.launch(op, Module::Optim, finish, cfg, &args) }
        })
    }

    /// `x (rows, cols)` scaled by its norms (the op's checks done).
    fn normalize(&self, op: &'static str, x: CUdeviceptr, d: &NormalizeDims) -> Result<()> {
        let (rows, cols, n) = (d.rows, d.cols, d.rows * d.cols);
        if n == 0 {
            return Ok(());
        }
        let (scale, eps) = (KArg::F64(d.scale), KArg::F64(d.eps));
        let (r, c) = (KArg::U64(rows as u64), KArg::U64(cols as u64));
        // SAFETY (every launch): `x` holds rows·cols f32 (checked); partials `parts` doubles.
        match d.mode {
            Normalize::Frobenius => self.with_partials(op, (x, DType::F32), n, |partials, parts| {
                let args = [
                    KArg::U64(x),
                    KArg::U64(n as u64),
                    KArg::U64(partials),
                    KArg::U64(parts as u64),
                    scale,
                    eps,
                ];
                unsafe { self.launch_1d(op, Module::Optim, "normalize_frobenius_f32", n, &args) }
            }),
            Normalize::Rows => {
                let cfg = LaunchConfig {
                    grid_dim: (rows.min(65535) as u32, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                let args = [KArg::U64(x), r, c, scale, eps];
                unsafe { self.launch(op, Module::Optim, "normalize_rows_f32", cfg, &args) }
            }
            Normalize::Cols => {
                let args = [KArg::U64(x), r, c, scale, eps];
                unsafe { self.launch_1d(op, Module::Optim, "normalize_cols_f32", cols, &args) }
            }
            Normalize::Sign => {
                let args = [KArg::U64(x), KArg::U64(n as u64), scale];
                unsafe { self.launch_1d(op, Module::Optim, "normalize_sign_f32", n, &args) }
            }
        }
    }

    /// `out (cols, rows) = scale · x (rows, cols)ᵀ`; with `rows = 1`, a scaled copy.
    fn transpose_scaled(
        &self,
        out: CUdeviceptr,
        x: CUdeviceptr,
        rows: usize,
        cols: usize,
        scale: f64,
    ) -> Result<()> {
        const OP: &str = "newton_schulz";
        let args = [
            KArg::U64(out),
            KArg::U64(x),
            KArg::U64(rows as u64),
            KArg::U64(cols as u64),
            KArg::F64(scale),
        ];
        // SAFETY: the callers pass buffers of rows·cols f32 (checked against the op's dims).
        unsafe { self.launch_1d(OP, Module::Optim, "transpose_scaled_f32", rows * cols, &args) }
    }
}

impl OptimOps for CudaBackend {
    fn sum_squares(&self, acc: CudaMut<'_>, x: CudaRef<'_>, n: usize) -> Result<()> {
        const OP: &str = "sum_squares";
        let (xdt, adt) = check::sum_squares(OP, REFERENCE_FLOATS, &acc, &x, n)?;
        // The CUDA kernels read f32 or bf16 (into an f32 or f64 `acc`).
        Check { op: OP }.dtype_in("x", xdt, &[DType::F32, DType::BF16])?;
        let finish = match adt {
            DType::F64 => "sum_squares_finish_f64",
            _ => "sum_squares_finish_f32",
        };
        self.sum_squares_into(OP, (x.ptr, xdt), n, finish, acc.ptr)
    }

    fn sum(&self, acc: CudaMut<'_>, x: CudaRef<'_>, alpha: f64, n: usize) -> Result<()> {
        const OP: &str = "sum";
        let (xdt, adt) = check::sum_squares(OP, REFERENCE_FLOATS, &acc, &x, n)?;
        Check { op: OP }.dtype_in("x", xdt, &[DType::F32, DType::BF16])?;
        self.with_chunk_sums(OP, "sum_partial", (x.ptr, xdt), n, |partials, parts| {
            let cfg = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (1024, 1, 1),
                shared_mem_bytes: 0,
            };
            let args = [
                KArg::U64(acc.ptr),
                KArg::U64(partials),
                KArg::U64(parts as u64),
                KArg::F64(alpha),
            ];
            let finish = format!("sum_finish_{}", suffix(adt));
            // SAFETY: `acc` holds one element of the kernel's dtype (checked).
            unsafe { self.launch(OP, Module::Optim, &finish, cfg, &args) }
        })
    }

    fn l2norm_forward(&self, out: CudaMut<'_>, x: CudaRef<'_>, n: usize) -> Result<()> {
        const OP: &str = "l2norm_forward";
        check::l2norm_forward(OPTIM_FLOATS, &out, &x, n)?;
        self.sum_squares_into(OP, (x.ptr, DType::F32), n, "l2norm_forward_finish_f32", out.ptr)
    }

    fn l2norm_backward(
        &self,
        dx: CudaMut<'_>,
        dout: CudaRef<'_>,
        x: CudaRef<'_>,
        norm: CudaRef<'_>,
        n: usize,
    ) -> Result<()> {
        const OP: &str = "l2norm_backward";
        check::l2norm_backward(OPTIM_FLOATS, &dx, &dout, &x, &norm, n)?;
        let args = [
            KArg::U64(dx.ptr),
            KArg::U64(dout.ptr),
            KArg::U64(x.ptr),
            KArg::U64(norm.ptr),
            KArg::U64(n as u64),
        ];
        // SAFETY: `x`, `dx` hold n f32, `dout` and `norm` one (checked).
        unsafe { self.launch_1d(OP, Module::Optim, "l2norm_backward_f32", n, &args) }
    }

    fn adamw_update(
        &self,
        params: CudaMut<'_>,
        m: CudaMut<'_>,
        v: CudaMut<'_>,
        grads: CudaRef<'_>,
        h: AdamW,
        n: usize,
    ) -> Result<()> {
        const OP: &str = "adamw_update";
        check::update(
            OP,
            OPTIM_FLOATS,
            &h,
            &grads,
            &[("params", &params), ("m", &m), ("v", &v)],
            n,
        )?;
        let bc2_sqrt = correction(h.beta2, h.step).sqrt() as f32;
        self.update(OP, "adamw_update_f32", n, |table| {
            vec![
                KArg::U64(params.ptr),
                KArg::U64(m.ptr),
                KArg::U64(v.ptr),
                KArg::U64(grads.ptr),
                KArg::U64(table),
                KArg::U64(1),
                KArg::U64(n as u64),
                KArg::F64(h.lr),
                KArg::F64(h.weight_decay),
                KArg::F64(correction(h.beta1, h.step)),
                KArg::F32(h.beta1 as f32),
                KArg::F32(h.beta2 as f32),
                KArg::F32(h.eps as f32),
                KArg::F32(bc2_sqrt),
                KArg::F32(h.grad_scale as f32),
            ]
        })
    }

    fn ademamix_update(
        &self,
        params: CudaMut<'_>,
        m: CudaMut<'_>,
        m2: CudaMut<'_>,
        v: CudaMut<'_>,
        grads: CudaRef<'_>,
        h: AdamW,
        mix: Mix,
        n: usize,
    ) -> Result<()> {
        const OP: &str = "ademamix_update";
        let state = [("params", &params), ("m", &m), ("m2", &m2), ("v", &v)];
        check::update(OP, OPTIM_FLOATS, &h, &grads, &state, n)?;
        let bc2_sqrt = correction(h.beta2, h.step).sqrt() as f32;
        self.update(OP, "ademamix_update_f32", n, |table| {
            vec![
                KArg::U64(params.ptr),
                KArg::U64(m.ptr),
                KArg::U64(m2.ptr),
                KArg::U64(v.ptr),
                KArg::U64(grads.ptr),
                KArg::U64(table),
                KArg::U64(1),
                KArg::U64(n as u64),
                KArg::F64(h.lr),
                KArg::F64(h.weight_decay),
                KArg::F32(correction(h.beta1, h.step) as f32),
                KArg::F32(h.beta1 as f32),
                KArg::F32(h.beta2 as f32),
                KArg::F32(mix.beta3 as f32),
                KArg::F32(mix.alpha as f32),
                KArg::F32(h.eps as f32),
                KArg::F32(bc2_sqrt),
                KArg::F32(h.grad_scale as f32),
            ]
        })
    }

    fn momentum_update(
        &self,
        m: CudaMut<'_>,
        u: CudaMut<'_>,
        grads: CudaRef<'_>,
        h: Momentum,
        n: usize,
    ) -> Result<()> {
        const OP: &str = "momentum_update";
        check::momentum_update(OPTIM_FLOATS, &m, &u, &grads, &h, n)?;
        let args = [
            KArg::U64(m.ptr),
            KArg::U64(u.ptr),
            KArg::U64(grads.ptr),
            KArg::U64(n as u64),
            KArg::F64(h.mu),
            KArg::F64(h.dampening),
            KArg::F64(h.grad_scale),
            KArg::U64(h.nesterov as u64),
        ];
        // SAFETY: `m`, `u`, `grads` hold n f32 (checked).
        unsafe { self.launch_1d(OP, Module::Optim, "momentum_update_f32", n, &args) }
    }

    /// The iterate `X` and the Gram matrices live in `work`: `[X | next | A | B]`. Each step
    /// is three cuBLASLt products, the polynomial folded into their scaling:
    /// `A = X·Xᵀ`, `B = c·A·A + b·A`, `next = B·X + a·X`.
    fn newton_schulz(&self, x: CudaMut<'_>, work: CudaMut<'_>, d: NewtonSchulz) -> Result<()> {
        const OP: &str = "newton_schulz";
        check::newton_schulz(OPTIM_FLOATS, &x, &work, &d)?;
        let (rows, cols) = (d.rows, d.cols);
        if rows * cols == 0 {
            return Ok(());
        }
        let (r, k) = d.sides();
        let f = DType::F32.size() as u64;
        let mut it = work.ptr;
        let mut next = it + (r * k) as u64 * f;
        let gram = next + (r * k) as u64 * f;
        let poly = gram + (r * r) as u64 * f;
        // X₀: the wide orientation, normalized.
        if rows <= cols {
            self.transpose_scaled(it, x.ptr, 1, rows * cols, 1.0)?;
        } else {
            self.transpose_scaled(it, x.ptr, rows, cols, 1.0)?;
        }
        let unit = NormalizeDims {
            rows: r,
            cols: k,
            mode: Normalize::Frobenius,
            scale: 1.0,
            eps: NewtonSchulz::EPS,
        };
        self.normalize(OP, it, &unit)?;
        let (a, b, c) = NewtonSchulz::COEFFICIENTS;
        let gemm = |m, n, kk, rhs_t| Gemm {
            m,
            n,
            k: kk,
            lhs: Operand::A,
            lhs_t: false,
            rhs: Operand::B,
            rhs_t,
            accumulate: false,
        };
        let f32s = (DType::F32, DType::F32);
        for _ in 0..d.steps {
            self.gemm_scaled(&gemm(r, r, k, true), 1, f32s, (gram, it, it), (1.0, 0.0, gram))?;
            self.gemm_scaled(
                &gemm(r, r, r, false),
                1,
                f32s,
                (poly, gram, gram),
                (c as f32, b as f32, gram),
            )?;
            self.gemm_scaled(
                &gemm(r, k, r, false),
                1,
                f32s,
                (next, poly, it),
                (1.0, a as f32, it),
            )?;
            std::mem::swap(&mut it, &mut next);
        }
        if rows <= cols {
            self.transpose_scaled(x.ptr, it, 1, rows * cols, d.scale)
        } else {
            self.transpose_scaled(x.ptr, it, cols, rows, d.scale)
        }
    }

    fn matrix_normalize(&self, x: CudaMut<'_>, d: NormalizeDims) -> Result<()> {
        const OP: &str = "matrix_normalize";
        check::matrix_normalize(OPTIM_FLOATS, &x, &d)?;
        self.normalize(OP, x.ptr, &d)
    }

    fn apply_direction(
        &self,
        params: CudaMut<'_>,
        dir: CudaRef<'_>,
        lr: f64,
        keep: f64,
        n: usize,
    ) -> Result<()> {
        const OP: &str = "apply_direction";
        check::apply_direction(OPTIM_FLOATS, &params, &dir, n)?;
        let args = [
            KArg::U64(params.ptr),
            KArg::U64(dir.ptr),
            KArg::U64(n as u64),
            KArg::F64(lr),
            KArg::F64(keep),
        ];
        // SAFETY: `params` and `dir` hold n f32 (checked).
        unsafe { self.launch_1d(OP, Module::Optim, "apply_direction_f32", n, &args) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_segment_is_the_tables_layout() {
        let s = one_segment(0x0102_0304_0506);
        assert_eq!(u64::from_le_bytes(s[0..8].try_into().unwrap()), 0);
        assert_eq!(u64::from_le_bytes(s[8..16].try_into().unwrap()), 0x0102_0304_0506);
        assert_eq!(f32::from_le_bytes(s[16..20].try_into().unwrap()), 1.0);
        assert_eq!(u32::from_le_bytes(s[20..24].try_into().unwrap()), 1);
    }
}
