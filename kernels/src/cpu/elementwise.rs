//! Residual add, scale and dtype casts on CPU.

use super::widen::{narrow, widen};
use super::{with_float, CpuBackend, Real};
use crate::ops::{check_args, check_cast, check_pointwise, Arg, ElementwiseOps, ACTIVATION_FLOATS};
use crate::{f64_to_bf16_rne, DType, HostMut, HostRef, Result};
use half::f16;
use rayon::prelude::*;

const CHUNK: usize = 16384;

pub fn add_forward<T: Real>(out: &mut [T], a: &[T], b: &[T]) {
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| (0..o.len()).for_each(|i| o[i] = a[i] + b[i]));
}

pub fn accumulate<T: Real>(acc: &mut [T], x: &[T]) {
    acc.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(a, x)| a.iter_mut().zip(x).for_each(|(a, &x)| *a += x));
}

pub fn scale<T: Real>(out: &mut [T], x: &[T], alpha: T) {
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, &x)| *o = alpha * x));
}

impl ElementwiseOps for CpuBackend {
    fn add_forward(&self, out: HostMut<'_>, a: HostRef<'_>, b: HostRef<'_>, n: usize) -> Result<()> {
        let dt = check_pointwise(
            "add_forward",
            ACTIVATION_FLOATS,
            &[("out", &out)],
            &[("a", &a), ("b", &b)],
            n,
        )?;
        with_float!(dt, [out, a, b], T => add_forward::<T>(T::get_mut(out), T::get(a), T::get(b)));
        Ok(())
    }
    fn add_backward(&self, da: HostMut<'_>, db: HostMut<'_>, dout: HostRef<'_>, n: usize) -> Result<()> {
        let dt = check_pointwise(
            "add_backward",
            ACTIVATION_FLOATS,
            &[("da", &da), ("db", &db)],
            &[("dout", &dout)],
            n,
        )?;
        with_float!(dt, [da, db, dout], T => {
            accumulate::<T>(T::get_mut(da), T::get(dout));
            accumulate::<T>(T::get_mut(db), T::get(dout));
        });
        Ok(())
    }
    fn scale_forward(&self, out: HostMut<'_>, x: HostRef<'_>, alpha: f64, n: usize) -> Result<()> {
        let dt = check_pointwise(
            "scale_forward",
            ACTIVATION_FLOATS,
            &[("out", &out)],
            &[("x", &x)],
            n,
        )?;
        with_float!(dt, [out, x], T => scale::<T>(T::get_mut(out), T::get(x), T::of(alpha)));
        Ok(())
    }
    fn scale_backward(&self, dx: HostMut<'_>, dout: HostRef<'_>, alpha: f64, n: usize) -> Result<()> {
        let dt = check_pointwise(
            "scale_backward",
            ACTIVATION_FLOATS,
            &[("dx", &dx)],
            &[("dout", &dout)],
            n,
        )?;
        with_float!(dt, [dx, dout], T => scale::<T>(T::get_mut(dx), T::get(dout), T::of(alpha)));
        Ok(())
    }
    fn accumulate(&self, acc: HostMut<'_>, x: HostRef<'_>, n: usize) -> Result<()> {
        let s = format!("(n={n})");
        let dt = check_args(
            "accumulate",
            ACTIVATION_FLOATS,
            &[
                Arg::act("x", Some(&x), n, &s),
                Arg::grad("acc", Some(&acc), n, &s),
            ],
        )?;
        with_float!(dt, [acc, x], T => accumulate::<T>(T::get_mut(acc), T::get(x)));
        Ok(())
    }
    fn fill(&self, out: HostMut<'_>, value: f64, n: usize) -> Result<()> {
        let none: &[(&str, &HostRef<'_>)] = &[];
        let dt = check_pointwise("fill", ACTIVATION_FLOATS, &[("out", &out)], none, n)?;
        with_float!(dt, [out], T => T::get_mut(out).par_chunks_mut(CHUNK).for_each(|o| o.fill(T::of(value))));
        Ok(())
    }
    fn cast(&self, out: HostMut<'_>, x: HostRef<'_>, n: usize) -> Result<()> {
        check_cast(
            "cast",
            &[DType::F64, DType::F32, DType::BF16, DType::F16],
            &out,
            &x,
            n,
        )?;
        match (x, out) {
            (HostRef::F64(s), HostMut::F64(d)) => d.copy_from_slice(s),
            (HostRef::F64(s), HostMut::F32(d)) => d.iter_mut().zip(s).for_each(|(d, &s)| *d = s as f32),
            // Direct rounding from f64 (no double rounding through f32).
            (HostRef::F64(s), HostMut::BF16(d)) => {
                d.iter_mut().zip(s).for_each(|(d, &s)| *d = f64_to_bf16_rne(s))
            }
            (HostRef::F64(s), HostMut::F16(d)) => {
                d.iter_mut().zip(s).for_each(|(d, &s)| *d = f16::from_f64(s))
            }
            (x, out) => narrow(&widen(x), out),
        }
        Ok(())
    }
}
