//! Which tokens of a sequence each rank holds under context and sequence parallelism.
//!
//! The `cp` group is `ring × ulysses` (Ulysses fastest). A sequence of `t` tokens is first
//! cut into one piece per ring rank: contiguous pieces for full attention, and for causal
//! attention with `ring > 1` two chunks of `t/(2·ring)` per ring rank, chunk `i` and chunk
//! `2·ring−1−i` ("head–tail"), so every ring rank does the same amount of causal work. A ring
//! rank's token list (its *attention sequence*) is then cut into `ulysses` contiguous
//! pieces, and each of those into `tp` contiguous pieces for sequence parallelism.
//!
//! Concatenating the pieces of a group in rank order restores the group's list, which is
//! what the all-gathers and all-to-alls rely on.

use std::ops::Range;

/// How `t` tokens are spread over `ring × ulysses × tp` ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqSplit {
    pub t: usize,
    pub ring: usize,
    pub ulysses: usize,
    pub tp: usize,
    pub causal: bool,
}

impl SeqSplit {
    /// Chunks of the global sequence a ring rank attends with, in the order it holds them.
    pub fn chunks(&self, ring_rank: usize) -> Vec<Range<usize>> {
        let r = self.ring;
        if self.causal && r > 1 {
            let c = self.t / (2 * r);
            let (a, b) = (ring_rank, 2 * r - 1 - ring_rank);
            vec![a * c..(a + 1) * c, b * c..(b + 1) * c]
        } else {
            let c = self.t / r;
            std::iter::once(ring_rank * c..(ring_rank + 1) * c).collect()
        }
    }
    /// Tokens in a ring rank's attention sequence (`t / ring`).
    pub fn ring_len(&self) -> usize {
        self.t / self.ring
    }
    /// Tokens a cp rank holds between attentions: the parallel regions' rows (`t / cp`).
    pub fn cp_len(&self) -> usize {
        self.ring_len() / self.ulysses
    }
    /// Tokens a rank holds in the sequence-parallel regions (`t / (cp·tp)`).
    pub fn local_len(&self) -> usize {
        self.cp_len() / self.tp
    }
    /// Global positions of the cp rank `(ring_rank, ulysses_rank)`'s tokens, in order.
    pub fn cp_positions(&self, ring_rank: usize, ulysses_rank: usize) -> Vec<usize> {
        let all: Vec<usize> = self.chunks(ring_rank).into_iter().flatten().collect();
        let n = self.cp_len();
        all[ulysses_rank * n..(ulysses_rank + 1) * n].to_vec()
    }
    /// Global positions of one rank's sequence-parallel tokens, in order.
    pub fn local_positions(&self, ring_rank: usize, ulysses_rank: usize, tp_rank: usize) -> Vec<usize> {
        let n = self.local_len();
        self.cp_positions(ring_rank, ulysses_rank)[tp_rank * n..(tp_rank + 1) * n].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_is_held_exactly_once_and_causal_work_is_balanced() {
        for causal in [false, true] {
            for (ring, ulysses, tp) in [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 2, 1), (2, 1, 2), (4, 1, 1)] {
                let s = SeqSplit {
                    t: 32,
                    ring,
                    ulysses,
                    tp,
                    causal,
                };
                let mut seen = vec![0; 32];
                let mut work = vec![];
                for r in 0..ring {
                    let list: Vec<usize> = s.chunks(r).into_iter().flatten().collect();
                    let mut joined = vec![];
                    for u in 0..ulysses {
                        let cp = s.cp_positions(r, u);
                        let mut parts = vec![];
                        for p in 0..tp {
                            parts.extend(s.local_positions(r, u, p));
                        }
                        assert_eq!(parts, cp, "tp pieces concatenate to the cp rank's tokens");
                        joined.extend(cp);
                    }
                    assert_eq!(joined, list, "ulysses pieces concatenate to the ring list");
                    list.iter().for_each(|&p| seen[p] += 1);
                    work.push(list.iter().map(|&p| p + 1).sum::<usize>());
                }
                assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
                if causal {
                    // Keys visible to the ring rank's queries: equal for every ring rank.
                    assert!(work.iter().all(|&w| w == work[0]), "{work:?}");
                }
            }
        }
    }
}
