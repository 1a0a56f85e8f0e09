//! The checks of [`crate::ShapeOps`].

use crate::backend::Slice;
use crate::ops::{check_all, SwapDims};
use crate::{DType, Result};

/// `swap_axes`: `x (A, B, inner)`, `out (B, A, inner)`.
pub(crate) fn swap_axes<M: Slice, R: Slice>(
    allowed: &[DType],
    out: &M,
    x: &R,
    d: &SwapDims,
) -> Result<DType> {
    const OP: &str = "swap_axes";
    let (xs, os) = (
        format!("(A={}, B={}, inner={})", d.a, d.b, d.inner),
        format!("(B={}, A={}, inner={})", d.b, d.a, d.inner),
    );
    let dt = check_all(OP, allowed, &[("x", Some(x), d.numel(), &xs)])?;
    check_all(OP, &[dt], &[("out", Some(out), d.numel(), &os)])
}
