//! Context-parallel attention over the `cp = ring × ulysses` group (see [`crate::seq`] for
//! which tokens each rank holds).
//!
//! - **Ulysses**: an all-to-all turns sequence-sharded `q, k, v (B, T/cp, NH, HD)` into
//!   head-sharded `(B, ulysses·T/cp, NH/ulysses, HD)` — all of the ring rank's tokens, a slice
//!   of the heads — attention runs locally, and the inverse all-to-all brings the output
//!   back. Backward runs the same moves on the gradients.
//! - **Ring**: each ring rank keeps its queries and passes its keys and values round the
//!   ring; the partial result over each visiting block is merged by log-sum-exp
//!   ([`weft_kernels::AttentionOps::attention_merge`]). Causal masking uses global positions, so blocks
//!   entirely in a query chunk's future are skipped. Backward sends the key/value block round
//!   the ring again with its gradient accumulator, each rank adding its queries'
//!   contribution, and a last step brings every accumulator home.
//!
//! Each ring step starts passing its block on in the background ([`Collective::Shift`] on a
//! copy) before computing with it, so the transfer overlaps the attention kernels.
//!
//! A ring rank holding two chunks (causal, head–tail) keeps them chunk-major `(2, B, T/2, …)`
//! inside the ring, so every (query chunk, key chunk) pair is one contiguous kernel call.
//!
//! The saved log-sum-exp is in the head-sharded layout `(B, NH/ulysses, T/ring)`.

use crate::{Collective, Comm, Pending, Result, SeqSplit};
use weft_kernels::{stat_dtype, AttnDims, Backend, DType, Ops, Slice, SwapDims};

/// A rank's context-parallel group: its ring and Ulysses sub-groups and the token split.
pub struct CpGroup<'a, B: Backend> {
    pub ring: &'a dyn Comm<B>,
    pub ulysses: &'a dyn Comm<B>,
    pub split: SeqSplit,
}

/// `d`: the cp rank's local attention (`tq = tk = T/cp`, this rank's heads).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward<B: Ops>(
    be: &B,
    g: &CpGroup<'_, B>,
    out: B::Mut<'_>,
    lse: B::Mut<'_>,
    q: B::Ref<'_>,
    k: B::Ref<'_>,
    v: B::Ref<'_>,
    d: AttnDims,
) -> Result<()> {
    let u = g.ulysses.size();
    if u == 1 {
        return ring_forward(be, g, out, lse, q, k, v, d);
    }
    let dt = q.dtype();
    let du = heads_dims(d, u);
    let qu = to_heads(be, g.ulysses, q, d.b, d.tq, d.nh * d.hd)?;
    let ku = to_heads(be, g.ulysses, k, d.b, d.tk, d.nkv * d.hd)?;
    let vu = to_heads(be, g.ulysses, v, d.b, d.tk, d.nkv * d.hd)?;
    let mut ou = be.alloc(dt, d.b * du.tq * du.nh * du.hd)?;
    let (qu, ku, vu) = (B::view(&qu), B::view(&ku), B::view(&vu));
    ring_forward(be, g, B::view_mut(&mut ou), lse, qu, ku, vu, du)?;
    to_tokens(be, g.ulysses, B::view(&ou), out, d.b, d.tq, d.nh * d.hd)
}

/// Gradients `dq, dk, dv` (overwritten) of [`attention_forward`]; `out` and `lse` are what it
/// returned.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<B: Ops>(
    be: &B,
    g: &CpGroup<'_, B>,
    dq: B::Mut<'_>,
    dk: B::Mut<'_>,
    dv: B::Mut<'_>,
    dout: B::Ref<'_>,
    q: B::Ref<'_>,
    k: B::Ref<'_>,
    v: B::Ref<'_>,
    out: B::Ref<'_>,
    lse: B::Ref<'_>,
    d: AttnDims,
) -> Result<()> {
    let u = g.ulysses.size();
    if u == 1 {
        return ring_backward(be, g, dq, dk, dv, dout, q, k, v, out, lse, d);
    }
    let dt = q.dtype();
    let du = heads_dims(d, u);
    let (cq, ckv) = (d.nh * d.hd, d.nkv * d.hd);
    let h = |x: B::Ref<'_>, c: usize| to_heads(be, g.ulysses, x, d.b, d.tq, c);
    let (dou, qu, ku, vu, ou) = (h(dout, cq)?, h(q, cq)?, h(k, ckv)?, h(v, ckv)?, h(out, cq)?);
    let mut dqu = be.alloc(dt, d.b * du.tq * du.nh * du.hd)?;
    let mut dku = be.alloc(dt, d.b * du.tk * du.nkv * du.hd)?;
    let mut dvu = be.alloc(dt, d.b * du.tk * du.nkv * du.hd)?;
    ring_backward(
        be,
        g,
        B::view_mut(&mut dqu),
        B::view_mut(&mut dku),
        B::view_mut(&mut dvu),
        B::view(&dou),
        B::view(&qu),
        B::view(&ku),
        B::view(&vu),
        B::view(&ou),
        lse,
        du,
    )?;
    to_tokens(be, g.ulysses, B::view(&dqu), dq, d.b, d.tq, cq)?;
    to_tokens(be, g.ulysses, B::view(&dku), dk, d.b, d.tk, ckv)?;
    to_tokens(be, g.ulysses, B::view(&dvu), dv, d.b, d.tk, ckv)
}

