//! The checks of [`crate::ActivationOps`].

use crate::backend::Slice;
use crate::ops::{check_all, check_pointwise, SwigluDims};
use crate::{DType, Result};

/// `gelu_forward`, `silu_forward`: `out` and `inp` hold `n` values of dtype `A`.
pub(crate) fn unary<M: Slice, R: Slice>(
    op: &'static str,
    allowed: &[DType],
    out: &M,
    inp: &R,
    n: usize,
) -> Result<DType> {
    check_pointwise(op, allowed, &[("out", out)], &[("inp", inp)], n)
}

/// `gelu_backward`, `silu_backward`.
pub(crate) fn unary_grad<M: Slice, R: Slice>(
    op: &'static str,
    allowed: &[DType],
    dinp: &M,
    dout: &R,
    inp: &R,
    n: usize,
) -> Result<DType> {
    check_pointwise(op, allowed, &[("dinp", dinp)], &[("inp", inp), ("dout", dout)], n)
}

fn swiglu_shapes(d: &SwigluDims) -> (String, String) {
    (
        format!("(N={}, 2H={})", d.n, 2 * d.h),
        format!("(N={}, H={})", d.n, d.h),
    )
}

/// `swiglu_forward`: `inp (N, 2H)`, `out (N, H)`.
pub(crate) fn swiglu_forward<M: Slice, R: Slice>(
    allowed: &[DType],
    out: &M,
    inp: &R,
    d: &SwigluDims,
) -> Result<DType> {
    const OP: &str = "swiglu_forward";
    let (si, so) = swiglu_shapes(d);
    let dt = check_all(OP, allowed, &[("inp", Some(inp), d.n * 2 * d.h, &si)])?;
    check_all(OP, &[dt], &[("out", Some(out), d.n * d.h, &so)])
}

/// `swiglu_backward`: `inp`, `dinp (N, 2H)`, `dout (N, H)`.
pub(crate) fn swiglu_backward<M: Slice, R: Slice>(
    allowed: &[DType],
    dinp: &M,
    dout: &R,
    inp: &R,
    d: &SwigluDims,
) -> Result<DType> {
    const OP: &str = "swiglu_backward";
    let (si, so) = swiglu_shapes(d);
    let dt = check_all(
        OP,
        allowed,
        &[
            ("inp", Some(inp), d.n * 2 * d.h, &si),
            ("dout", Some(dout), d.n * d.h, &so),
        ],
    )?;
    check_all(OP, &[dt], &[("dinp", Some(dinp), d.n * 2 * d.h, &si)])
}
