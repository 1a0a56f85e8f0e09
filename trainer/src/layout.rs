//! The flat parameter buffer's table of contents.
//!
//! Every model keeps all of its parameters in one flat buffer; gradients and optimizer state
//! use the identical layout. The [`Layout`] names each tensor, its shape, its offset and its
//! [`Role`] — the role is what weight decay, muP and Scion read to treat a tensor correctly —
//! and records which contiguous range each transformer block owns (what FSDP shards).
//!
//! Every tensor starts at a multiple of [`ALIGN`] elements, so each one's view is aligned for
//! GEMM libraries and vector loads whatever the widths before it. The padding between tensors
//! is zero, gets zero gradients and is never trained; it counts in the buffer's length
//! ([`Layout::len`], memory figures) but not in the parameters ([`Layout::params`]).

use crate::Result;
use std::ops::Range;

/// What a parameter is for. Initialization, weight decay and (later) per-role learning rates
/// and geometries are chosen from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Input layers whose fan-in does not grow with width: token/class tables, the patch
    /// embedding, the timestep MLP's first layer, the text projection.
    /// Init `N(0, 0.02²)` for tables, `N(0, 1/fan_in)` for projections; decayed.
    Embedding,
    /// Matrices inside the network (`width × width`-like). Init `N(0, 1/fan_in)`, residual
    /// output projections of a GPT further scaled by `1/√(2·depth)`; decayed.
    Hidden,
    /// Biases and norm gains. Biases start at 0, gains at 1; never decayed.
    Vector,
    /// The read-out layer (GPT head, DiT final projection). Init `N(0, 1/fan_in)` for the GPT
    /// head, zero for the DiT's final layer (DiT's AdaLN-Zero recipe); decayed.
    Output,
}

impl Role {
    /// Whether decoupled weight decay applies (never to vectors or norms).
    pub fn decays(self) -> bool {
        self != Role::Vector
    }
}

/// How a tensor starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// `N(0, std²)`.
    Normal(f64),
}

/// How a tensor is split over the tensor-parallel group. A rank's layout holds its local
/// piece; the global tensor is the concatenation described here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TpSplit {
    /// Every tp rank holds the whole tensor (norms, embeddings, row-parallel biases, AdaLN);
    /// its gradient is a partial sum that the tp group adds up.
    Replicated,
    /// Column-parallel weights and their biases: the rows (first dim) come in groups of these
    /// local sizes (e.g. `[q, k, v]` of a fused QKV, `[gate, up]` of SwiGLU), and each group is
    /// split evenly over the tp ranks in rank order.
    Rows(Vec<usize>),
    /// Row-parallel weights `(out, in)`: the input dim is split evenly in rank order.
    Cols,
}

/// One tensor of the flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub name: String,
    /// This rank's shape (the global one when `tp = 1`).
    pub shape: Vec<usize>,
    pub offset: usize,
    pub role: Role,
    pub init: Init,
    pub tp: TpSplit,
    /// Multiplies the learning rate of this tensor's element-wise (AdamW) updates: 1, or
    /// muP's per-role factor (see [`crate::config::Mup`]).
    pub lr_scale: f64,
}

impl Entry {
    /// Elements (saturating at `usize::MAX` for shapes no machine could hold, which the
    /// memory check then refuses).
    pub fn numel(&self) -> usize {
        self.shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX)
    }
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset.saturating_add(self.numel())
    }
    /// `(local offset, global offset, length)` of every contiguous run of this rank's piece
    /// inside the global tensor (offsets relative to the tensor), for tp rank `rank` of `tp`.
    pub fn tp_pieces(&self, tp: usize, rank: usize) -> Vec<(usize, usize, usize)> {
        let cols: usize = self.shape[1..].iter().product();
        match &self.tp {
            _ if tp == 1 => vec![(0, 0, self.numel())],
            TpSplit::Replicated => vec![(0, 0, self.numel())],
            TpSplit::Rows(groups) => {
                let (mut local, mut global) = (0, 0);
                groups
                    .iter()
                    .map(|&g| {
                        let piece = (local * cols, (global + rank * g) * cols, g * cols);
                        local += g;
                        global += g * tp;
                        piece
                    })
                    .collect()
            }
            TpSplit::Cols => (0..self.shape[0])
                .map(|row| (row * cols, (row * tp + rank) * cols, cols))
                .collect(),
        }
    }
    /// Elements of the global tensor.
    pub fn global_numel(&self, tp: usize) -> usize {
        match self.tp {
            TpSplit::Replicated => self.numel(),
            _ => self.numel().saturating_mul(tp),
        }
    }
}

