//! Embedding lookup, 3-D patchify/unpatchify and sinusoidal timestep features on CPU.

use super::{indices, with_float, CpuBackend, Real};
use crate::ops::{check, EmbedOps, EmbeddingDims, PatchDims, TimestepDims, ACTIVATION_FLOATS};
use crate::{HostMut, HostRef, Result};
use rayon::prelude::*;

pub fn embedding_forward<T: Real>(out: &mut [T], ids: &[i32], table: &[T], c: usize) {
    if c == 0 {
        return;
    }
    out.par_chunks_mut(c).zip(ids.par_iter()).for_each(|(o, &id)| {
        o.copy_from_slice(&table[id as usize * c..(id as usize + 1) * c]);
    });
}

/// Scatter-add in token order: the same id's rows always add up in the same order.
pub fn embedding_backward<T: Real>(dtable: &mut [T], dout: &[T], ids: &[i32], c: usize) {
    for (i, &id) in ids.iter().enumerate() {
        let row = &mut dtable[id as usize * c..(id as usize + 1) * c];
        row.iter_mut()
            .zip(&dout[i * c..(i + 1) * c])
            .for_each(|(d, &g)| *d += g);
    }
}

/// Copies between video and token layouts: `to_tokens` = patchify, else unpatchify.
pub fn patch_permute<T: Real>(dst: &mut [T], src: &[T], d: &PatchDims, to_tokens: bool) {
    let (nt, nh, nw) = (d.t / d.pt, d.h / d.ph, d.w / d.pw);
    let (run, tok_dim, per_sample) = (d.pw * d.c, d.token_dim(), d.t * d.h * d.w * d.c);
    if per_sample == 0 {
        return;
    }
    dst.par_chunks_mut(per_sample)
        .zip(src.par_chunks(per_sample))
        .for_each(|(dst, src)| {
            for it in 0..nt {
                for ih in 0..nh {
                    for iw in 0..nw {
                        let tok = (it * nh + ih) * nw + iw;
                        for dt in 0..d.pt {
                            for dh in 0..d.ph {
                                // pw·C values are contiguous on both sides.
                                let v = (((it * d.pt + dt) * d.h + ih * d.ph + dh) * d.w + iw * d.pw) * d.c;
                                let p = tok * tok_dim + (dt * d.ph + dh) * run;
                                if to_tokens {
                                    dst[p..p + run].copy_from_slice(&src[v..v + run]);
                                } else {
                                    dst[v..v + run].copy_from_slice(&src[p..p + run]);
                                }
                            }
                        }
                    }
                }
            }
        });
}

fn freq<T: Real>(j: usize, half: usize, max_period: f64) -> T {
    T::of((-(max_period.ln()) * j as f64 / half as f64).exp())
}

pub fn timestep_forward<T: Real>(out: &mut [T], t: &[T], d: &TimestepDims) {
    let half = d.dim / 2;
    if d.dim == 0 {
        return;
    }
    out.par_chunks_mut(d.dim).zip(t.par_iter()).for_each(|(o, &tv)| {
        for j in 0..half {
            let a = tv * freq::<T>(j, half, d.max_period);
            o[j] = a.cos();
            o[half + j] = a.sin();
        }
        if d.dim % 2 == 1 {
            o[d.dim - 1] = T::zero();
        }
    });
}

pub fn timestep_backward<T: Real>(dt: &mut [T], dout: &[T], t: &[T], d: &TimestepDims) {
    let half = d.dim / 2;
    for (i, g) in dt.iter_mut().enumerate() {
        let mut s = T::zero();
        for j in 0..half {
            let f = freq::<T>(j, half, d.max_period);
            let a = t[i] * f;
            s += (-dout[i * d.dim + j] * a.sin() + dout[i * d.dim + half + j] * a.cos()) * f;
        }
        *g = s;
    }
}

