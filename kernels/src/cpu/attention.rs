//! Scaled dot-product attention on CPU: blocked online softmax, grouped-query heads.
//!
//! Forward walks key blocks of `BK` for each query block of `BQ`, keeping a running max, sum
//! and weighted value accumulator per row (the FlashAttention recurrence), so memory is
//! O(BQ·(BK + HD)) per task, never O(T²). It returns the per-row log-sum-exp.
//!
//! Backward recomputes probabilities from `lse` in two parallel passes: one over key blocks
//! (producing `dk`, `dv`), one over query blocks (producing `dq`). Each output element is
//! owned by one task and summed in a fixed order, so results are deterministic.
//!
//! Every tile product (`QKᵀ`, `PV`, `dO·Vᵀ`, `Pᵀ·dO`, `dSᵀ·Q`, `dS·K`) is a single-threaded
//! strided GEMM on views of the `(B, T, H, HD)` tensors, so no head is ever copied out; the
//! parallelism is across tasks, never inside a reduction.

use super::{with_float, CpuBackend, Real};
use crate::ops::{check, AttentionOps, AttnDims, ACTIVATION_FLOATS};
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

/// A strided matrix view into a slice: element `(i, j)` at `off + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct Mat<'a, T> {
    data: &'a [T],
    off: usize,
    rs: usize,
    cs: usize,
}

/// Single-threaded strided GEMM: `dst (m, n; row stride dst_rs) (+)= beta · lhs (m, k) · rhs (k, n)`.
/// Runs inside one rayon task, so the reduction order is fixed.
#[allow(clippy::too_many_arguments)]
fn mm<T: Real>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    dst_rs: usize,
    acc: bool,
    lhs: Mat<'_, T>,
    rhs: Mat<'_, T>,
    beta: T,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let last = |v: &Mat<'_, T>, r: usize, c: usize| v.off + (r - 1) * v.rs + (c - 1) * v.cs;
    assert!(
        last(&lhs, m, k) < lhs.data.len() && last(&rhs, k, n) < rhs.data.len(),
        "attention tile out of bounds"
    );
    assert!(
        (m - 1) * dst_rs + n - 1 < dst.len(),
        "attention tile out of bounds"
    );
    // SAFETY: the asserts bound the largest index each operand's strides can reach.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            acc,
            lhs.data.as_ptr().add(lhs.off),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr().add(rhs.off),
            rhs.cs as isize,
            rhs.rs as isize,
            T::one(),
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
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
    /// Rows `t0..` of head `h` of a query-shaped tensor.
    fn q_rows<'a, T>(&self, x: &'a [T], b: usize, t0: usize, h: usize) -> Mat<'a, T> {
        Mat {
            data: x,
            off: self.q(b, t0, h),
            rs: self.d.nh * self.d.hd,
            cs: 1,
        }
    }
    /// Rows `t0..` of kv head `h` of a key/value-shaped tensor.
    fn kv_rows<'a, T>(&self, x: &'a [T], b: usize, t0: usize, h: usize) -> Mat<'a, T> {
        Mat {
            data: x,
            off: self.kv(b, t0, h),
            rs: self.d.nkv * self.d.hd,
            cs: 1,
        }
    }
    /// The transpose of [`Layout::kv_rows`]: `(HD, rows)`.
    fn kv_cols<'a, T>(&self, x: &'a [T], b: usize, t0: usize, h: usize) -> Mat<'a, T> {
        Mat {
            data: x,
            off: self.kv(b, t0, h),
            rs: 1,
            cs: self.d.nkv * self.d.hd,
        }
    }
}

/// A contiguous `(rows, BK)` tile, or its transpose.
fn tile<T>(x: &[T]) -> Mat<'_, T> {
    Mat {
        data: x,
        off: 0,
        rs: BK,
        cs: 1,
    }
}
fn tile_t<T>(x: &[T]) -> Mat<'_, T> {
    Mat {
        data: x,
        off: 0,
        rs: 1,
        cs: BK,
    }
}

