//! AdaLN modulation and gated residuals on CPU.

use super::{with_float, CpuBackend, Real};
use crate::ops::{check, ModDims, ModulationOps, ACTIVATION_FLOATS};
use crate::{HostMut, HostRef, Result};
use rayon::prelude::*;

/// Row `b` of a strided conditioning buffer.
fn cond<'a, T>(v: &'a [T], b: usize, d: &ModDims) -> &'a [T] {
    &v[b * d.cond_stride..b * d.cond_stride + d.c]
}

pub fn modulate_forward<T: Real>(out: &mut [T], x: &[T], shift: &[T], scale: &[T], d: &ModDims) {
    let (tc, c) = (d.t * d.c, d.c);
    if tc == 0 {
        return;
    }
    out.par_chunks_mut(tc)
        .zip(x.par_chunks(tc))
        .enumerate()
        .for_each(|(b, (o, x))| {
            let (sh, sc) = (cond(shift, b, d), cond(scale, b, d));
            for (o, x) in o.chunks_mut(c).zip(x.chunks(c)) {
                for i in 0..c {
                    o[i] = x[i] * (T::one() + sc[i]) + sh[i];
                }
            }
        });
}

/// Writes `dshift`/`dscale` rows `b` (strided) by summing over `T` in order.
#[allow(clippy::too_many_arguments)]
pub fn modulate_backward<T: Real>(
    dx: &mut [T],
    dshift: &mut [T],
    dscale: &mut [T],
    dout: &[T],
    x: &[T],
    scale: &[T],
    d: &ModDims,
) {
    let (tc, c) = (d.t * d.c, d.c);
    for b in 0..d.b {
        let sc = cond(scale, b, d);
        let (dy, xb) = (&dout[b * tc..(b + 1) * tc], &x[b * tc..(b + 1) * tc]);
        dx[b * tc..(b + 1) * tc]
            .par_chunks_mut(c)
            .zip(dy.par_chunks(c))
            .for_each(|(dx, dy)| (0..c).for_each(|i| dx[i] = dy[i] * (T::one() + sc[i])));
        let row = b * d.cond_stride..b * d.cond_stride + c;
        let (dsh, dsc) = (&mut dshift[row.clone()], &mut dscale[row]);
        dsh.fill(T::zero());
        dsc.fill(T::zero());
        for (dy, x) in dy.chunks(c).zip(xb.chunks(c)) {
            for i in 0..c {
                dsh[i] += dy[i];
                dsc[i] += dy[i] * x[i];
            }
        }
    }
}

pub fn gate_forward<T: Real>(residual: &mut [T], gate: &[T], y: &[T], d: &ModDims) {
    let (tc, c) = (d.t * d.c, d.c);
    if tc == 0 {
        return;
    }
    residual
        .par_chunks_mut(tc)
        .zip(y.par_chunks(tc))
        .enumerate()
        .for_each(|(b, (r, y))| {
            let g = cond(gate, b, d);
            for (r, y) in r.chunks_mut(c).zip(y.chunks(c)) {
                for i in 0..c {
                    r[i] += g[i] * y[i];
                }
            }
        });
}

pub fn gate_backward<T: Real>(dy: &mut [T], dgate: &mut [T], dout: &[T], gate: &[T], y: &[T], d: &ModDims) {
    let (tc, c) = (d.t * d.c, d.c);
    for b in 0..d.b {
        let g = cond(gate, b, d);
        let (go, yb) = (&dout[b * tc..(b + 1) * tc], &y[b * tc..(b + 1) * tc]);
        dy[b * tc..(b + 1) * tc]
            .par_chunks_mut(c)
            .zip(go.par_chunks(c))
            .for_each(|(dy, go)| (0..c).for_each(|i| dy[i] = go[i] * g[i]));
        let dg = &mut dgate[b * d.cond_stride..b * d.cond_stride + c];
        dg.fill(T::zero());
        for (go, y) in go.chunks(c).zip(yb.chunks(c)) {
            for i in 0..c {
                dg[i] += go[i] * y[i];
            }
        }
    }
}

impl ModulationOps for CpuBackend {
    fn modulate_forward(
        &self,
        out: HostMut<'_>,
        x: HostRef<'_>,
        shift: HostRef<'_>,
        scale: HostRef<'_>,
        d: ModDims,
    ) -> Result<()> {
        let dt = check::modulate_forward(ACTIVATION_FLOATS, &out, &x, &shift, &scale, &d)?;
        with_float!(dt, [out, x, shift, scale], T => modulate_forward::<T>(T::get_mut(out), T::get(x), T::get(shift), T::get(scale), &d));
        Ok(())
    }

    fn modulate_backward(
        &self,
        dx: HostMut<'_>,
        dshift: HostMut<'_>,
        dscale: HostMut<'_>,
        dout: HostRef<'_>,
        x: HostRef<'_>,
        scale: HostRef<'_>,
        d: ModDims,
    ) -> Result<()> {
        let dt = check::modulate_backward(ACTIVATION_FLOATS, &dx, &dshift, &dscale, &dout, &x, &scale, &d)?;
        with_float!(dt, [dx, dshift, dscale, dout, x, scale], T => modulate_backward::<T>(
            T::get_mut(dx), T::get_mut(dshift), T::get_mut(dscale), T::get(dout), T::get(x), T::get(scale), &d));
        Ok(())
    }

    fn gate_forward(
        &self,
        residual: HostMut<'_>,
        gate: HostRef<'_>,
        y: HostRef<'_>,
        d: ModDims,
    ) -> Result<()> {
        let dt = check::gate_forward(ACTIVATION_FLOATS, &residual, &gate, &y, &d)?;
        with_float!(dt, [residual, gate, y], T => gate_forward::<T>(T::get_mut(residual), T::get(gate), T::get(y), &d));
        Ok(())
    }

    fn gate_backward(
        &self,
        dy: HostMut<'_>,
        dgate: HostMut<'_>,
        dout: HostRef<'_>,
        gate: HostRef<'_>,
        y: HostRef<'_>,
        d: ModDims,
    ) -> Result<()> {
        let dt = check::gate_backward(ACTIVATION_FLOATS, &dy, &dgate, &dout, &gate, &y, &d)?;
        with_float!(dt, [dy, dgate, dout, gate, y], T => gate_backward::<T>(
            T::get_mut(dy), T::get_mut(dgate), T::get(dout), T::get(gate), T::get(y), &d));
        Ok(())
    }
}