/// The attention a ring rank runs after the Ulysses all-to-all.
fn heads_dims(d: AttnDims, u: usize) -> AttnDims {
    AttnDims {
        tq: d.tq * u,
        tk: d.tk * u,
        nh: d.nh / u,
        nkv: d.nkv / u,
        ..d
    }
}

/// Sequence-sharded `x (B, T, H·HD)` → head-sharded `(B, u·T, H/u·HD)` over the Ulysses group.
pub fn to_heads<B: Ops>(
    be: &B,
    u: &dyn Comm<B>,
    x: B::Ref<'_>,
    b: usize,
    t: usize,
    c: usize,
) -> Result<B::Buffer> {
    let n = u.size();
    let mut send = be.alloc(x.dtype(), x.len())?;
    let mut recv = be.alloc(x.dtype(), x.len())?;
    let per_rank = SwapDims {
        a: b * t,
        b: n,
        inner: c / n,
    };
    be.swap_axes(B::view_mut(&mut send), x, per_rank)?;
    u.all_to_all(be, B::view(&send), B::view_mut(&mut recv))?;
    let sample_major = SwapDims {
        a: n,
        b,
        inner: t * c / n,
    };
    be.swap_axes(B::view_mut(&mut send), B::view(&recv), sample_major)?;
    Ok(send)
}

/// The inverse of [`to_heads`] (and its adjoint): head-sharded `x (B, u·T, H/u·HD)` →
/// `out (B, T, H·HD)`.
pub fn to_tokens<B: Ops>(
    be: &B,
    u: &dyn Comm<B>,
    x: B::Ref<'_>,
    out: B::Mut<'_>,
    b: usize,
    t: usize,
    c: usize,
) -> Result<()> {
    let n = u.size();
    let mut send = be.alloc(x.dtype(), x.len())?;
    let mut recv = be.alloc(x.dtype(), x.len())?;
    let rank_major = SwapDims {
        a: b,
        b: n,
        inner: t * c / n,
    };
    be.swap_axes(B::view_mut(&mut send), x, rank_major)?;
    u.all_to_all(be, B::view(&send), B::view_mut(&mut recv))?;
    let token_major = SwapDims {
        a: n,
        b: b * t,
        inner: c / n,
    };
    be.swap_axes(out, B::view(&recv), token_major)?;
    Ok(())
}

/// `(B, nc, per)` → `(nc, B, per)` into `out` (a copy when `nc = 1`).
fn chunk_major<B: Ops>(be: &B, x: B::Ref<'_>, out: B::Mut<'_>, b: usize, nc: usize) -> Result<()> {
    let d = SwapDims {
        a: b,
        b: nc,
        inner: x.len() / (b * nc).max(1),
    };
    be.swap_axes(out, x, d)?;
    Ok(())
}

fn sample_major<B: Ops>(be: &B, x: B::Ref<'_>, out: B::Mut<'_>, b: usize, nc: usize) -> Result<()> {
    let d = SwapDims {
        a: nc,
        b,
        inner: x.len() / (b * nc).max(1),
    };
    be.swap_axes(out, x, d)?;
    Ok(())
}

/// One (query chunk, key chunk) pair of a ring step, or `None` when causality masks all of it.
fn pair(d: &AttnDims, tc: usize, q_start: usize, k_start: usize) -> Option<AttnDims> {
    if d.causal && k_start > q_start + tc - 1 {
        return None;
    }
    Some(AttnDims {
        tq: tc,
        tk: tc,
        q_start,
        k_start,
        ..*d
    })
}

/// Piece `i` of `n` elements of `b`.
fn at<B: Backend>(b: &B::Buffer, n: usize, i: usize) -> B::Ref<'_> {
    B::view(b).range(i * n..(i + 1) * n)
}

