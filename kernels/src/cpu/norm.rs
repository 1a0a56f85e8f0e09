//! LayerNorm and RMSNorm (and so QK-norm) on CPU.

use super::{opt, opt_mut, rows_per_task, with_float, CpuBackend, Real};
use crate::ops::{check, NormDims, NormOps, ACTIVATION_FLOATS};
use crate::{HostMut, HostRef, Result};
use rayon::prelude::*;

pub fn layernorm_forward<T: Real>(
    out: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
    inp: &[T],
    weight: Option<&[T]>,
    bias: Option<&[T]>,
    d: &NormDims,
) {
    let (c, eps) = (d.c, T::of(d.eps));
    let cn = T::of(c as f64);
    let task = rows_per_task(c);
    out.par_chunks_mut(c * task)
        .zip(mean.par_chunks_mut(task))
        .zip(rstd.par_chunks_mut(task))
        .zip(inp.par_chunks(c * task))
        .for_each(|(((out, mean), rstd), inp)| {
            for (r, (o, x)) in out.chunks_mut(c).zip(inp.chunks(c)).enumerate() {
                let mu = x.iter().copied().sum::<T>() / cn;
                let var = x.iter().map(|&v| (v - mu) * (v - mu)).sum::<T>() / cn;
                let rs = (var + eps).sqrt().recip();
                for i in 0..c {
                    let mut y = (x[i] - mu) * rs;
                    if let Some(w) = weight {
                        y *= w[i];
                    }
                    if let Some(b) = bias {
                        y += b[i];
                    }
                    o[i] = y;
                }
                mean[r] = mu;
                rstd[r] = rs;
            }
        });
}

#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward<T: Real>(
    dinp: &mut [T],
    dweight: Option<&mut [T]>,
    dbias: Option<&mut [T]>,
    dout: &[T],
    inp: &[T],
    weight: Option<&[T]>,
    mean: &[T],
    rstd: &[T],
    d: &NormDims,
) {
    let c = d.c;
    let cn = T::of(c as f64);
    let task = rows_per_task(c);
    dinp.par_chunks_mut(c * task)
        .zip(dout.par_chunks(c * task))
        .zip(inp.par_chunks(c * task))
        .enumerate()
        .for_each(|(ti, ((dx, dy), x))| {
            for (r, ((dx, dy), x)) in dx.chunks_mut(c).zip(dy.chunks(c)).zip(x.chunks(c)).enumerate() {
                let row = ti * task + r;
                let (mu, rs) = (mean[row], rstd[row]);
                let w = |i: usize| weight.map_or(T::one(), |w| w[i]);
                let (mut s1, mut s2) = (T::zero(), T::zero());
                for i in 0..c {
                    let g = dy[i] * w(i);
                    s1 += g;
                    s2 += g * (x[i] - mu) * rs;
                }
                let (s1, s2) = (s1 / cn, s2 / cn);
                for i in 0..c {
                    let xhat = (x[i] - mu) * rs;
                    dx[i] = (dy[i] * w(i) - s1 - xhat * s2) * rs;
                }
            }
        });
    // Parameter gradients reduce over rows; splitting by columns keeps the row order fixed.
    let xhat = |row: usize, i: usize| (inp[row * c + i] - mean[row]) * rstd[row];
    if let Some(dw) = dweight {
        column_reduce(dw, d.n, |row, i| dout[row * c + i] * xhat(row, i));
    }
    if let Some(db) = dbias {
        column_reduce(db, d.n, |row, i| dout[row * c + i]);
    }
}

/// `acc[i] += Σ_rows f(row, i)`, parallel over column blocks, rows summed in order.
pub(crate) fn column_reduce<T: Real>(acc: &mut [T], rows: usize, f: impl Fn(usize, usize) -> T + Sync) {
    const COLS: usize = 64;
    acc.par_chunks_mut(COLS).enumerate().for_each(|(bi, block)| {
        for row in 0..rows {
            for (j, a) in block.iter_mut().enumerate() {
                *a += f(row, bi * COLS + j);
            }
        }
    });
}

pub fn rmsnorm_forward<T: Real>(
    out: &mut [T],
    rstd: &mut [T],
    inp: &[T],
    weight: Option<&[T]>,
    d: &NormDims,
) {
    let (c, eps) = (d.c, T::of(d.eps));
    let cn = T::of(c as f64);
    let task = rows_per_task(c);
    out.par_chunks_mut(c * task)
        .zip(rstd.par_chunks_mut(task))
        .zip(inp.par_chunks(c * task))
        .for_each(|((out, rstd), inp)| {
            for (r, (o, x)) in out.chunks_mut(c).zip(inp.chunks(c)).enumerate() {
                let ms = x.iter().map(|&v| v * v).sum::<T>() / cn;
                let rs = (ms + eps).sqrt().recip();
                for i in 0..c {
                    o[i] = x[i] * rs * weight.map_or(T::one(), |w| w[i]);
                }
                rstd[r] = rs;
            }
        });
}