impl EmbedOps for CpuBackend {
    fn embedding_forward(
        &self,
        out: HostMut<'_>,
        ids_: HostRef<'_>,
        table: HostRef<'_>,
        d: EmbeddingDims,
    ) -> Result<()> {
        const OP: &str = "embedding_forward";
        let dt = check::embedding_forward(ACTIVATION_FLOATS, &out, &ids_, &table, &d)?;
        let ids = indices(OP, "ids", ids_, d.n, d.v, false)?;
        with_float!(dt, [out, table], T => embedding_forward::<T>(T::get_mut(out), ids, T::get(table), d.c));
        Ok(())
    }
    fn embedding_backward(
        &self,
        dtable: HostMut<'_>,
        dout: HostRef<'_>,
        ids_: HostRef<'_>,
        d: EmbeddingDims,
    ) -> Result<()> {
        const OP: &str = "embedding_backward";
        let dt = check::embedding_backward(ACTIVATION_FLOATS, &dtable, &dout, &ids_, &d)?;
        let ids = indices(OP, "ids", ids_, d.n, d.v, false)?;
        with_float!(dt, [dtable, dout], T => embedding_backward::<T>(T::get_mut(dtable), T::get(dout), ids, d.c));
        Ok(())
    }
    fn patchify_forward(&self, out: HostMut<'_>, x: HostRef<'_>, d: PatchDims) -> Result<()> {
        let dt = check::patch(
            "patchify_forward",
            ACTIVATION_FLOATS,
            &out,
            true,
            &x,
            ("out", "x"),
            &d,
        )?;
        with_float!(dt, [out, x], T => patch_permute::<T>(T::get_mut(out), T::get(x), &d, true));
        Ok(())
    }
    fn patchify_backward(&self, dx: HostMut<'_>, dout: HostRef<'_>, d: PatchDims) -> Result<()> {
        let dt = check::patch(
            "patchify_backward",
            ACTIVATION_FLOATS,
            &dx,
            false,
            &dout,
            ("dx", "dout"),
            &d,
        )?;
        with_float!(dt, [dx, dout], T => patch_permute::<T>(T::get_mut(dx), T::get(dout), &d, false));
        Ok(())
    }
    fn unpatchify_forward(&self, out: HostMut<'_>, tokens: HostRef<'_>, d: PatchDims) -> Result<()> {
        let dt = check::patch(
            "unpatchify_forward",
            ACTIVATION_FLOATS,
            &out,
            false,
            &tokens,
            ("out", "tokens"),
            &d,
        )?;
        with_float!(dt, [out, tokens], T => patch_permute::<T>(T::get_mut(out), T::get(tokens), &d, false));
        Ok(())
    }
    fn unpatchify_backward(&self, dtokens: HostMut<'_>, dout: HostRef<'_>, d: PatchDims) -> Result<()> {
        let dt = check::patch(
            "unpatchify_backward",
            ACTIVATION_FLOATS,
            &dtokens,
            true,
            &dout,
            ("dtokens", "dout"),
            &d,
        )?;
        with_float!(dt, [dtokens, dout], T => patch_permute::<T>(T::get_mut(dtokens), T::get(dout), &d, true));
        Ok(())
    }
    fn timestep_embedding_forward(&self, out: HostMut<'_>, t: HostRef<'_>, d: TimestepDims) -> Result<()> {
        let dt = check::timestep_embedding_forward(ACTIVATION_FLOATS, &out, &t, &d)?;
        with_float!(dt, [out, t], T => timestep_forward::<T>(T::get_mut(out), T::get(t), &d));
        Ok(())
    }
    fn timestep_embedding_backward(
        &self,
        dt_: HostMut<'_>,
        dout: HostRef<'_>,
        t: HostRef<'_>,
        d: TimestepDims,
    ) -> Result<()> {
        let dt = check::timestep_embedding_backward(ACTIVATION_FLOATS, &dt_, &dout, &t, &d)?;
        with_float!(dt, [dt_, dout, t], T => timestep_backward::<T>(T::get_mut(dt_), T::get(dout), T::get(t), &d));
        Ok(())
    }
}