/// Passes a ring rank's K/V block on in the background while it is used: a copy goes to the
/// next rank while the previous rank's block arrives; the two buffers are reused every step.
struct Passer<B: Backend> {
    spare: Option<(B::Buffer, B::Buffer)>,
}

impl<B: Ops> Passer<B> {
    fn new(be: &B, dt: DType, n: usize) -> Result<Self> {
        Ok(Passer {
            spare: Some((buf(be, dt, n)?, buf(be, dt, n)?)),
        })
    }
    /// Start passing `block` on (when `more` steps follow).
    fn start(
        &mut self,
        be: &B,
        ring: &dyn Comm<B>,
        block: &B::Buffer,
        more: bool,
    ) -> Result<Option<Pending<B>>> {
        if !more {
            return Ok(None);
        }
        let Some((mut copy, recv)) = self.spare.take() else {
            return Ok(None);
        };
        let n = B::view(block).len();
        be.cast(B::view_mut(&mut copy), B::view(block), n)?;
        Ok(Some(ring.start(be, Collective::Shift, copy, recv)?))
    }
    /// Wait for the pass and make the arrived block current.
    fn finish(&mut self, pending: Option<Pending<B>>, block: &mut B::Buffer) -> Result<()> {
        if let Some(p) = pending {
            let (copy, recv) = p.wait()?;
            self.spare = Some((copy, std::mem::replace(block, recv)));
        }
        Ok(())
    }
}

fn buf<B: Backend>(be: &B, dt: DType, n: usize) -> Result<B::Buffer> {
    Ok(be.alloc(dt, n)?)
}