pub fn attention_forward<T: Real>(out: &mut [T], lse: &mut [T], q: &[T], k: &[T], v: &[T], d: &AttnDims) {
    let ly = Layout { d: *d };
    let (hd, scale) = (d.hd, T::of(d.scale));
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
            let mut s = vec![T::zero(); nq * BK];
            let kend = ly.key_end(q1 - 1);
            for k0 in (0..kend).step_by(BK) {
                let nk = (k0 + BK).min(kend) - k0;
                // S = scale · Q Kᵀ, then the online-softmax update row by row; S becomes P.
                mm(
                    nq,
                    nk,
                    hd,
                    &mut s,
                    BK,
                    false,
                    ly.q_rows(q, b, q0, h),
                    ly.kv_cols(k, b, k0, kvh),
                    scale,
                );
                for r in 0..nq {
                    let row = &mut s[r * BK..r * BK + nk];
                    let mut rowmax = T::neg_infinity();
                    for (j, x) in row.iter_mut().enumerate() {
                        if !ly.visible(q0 + r, k0 + j) {
                            *x = T::neg_infinity();
                        }
                        rowmax = rowmax.max(*x);
                    }
                    if rowmax == T::neg_infinity() {
                        row.fill(T::zero());
                        continue;
                    }
                    let m_new = m[r].max(rowmax);
                    let corr = (m[r] - m_new).exp();
                    l[r] *= corr;
                    acc[r * hd..(r + 1) * hd].iter_mut().for_each(|x| *x *= corr);
                    for x in row.iter_mut() {
                        *x = (*x - m_new).exp();
                        l[r] += *x;
                    }
                    m[r] = m_new;
                }
                // acc += P V
                mm(
                    nq,
                    hd,
                    nk,
                    &mut acc,
                    hd,
                    true,
                    tile(&s),
                    ly.kv_rows(v, b, k0, kvh),
                    T::one(),
                );
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

/// Everything backward reads, and the tile recomputation both passes share.
struct Bwd<'a, T> {
    ly: Layout,
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    dout: &'a [T],
    lse: &'a [T],
    delta: &'a [T],
}

impl<T: Real> Bwd<'_, T> {
    /// For queries `q0..q0+nq` of head `h` against keys `k0..k0+nk`: `p = softmax probabilities`
    /// and `ds = p ∘ (dO·Vᵀ − delta)`, both `(nq, BK)` tiles.
    #[allow(clippy::too_many_arguments)]
    fn tile(
        &self,
        b: usize,
        h: usize,
        q0: usize,
        nq: usize,
        k0: usize,
        nk: usize,
        p: &mut [T],
        ds: &mut [T],
    ) {
        let (ly, hd) = (self.ly, self.ly.d.hd);
        let kvh = h / ly.group();
        let scale = T::of(ly.d.scale);
        mm(
            nq,
            nk,
            hd,
            p,
            BK,
            false,
            ly.q_rows(self.q, b, q0, h),
            ly.kv_cols(self.k, b, k0, kvh),
            scale,
        );
        mm(
            nq,
            nk,
            hd,
            ds,
            BK,
            false,
            ly.q_rows(self.dout, b, q0, h),
            ly.kv_cols(self.v, b, k0, kvh),
            T::one(),
        );
        for r in 0..nq {
            let (qi, li) = (q0 + r, ly.lse(b, h, q0 + r));
            let (l, dl) = (self.lse[li], self.delta[li]);
            for j in 0..nk {
                let x = r * BK + j;
                if l == T::neg_infinity() || !ly.visible(qi, k0 + j) {
                    p[x] = T::zero();
                    ds[x] = T::zero();
                } else {
                    p[x] = (p[x] - l).exp();
                    ds[x] = p[x] * (ds[x] - dl);
                }
            }
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
    let (hd, scale, g) = (d.hd, T::of(d.scale), ly.group());
    // delta_i = dO_i · O_i, laid out like lse.
    let mut delta = vec![T::zero(); d.b * d.nh * d.tq];
    delta.par_iter_mut().enumerate().for_each(|(idx, x)| {
        let (bh, t) = (idx / d.tq, idx % d.tq);
        let (b, h) = (bh / d.nh, bh % d.nh);
        let o = ly.q(b, t, h);
        *x = dot(&dout[o..o + hd], &out[o..o + hd]);
    });
    let bw = Bwd {
        ly,
        q,
        k,
        v,
        dout,
        lse,
        delta: &delta,
    };

    // Pass 1: dk, dv per key block, summing over every query block of every head in the group.
    let kblocks = d.tk.div_ceil(BK);
    let ktasks: Vec<(usize, usize, usize)> = (0..d.b)
        .flat_map(|b| (0..d.nkv).flat_map(move |h| (0..kblocks).map(move |kb| (b, h, kb))))
        .collect();
    let kres: Vec<(Vec<T>, Vec<T>)> = ktasks
        .par_iter()
        .map(|&(b, kvh, kb)| {
            let (k0, nk) = (kb * BK, ((kb + 1) * BK).min(d.tk) - kb * BK);
            let (mut dkl, mut dvl) = (vec![T::zero(); nk * hd], vec![T::zero(); nk * hd]);
            let (mut p, mut ds) = (vec![T::zero(); BQ * BK], vec![T::zero(); BQ * BK]);
            for h in kvh * g..(kvh + 1) * g {
                for q0 in (0..d.tq).step_by(BQ) {
                    let nq = (q0 + BQ).min(d.tq) - q0;
                    if ly.key_end(q0 + nq - 1) <= k0 {
                        continue; // no query of this block sees these keys
                    }
                    bw.tile(b, h, q0, nq, k0, nk, &mut p, &mut ds);
                    // dV += Pᵀ dO ; dK += scale · dSᵀ Q
                    mm(
                        nk,
                        hd,
                        nq,
                        &mut dvl,
                        hd,
                        true,
                        tile_t(&p),
                        ly.q_rows(dout, b, q0, h),
                        T::one(),
                    );
                    mm(
                        nk,
                        hd,
                        nq,
                        &mut dkl,
                        hd,
                        true,
                        tile_t(&ds),
                        ly.q_rows(q, b, q0, h),
                        scale,
                    );
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
            let (q0, nq) = (qb * BQ, ((qb + 1) * BQ).min(d.tq) - qb * BQ);
            let mut dql = vec![T::zero(); nq * hd];
            let (mut p, mut ds) = (vec![T::zero(); BQ * BK], vec![T::zero(); BQ * BK]);
            let kend = ly.key_end(q0 + nq - 1);
            for k0 in (0..kend).step_by(BK) {
                let nk = (k0 + BK).min(kend) - k0;
                bw.tile(b, h, q0, nq, k0, nk, &mut p, &mut ds);
                // dQ += scale · dS K
                mm(
                    nq,
                    hd,
                    nk,
                    &mut dql,
                    hd,
                    true,
                    tile(&ds),
                    ly.kv_rows(k, b, k0, h / g),
                    scale,
                );
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

/// Log-sum-exp merge of a partial result into a running one (see
/// [`AttentionOps::attention_merge`]); samples in parallel.
pub fn attention_merge<T: Real>(out: &mut [T], lse: &mut [T], part: &[T], plse: &[T], d: &AttnDims) {
    let (t, nh, hd) = (d.tq, d.nh, d.hd);
    if t * nh * hd == 0 {
        return;
    }
    out.par_chunks_mut(t * nh * hd)
        .zip(lse.par_chunks_mut(nh * t))
        .zip(part.par_chunks(t * nh * hd).zip(plse.par_chunks(nh * t)))
        .for_each(|((o, l), (p, pl))| {
            for h in 0..nh {
                for i in 0..t {
                    let (a, c) = (l[h * t + i], pl[h * t + i]);
                    let m = a.max(c);
                    if m == T::neg_infinity() {
                        continue;
                    }
                    let (ea, ec) = ((a - m).exp(), (c - m).exp());
                    let s = ea + ec;
                    let (wa, wc) = (ea / s, ec / s);
                    let r = (i * nh + h) * hd..(i * nh + h + 1) * hd;
                    for (o, &p) in o[r.clone()].iter_mut().zip(&p[r]) {
                        *o = *o * wa + p * wc;
                    }
                    l[h * t + i] = m + s.ln();
                }
            }
        });
}

impl AttentionOps for CpuBackend {
    fn attention_merge(
        &self,
        out: HostMut<'_>,
        lse: HostMut<'_>,
        part: HostRef<'_>,
        part_lse: HostRef<'_>,
        d: AttnDims,
    ) -> Result<()> {
        let dt = check::attention_merge(ACTIVATION_FLOATS, &out, &lse, &part, &part_lse, &d)?;
        with_float!(dt, [out, lse, part, part_lse], T => attention_merge::<T>(T::get_mut(out), T::get_mut(lse), T::get(part), T::get(part_lse), &d));
        Ok(())
    }

    fn attention_forward(
        &self,
        out: HostMut<'_>,
        lse: HostMut<'_>,
        q: HostRef<'_>,
        k: HostRef<'_>,
        v: HostRef<'_>,
        d: AttnDims,
    ) -> Result<()> {
        let dt = check::attention_forward(ACTIVATION_FLOATS, &out, &lse, &q, &k, &v, &d)?;
        with_float!(dt, [out, lse, q, k, v], T => attention_forward::<T>(T::get_mut(out), T::get_mut(lse), T::get(q), T::get(k), T::get(v), &d));
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
        let dt = check::attention_backward(
            ACTIVATION_FLOATS,
            &dq,
            &dk,
            &dv,
            &dout,
            &q,
            &k,
            &v,
            &out,
            &lse,
            &d,
        )?;
        with_float!(dt, [dq, dk, dv, dout, q, k, v, out, lse], T => attention_backward::<T>(
            T::get_mut(dq), T::get_mut(dk), T::get_mut(dv), T::get(dout), T::get(q), T::get(k),
            T::get(v), T::get(out), T::get(lse), &d));
        Ok(())
    }
}
