//! The mixed-precision contract (which dtype each argument of an op takes, stated in
//! [`crate::ops`]) and the argument checks every backend shares, so all of them refuse the
//! same calls with the same messages.

use crate::backend::{Check, Slice};
use crate::{DType, Result};

/// The float dtypes of the optimizer ops and reductions (`f32` master weights, `f64` checks).
pub const REFERENCE_FLOATS: &[DType] = &[DType::F32, DType::F64];

/// The activation dtypes `A` every op family except the optimizer accepts.
pub const ACTIVATION_FLOATS: &[DType] = &[DType::F64, DType::F32, DType::BF16];

/// The role of an op argument, which fixes its dtype from the call's activation dtype `A`
/// (the rules are stated in [`crate::ops`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Inputs, outputs, activation gradients and parameter inputs: dtype `A`.
    Act,
    /// Saved statistics, losses, timesteps and angle tables: f32 when `A` is bf16, else `A`.
    Stat,
    /// Accumulated parameter gradients: `A`, or f32 when `A` is bf16.
    ParamGrad,
}

impl Role {
    /// The dtypes an argument of this role may have when the activations are `a`.
    pub fn allowed(self, a: DType) -> &'static [DType] {
        match (self, a) {
            (_, DType::F64) => &[DType::F64],
            (Role::Act, DType::BF16) => &[DType::BF16],
            (Role::ParamGrad, DType::BF16) => &[DType::BF16, DType::F32],
            (Role::Act | Role::ParamGrad, DType::F16) => &[DType::F16],
            _ => &[DType::F32],
        }
    }
}

/// The dtype of statistics (norm `mean`/`rstd`, attention `lse`, losses) for activations of
/// dtype `a`: f32 for bf16 activations, `a` otherwise.
pub fn stat_dtype(a: DType) -> DType {
    Role::Stat.allowed(a)[0]
}

/// One argument of an op as the shared checks see it: its name, role, dtype and length (when
/// given), the length the op's dimensions require, and how to name that shape.
pub(crate) struct Arg<'s> {
    pub name: &'static str,
    pub role: Role,
    pub got: Option<(DType, usize)>,
    pub len: usize,
    pub shape: &'s str,
}

impl<'s> Arg<'s> {
    /// An activation-dtype argument.
    pub fn act<S: Slice>(name: &'static str, v: Option<&S>, len: usize, shape: &'s str) -> Self {
        Self::new(Role::Act, name, v, len, shape)
    }
    /// A statistic (see [`Role::Stat`]).
    pub fn stat<S: Slice>(name: &'static str, v: Option<&S>, len: usize, shape: &'s str) -> Self {
        Self::new(Role::Stat, name, v, len, shape)
    }
    /// A parameter gradient (see [`Role::ParamGrad`]).
    pub fn grad<S: Slice>(name: &'static str, v: Option<&S>, len: usize, shape: &'s str) -> Self {
        Self::new(Role::ParamGrad, name, v, len, shape)
    }
    fn new<S: Slice>(role: Role, name: &'static str, v: Option<&S>, len: usize, shape: &'s str) -> Self {
        Arg {
            name,
            role,
            got: v.map(|v| (v.dtype(), v.len())),
            len,
            shape,
        }
    }
}

/// The one check of an op's arguments against the mixed-precision contract: the first
/// activation argument given fixes `A` (which must be in `allowed`); then, in order, every
/// argument given must have a dtype its role allows and exactly its stated length.
/// Returns `A`.
pub(crate) fn check_args(op: &'static str, allowed: &[DType], args: &[Arg<'_>]) -> Result<DType> {
    let c = Check { op };
    let first = args
        .iter()
        .find_map(|a| a.got.filter(|_| a.role == Role::Act).map(|(dt, _)| (a.name, dt)));
    let Some((name, a)) = first else {
        return Ok(DType::F32);
    };
    let a = c.dtype_in(name, a, allowed)?;
    for arg in args {
        if let Some((dt, len)) = arg.got {
            c.dtype_in(arg.name, dt, arg.role.allowed(a))?;
            c.len(arg.name, len, arg.len, || arg.shape.to_string())?;
        }
    }
    Ok(a)
}

/// Checks a list of same-dtype arguments: the first one fixes the dtype (which must be in
/// `allowed`), every other must match it and have exactly its stated length.
pub(crate) fn check_all<S: Slice>(
    op: &'static str,
    allowed: &[DType],
    args: &[(&'static str, Option<&S>, usize, &str)],
) -> Result<DType> {
    let c = Check { op };
    let first = args
        .iter()
        .find_map(|(name, v, _, _)| v.map(|v| (*name, v.dtype())));
    let Some((name, dt)) = first else {
        return Ok(DType::F32);
    };
    let dt = c.dtype_in(name, dt, allowed)?;
    for (name, v, len, shape) in args {
        c.opt(name, *v, dt, *len, || shape.to_string())?;
    }
    Ok(dt)
}

/// Checks a pointwise op: every input and output holds exactly `n` elements of one dtype from
/// `allowed` (the first input's). Shared by every backend so they refuse alike.
pub(crate) fn check_pointwise<O: Slice, R: Slice>(
    op: &'static str,
    allowed: &[DType],
    outs: &[(&'static str, &O)],
    ins: &[(&'static str, &R)],
    n: usize,
) -> Result<DType> {
    let s = format!("(n={n})");
    let ins = ins.iter().map(|(name, v)| Arg::act(name, Some(*v), n, &s));
    let outs = outs.iter().map(|(name, v)| Arg::act(name, Some(*v), n, &s));
    // An op with no inputs (fill) takes its dtype from its output.
    let args: Vec<_> = ins.chain(outs).collect();
    check_args(op, allowed, &args)
}

/// Checks a cast: `x` and `out` hold `n` elements, each of a dtype in `kinds`.
/// Returns `(from, to)`.
pub(crate) fn check_cast<O: Slice, R: Slice>(
    op: &'static str,
    kinds: &[DType],
    out: &O,
    x: &R,
    n: usize,
) -> Result<(DType, DType)> {
    let c = Check { op };
    let (from, to) = (
        c.dtype_in("x", x.dtype(), kinds)?,
        c.dtype_in("out", out.dtype(), kinds)?,
    );
    c.arg("x", x, from, n, || format!("(n={n})"))?;
    c.arg("out", out, to, n, || format!("(n={n})"))?;
    Ok((from, to))
}
