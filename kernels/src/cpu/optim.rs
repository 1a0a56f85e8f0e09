//! Norms, the AdamW and AdEMAMix steps over flat buffers, and the pieces of the matrix
//! optimizers (momentum, Newton–Schulz, normalization, the step along a direction), on CPU.

use super::widen::widen;
use super::{with_real, CpuBackend, Real};
use crate::ops::{
    check, AdamW, Mix, Momentum, NewtonSchulz, Normalize, NormalizeDims, OptimOps, REFERENCE_FLOATS,
};
use crate::{DType, HostMut, HostRef, Result};
use rayon::prelude::*;

const CHUNK: usize = 16384;

/// `Σ x²` in f64, chunked in a fixed order so the result does not depend on thread count.
pub fn sum_squares<T: Real>(x: &[T]) -> f64 {
    let parts: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| v.f64() * v.f64()).sum())
        .collect();
    parts.iter().sum()
}

/// `Σ x` in f64, chunked as [`sum_squares`].
pub fn sum<T: Real>(x: &[T]) -> f64 {
    let parts: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| v.f64()).sum())
        .collect();
    parts.iter().sum()
}

pub fn adamw_update<T: Real>(p: &mut [T], m: &mut [T], v: &mut [T], g: &[T], h: &AdamW) {
    let (b1, b2) = (h.beta1, h.beta2);
    let bc1 = 1.0 - b1.powi(h.step as i32);
    let bc2 = 1.0 - b2.powi(h.step as i32);
    let step_size = T::of(h.lr / bc1);
    let bc2_sqrt = T::of(bc2.sqrt());
    let decay = T::of(1.0 - h.lr * h.weight_decay);
    let (b1, b2, eps, gs) = (T::of(b1), T::of(b2), T::of(h.eps), T::of(h.grad_scale));
    p.par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .for_each(|(((p, m), v), g)| {
            for i in 0..p.len() {
                let gi = g[i] * gs;
                m[i] = b1 * m[i] + (T::one() - b1) * gi;
                v[i] = b2 * v[i] + (T::one() - b2) * gi * gi;
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                p[i] = p[i] * decay - step_size * m[i] / denom;
            }
        });
}