#[allow(clippy::too_many_arguments)]
fn ring_forward<B: Ops>(
    be: &B,
    g: &CpGroup<'_, B>,
    out: B::Mut<'_>,
    lse: B::Mut<'_>,
    q: B::Ref<'_>,
    k: B::Ref<'_>,
    v: B::Ref<'_>,
    d: AttnDims,
) -> Result<()> {
    let (ring, r) = (g.ring.size(), g.ring.rank());
    let mine = g.split.chunks(r);
    let (nc, dt) = (mine.len(), q.dtype());
    let tc = d.tq / nc;
    let (nq, nk, nl) = (q.len(), k.len(), d.b * d.nh * d.tq);
    let (cq, ck, cl) = (nq / nc, nk / nc, nl / nc);
    let mut qc = buf(be, dt, nq)?;
    chunk_major(be, q, B::view_mut(&mut qc), d.b, nc)?;
    let mut kv = buf(be, dt, 2 * nk)?;
    {
        let (kd, vd) = B::view_mut(&mut kv).split_at(nk);
        chunk_major(be, k, kd, d.b, nc)?;
        chunk_major(be, v, vd, d.b, nc)?;
    }
    let mut passer = Passer::<B>::new(be, dt, 2 * nk)?;
    let mut oc = buf(be, dt, nq)?;
    let mut lc = buf(be, stat_dtype(dt), nl)?;
    be.fill(B::view_mut(&mut lc), f64::NEG_INFINITY, nl)?;
    let (mut po, mut pl) = (buf(be, dt, cq)?, buf(be, stat_dtype(dt), cl)?);
    for s in 0..ring {
        let theirs = g.split.chunks((r + ring - s) % ring);
        let pending = passer.start(be, g.ring, &kv, s + 1 < ring)?;
        for (i, qr) in mine.iter().enumerate() {
            for (j, kr) in theirs.iter().enumerate() {
                let Some(pd) = pair(&d, tc, qr.start, kr.start) else {
                    continue;
                };
                let kvv = B::view(&kv);
                let (kj, vj) = (
                    B::share(&kvv).range(j * ck..(j + 1) * ck),
                    kvv.range(nk + j * ck..nk + (j + 1) * ck),
                );
                let qi = B::view(&qc).range(i * cq..(i + 1) * cq);
                be.attention_forward(B::view_mut(&mut po), B::view_mut(&mut pl), qi, kj, vj, pd)?;
                let oi = B::view_mut(&mut oc).range(i * cq..(i + 1) * cq);
                let li = B::view_mut(&mut lc).range(i * cl..(i + 1) * cl);
                be.attention_merge(oi, li, B::view(&po), B::view(&pl), pd)?;
            }
        }
        passer.finish(pending, &mut kv)?;
    }
    sample_major(be, B::view(&oc), out, d.b, nc)?;
    // (nc, B·NH, tc) → (B·NH, nc, tc) = (B, NH, T).
    let d_lse = SwapDims {
        a: nc,
        b: d.b * d.nh,
        inner: tc,
    };
    be.swap_axes(lse, B::view(&lc), d_lse)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn ring_backward<B: Ops>(
    be: &B,
    g: &CpGroup<'_, B>,
    dq: B::Mut<'_>,
    dk: B::Mut<'_>,
    dv: B::Mut<'_>,
    dout: B::Ref<'_>,
    q: B::Ref<'_>,
    k: B::Ref<'_>,
    v: B::Ref<'_>,
    out: B::Ref<'_>,
    lse: B::Ref<'_>,
    d: AttnDims,
) -> Result<()> {
    let (ring, r) = (g.ring.size(), g.ring.rank());
    let mine = g.split.chunks(r);
    let (nc, dt) = (mine.len(), q.dtype());
    let tc = d.tq / nc;
    let (nq, nk, nl) = (q.len(), k.len(), d.b * d.nh * d.tq);
    let (cq, ck, cl) = (nq / nc, nk / nc, nl / nc);
    let cm = |x: B::Ref<'_>| -> Result<B::Buffer> {
        let mut o = buf(be, dt, x.len())?;
        chunk_major(be, x, B::view_mut(&mut o), d.b, nc)?;
        Ok(o)
    };
    let (qc, doc, oc) = (cm(q)?, cm(dout)?, cm(out)?);
    let mut lc = buf(be, stat_dtype(dt), nl)?;
    let d_lse = SwapDims {
        a: d.b * d.nh,
        b: nc,
        inner: tc,
    };
    be.swap_axes(B::view_mut(&mut lc), lse, d_lse)?;
    // [k | v] and its gradient accumulator [dk | dv], chunk-major, travelling together: the
    // block is passed on in the background while it is used, the accumulator once it is done.
    let mut kv = buf(be, dt, 2 * nk)?;
    {
        let (kd, vd) = B::view_mut(&mut kv).split_at(nk);
        chunk_major(be, k, kd, d.b, nc)?;
        chunk_major(be, v, vd, d.b, nc)?;
    }
    let mut passer = Passer::<B>::new(be, dt, 2 * nk)?;
    let (mut dkv, mut next) = (buf(be, dt, 2 * nk)?, buf(be, dt, 2 * nk)?);
    let mut dqc = buf(be, dt, nq)?;
    let (mut tq, mut tk, mut tv) = (buf(be, dt, cq)?, buf(be, dt, ck)?, buf(be, dt, ck)?);
    for s in 0..ring {
        let theirs = g.split.chunks((r + ring - s) % ring);
        let pending = passer.start(be, g.ring, &kv, s + 1 < ring)?;
        for (i, qr) in mine.iter().enumerate() {
            for (j, kr) in theirs.iter().enumerate() {
                let Some(pd) = pair(&d, tc, qr.start, kr.start) else {
                    continue;
                };
                be.attention_backward(
                    B::view_mut(&mut tq),
                    B::view_mut(&mut tk),
                    B::view_mut(&mut tv),
                    at::<B>(&doc, cq, i),
                    at::<B>(&qc, cq, i),
                    at::<B>(&kv, ck, j),
                    at::<B>(&kv, ck, nc + j),
                    at::<B>(&oc, cq, i),
                    at::<B>(&lc, cl, i),
                    pd,
                )?;
                let dqi = B::view_mut(&mut dqc).range(i * cq..(i + 1) * cq);
                be.accumulate(dqi, B::view(&tq), cq)?;
                let dkj = B::view_mut(&mut dkv).range(j * ck..(j + 1) * ck);
                be.accumulate(dkj, B::view(&tk), ck)?;
                let dvj = B::view_mut(&mut dkv).range((nc + j) * ck..(nc + j + 1) * ck);
                be.accumulate(dvj, B::view(&tv), ck)?;
            }
        }
        // Pass the accumulator on; after `ring` steps every block's gradient is back home.
        if ring > 1 {
            let (to, from) = ((r + 1) % ring, (r + ring - 1) % ring);
            g.ring
                .send_recv(be, B::view(&dkv), to, B::view_mut(&mut next), from)?;
            std::mem::swap(&mut dkv, &mut next);
        }
        passer.finish(pending, &mut kv)?;
    }
    sample_major(be, B::view(&dqc), dq, d.b, nc)?;
    let dkvv = B::view(&dkv);
    sample_major(be, B::share(&dkvv).range(0..nk), dk, d.b, nc)?;
    sample_major(be, dkvv.range(nk..2 * nk), dv, d.b, nc)?;
    Ok(())
}
