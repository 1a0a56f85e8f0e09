//! Matmul on CPU through the `gemm` crate; 16-bit inputs are widened to f32 and accumulated
//! in f32 (the same contract as cuBLASLt with `CUBLAS_COMPUTE_32F`), 16-bit results rounded
//! once.

use super::{with_float, CpuBackend, Real};
use crate::ops::{Gemm, MatmulDims, MatmulOps, Operand};
use crate::{HostMut, HostRef, Result};
use gemm::Parallelism;

/// Row-major GEMM `dst (m, n) (+)= op(lhs)·op(rhs)` for f32/f64, multi-threaded.
///
/// # Panics
/// If a slice is shorter than its stated shape (callers validate first).
pub(crate) fn gemm_rm<T: Real>(g: &Gemm, dst: &mut [T], lhs: &[T], rhs: &[T]) {
    let (m, n, k) = (g.m, g.n, g.k);
    assert!(
        dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n,
        "gemm operand too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !g.accumulate {
            dst[..m * n].fill(T::zero());
        }
        return;
    }
    let (lrs, lcs) = if g.lhs_t { (1, m as isize) } else { (k as isize, 1) };
    let (rrs, rcs) = if g.rhs_t { (1, k as isize) } else { (n as isize, 1) };
    let threads = rayon::current_num_threads();
    // Small products are not worth waking the pool for.
    let par = if m * n * k < 32 * 32 * 32 || threads == 1 {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    };
    // SAFETY: the asserts above bound every index the strides can reach:
    // lhs (i, p) at i·lrs + p·lcs < m·k, rhs (p, j) at p·rrs + j·rcs < k·n, dst (i, j) < m·n.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            g.accumulate,
            lhs.as_ptr(),
            lcs,
            lrs,
            rhs.as_ptr(),
            rcs,
            rrs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
}

/// Plain row-major `c (m, n) = a (m, k) · b (k, n)` in f32 straight through the GEMM library,
/// without argument checks: the reference that `weft bench kernels` measures peak with.
pub fn sgemm(m: usize, n: usize, k: usize, c: &mut [f32], a: &[f32], b: &[f32]) {
    let g = Gemm {
        m,
        n,
        k,
        lhs: Operand::A,
        lhs_t: false,
        rhs: Operand::B,
        rhs_t: false,
        accumulate: false,
    };
    gemm_rm(&g, c, a, b);
}

/// One matmul call over a batch: `plan` per batch item, operands picked from `a`, `b`, `dout`.
fn run_batched<T: Real>(g: &Gemm, batch: usize, dst: &mut [T], ops: [&[T]; 3], sizes: [usize; 3]) {
    let pick = |o: Operand| match o {
        Operand::A => 0,
        Operand::B => 1,
        Operand::DOut => 2,
    };
    let (li, ri) = (pick(g.lhs), pick(g.rhs));
    let dsz = g.m * g.n;
    for bi in 0..batch {
        gemm_rm(
            g,
            &mut dst[bi * dsz..(bi + 1) * dsz],
            &ops[li][bi * sizes[li]..(bi + 1) * sizes[li]],
            &ops[ri][bi * sizes[ri]..(bi + 1) * sizes[ri]],
        );
    }
}

fn add_bias<T: Real>(out: &mut [T], bias: &[T]) {
    for row in out.chunks_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(o, b)| *o += *b);
    }
}

fn bias_grad<T: Real>(dbias: &mut [T], dout: &[T]) {
    let n = dbias.len();
    for row in dout.chunks(n) {
        dbias.iter_mut().zip(row).for_each(|(d, g)| *d += *g);
    }
}

fn sizes(d: &MatmulDims) -> [usize; 3] {
    [d.m * d.k, d.k * d.n, d.m * d.n]
}

impl MatmulOps for CpuBackend {
    fn matmul_forward(
        &self,
        out: HostMut<'_>,
        a: HostRef<'_>,
        b: HostRef<'_>,
        bias: Option<HostRef<'_>>,
        d: MatmulDims,
    ) -> Result<()> {
        let (dt, _) = d.check_forward("matmul_forward", &out, &a, &b, bias.as_ref())?;
        let g = d.forward_gemm();
        with_float!(dt, [out, a, b, bias], T => {
            let o = T::get_mut(out);
            run_batched::<T>(&g, d.batch, o, [T::get(a), T::get(b), &[]], sizes(&d));
            if let Some(bias) = bias { add_bias(o, T::get(bias)); }
        });
        Ok(())
    }

    fn matmul_backward(
        &self,
        da: Option<HostMut<'_>>,
        db: Option<HostMut<'_>>,
        dbias: Option<HostMut<'_>>,
        dout: HostRef<'_>,
        a: HostRef<'_>,
        b: HostRef<'_>,
        d: MatmulDims,
    ) -> Result<()> {
        let (dt, _) = d.check_backward(
            "matmul_backward",
            da.as_ref(),
            db.as_ref(),
            dbias.as_ref(),
            &dout,
            &a,
            &b,
        )?;
        let s = sizes(&d);
        with_float!(dt, [da, db, dbias, dout, a, b], T => {
            let ops = [T::get(a), T::get(b), T::get(dout)];
            if let Some(da) = da { run_batched::<T>(&d.da_gemm(), d.batch, T::get_mut(da), ops, s); }
            if let Some(db) = db { run_batched::<T>(&d.db_gemm(), d.batch, T::get_mut(db), ops, s); }
            if let Some(dbias) = dbias { bias_grad(T::get_mut(dbias), T::get(dout)); }
        });
        Ok(())
    }
}
