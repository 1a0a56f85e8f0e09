//! The checks of [`crate::AttentionOps`].

use crate::backend::Slice;
use crate::ops::{check_args, Arg, AttnDims};
use crate::{DType, Result};

/// `attention_forward`: `q`, `out (B, TQ, NH, HD)`, `k`, `v (B, TK, NKV, HD)`, `lse (B, NH, TQ)`.
pub(crate) fn attention_forward<M: Slice, R: Slice>(
    allowed: &[DType],
    out: &M,
    lse: &M,
    q: &R,
    k: &R,
    v: &R,
    d: &AttnDims,
) -> Result<DType> {
    const OP: &str = "attention_forward";
    d.rule(OP)?;
    let (qs, kvs, ls) = (d.q(), d.kv(), d.lse());
    let (nq, nkv) = (d.b * d.tq * d.nh * d.hd, d.b * d.tk * d.nkv * d.hd);
    check_args(
        OP,
        allowed,
        &[
            Arg::act("q", Some(q), nq, &qs),
            Arg::act("k", Some(k), nkv, &kvs),
            Arg::act("v", Some(v), nkv, &kvs),
            Arg::act("out", Some(out), nq, &qs),
            Arg::stat("lse", Some(lse), d.b * d.nh * d.tq, &ls),
        ],
    )
}

/// `attention_merge`: reads `b, tq, nh, hd` of `d`.
pub(crate) fn attention_merge<M: Slice, R: Slice>(
    allowed: &[DType],
    out: &M,
    lse: &M,
    part: &R,
    part_lse: &R,
    d: &AttnDims,
) -> Result<DType> {
    const OP: &str = "attention_merge";
    let (qs, ls) = (d.q(), d.lse());
    let (nq, nl) = (d.b * d.tq * d.nh * d.hd, d.b * d.nh * d.tq);
    check_args(
        OP,
        allowed,
        &[
            Arg::act("part", Some(part), nq, &qs),
            Arg::stat("part_lse", Some(part_lse), nl, &ls),
            Arg::act("out", Some(out), nq, &qs),
            Arg::stat("lse", Some(lse), nl, &ls),
        ],
    )
}

/// `attention_backward`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward<M: Slice, R: Slice>(
    allowed: &[DType],
    dq: &M,
    dk: &M,
    dv: &M,
    dout: &R,
    q: &R,
    k: &R,
    v: &R,
    out: &R,
    lse: &R,
    d: &AttnDims,
) -> Result<DType> {
    const OP: &str = "attention_backward";
    d.rule(OP)?;
    let (qs, kvs, ls) = (d.q(), d.kv(), d.lse());
    let (nq, nkv) = (d.b * d.tq * d.nh * d.hd, d.b * d.tk * d.nkv * d.hd);
    check_args(
        OP,
        allowed,
        &[
            Arg::act("q", Some(q), nq, &qs),
            Arg::act("k", Some(k), nkv, &kvs),
            Arg::act("v", Some(v), nkv, &kvs),
            Arg::act("out", Some(out), nq, &qs),
            Arg::act("dout", Some(dout), nq, &qs),
            Arg::stat("lse", Some(lse), d.b * d.nh * d.tq, &ls),
            Arg::act("dq", Some(dq), nq, &qs),
            Arg::act("dk", Some(dk), nkv, &kvs),
            Arg::act("dv", Some(dv), nkv, &kvs),
        ],
    )
}
