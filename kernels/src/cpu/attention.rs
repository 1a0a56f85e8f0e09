//! Scaled dot-product attention on CPU: blocked online softmax, grouped-query heads.
//!
//! Forward walks key blocks of `BK` for each query block of `BQ`, keeping a running max, sum
//! and weighted value accumulator per row (the FlashAttention recurrence), so memory is
//! O(BQ·(BK + HD)) per task, never O(T²). It returns the per-row log-sum-exp.
//!
//! Backward recomputes probabilities from `lse` in two parallel passes: one over key blocks
//! (producing `dk`, `dv`), one over query blocks (producing `dq`). Each output element is
//! owned by one task and summed in a fixed order, so results are deterministic.

use super::{with_real, CpuBackend, Real};
use crate::ops::{check_all, AttentionOps, AttnDims, REFERENCE_FLOATS};
use crate::{HostMut, HostRef, Result};
use rayon::prelude::*;

const BQ: usize = 32;
const BK: usize = 64;

#[inline]
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut s = T::zero();
    for i in 0..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[inline]
fn axpy<T: Real>(y: &mut [T], alpha: T, x: &[T]) {
    for i in 0..y.len() {
        y[i] += alpha * x[i];
    }
}

/// Index helpers for `(B, T, H, HD)` tensors.
#[derive(Clone, Copy)]
struct Layout {
    d: AttnDims,
}

impl Layout {
    fn q(&self, b: usize, t: usize, h: usize) -> usize {
        ((b * self.d.tq + t) * self.d.nh + h) * self.d.hd
    }
    fn kv(&self, b: usize, t: usize, h: usize) -> usize {
        ((b * self.d.tk + t) * self.d.nkv + h) * self.d.hd
    }
    fn lse(&self, b: usize, h: usize, t: usize) -> usize {
        (b * self.d.nh + h) * self.d.tq + t
    }
    fn visible(&self, qi: usize, kj: usize) -> bool {
        !self.d.causal || self.d.k_start + kj <= self.d.q_start + qi
    }
    /// Keys `0..end` can be visible to query `qi` (all of them when not causal).
    fn key_end(&self, qi: usize) -> usize {
        if !self.d.causal {
            return self.d.tk;
        }
        (self.d.q_start + qi + 1)
            .saturating_sub(self.d.k_start)
            .min(self.d.tk)
    }
    fn group(&self) -> usize {
        self.d.nh / self.d.nkv
    }
}

