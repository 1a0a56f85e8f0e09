//! The argument checks of each op, one function per op, shared by every backend: a backend op
//! is one of these checks and then its computation, so all backends refuse the same calls with
//! the same messages. Each check takes the activation dtypes the calling backend computes in
//! (`allowed`: [`super::ACTIVATION_FLOATS`] on the CPU, f32 and bf16 on CUDA) and returns the
//! call's activation dtype `A`.
//!
//! One file per op family, named like the backends' files (`check/norm.rs` ↔ `cpu/norm.rs`,
//! `cuda/norm.rs`). The elementwise checks are [`super::check_pointwise`] and
//! [`super::check_cast`]; the matmul's are [`super::MatmulDims`]'s.

mod activation;
mod attention;
mod embed;
mod loss;
mod modulation;
mod norm;
mod optim;
mod rope;
mod shape;

pub(crate) use activation::*;
pub(crate) use attention::*;
pub(crate) use embed::*;
pub(crate) use loss::*;
pub(crate) use modulation::*;
pub(crate) use norm::*;
pub(crate) use optim::*;
pub(crate) use rope::*;
pub(crate) use shape::*;

use crate::backend::{Check, Slice};
use crate::{DType, Result};

/// An i32 index argument (token ids, targets) of `n` elements. Its values are checked where
/// they are read: the CPU refuses an index outside its table; a device backend, which cannot
/// read them without waiting for the device, leaves them to its kernels' guards.
pub(crate) fn ids<S: Slice>(op: &'static str, arg: &'static str, v: &S, n: usize) -> Result<()> {
    Check { op }.arg(arg, v, DType::I32, n, || format!("(N={n})"))
}
