//! Norms and the AdamW step over flat buffers, on CPU.

use super::widen::widen;
use super::{with_real, CpuBackend, Real};
use crate::ops::{check, AdamW, Mix, OptimOps, REFERENCE_FLOATS};
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

impl OptimOps for CpuBackend {
    fn sum_squares(&self, acc: HostMut<'_>, x: HostRef<'_>, n: usize) -> Result<()> {
        let (xdt, _) = check::sum_squares(REFERENCE_FLOATS, &acc, &x, n)?;
        let s = match xdt {
            DType::BF16 => sum_squares::<f32>(&widen(x)),
            _ => with_real!(xdt, T => sum_squares::<T>(T::get(x))),
        };
        with_real!(acc.dtype(), T => { let a = T::get_mut(acc); a[0] = T::of(a[0].f64() + s); });
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
}
