//! Rotary position embedding on CPU (1-D and 3-D differ only in their angle table).

use super::{with_float, CpuBackend, Real};
use crate::ops::{check, RopeDims, RopeOps, ACTIVATION_FLOATS};
use crate::{HostMut, HostRef, Result};
use rayon::prelude::*;

/// Rotates every `(x[i], x[i + HD/2])` pair of each head by the token's angle `i`;
/// `sign = −1` applies the inverse rotation (the backward pass).
pub fn rope_apply<T: Real>(out: &mut [T], inp: &[T], cos: &[T], sin: &[T], d: &RopeDims, sign: T) {
    let (h, hd, half) = (d.h, d.hd, d.hd / 2);
    let token = h * hd;
    if token == 0 {
        return;
    }
    out.par_chunks_mut(token)
        .zip(inp.par_chunks(token))
        .enumerate()
        .for_each(|(row, (o, x))| {
            let t = row % d.t;
            let (c, s) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
            for (o, x) in o.chunks_mut(hd).zip(x.chunks(hd)) {
                for i in 0..half {
                    let (x1, x2, si) = (x[i], x[i + half], sign * s[i]);
                    o[i] = x1 * c[i] - x2 * si;
                    o[i + half] = x2 * c[i] + x1 * si;
                }
            }
        });
}

impl RopeOps for CpuBackend {
    fn rope_forward(
        &self,
        out: HostMut<'_>,
        inp: HostRef<'_>,
        cos: HostRef<'_>,
        sin: HostRef<'_>,
        d: RopeDims,
    ) -> Result<()> {
        let dt = check::rope(false, ACTIVATION_FLOATS, &out, &inp, &cos, &sin, &d)?;
        with_float!(dt, [out, inp, cos, sin], T => rope_apply::<T>(T::get_mut(out), T::get(inp), T::get(cos), T::get(sin), &d, T::of(1.0)));
        Ok(())
    }
    fn rope_backward(
        &self,
        dinp: HostMut<'_>,
        dout: HostRef<'_>,
        cos: HostRef<'_>,
        sin: HostRef<'_>,
        d: RopeDims,
    ) -> Result<()> {
        let dt = check::rope(true, ACTIVATION_FLOATS, &dinp, &dout, &cos, &sin, &d)?;
        with_float!(dt, [dinp, dout, cos, sin], T => rope_apply::<T>(T::get_mut(dinp), T::get(dout), T::get(cos), T::get(sin), &d, T::of(-1.0)));
        Ok(())
    }
}