/// Tensors start at multiples of this many elements (256 bytes of f32).
pub const ALIGN: usize = 64;

/// `n` rounded up to a multiple of [`ALIGN`] (saturating).
fn align_up(n: usize) -> usize {
    n.checked_next_multiple_of(ALIGN).unwrap_or(usize::MAX)
}

/// The table of every parameter, in buffer order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Layout {
    pub entries: Vec<Entry>,
    /// Block `i` owns `blocks[i]` of the flat buffer (contiguous).
    pub blocks: Vec<Range<usize>>,
    len: usize,
    params: usize,
}

impl Layout {
    /// Length of the flat buffer: every tensor and the padding that aligns each one
    /// (`usize::MAX` when it does not fit in a `usize`; see [`Layout::overflows`]).
    pub fn len(&self) -> usize {
        self.len
    }
    /// Where the next tensor (or block) will start: the length rounded up to [`ALIGN`].
    pub fn next_offset(&self) -> usize {
        align_up(self.len)
    }
    /// Number of parameters: the tensors' elements, without padding.
    pub fn params(&self) -> usize {
        self.params
    }
    /// Whether the parameter count saturated (a model far beyond any machine).
    pub fn overflows(&self) -> bool {
        self.len == usize::MAX
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Append a tensor; returns its range in the flat buffer.
    pub fn add(&mut self, name: impl Into<String>, shape: &[usize], role: Role, init: Init) -> Range<usize> {
        self.add_split(name, shape, role, init, TpSplit::Replicated)
    }
    /// Append a tensor split over the tp group; `shape` is the local one.
    pub fn add_split(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        role: Role,
        init: Init,
        tp: TpSplit,
    ) -> Range<usize> {
        let e = Entry {
            name: name.into(),
            shape: shape.to_vec(),
            offset: align_up(self.len),
            role,
            init,
            tp,
            lr_scale: 1.0,
        };
        self.len = e.offset.saturating_add(e.numel());
        self.params = self.params.saturating_add(e.numel());
        let r = e.range();
        self.entries.push(e);
        r
    }
    /// Run `f` to add one block's tensors and record the block's range.
    /// The block's range starts and ends at multiples of [`ALIGN`] (it owns its trailing
    /// padding), so every unit starts aligned and tensors are aligned within their unit too.
    pub fn block<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        self.len = align_up(self.len);
        let start = self.len;
        let out = f(self);
        self.len = align_up(self.len);
        self.blocks.push(start..self.len);
        out
    }
    /// The units parameters are fetched, sharded and reduced by: everything before the first
    /// block (input layers), each block, everything after the last block (output layers).
    pub fn units(&self) -> Vec<Range<usize>> {
        let (first, last) = match (self.blocks.first(), self.blocks.last()) {
            (Some(f), Some(l)) => (f.start, l.end),
            _ => (self.len, self.len),
        };
        let mut u = Vec::with_capacity(self.blocks.len() + 2);
        u.push(0..first);
        u.extend(self.blocks.iter().cloned());
        u.push(last..self.len);
        u
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }
    /// Parameters per role (for reports and muP).
    pub fn count(&self, role: Role) -> usize {
        self.entries
            .iter()
            .filter(|e| e.role == role)
            .map(Entry::numel)
            .sum()
    }

    /// Fill a host buffer with the documented per-role initialization, from a seeded RNG.
    /// Each tensor draws from its own stream (seed, tensor index), so adding a tensor does not
    /// change the others' values.
    pub fn init(&self, seed: u64) -> Result<Vec<f32>> {
        self.init_tp(seed, 1, 0)
    }

