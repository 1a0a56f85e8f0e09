//! The checks of [`crate::ModulationOps`].

use crate::backend::Slice;
use crate::ops::{check_all, ModDims};
use crate::{DType, Result};

/// `modulate_forward`: `x`, `out (B, T, C)`; `shift`, `scale` strided `(B, C)` rows.
pub(crate) fn modulate_forward<M: Slice, R: Slice>(
    allowed: &[DType],
    out: &M,
    x: &R,
    shift: &R,
    scale: &R,
    d: &ModDims,
) -> Result<DType> {
    const OP: &str = "modulate_forward";
    d.rule(OP)?;
    let (st, co, n) = (d.stream(), d.cond(), d.b * d.t * d.c);
    let dt = check_all(
        OP,
        allowed,
        &[
            ("x", Some(x), n, &st),
            ("shift", Some(shift), d.cond_len(), &co),
            ("scale", Some(scale), d.cond_len(), &co),
        ],
    )?;
    check_all(OP, &[dt], &[("out", Some(out), n, &st)])
}

/// `modulate_backward`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn modulate_backward<M: Slice, R: Slice>(
    allowed: &[DType],
    dx: &M,
    dshift: &M,
    dscale: &M,
    dout: &R,
    x: &R,
    scale: &R,
    d: &ModDims,
) -> Result<DType> {
    const OP: &str = "modulate_backward";
    d.rule(OP)?;
    let (st, co, n) = (d.stream(), d.cond(), d.b * d.t * d.c);
    let dt = check_all(
        OP,
        allowed,
        &[
            ("dout", Some(dout), n, &st),
            ("x", Some(x), n, &st),
            ("scale", Some(scale), d.cond_len(), &co),
        ],
    )?;
    check_all(
        OP,
        &[dt],
        &[
            ("dx", Some(dx), n, &st),
            ("dshift", Some(dshift), d.cond_len(), &co),
            ("dscale", Some(dscale), d.cond_len(), &co),
        ],
    )
}

/// `gate_forward`: `residual`, `y (B, T, C)`, `gate` strided `(B, C)` rows.
pub(crate) fn gate_forward<M: Slice, R: Slice>(
    allowed: &[DType],
    residual: &M,
    gate: &R,
    y: &R,
    d: &ModDims,
) -> Result<DType> {
    const OP: &str = "gate_forward";
    d.rule(OP)?;
    let (st, co, n) = (d.stream(), d.cond(), d.b * d.t * d.c);
    let dt = check_all(
        OP,
        allowed,
        &[("y", Some(y), n, &st), ("gate", Some(gate), d.cond_len(), &co)],
    )?;
    check_all(OP, &[dt], &[("residual", Some(residual), n, &st)])
}

/// `gate_backward`.
pub(crate) fn gate_backward<M: Slice, R: Slice>(
    allowed: &[DType],
    dy: &M,
    dgate: &M,
    dout: &R,
    gate: &R,
    y: &R,
    d: &ModDims,
) -> Result<DType> {
    const OP: &str = "gate_backward";
    d.rule(OP)?;
    let (st, co, n) = (d.stream(), d.cond(), d.b * d.t * d.c);
    let dt = check_all(
        OP,
        allowed,
        &[
            ("dout", Some(dout), n, &st),
            ("y", Some(y), n, &st),
            ("gate", Some(gate), d.cond_len(), &co),
        ],
    )?;
    check_all(
        OP,
        &[dt],
        &[
            ("dy", Some(dy), n, &st),
            ("dgate", Some(dgate), d.cond_len(), &co),
        ],
    )
}
