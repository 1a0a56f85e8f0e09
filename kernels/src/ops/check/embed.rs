//! The checks of [`crate::EmbedOps`].

use super::ids;
use crate::backend::Slice;
use crate::ops::{check_all, check_args, Arg, EmbeddingDims, PatchDims, TimestepDims};
use crate::{DType, Result};

fn embedding_shapes(d: &EmbeddingDims) -> (String, String) {
    (
        format!("(V={}, C={})", d.v, d.c),
        format!("(N={}, C={})", d.n, d.c),
    )
}

/// `embedding_forward`: `table (V, C)`, `out (N, C)` of dtype `A`, `ids (N)` i32.
pub(crate) fn embedding_forward<M: Slice, R: Slice>(
    allowed: &[DType],
    out: &M,
    ids_: &R,
    table: &R,
    d: &EmbeddingDims,
) -> Result<DType> {
    const OP: &str = "embedding_forward";
    let (ts, os) = embedding_shapes(d);
    let dt = check_all(OP, allowed, &[("table", Some(table), d.v * d.c, &ts)])?;
    check_all(OP, &[dt], &[("out", Some(out), d.n * d.c, &os)])?;
    ids(OP, "ids", ids_, d.n)?;
    Ok(dt)
}

/// `embedding_backward`: `dtable (V, C)` a parameter gradient.
pub(crate) fn embedding_backward<M: Slice, R: Slice>(
    allowed: &[DType],
    dtable: &M,
    dout: &R,
    ids_: &R,
    d: &EmbeddingDims,
) -> Result<DType> {
    const OP: &str = "embedding_backward";
    let (ts, os) = embedding_shapes(d);
    let dt = check_args(
        OP,
        allowed,
        &[
            Arg::act("dout", Some(dout), d.n * d.c, &os),
            Arg::grad("dtable", Some(dtable), d.v * d.c, &ts),
        ],
    )?;
    ids(OP, "ids", ids_, d.n)?;
    Ok(dt)
}

/// The four patch permutations: `dst` and `src` (named by `names`, written first) hold the
/// video and the tokens, `dst` the tokens when `dst_is_tokens`.
pub(crate) fn patch<M: Slice, R: Slice>(
    op: &'static str,
    allowed: &[DType],
    dst: &M,
    dst_is_tokens: bool,
    src: &R,
    names: (&'static str, &'static str),
    d: &PatchDims,
) -> Result<DType> {
    d.rule(op)?;
    let (vs, ps) = (d.video(), d.patches());
    let (dshape, sshape) = if dst_is_tokens { (&ps, &vs) } else { (&vs, &ps) };
    let dt = check_all(op, allowed, &[(names.1, Some(src), d.numel(), sshape)])?;
    check_all(op, &[dt], &[(names.0, Some(dst), d.numel(), dshape)])
}

fn timestep_shapes(d: &TimestepDims) -> (String, String) {
    (format!("(N={})", d.n), format!("(N={}, DIM={})", d.n, d.dim))
}

/// `timestep_embedding_forward`: `t (N)` a statistic, `out (N, DIM)` of dtype `A`.
pub(crate) fn timestep_embedding_forward<M: Slice, R: Slice>(
    allowed: &[DType],
    out: &M,
    t: &R,
    d: &TimestepDims,
) -> Result<DType> {
    let (ts, os) = timestep_shapes(d);
    check_args(
        "timestep_embedding_forward",
        allowed,
        &[
            Arg::stat("t", Some(t), d.n, &ts),
            Arg::act("out", Some(out), d.n * d.dim, &os),
        ],
    )
}

/// `timestep_embedding_backward`: `dt (N)` a statistic.
pub(crate) fn timestep_embedding_backward<M: Slice, R: Slice>(
    allowed: &[DType],
    dt: &M,
    dout: &R,
    t: &R,
    d: &TimestepDims,
) -> Result<DType> {
    let (ts, os) = timestep_shapes(d);
    check_args(
        "timestep_embedding_backward",
        allowed,
        &[
            Arg::stat("t", Some(t), d.n, &ts),
            Arg::act("dout", Some(dout), d.n * d.dim, &os),
            Arg::stat("dt", Some(dt), d.n, &ts),
        ],
    )
}