    /// This tp rank's piece of the initialization of the global model: every tensor is drawn
    /// whole (as one process would) and sliced, so any `tp` starts from the same weights.
    pub fn init_tp(&self, seed: u64, tp: usize, rank: usize) -> Result<Vec<f32>> {
        use rand::SeedableRng;
        let mut out: Vec<f32> = crate::alloc::host_zeros("the initial weights (f32)", self.len)?;
        for (i, e) in self.entries.iter().enumerate() {
            let dst = &mut out[e.range()];
            match e.init {
                Init::Zeros => dst.fill(0.0),
                Init::Ones => dst.fill(1.0),
                Init::Normal(std) => {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                    rng.set_stream(i as u64 + 1);
                    let mut global: Vec<f32> = crate::alloc::host_zeros(
                        &format!("the initial draw of `{}`", e.name),
                        e.global_numel(tp),
                    )?;
                    global
                        .iter_mut()
                        .for_each(|v| *v = (crate::rng::normal(&mut rng) * std) as f32);
                    for (lo, go, n) in e.tp_pieces(tp, rank) {
                        dst[lo..lo + n].copy_from_slice(&global[go..go + n]);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Place tp rank `rank`'s local parameter vector `local` (this layout) into `global`
    /// (laid out by `global_layout`, the same model with `tp = 1`).
    pub fn place_tp(
        &self,
        global_layout: &Layout,
        local: &[f32],
        tp: usize,
        rank: usize,
        global: &mut [f32],
    ) {
        for (e, ge) in self.entries.iter().zip(&global_layout.entries) {
            for (lo, go, n) in e.tp_pieces(tp, rank) {
                let (l, g) = (e.offset + lo, ge.offset + go);
                global[g..g + n].copy_from_slice(&local[l..l + n]);
            }
        }
    }

    /// Ranges of the tensors every tp rank holds whole, merged where adjacent.
    pub fn replicated_ranges(&self) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = vec![];
        for e in self.entries.iter().filter(|e| e.tp == TpSplit::Replicated) {
            match out.last_mut() {
                Some(last) if last.end == e.offset => last.end = e.range().end,
                _ => out.push(e.range()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_contiguous_and_blocks_cover_their_tensors() {
        let mut l = Layout::default();
        l.add("a", &[2, 3], Role::Embedding, Init::Normal(1.0));
        let b = l.block(|l| {
            l.add("b.w", &[4], Role::Hidden, Init::Zeros);
            l.add("b.g", &[4], Role::Vector, Init::Ones)
        });
        // Each tensor starts at a multiple of 64 elements; the padding is not a parameter.
        assert_eq!(b, 128..132);
        assert_eq!(l.blocks, vec![64..192]);
        assert_eq!((l.len(), l.params()), (192, 14));
        let out = l.add("out", &[3], Role::Output, Init::Zeros);
        assert_eq!(out, 192..195);
        // Every unit starts aligned, so a tensor is aligned within its unit as well.
        for u in l.units() {
            assert_eq!(u.start % ALIGN, 0, "{u:?}");
        }
        let p = l.init(7).unwrap();
        assert!(p[6..64].iter().all(|&v| v == 0.0));
        assert_eq!(&p[64..68], &[0., 0., 0., 0.]);
        assert_eq!(&p[128..132], &[1., 1., 1., 1.]);
        assert_eq!(p, l.init(7).unwrap());
        assert_ne!(p, l.init(8).unwrap());
        let mean: f32 = p[..6].iter().sum::<f32>() / 6.0;
        assert!(mean.abs() < 1.5);
    }

    #[test]
    fn tp_pieces_reassemble_the_global_init() {
        // A fused [q | k] weight split by rows, a row-parallel weight split by columns, a
        // replicated gain: the ranks' pieces placed back give the tp = 1 init exactly.
        let build = |tp: usize| {
            let mut l = Layout::default();
            let n = Init::Normal(1.0);
            l.add_split(
                "qk",
                &[6 / tp, 3],
                Role::Hidden,
                n,
                TpSplit::Rows(vec![4 / tp, 2 / tp]),
            );
            l.add_split("o", &[3, 4 / tp], Role::Hidden, n, TpSplit::Cols);
            l.add("g", &[3], Role::Vector, n);
            l
        };
        let global = build(1);
        let want = global.init(5).unwrap();
        let local = build(2);
        let mut got = vec![0f32; global.len()];
        for rank in 0..2 {
            local.place_tp(&global, &local.init_tp(5, 2, rank).unwrap(), 2, rank, &mut got);
        }
        assert_eq!(got, want);
        // Rank 1 holds q rows 2..4 and k row 1 of the global fused weight.
        let r1 = local.init_tp(5, 2, 1).unwrap();
        assert_eq!(&r1[..6], &want[6..12]);
        assert_eq!(&r1[6..9], &want[15..18]);
        assert_eq!(local.replicated_ranges(), vec![128..131]);
    }

    #[test]
    fn normal_init_has_the_documented_scale() {
        let mut l = Layout::default();
        l.add("w", &[200, 200], Role::Hidden, Init::Normal(0.5));
        let p = l.init(1).unwrap();
        let n = p.len() as f64;
        let mean = p.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = p.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.01, "{}", var.sqrt());
    }
}