pub fn ademamix_update<T: Real>(
    p: &mut [T],
    m: &mut [T],
    m2: &mut [T],
    v: &mut [T],
    g: &[T],
    h: &AdamW,
    x: &Mix,
) {
    let (b1, b2) = (h.beta1, h.beta2);
    let bc1 = T::of(1.0 - b1.powi(h.step as i32));
    let bc2_sqrt = T::of((1.0 - b2.powi(h.step as i32)).sqrt());
    let lr = T::of(h.lr);
    let decay = T::of(1.0 - h.lr * h.weight_decay);
    let (b1, b2, b3, alpha) = (T::of(b1), T::of(b2), T::of(x.beta3), T::of(x.alpha));
    let (eps, gs) = (T::of(h.eps), T::of(h.grad_scale));
    p.par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(m2.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .for_each(|((((p, m), m2), v), g)| {
            for i in 0..p.len() {
                let gi = g[i] * gs;
                m[i] = b1 * m[i] + (T::one() - b1) * gi;
                m2[i] = b3 * m2[i] + (T::one() - b3) * gi;
                v[i] = b2 * v[i] + (T::one() - b2) * gi * gi;
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                p[i] = p[i] * decay - lr * (m[i] / bc1 + alpha * m2[i]) / denom;
            }
        });
}

pub fn momentum_update<T: Real>(m: &mut [T], u: &mut [T], g: &[T], h: &Momentum) {
    let (mu, damp, gs) = (T::of(h.mu), T::of(h.dampening), T::of(h.grad_scale));
    for ((m, u), &g) in m.iter_mut().zip(u.iter_mut()).zip(g) {
        let gi = gs * g;
        *m = mu * *m + damp * gi;
        *u = if h.nesterov { gi + mu * *m } else { *m };
    }
}

/// `dst = op(a)·op(b)` on row-major matrices (`op(a): (m, k)`, `op(b): (k, n)`), scaled by
/// `beta`, single-threaded (the optimizer's matrices are dealt to ranks, not split).
#[allow(clippy::too_many_arguments)]
fn gemm<T: Real>(m: usize, n: usize, k: usize, dst: &mut [T], a: &[T], ta: bool, b: &[T], tb: bool, beta: T) {
    assert!(dst.len() == m * n && a.len() == m * k && b.len() == k * n);
    // Strides of op(x): (column stride, row stride).
    let (a_cs, a_rs) = if ta { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if tb { (k as isize, 1) } else { (1, n as isize) };
    // SAFETY: the asserted lengths cover every index the strides reach.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            T::zero(),
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

pub fn newton_schulz<T: Real>(g: &mut [T], work: &mut [T], d: &NewtonSchulz) {
    let (rows, cols) = (d.rows, d.cols);
    let (r, k) = d.sides();
    let (ca, cb, cc) = NewtonSchulz::COEFFICIENTS;
    let (a, b, c) = (T::of(ca), T::of(cb), T::of(cc));
    let (x, rest) = work.split_at_mut(r * k);
    let (next, rest) = rest.split_at_mut(r * k);
    let (gram, poly) = rest.split_at_mut(r * r);
    // The wide orientation (r ≤ k): the Gram matrix is the small side.
    let wide = rows <= cols;
    if wide {
        x.copy_from_slice(g);
    } else {
        for i in 0..rows {
            for j in 0..cols {
                x[j * rows + i] = g[i * cols + j];
            }
        }
    }
    let inv = T::of(1.0 / (sum_squares(x).sqrt() + NewtonSchulz::EPS));
    x.iter_mut().for_each(|v| *v *= inv);
    for _ in 0..d.steps {
        // A = X·Xᵀ; B = b·A + c·A·A; X = a·X + B·X.
        gemm(r, r, k, gram, x, false, x, true, T::one());
        gemm(r, r, r, poly, gram, false, gram, false, c);
        poly.iter_mut().zip(gram.iter()).for_each(|(p, &q)| *p += b * q);
        gemm(r, k, r, next, poly, false, x, false, T::one());
        x.iter_mut().zip(next.iter()).for_each(|(v, &n)| *v = a * *v + n);
    }
    let s = T::of(d.scale);
    if wide {
        g.iter_mut().zip(x.iter()).for_each(|(g, &x)| *g = s * x);
    } else {
        for i in 0..rows {
            for j in 0..cols {
                g[i * cols + j] = s * x[j * rows + i];
            }
        }
    }
}

pub fn matrix_normalize<T: Real>(x: &mut [T], d: &NormalizeDims) {
    let (rows, cols) = (d.rows, d.cols);
    // A part of zeros stays zeros (with eps = 0 its factor would be ∞, and 0·∞ NaN).
    let factor = |sq: f64| {
        if sq > 0.0 {
            T::of(d.scale / (sq.sqrt() + d.eps))
        } else {
            T::zero()
        }
    };
    match d.mode {
        Normalize::Frobenius => {
            let s = factor(sum_squares(x));
            x.iter_mut().for_each(|v| *v *= s);
        }
        Normalize::Rows => {
            for row in x.chunks_mut(cols.max(1)) {
                let s = factor(row.iter().map(|&v| v.f64() * v.f64()).sum());
                row.iter_mut().for_each(|v| *v *= s);
            }
        }
        Normalize::Cols => {
            for j in 0..cols {
                let s = factor((0..rows).map(|i| x[i * cols + j].f64().powi(2)).sum());
                (0..rows).for_each(|i| x[i * cols + j] *= s);
            }
        }
        Normalize::Sign => {
            let s = T::of(d.scale);
            x.iter_mut().for_each(|v| {
                *v = if *v > T::zero() {
                    s
                } else if *v < T::zero() {
                    -s
                } else {
                    T::zero()
                }
            });
        }
    }
}

impl OptimOps for CpuBackend {
    fn sum_squares(&self, acc: HostMut<'_>, x: HostRef<'_>, n: usize) -> Result<()> {
        let (xdt, _) = check::sum_squares("sum_squares", REFERENCE_FLOATS, &acc, &x, n)?;
        let s = match xdt {
            DType::BF16 => sum_squares::<f32>(&widen(x)),
            _ => with_real!(xdt, T => sum_squares::<T>(T::get(x))),
        };
        with_real!(acc.dtype(), T => { let a = T::get_mut(acc); a[0] = T::of(a[0].f64() + s); });
        Ok(())
    }
    fn sum(&self, acc: HostMut<'_>, x: HostRef<'_>, alpha: f64, n: usize) -> Result<()> {
        let (xdt, _) = check::sum_squares("sum", REFERENCE_FLOATS, &acc, &x, n)?;
        let s = match xdt {
            DType::BF16 => sum::<f32>(&widen(x)),
            _ => with_real!(xdt, T => sum::<T>(T::get(x))),
        };
        with_real!(acc.dtype(), T => { let a = T::get_mut(acc); a[0] = T::of(a[0].f64() + alpha * s); });
        Ok(())
    }
    fn l2norm_forward(&self, out: HostMut<'_>, x: HostRef<'_>, n: usize) -> Result<()> {
        let dt = check::l2norm_forward(REFERENCE_FLOATS, &out, &x, n)?;
        with_real!(dt, T => T::get_mut(out)[0] = T::of(sum_squares::<T>(T::get(x)).sqrt()));
        Ok(())
    }
    fn l2norm_backward(
        &self,
        dx: HostMut<'_>,
        dout: HostRef<'_>,
        x: HostRef<'_>,
        norm: HostRef<'_>,
        n: usize,
    ) -> Result<()> {
        let dt = check::l2norm_backward(REFERENCE_FLOATS, &dx, &dout, &x, &norm, n)?;
        with_real!(dt, T => {
            let nrm = T::get(norm)[0];
            let k = if nrm > T::of(0.0) { T::get(dout)[0] / nrm } else { T::of(0.0) };
            T::get_mut(dx).iter_mut().zip(T::get(x)).for_each(|(d, &x)| *d = k * x);
        });
        Ok(())
    }
    fn adamw_update(
        &self,
        params: HostMut<'_>,
        m: HostMut<'_>,
        v: HostMut<'_>,
        grads: HostRef<'_>,
        h: AdamW,
        n: usize,
    ) -> Result<()> {
        let dt = check::update(
            "adamw_update",
            REFERENCE_FLOATS,
            &h,
            &grads,
            &[("params", &params), ("m", &m), ("v", &v)],
            n,
        )?;
        with_real!(dt, T => adamw_update::<T>(T::get_mut(params), T::get_mut(m), T::get_mut(v), T::get(grads), &h));
        Ok(())
    }

    fn ademamix_update(
        &self,
        params: HostMut<'_>,
        m: HostMut<'_>,
        m2: HostMut<'_>,
        v: HostMut<'_>,
        grads: HostRef<'_>,
        h: AdamW,
        mix: Mix,
        n: usize,
    ) -> Result<()> {
        let state = [("params", &params), ("m", &m), ("m2", &m2), ("v", &v)];
        let dt = check::update("ademamix_update", REFERENCE_FLOATS, &h, &grads, &state, n)?;
        with_real!(dt, T => ademamix_update::<T>(T::get_mut(params), T::get_mut(m), T::get_mut(m2), T::get_mut(v), T::get(grads), &h, &mix));
        Ok(())
    }

    fn momentum_update(
        &self,
        m: HostMut<'_>,
        u: HostMut<'_>,
        grads: HostRef<'_>,
        h: Momentum,
        n: usize,
    ) -> Result<()> {
        let dt = check::momentum_update(REFERENCE_FLOATS, &m, &u, &grads, &h, n)?;
        with_real!(dt, T => momentum_update::<T>(T::get_mut(m), T::get_mut(u), T::get(grads), &h));
        Ok(())
    }

    fn newton_schulz(&self, x: HostMut<'_>, work: HostMut<'_>, d: NewtonSchulz) -> Result<()> {
        let dt = check::newton_schulz(REFERENCE_FLOATS, &x, &work, &d)?;
        with_real!(dt, T => newton_schulz::<T>(T::get_mut(x), T::get_mut(work), &d));
        Ok(())
    }

    fn matrix_normalize(&self, x: HostMut<'_>, d: NormalizeDims) -> Result<()> {
        let dt = check::matrix_normalize(REFERENCE_FLOATS, &x, &d)?;
        with_real!(dt, T => matrix_normalize::<T>(T::get_mut(x), &d));
        Ok(())
    }

    fn apply_direction(
        &self,
        params: HostMut<'_>,
        dir: HostRef<'_>,
        lr: f64,
        keep: f64,
        n: usize,
    ) -> Result<()> {
        let dt = check::apply_direction(REFERENCE_FLOATS, &params, &dir, n)?;
        with_real!(dt, T => {
            let (eta, keep) = (T::of(lr), T::of(keep));
            T::get_mut(params).iter_mut().zip(T::get(dir)).for_each(|(p, &d)| *p = keep * *p - eta * d);
        });
        Ok(())
    }
}