pub fn attention_forward<T: Real>(out: &mut [T], lse: &mut [T], q: &[T], k: &[T], v: &[T], d: &AttnDims) {
    let ly = Layout { d: *d };
    let (hd, scale) = (d.hd, T::of(d.scale as f64));
    let qblocks = d.tq.div_ceil(BQ);
    let tasks: Vec<(usize, usize, usize)> = (0..d.b)
        .flat_map(|b| (0..d.nh).flat_map(move |h| (0..qblocks).map(move |qb| (b, h, qb))))
        .collect();
    let results: Vec<(Vec<T>, Vec<T>)> = tasks
        .par_iter()
        .map(|&(b, h, qb)| {
            let kvh = h / ly.group();
            let (q0, q1) = (qb * BQ, ((qb + 1) * BQ).min(d.tq));
            let nq = q1 - q0;
            let mut m = vec![T::neg_infinity(); nq];
            let mut l = vec![T::zero(); nq];
            let mut acc = vec![T::zero(); nq * hd];
            let mut s = [T::zero(); BK];
            let kend = ly.key_end(q1 - 1);
            for k0 in (0..kend).step_by(BK) {
                let k1 = (k0 + BK).min(kend);
                for r in 0..nq {
                    let qi = q0 + r;
                    let qrow = &q[ly.q(b, qi, h)..ly.q(b, qi, h) + hd];
                    let mut rowmax = T::neg_infinity();
                    for j in k0..k1 {
                        let sj = if ly.visible(qi, j) {
                            dot(qrow, &k[ly.kv(b, j, kvh)..ly.kv(b, j, kvh) + hd]) * scale
                        } else {
                            T::neg_infinity()
                        };
                        s[j - k0] = sj;
                        rowmax = rowmax.max(sj);
                    }
                    if rowmax == T::neg_infinity() {
                        continue;
                    }
                    let m_new = m[r].max(rowmax);
                    let corr = (m[r] - m_new).exp();
                    l[r] *= corr;
                    let a = &mut acc[r * hd..(r + 1) * hd];
                    a.iter_mut().for_each(|x| *x *= corr);
                    for j in k0..k1 {
                        if s[j - k0] == T::neg_infinity() {
                            continue;
                        }
                        let p = (s[j - k0] - m_new).exp();
                        l[r] += p;
                        axpy(a, p, &v[ly.kv(b, j, kvh)..ly.kv(b, j, kvh) + hd]);
                    }
                    m[r] = m_new;
                }
            }
            let mut row_lse = vec![T::neg_infinity(); nq];
            for r in 0..nq {
                if l[r] > T::zero() {
                    let inv = l[r].recip();
                    acc[r * hd..(r + 1) * hd].iter_mut().for_each(|x| *x *= inv);
                    row_lse[r] = m[r] + l[r].ln();
                }
            }
            (acc, row_lse)
        })
        .collect();
    for (&(b, h, qb), (acc, row_lse)) in tasks.iter().zip(results) {
        for (r, lv) in row_lse.into_iter().enumerate() {
            let qi = qb * BQ + r;
            out[ly.q(b, qi, h)..ly.q(b, qi, h) + hd].copy_from_slice(&acc[r * hd..(r + 1) * hd]);
            lse[ly.lse(b, h, qi)] = lv;
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Real>(
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    dout: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    out: &[T],
    lse: &[T],
    d: &AttnDims,
) {
    let ly = Layout { d: *d };
    let (hd, scale, g) = (d.hd, T::of(d.scale as f64), ly.group());
    // delta_i = dO_i · O_i, laid out like lse.
    let mut delta = vec![T::zero(); d.b * d.nh * d.tq];
    delta.par_iter_mut().enumerate().for_each(|(idx, x)| {
        let (bh, t) = (idx / d.tq, idx % d.tq);
        let (b, h) = (bh / d.nh, bh % d.nh);
        let o = ly.q(b, t, h);
        *x = dot(&dout[o..o + hd], &out[o..o + hd]);
    });
    // Probability and score gradient of one (query, key) pair.
    let pds = |b: usize, h: usize, qi: usize, kvh: usize, j: usize| -> Option<(T, T)> {
        let l = lse[ly.lse(b, h, qi)];
        if l == T::neg_infinity() || !ly.visible(qi, j) {
            return None;
        }
        let (qo, ko) = (ly.q(b, qi, h), ly.kv(b, j, kvh));
        let p = (dot(&q[qo..qo + hd], &k[ko..ko + hd]) * scale - l).exp();
        let dp = dot(&dout[qo..qo + hd], &v[ko..ko + hd]);
        Some((p, p * (dp - delta[ly.lse(b, h, qi)])))
    };

    // Pass 1: dk, dv per key block, summing over every query of every head in the kv group.
    let kblocks = d.tk.div_ceil(BK);
    let ktasks: Vec<(usize, usize, usize)> = (0..d.b)
        .flat_map(|b| (0..d.nkv).flat_map(move |h| (0..kblocks).map(move |kb| (b, h, kb))))
        .collect();
    let kres: Vec<(Vec<T>, Vec<T>)> = ktasks
        .par_iter()
        .map(|&(b, kvh, kb)| {
            let (k0, k1) = (kb * BK, ((kb + 1) * BK).min(d.tk));
            let mut dkl = vec![T::zero(); (k1 - k0) * hd];
            let mut dvl = vec![T::zero(); (k1 - k0) * hd];
            for h in kvh * g..(kvh + 1) * g {
                for qi in 0..d.tq {
                    if ly.key_end(qi) <= k0 {
                        continue;
                    }
                    let qo = ly.q(b, qi, h);
                    for j in k0..k1 {
                        if let Some((p, ds)) = pds(b, h, qi, kvh, j) {
                            let r = (j - k0) * hd;
                            axpy(&mut dvl[r..r + hd], p, &dout[qo..qo + hd]);
                            axpy(&mut dkl[r..r + hd], ds * scale, &q[qo..qo + hd]);
                        }
                    }
                }
            }
            (dkl, dvl)
        })
        .collect();
    for (&(b, kvh, kb), (dkl, dvl)) in ktasks.iter().zip(kres) {
        for r in 0..dkl.len() / hd.max(1) {
            let o = ly.kv(b, kb * BK + r, kvh);
            dk[o..o + hd].copy_from_slice(&dkl[r * hd..(r + 1) * hd]);
            dv[o..o + hd].copy_from_slice(&dvl[r * hd..(r + 1) * hd]);
        }
    }

    // Pass 2: dq per query block.
    let qblocks = d.tq.div_ceil(BQ);
    let qtasks: Vec<(usize, usize, usize)> = (0..d.b)
        .flat_map(|b| (0..d.nh).flat_map(move |h| (0..qblocks).map(move |qb| (b, h, qb))))
        .collect();
    let qres: Vec<Vec<T>> = qtasks
        .par_iter()
        .map(|&(b, h, qb)| {
            let kvh = h / g;
            let (q0, q1) = (qb * BQ, ((qb + 1) * BQ).min(d.tq));
            let mut dql = vec![T::zero(); (q1 - q0) * hd];
            for qi in q0..q1 {
                let r = (qi - q0) * hd;
                for j in 0..ly.key_end(qi) {
                    if let Some((_, ds)) = pds(b, h, qi, kvh, j) {
                        let ko = ly.kv(b, j, kvh);
                        axpy(&mut dql[r..r + hd], ds * scale, &k[ko..ko + hd]);
                    }
                }
            }
            dql
        })
        .collect();
    for (&(b, h, qb), dql) in qtasks.iter().zip(qres) {
        for r in 0..dql.len() / hd.max(1) {
            let o = ly.q(b, qb * BQ + r, h);
            dq[o..o + hd].copy_from_slice(&dql[r * hd..(r + 1) * hd]);
        }
    }
}

impl AttentionOps for CpuBackend {
    fn attention_forward(
        &self,
        out: HostMut<'_>,
        lse: HostMut<'_>,
        q: HostRef<'_>,
        k: HostRef<'_>,
        v: HostRef<'_>,
        d: AttnDims,
    ) -> Result<()> {
        const OP: &str = "attention_forward";
        d.rule(OP)?;
        let (qs, kvs, ls) = (d.q(), d.kv(), d.lse());
        let (nq, nkv) = (d.b * d.tq * d.nh * d.hd, d.b * d.tk * d.nkv * d.hd);
        let dt = check_all(
            OP,
            REFERENCE_FLOATS,
            &[
                ("q", Some(&q), nq, &qs),
                ("k", Some(&k), nkv, &kvs),
                ("v", Some(&v), nkv, &kvs),
            ],
        )?;
        check_all(
            OP,
            &[dt],
            &[
                ("out", Some(&out), nq, &qs),
                ("lse", Some(&lse), d.b * d.nh * d.tq, &ls),
            ],
        )?;
        with_real!(dt, T => attention_forward::<T>(T::get_mut(out), T::get_mut(lse), T::get(q), T::get(k), T::get(v), &d));
        Ok(())
    }

    fn attention_backward(
        &self,
        dq: HostMut<'_>,
        dk: HostMut<'_>,
        dv: HostMut<'_>,
        dout: HostRef<'_>,
        q: HostRef<'_>,
        k: HostRef<'_>,
        v: HostRef<'_>,
        out: HostRef<'_>,
        lse: HostRef<'_>,
        d: AttnDims,
    ) -> Result<()> {
        const OP: &str = "attention_backward";
        d.rule(OP)?;
        let (qs, kvs, ls) = (d.q(), d.kv(), d.lse());
        let (nq, nkv) = (d.b * d.tq * d.nh * d.hd, d.b * d.tk * d.nkv * d.hd);
        let dt = check_all(
            OP,
            REFERENCE_FLOATS,
            &[
                ("q", Some(&q), nq, &qs),
                ("k", Some(&k), nkv, &kvs),
                ("v", Some(&v), nkv, &kvs),
                ("out", Some(&out), nq, &qs),
                ("dout", Some(&dout), nq, &qs),
                ("lse", Some(&lse), d.b * d.nh * d.tq, &ls),
            ],
        )?;
        check_all(
            OP,
            &[dt],
            &[
                ("dq", Some(&dq), nq, &qs),
                ("dk", Some(&dk), nkv, &kvs),
                ("dv", Some(&dv), nkv, &kvs),
            ],
        )?;
        with_real!(dt, T => attention_backward::<T>(
            T::get_mut(dq), T::get_mut(dk), T::get_mut(dv), T::get(dout), T::get(q), T::get(k),
            T::get(v), T::get(out), T::get(lse), &d));
        Ok(())
    }
}
