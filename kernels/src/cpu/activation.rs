//! GELU (tanh), SiLU and SwiGLU on CPU.

use super::{with_float, CpuBackend, Real};
use crate::ops::{check, ActivationOps, SwigluDims, ACTIVATION_FLOATS};
use crate::{HostMut, HostRef, Result};
use rayon::prelude::*;

const CHUNK: usize = 8192;
const GELU_K: f64 = 0.044715;

fn sqrt_2_over_pi<T: Real>() -> T {
    T::of((2.0 / std::f64::consts::PI).sqrt())
}

pub fn gelu<T: Real>(x: T) -> T {
    let u = sqrt_2_over_pi::<T>() * (x + T::of(GELU_K) * x * x * x);
    T::of(0.5) * x * (T::one() + u.tanh())
}

pub fn gelu_grad<T: Real>(x: T) -> T {
    let s = sqrt_2_over_pi::<T>();
    let th = (s * (x + T::of(GELU_K) * x * x * x)).tanh();
    let du = s * (T::one() + T::of(3.0 * GELU_K) * x * x);
    T::of(0.5) * (T::one() + th) + T::of(0.5) * x * (T::one() - th * th) * du
}

pub fn sigmoid<T: Real>(x: T) -> T {
    (T::one() + (-x).exp()).recip()
}

pub fn silu<T: Real>(x: T) -> T {
    x * sigmoid(x)
}

pub fn silu_grad<T: Real>(x: T) -> T {
    let s = sigmoid(x);
    s * (T::one() + x * (T::one() - s))
}

fn map<T: Real>(out: &mut [T], inp: &[T], f: impl Fn(T) -> T + Sync) {
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, &x)| *o = f(x)));
}

fn map_grad<T: Real>(dinp: &mut [T], dout: &[T], inp: &[T], f: impl Fn(T) -> T + Sync) {
    dinp.par_chunks_mut(CHUNK)
        .zip(dout.par_chunks(CHUNK))
        .zip(inp.par_chunks(CHUNK))
        .for_each(|((dx, dy), x)| {
            for i in 0..dx.len() {
                dx[i] = dy[i] * f(x[i]);
            }
        });
}

pub fn swiglu_forward<T: Real>(out: &mut [T], inp: &[T], h: usize) {
    if h == 0 {
        return;
    }
    out.par_chunks_mut(h)
        .zip(inp.par_chunks(2 * h))
        .for_each(|(o, x)| {
            let (gate, up) = x.split_at(h);
            for i in 0..h {
                o[i] = silu(gate[i]) * up[i];
            }
        });
}

pub fn swiglu_backward<T: Real>(dinp: &mut [T], dout: &[T], inp: &[T], h: usize) {
    if h == 0 {
        return;
    }
    dinp.par_chunks_mut(2 * h)
        .zip(dout.par_chunks(h))
        .zip(inp.par_chunks(2 * h))
        .for_each(|((dx, dy), x)| {
            let (gate, up) = x.split_at(h);
            let (dgate, dup) = dx.split_at_mut(h);
            for i in 0..h {
                dgate[i] = dy[i] * up[i] * silu_grad(gate[i]);
                dup[i] = dy[i] * silu(gate[i]);
            }
        });
}

impl ActivationOps for CpuBackend {
    fn gelu_forward(&self, out: HostMut<'_>, inp: HostRef<'_>, n: usize) -> Result<()> {
        let dt = check::unary("gelu_forward", ACTIVATION_FLOATS, &out, &inp, n)?;
        with_float!(dt, [out, inp], T => map::<T>(T::get_mut(out), T::get(inp), gelu));
        Ok(())
    }
    fn gelu_backward(&self, dinp: HostMut<'_>, dout: HostRef<'_>, inp: HostRef<'_>, n: usize) -> Result<()> {
        let dt = check::unary_grad("gelu_backward", ACTIVATION_FLOATS, &dinp, &dout, &inp, n)?;
        with_float!(dt, [dinp, dout, inp], T => map_grad::<T>(T::get_mut(dinp), T::get(dout), T::get(inp), gelu_grad));
        Ok(())
    }
    fn silu_forward(&self, out: HostMut<'_>, inp: HostRef<'_>, n: usize) -> Result<()> {
        let dt = check::unary("silu_forward", ACTIVATION_FLOATS, &out, &inp, n)?;
        with_float!(dt, [out, inp], T => map::<T>(T::get_mut(out), T::get(inp), silu));
        Ok(())
    }
    fn silu_backward(&self, dinp: HostMut<'_>, dout: HostRef<'_>, inp: HostRef<'_>, n: usize) -> Result<()> {
        let dt = check::unary_grad("silu_backward", ACTIVATION_FLOATS, &dinp, &dout, &inp, n)?;
        with_float!(dt, [dinp, dout, inp], T => map_grad::<T>(T::get_mut(dinp), T::get(dout), T::get(inp), silu_grad));
        Ok(())
    }
    fn swiglu_forward(&self, out: HostMut<'_>, inp: HostRef<'_>, d: SwigluDims) -> Result<()> {
        let dt = check::swiglu_forward(ACTIVATION_FLOATS, &out, &inp, &d)?;
        with_float!(dt, [out, inp], T => swiglu_forward::<T>(T::get_mut(out), T::get(inp), d.h));
        Ok(())
    }
    fn swiglu_backward(
        &self,
        dinp: HostMut<'_>,
        dout: HostRef<'_>,
        inp: HostRef<'_>,
        d: SwigluDims,
    ) -> Result<()> {
        let dt = check::swiglu_backward(ACTIVATION_FLOATS, &dinp, &dout, &inp, &d)?;
        with_float!(dt, [dinp, dout, inp], T => swiglu_backward::<T>(T::get_mut(dinp), T::get(dout), T::get(inp), d.h));
        Ok(())
    }
}
