//! Sequence-parallel boundaries (Megatron-style, on the tensor-parallel group).
//!
//! Outside the parallel regions every tp rank holds its own `T/tp` tokens of each sample,
//! `(B, T/tp, C)`; norms, AdaLN modulation and residual adds run there. A column-parallel
//! layer needs all `T` tokens: [`gather_seq`] all-gathers them. A row-parallel layer leaves a
//! partial sum over the tp ranks' heads or hidden units: [`scatter_seq`] reduce-scatters it
//! back into each rank's tokens. The two are each other's adjoint, so backward uses the other
//! one.
//!
//! The collectives move rank-major blocks `(tp, B, T/tp·C)`; [`ShapeOps::swap_axes`]
//! converts between that and the sample-major `(B, T, C)` the layers use.

use crate::{Comm, Result};
use weft_kernels::{ShapeOps, SwapDims};

/// Shape of one sequence-parallel boundary: `b` samples of `t` tokens (the gathered length)
/// of `c` values, split over the tp group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqDims {
    pub b: usize,
    pub t: usize,
    pub c: usize,
}

impl SeqDims {
    fn rank_major(&self, tp: usize) -> SwapDims {
        SwapDims {
            a: tp,
            b: self.b,
            inner: self.t / tp * self.c,
        }
    }
    pub fn full(&self) -> usize {
        self.b * self.t * self.c
    }
}

/// `out (B, T, C) ← x (B, T/tp, C)` of every tp rank, tokens in rank order.
/// `stage` holds `B·T·C` values.
pub fn gather_seq<B: ShapeOps>(
    be: &B,
    tp: &dyn Comm<B>,
    x: B::Ref<'_>,
    out: B::Mut<'_>,
    mut stage: B::Mut<'_>,
    d: SeqDims,
) -> Result<()> {
    tp.all_gather(be, x, B::rb(&mut stage))?;
    be.swap_axes(out, B::freeze(&stage), d.rank_major(tp.size()))?;
    Ok(())
}

/// `out (B, T/tp, C) ← Σ over tp ranks of their x (B, T, C)`, this rank's tokens.
/// `stage` holds `B·T·C` values.
pub fn scatter_seq<B: ShapeOps>(
    be: &B,
    tp: &dyn Comm<B>,
    x: B::Ref<'_>,
    out: B::Mut<'_>,
    mut stage: B::Mut<'_>,
    d: SeqDims,
) -> Result<()> {
    be.swap_axes(B::rb(&mut stage), x, d.rank_major(tp.size()).inverse())?;
    tp.reduce_scatter(be, B::freeze(&stage), out)?;
    Ok(())
}
