//! The checks of [`crate::OptimOps`]. Their `allowed` is a backend's optimizer floats
//! ([`crate::ops::REFERENCE_FLOATS`] on the CPU, f32 on CUDA).

use crate::backend::{Check, Slice};
use crate::ops::{check_all, AdamW, Momentum, NewtonSchulz, NormalizeDims};
use crate::{DType, Result};

/// An optimizer update: its hyper-parameters, and `n` gradients with state buffers (`state`,
/// written) of the same float dtype and length.
pub(crate) fn update<M: Slice, R: Slice>(
    op: &'static str,
    allowed: &[DType],
    h: &AdamW,
    grads: &R,
    state: &[(&'static str, &M)],
    n: usize,
) -> Result<DType> {
    h.rule(op)?;
    let s = format!("(n={n})");
    let dt = check_all(op, allowed, &[("grads", Some(grads), n, &s)])?;
    let args: Vec<(&'static str, Option<&M>, usize, &str)> = state
        .iter()
        .map(|&(name, b)| (name, Some(b), n, s.as_str()))
        .collect();
    check_all(op, &[dt], &args)?;
    Ok(dt)
}

/// `sum_squares` and `sum` (`op`): `x (n)` of a dtype in `allowed` or bf16; `acc (1)` of a
/// dtype in `allowed` at least as wide as `x`'s (an f64 `acc` takes any `x`). Returns
/// `(x dtype, acc dtype)`.
pub(crate) fn sum_squares<M: Slice, R: Slice>(
    op: &'static str,
    allowed: &[DType],
    acc: &M,
    x: &R,
    n: usize,
) -> Result<(DType, DType)> {
    let c = Check { op };
    let mut xs = allowed.to_vec();
    xs.push(DType::BF16);
    let xdt = c.dtype_in("x", x.dtype(), &xs)?;
    let wide: Vec<DType> = allowed
        .iter()
        .copied()
        .filter(|&a| a == DType::F64 || xdt != DType::F64)
        .collect();
    let adt = wide.as_slice();
    c.len("x", x.len(), n, || format!("(n={n})"))?;
    let adt = c.dtype_in("acc", acc.dtype(), adt)?;
    c.len("acc", acc.len(), 1, || "(1)".into())?;
    Ok((xdt, adt))
}

/// `l2norm_forward`: `x (n)`, `out (1)`.
pub(crate) fn l2norm_forward<M: Slice, R: Slice>(
    allowed: &[DType],
    out: &M,
    x: &R,
    n: usize,
) -> Result<DType> {
    const OP: &str = "l2norm_forward";
    let dt = check_all(OP, allowed, &[("x", Some(x), n, &format!("(n={n})"))])?;
    check_all(OP, &[dt], &[("out", Some(out), 1, "(1)")])
}

/// `l2norm_backward`: `x`, `dx (n)`, `dout`, `norm (1)`.
pub(crate) fn l2norm_backward<M: Slice, R: Slice>(
    allowed: &[DType],
    dx: &M,
    dout: &R,
    x: &R,
    norm: &R,
    n: usize,
) -> Result<DType> {
    const OP: &str = "l2norm_backward";
    let s = format!("(n={n})");
    let dt = check_all(
        OP,
        allowed,
        &[
            ("x", Some(x), n, &s),
            ("dout", Some(dout), 1, "(1)"),
            ("norm", Some(norm), 1, "(1)"),
        ],
    )?;
    check_all(OP, &[dt], &[("dx", Some(dx), n, &s)])
}

/// `momentum_update`: `grads`, `m`, `u (n)` of one float dtype in `allowed`.
pub(crate) fn momentum_update<M: Slice, R: Slice>(
    allowed: &[DType],
    m: &M,
    u: &M,
    grads: &R,
    h: &Momentum,
    n: usize,
) -> Result<DType> {
    const OP: &str = "momentum_update";
    h.rule(OP)?;
    let s = format!("(n={n})");
    let dt = check_all(OP, allowed, &[("grads", Some(grads), n, &s)])?;
    check_all(OP, &[dt], &[("m", Some(m), n, &s), ("u", Some(u), n, &s)])
}

/// `newton_schulz`: `x (rows, cols)` and `work (work_len)` of one float dtype in `allowed`.
pub(crate) fn newton_schulz<M: Slice>(allowed: &[DType], x: &M, work: &M, d: &NewtonSchulz) -> Result<DType> {
    let (rows, cols) = (d.rows, d.cols);
    let (r, k) = d.sides();
    check_all(
        "newton_schulz",
        allowed,
        &[
            ("x", Some(x), rows * cols, &format!("(rows={rows}, cols={cols})")),
            (
                "work",
                Some(work),
                d.work_len(),
                &format!("(2·r·k + 2·r² with r={r}, k={k})"),
            ),
        ],
    )
}

/// `matrix_normalize`: `x (rows, cols)` of a float dtype in `allowed`.
pub(crate) fn matrix_normalize<M: Slice>(allowed: &[DType], x: &M, d: &NormalizeDims) -> Result<DType> {
    const OP: &str = "matrix_normalize";
    d.rule(OP)?;
    let (rows, cols) = (d.rows, d.cols);
    let s = format!("(rows={rows}, cols={cols})");
    check_all(OP, allowed, &[("x", Some(x), rows * cols, &s)])
}

/// `apply_direction`: `params`, `dir (n)` of one float dtype in `allowed`.
pub(crate) fn apply_direction<M: Slice, R: Slice>(
    allowed: &[DType],
    params: &M,
    dir: &R,
    n: usize,
) -> Result<DType> {
    const OP: &str = "apply_direction";
    let s = format!("(n={n})");
    let dt = check_all(OP, allowed, &[("dir", Some(dir), n, &s)])?;
    check_all(OP, &[dt], &[("params", Some(params), n, &s)])
}
