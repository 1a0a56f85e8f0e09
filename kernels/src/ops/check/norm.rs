//! The checks of [`crate::NormOps`].

use crate::backend::Slice;
use crate::ops::{check_args, Arg, NormDims};
use crate::{DType, Result};

/// `layernorm_forward`: `inp`, `out (N, C)`, `weight`, `bias (C)` of dtype `A`; `mean`, `rstd (N)`
/// statistics.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layernorm_forward<M: Slice, R: Slice>(
    allowed: &[DType],
    out: &M,
    mean: &M,
    rstd: &M,
    inp: &R,
    weight: Option<&R>,
    bias: Option<&R>,
    d: &NormDims,
) -> Result<DType> {
    const OP: &str = "layernorm_forward";
    d.rule(OP)?;
    let (full, rows, chan) = (d.full(), d.rows(), d.chan());
    check_args(
        OP,
        allowed,
        &[
            Arg::act("inp", Some(inp), d.n * d.c, &full),
            Arg::act("weight", weight, d.c, &chan),
            Arg::act("bias", bias, d.c, &chan),
            Arg::act("out", Some(out), d.n * d.c, &full),
            Arg::stat("mean", Some(mean), d.n, &rows),
            Arg::stat("rstd", Some(rstd), d.n, &rows),
        ],
    )
}

/// `layernorm_backward`: `dweight`, `dbias` are parameter gradients.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layernorm_backward<M: Slice, R: Slice>(
    allowed: &[DType],
    dinp: &M,
    dweight: Option<&M>,
    dbias: Option<&M>,
    dout: &R,
    inp: &R,
    weight: Option<&R>,
    mean: &R,
    rstd: &R,
    d: &NormDims,
) -> Result<DType> {
    const OP: &str = "layernorm_backward";
    d.rule(OP)?;
    let (full, rows, chan) = (d.full(), d.rows(), d.chan());
    check_args(
        OP,
        allowed,
        &[
            Arg::act("inp", Some(inp), d.n * d.c, &full),
            Arg::act("dout", Some(dout), d.n * d.c, &full),
            Arg::act("weight", weight, d.c, &chan),
            Arg::stat("mean", Some(mean), d.n, &rows),
            Arg::stat("rstd", Some(rstd), d.n, &rows),
            Arg::act("dinp", Some(dinp), d.n * d.c, &full),
            Arg::grad("dweight", dweight, d.c, &chan),
            Arg::grad("dbias", dbias, d.c, &chan),
        ],
    )
}

/// `rmsnorm_forward`.
pub(crate) fn rmsnorm_forward<M: Slice, R: Slice>(
    allowed: &[DType],
    out: &M,
    rstd: &M,
    inp: &R,
    weight: Option<&R>,
    d: &NormDims,
) -> Result<DType> {
    const OP: &str = "rmsnorm_forward";
    d.rule(OP)?;
    let (full, rows, chan) = (d.full(), d.rows(), d.chan());
    check_args(
        OP,
        allowed,
        &[
            Arg::act("inp", Some(inp), d.n * d.c, &full),
            Arg::act("weight", weight, d.c, &chan),
            Arg::act("out", Some(out), d.n * d.c, &full),
            Arg::stat("rstd", Some(rstd), d.n, &rows),
        ],
    )
}

/// `rmsnorm_backward`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rmsnorm_backward<M: Slice, R: Slice>(
    allowed: &[DType],
    dinp: &M,
    dweight: Option<&M>,
    dout: &R,
    inp: &R,
    weight: Option<&R>,
    rstd: &R,
    d: &NormDims,
) -> Result<DType> {
    const OP: &str = "rmsnorm_backward";
    d.rule(OP)?;
    let (full, rows, chan) = (d.full(), d.rows(), d.chan());
    check_args(
        OP,
        allowed,
        &[
            Arg::act("inp", Some(inp), d.n * d.c, &full),
            Arg::act("dout", Some(dout), d.n * d.c, &full),
            Arg::act("weight", weight, d.c, &chan),
            Arg::stat("rstd", Some(rstd), d.n, &rows),
            Arg::act("dinp", Some(dinp), d.n * d.c, &full),
            Arg::grad("dweight", dweight, d.c, &chan),
        ],
    )
}
