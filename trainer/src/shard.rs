//! Where a rank's flat buffer sits in the global tensors: runs of consecutive elements, each
//! mapping a stretch of the buffer to a stretch of one global tensor, and which of them this
//! rank writes. Checkpoints save and load through it; the matrix optimizers find the pieces of
//! a matrix each rank holds with it.

use crate::layout::TpSplit;
use crate::Layout;
use std::ops::Range;

/// `len` elements at `local` of a flat buffer are elements `global..global+len` of entry
/// `entry`'s global tensor (flattened).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub entry: usize,
    pub global: u64,
    pub len: u64,
    pub local: usize,
}

/// Where a rank's flat buffer sits in the global tensors, and which of its runs it writes (so
/// that over the mesh every element is written exactly once).
#[derive(Clone, Debug)]
pub struct ShardMap {
    pub runs: Vec<Run>,
    pub writes: Vec<bool>,
}

impl ShardMap {
    /// One process: every tensor whole, in layout order.
    pub fn whole(layout: &Layout) -> Self {
        let runs: Vec<Run> = layout
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| Run {
                entry: i,
                global: 0,
                len: e.numel() as u64,
                local: e.offset,
            })
            .collect();
        ShardMap {
            writes: vec![true; runs.len()],
            runs,
        }
    }

    /// A mesh rank's shard buffer, laid out as `pieces` (from the FSDP store: length and the
    /// local-layout range of each piece, `None` for padding), for tp rank `tp_rank` of `tp`.
    /// `writer`: this rank is the one copy among its replicas (dp_replicate and cp index 0);
    /// tensors every tp rank holds whole are written by tp rank 0 only.
    pub fn sharded(
        layout: &Layout,
        pieces: &[(usize, bool, Option<Range<usize>>)],
        tp: usize,
        tp_rank: usize,
        writer: bool,
    ) -> Self {
        let (mut runs, mut writes) = (vec![], vec![]);
        let mut at = 0;
        for (len, _, range) in pieces {
            if let Some(r) = range {
                let i = layout
                    .entries
                    .iter()
                    .position(|e| e.offset <= r.start && r.end <= e.offset + e.numel())
                    .expect("an FSDP piece lies inside one tensor");
                let e = &layout.entries[i];
                let (a, b) = (r.start - e.offset, r.end - e.offset);
                let write = writer && (e.tp != TpSplit::Replicated || tp_rank == 0);
                for (lo, go, n) in e.tp_pieces(tp, tp_rank) {
                    let (s, t) = (a.max(lo), b.min(lo + n));
                    if s < t {
                        runs.push(Run {
                            entry: i,
                            global: (go + s - lo) as u64,
                            len: (t - s) as u64,
                            local: at + s - a,
                        });
                        writes.push(write);
                    }
                }
            }
            at += len;
        }
        ShardMap { runs, writes }
    }
}
