//! The checks of [`crate::RopeOps`].

use crate::backend::Slice;
use crate::ops::{check_args, Arg, RopeDims};
use crate::{DType, Result};

/// `rope_forward` (`backward` false: `out`, `inp`) or `rope_backward` (`dinp`, `dout`):
/// `(B, T, H, HD)` of dtype `A` and a `(T, HD/2)` table of statistics.
pub(crate) fn rope<M: Slice, R: Slice>(
    backward: bool,
    allowed: &[DType],
    out: &M,
    inp: &R,
    cos: &R,
    sin: &R,
    d: &RopeDims,
) -> Result<DType> {
    let (op, inp_name, out_name) = if backward {
        ("rope_backward", "dout", "dinp")
    } else {
        ("rope_forward", "inp", "out")
    };
    d.rule(op)?;
    let (xs, ts, n) = (d.x(), d.table(), d.b * d.t * d.h * d.hd);
    check_args(
        op,
        allowed,
        &[
            Arg::act(inp_name, Some(inp), n, &xs),
            Arg::stat("cos", Some(cos), d.t * d.hd / 2, &ts),
            Arg::stat("sin", Some(sin), d.t * d.hd / 2, &ts),
            Arg::act(out_name, Some(out), n, &xs),
        ],
    )
}
