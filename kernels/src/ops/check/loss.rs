//! The checks of [`crate::LossOps`].

use super::ids;
use crate::backend::Slice;
use crate::ops::{check_args, Arg, CrossEntropyDims};
use crate::{DType, Result};

fn ce_shapes(d: &CrossEntropyDims) -> (String, String) {
    (format!("(N={}, V={})", d.n, d.v), format!("(N={})", d.n))
}

/// `cross_entropy_forward`: `logits (N, V)` of dtype `A`, `targets (N)` i32, `losses`, `lse (N)`
/// statistics.
pub(crate) fn cross_entropy_forward<M: Slice, R: Slice>(
    allowed: &[DType],
    losses: &M,
    lse: &M,
    logits: &R,
    targets: &R,
    d: &CrossEntropyDims,
) -> Result<DType> {
    const OP: &str = "cross_entropy_forward";
    let (ls, rs) = ce_shapes(d);
    let dt = check_args(
        OP,
        allowed,
        &[
            Arg::act("logits", Some(logits), d.n * d.v, &ls),
            Arg::stat("losses", Some(losses), d.n, &rs),
            Arg::stat("lse", Some(lse), d.n, &rs),
        ],
    )?;
    ids(OP, "targets", targets, d.n)?;
    Ok(dt)
}

/// `cross_entropy_backward`.
pub(crate) fn cross_entropy_backward<M: Slice, R: Slice>(
    allowed: &[DType],
    dlogits: &M,
    dlosses: &R,
    logits: &R,
    targets: &R,
    lse: &R,
    d: &CrossEntropyDims,
) -> Result<DType> {
    const OP: &str = "cross_entropy_backward";
    let (ls, rs) = ce_shapes(d);
    let dt = check_args(
        OP,
        allowed,
        &[
            Arg::act("logits", Some(logits), d.n * d.v, &ls),
            Arg::stat("dlosses", Some(dlosses), d.n, &rs),
            Arg::stat("lse", Some(lse), d.n, &rs),
            Arg::act("dlogits", Some(dlogits), d.n * d.v, &ls),
        ],
    )?;
    ids(OP, "targets", targets, d.n)?;
    Ok(dt)
}

/// `mse_forward`: `pred`, `target (n)` of dtype `A`, `loss (1)` a statistic.
pub(crate) fn mse_forward<M: Slice, R: Slice>(
    allowed: &[DType],
    loss: &M,
    pred: &R,
    target: &R,
    n: usize,
) -> Result<DType> {
    let s = format!("(n={n})");
    check_args(
        "mse_forward",
        allowed,
        &[
            Arg::act("pred", Some(pred), n, &s),
            Arg::act("target", Some(target), n, &s),
            Arg::stat("loss", Some(loss), 1, "(1)"),
        ],
    )
}

/// `mse_backward`.
pub(crate) fn mse_backward<M: Slice, R: Slice>(
    allowed: &[DType],
    dpred: &M,
    dloss: &R,
    pred: &R,
    target: &R,
    n: usize,
) -> Result<DType> {
    let s = format!("(n={n})");
    check_args(
        "mse_backward",
        allowed,
        &[
            Arg::act("pred", Some(pred), n, &s),
            Arg::act("target", Some(target), n, &s),
            Arg::stat("dloss", Some(dloss), 1, "(1)"),
            Arg::act("dpred", Some(dpred), n, &s),
        ],
    )
}
