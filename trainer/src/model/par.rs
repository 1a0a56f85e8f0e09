//! A rank's place in the model-parallel dimensions of the mesh: its tensor-parallel group
//! (which also carries sequence parallelism) and its context-parallel group (ring ×
//! Ulysses), and which tokens it holds ([`SeqSplit`]).
//!
//! With `tp = cp = 1` ([`Par::single`]) the model is the single-process model.

use std::sync::Arc;
use weft_kernels::Backend;
use weft_parallel::cp::CpGroup;
use weft_parallel::{Comm, SeqSplit};

/// A shared communicator.
pub type Group<B> = Arc<dyn Comm<B>>;

pub struct Par<B: Backend> {
    /// The tensor-parallel group (`None` when `tp = 1`).
    pub tp: Option<Group<B>>,
    /// The ring and Ulysses groups of context parallelism (`None` when `cp = 1`).
    pub cp: Option<(Group<B>, Group<B>)>,
    pub split: SeqSplit,
    pub tp_rank: usize,
    pub ring_rank: usize,
    pub ulysses_rank: usize,
}

impl<B: Backend> Par<B> {
    /// One process holding the whole sequence of `t` tokens.
    pub fn single(t: usize, causal: bool) -> Self {
        Par {
            tp: None,
            cp: None,
            split: SeqSplit {
                t,
                ring: 1,
                ulysses: 1,
                tp: 1,
                causal,
            },
            tp_rank: 0,
            ring_rank: 0,
            ulysses_rank: 0,
        }
    }
    pub fn tp_size(&self) -> usize {
        self.split.tp
    }
    /// Whether this rank holds only part of each sequence.
    pub fn sharded(&self) -> bool {
        self.split.local_len() != self.split.t
    }
    /// Global positions of the tokens between the parallel regions (this rank's rows).
    pub fn local_positions(&self) -> Vec<usize> {
        self.split
            .local_positions(self.ring_rank, self.ulysses_rank, self.tp_rank)
    }
    /// Global positions of the tokens inside the parallel regions (the cp rank's rows).
    pub fn cp_positions(&self) -> Vec<usize> {
        self.split.cp_positions(self.ring_rank, self.ulysses_rank)
    }
    pub fn cp_group(&self) -> Option<CpGroup<'_, B>> {
        self.cp.as_ref().map(|(ring, ulysses)| CpGroup {
            ring: ring.as_ref(),
            ulysses: ulysses.as_ref(),
            split: self.split,
        })
    }
    /// Whether this rank applies the row-parallel biases (added once, before the
    /// reduce-scatter sums the tp ranks' partial outputs).
    pub fn owns_bias(&self) -> bool {
        self.tp_rank == 0
    }
}