pub fn rmsnorm_backward<T: Real>(
    dinp: &mut [T],
    dweight: Option<&mut [T]>,
    dout: &[T],
    inp: &[T],
    weight: Option<&[T]>,
    rstd: &[T],
    d: &NormDims,
) {
    let c = d.c;
    let cn = T::of(c as f64);
    let task = rows_per_task(c);
    dinp.par_chunks_mut(c * task)
        .zip(dout.par_chunks(c * task))
        .zip(inp.par_chunks(c * task))
        .enumerate()
        .for_each(|(ti, ((dx, dy), x))| {
            for (r, ((dx, dy), x)) in dx.chunks_mut(c).zip(dy.chunks(c)).zip(x.chunks(c)).enumerate() {
                let rs = rstd[ti * task + r];
                let w = |i: usize| weight.map_or(T::one(), |w| w[i]);
                let dot = (0..c).map(|i| dy[i] * w(i) * x[i] * rs).sum::<T>() / cn;
                for i in 0..c {
                    dx[i] = (dy[i] * w(i) - x[i] * rs * dot) * rs;
                }
            }
        });
    if let Some(dw) = dweight {
        column_reduce(dw, d.n, |row, i| dout[row * c + i] * inp[row * c + i] * rstd[row]);
    }
}

impl NormOps for CpuBackend {
    fn layernorm_forward(
        &self,
        out: HostMut<'_>,
        mean: HostMut<'_>,
        rstd: HostMut<'_>,
        inp: HostRef<'_>,
        weight: Option<HostRef<'_>>,
        bias: Option<HostRef<'_>>,
        d: NormDims,
    ) -> Result<()> {
        let dt = check::layernorm_forward(
            ACTIVATION_FLOATS,
            &out,
            &mean,
            &rstd,
            &inp,
            weight.as_ref(),
            bias.as_ref(),
            &d,
        )?;
        with_float!(dt, [out, mean, rstd, inp, weight, bias], T => layernorm_forward::<T>(
            T::get_mut(out), T::get_mut(mean), T::get_mut(rstd), T::get(inp), opt(weight), opt(bias), &d));
        Ok(())
    }

    fn layernorm_backward(
        &self,
        dinp: HostMut<'_>,
        dweight: Option<HostMut<'_>>,
        dbias: Option<HostMut<'_>>,
        dout: HostRef<'_>,
        inp: HostRef<'_>,
        weight: Option<HostRef<'_>>,
        mean: HostRef<'_>,
        rstd: HostRef<'_>,
        d: NormDims,
    ) -> Result<()> {
        let dt = check::layernorm_backward(
            ACTIVATION_FLOATS,
            &dinp,
            dweight.as_ref(),
            dbias.as_ref(),
            &dout,
            &inp,
            weight.as_ref(),
            &mean,
            &rstd,
            &d,
        )?;
        with_float!(dt, [dinp, dweight, dbias, dout, inp, weight, mean, rstd], T => layernorm_backward::<T>(
            T::get_mut(dinp), opt_mut(dweight), opt_mut(dbias), T::get(dout), T::get(inp),
            opt(weight), T::get(mean), T::get(rstd), &d));
        Ok(())
    }

    fn rmsnorm_forward(
        &self,
        out: HostMut<'_>,
        rstd: HostMut<'_>,
        inp: HostRef<'_>,
        weight: Option<HostRef<'_>>,
        d: NormDims,
    ) -> Result<()> {
        let dt = check::rmsnorm_forward(ACTIVATION_FLOATS, &out, &rstd, &inp, weight.as_ref(), &d)?;
        with_float!(dt, [out, rstd, inp, weight], T =>
            rmsnorm_forward::<T>(T::get_mut(out), T::get_mut(rstd), T::get(inp), opt(weight), &d));
        Ok(())
    }

    fn rmsnorm_backward(
        &self,
        dinp: HostMut<'_>,
        dweight: Option<HostMut<'_>>,
        dout: HostRef<'_>,
        inp: HostRef<'_>,
        weight: Option<HostRef<'_>>,
        rstd: HostRef<'_>,
        d: NormDims,
    ) -> Result<()> {
        let dt = check::rmsnorm_backward(
            ACTIVATION_FLOATS,
            &dinp,
            dweight.as_ref(),
            &dout,
            &inp,
            weight.as_ref(),
            &rstd,
            &d,
        )?;
        with_float!(dt, [dinp, dweight, dout, inp, weight, rstd], T => rmsnorm_backward::<T>(
            T::get_mut(dinp), opt_mut(dweight), T::get(dout), T::get(inp), opt(weight), T::get(rstd), &d));
        Ok(())
    }
}
