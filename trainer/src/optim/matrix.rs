//! Muon and Scion: optimizers that update each weight matrix as a whole (an orthogonalized
//! or normalized direction), over the sharded flat buffer.
//!
//! A rank holds pieces of many matrices (FSDP shards cut across them, tensor parallelism
//! slices them). Each step, the matrices are dealt round robin to the ranks of the owners
//! group (`dp_shard × tp`, the ranks holding disjoint parameters), a bucket of one matrix
//! per rank at a time: every rank sends the pieces it holds to the matrix's owner
//! (all-to-all), the owner computes the direction of the whole matrix once, and sends each
//! rank its pieces back. One process is the same code with a group of one, so the sharded
//! result is the single-process result, bit for bit.
//!
//! Everything runs on the rank's backend (its device buffers and the data communicator):
//! the momentum and the step are element-wise ops over the rank's runs, the pieces travel by
//! copies and one all-to-all each way, and the owner's direction is one op
//! ([`weft_kernels::OptimOps::newton_schulz`], whose products are GEMMs — cuBLASLt on CUDA —
//! or [`weft_kernels::OptimOps::matrix_normalize`]).
//!
//! Geometries (for a linear map `(d_out, d_in)`, stored `(out, in)`; a lookup table
//! `(vocab, width)` is the map's transpose):
//! - `Spectral`: `√(d_out/d_in)·UVᵀ` (Scion), or `rms_match·√max(d_out, d_in)·UVᵀ` (Muon),
//!   with `UVᵀ` from the quintic Newton–Schulz iteration (3.4445, −4.7750, 2.0315) on
//!   `G/‖G‖_F`, on the wide orientation;
//! - `ColNorm`: each input column scaled to norm `√d_out`;
//! - `RowNorm`: each output row scaled to norm `1/√d_in`;
//! - `Sign`: `sign(G)/d_in`;
//! - `Rms`: `g/RMS(g)` (vectors).

use crate::config::Optimizer;
use crate::layout::TpSplit;
use crate::shard::Run;
use crate::{Error, Layout, Result, Role};
use weft_kernels::{AdamW, Backend, DType, Momentum, NewtonSchulz, Normalize, NormalizeDims, Ops, Slice};
use weft_parallel::Comm;

/// How a tensor is updated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Geometry {
    /// Element-wise AdamW (Muon's embeddings, read-out and vectors).
    AdamW,
    Spectral,
    ColNorm,
    RowNorm,
    Sign,
    Rms,
}

/// One matrix (or vector) updated as a whole: elements `start..start + rows·cols` of its
/// entry's global tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub entry: usize,
    pub start: usize,
    pub rows: usize,
    pub cols: usize,
    pub geometry: Geometry,
    /// A lookup table: its linear map is the transpose of what is stored.
    pub table: bool,
    /// What multiplies the direction: Muon's RMS match, Scion's radius.
    pub radius: f64,
}

/// The geometry of every entry of `global` (the model at `tp = 1`) and the targets, in
/// layout order. Fused projections (`[q, k, v]`, `[gate, up]`) are one target per part.
pub fn plan(global: &Layout, o: &Optimizer) -> (Vec<Geometry>, Vec<Target>) {
    let muon = o.kind == "muon";
    let s = &o.scion;
    let named = |g: &str| match g {
        "colnorm" => Geometry::ColNorm,
        "rownorm" => Geometry::RowNorm,
        "sign" => Geometry::Sign,
        _ => Geometry::Spectral,
    };
    let mut geoms = vec![];
    let mut targets = vec![];
    for (i, e) in global.entries.iter().enumerate() {
        let matrix = e.shape.len() == 2;
        let (geometry, radius) = match (e.role, matrix) {
            (Role::Hidden, true) if muon => (Geometry::Spectral, o.muon.rms_match),
            _ if muon => (Geometry::AdamW, 0.0),
            (Role::Hidden, true) => (Geometry::Spectral, s.radius_hidden),
            (Role::Embedding, true) => (named(&s.embedding), s.radius_embedding),
            (Role::Output, true) => (named(&s.output), s.radius_output),
            _ => (Geometry::Rms, s.radius_vector),
        };
        geoms.push(geometry);
        if geometry == Geometry::AdamW {
            continue;
        }
        let cols: usize = if matrix { e.shape[1] } else { e.numel() };
        let groups = match &e.tp {
            TpSplit::Rows(g) if matrix && g.len() > 1 => g.clone(),
            _ => vec![e.numel() / cols],
        };
        let mut start = 0;
        for rows in groups {
            targets.push(Target {
                entry: i,
                start,
                rows,
                cols,
                geometry,
                table: e.name.ends_with(".table"),
                radius,
            });
            start += rows * cols;
        }
    }
    (geoms, targets)
}

/// How a target's direction is computed: one op on the whole matrix.
enum Direction {
    Orthogonalize(NewtonSchulz),
    Normalize(NormalizeDims),
}

/// The op that replaces a whole target (stored row-major) by its update direction, radius
/// included.
fn direction_of(t: &Target, muon: bool, ns_steps: usize) -> Direction {
    let (rows, cols) = (t.rows, t.cols);
    // The linear map's shape.
    let (d_out, d_in) = if t.table { (cols, rows) } else { (rows, cols) };
    let rho = t.radius;
    let tiny = 1e-12;
    let normalize = |mode, scale| {
        Direction::Normalize(NormalizeDims {
            rows,
            cols,
            mode,
            scale,
            eps: tiny,
        })
    };
    match t.geometry {
        Geometry::AdamW => unreachable!("AdamW entries are not targets"),
        Geometry::Spectral => {
            let scale = if muon {
                (d_out.max(d_in) as f64).sqrt()
            } else {
                (d_out as f64 / d_in as f64).sqrt()
            };
            Direction::Orthogonalize(NewtonSchulz {
                rows,
                cols,
                steps: ns_steps,
                scale: rho * scale,
            })
        }
        Geometry::Sign => normalize(Normalize::Sign, rho / d_in as f64),
        Geometry::Rms => normalize(Normalize::Frobenius, rho * ((rows * cols) as f64).sqrt()),
        // Columns of the map: stored columns, or stored rows of a table.
        Geometry::ColNorm | Geometry::RowNorm => {
            let per_stored_row = (t.geometry == Geometry::ColNorm) == t.table;
            let target = if t.geometry == Geometry::ColNorm {
                (d_out as f64).sqrt()
            } else {
                1.0 / (d_in as f64).sqrt()
            };
            let mode = if per_stored_row {
                Normalize::Rows
            } else {
                Normalize::Cols
            };
            normalize(mode, rho * target)
        }
    }
}

/// The overlap of a run with a target: `(local offset, offset in the target, length)`.
fn overlap(r: &Run, t: &Target) -> Option<(usize, usize, usize)> {
    if r.entry != t.entry {
        return None;
    }
    let (g0, g1) = (r.global as usize, (r.global + r.len) as usize);
    let (t0, t1) = (t.start, t.start + t.rows * t.cols);
    let (a, b) = (g0.max(t0), g1.min(t1));
    (a < b).then(|| (r.local + a - g0, a - t0, b - a))
}

/// Muon or Scion for one rank: the plan, the runs every rank of its owners group holds, and
/// the device buffers of a step.
pub struct MatrixOpt<B: Backend> {
    geometry: Vec<Geometry>,
    /// Whether AdamW decays each entry (see [`Role::decays`]), and its learning-rate factor.
    decays: Vec<bool>,
    lr_scale: Vec<f64>,
    targets: Vec<Target>,
    /// `members[i]`: the runs of the group's `i`-th rank (its shard of the flat buffer).
    members: Vec<Vec<Run>>,
    me: usize,
    /// Per bucket of targets, the block each rank sends each owner: the most elements any
    /// rank holds of any of its targets (fixed by the shards, so computed once).
    block: Vec<usize>,
    /// The shard's update directions before (`u`) and after (`dir`) the whole-matrix step.
    u: B::Buffer,
    dir: B::Buffer,
    /// What this rank sends and receives in a bucket's exchanges (`size` blocks).
    send: B::Buffer,
    recv: B::Buffer,
    /// The largest target this rank owns, assembled; Newton–Schulz's work space.
    whole: B::Buffer,
    work: B::Buffer,
}

impl<B: Ops> MatrixOpt<B> {
    /// `global`: the model at `tp = 1`; `members`: every owners-group rank's runs, in group
    /// order; `me`: this rank's index in the group; `dtype`, `n`: the shard's master dtype
    /// and length.
    pub fn new(
        be: &B,
        global: &Layout,
        o: &Optimizer,
        members: Vec<Vec<Run>>,
        me: usize,
        (dtype, n): (DType, usize),
    ) -> Result<Self> {
        let (geometry, targets) = plan(global, o);
        let size = members.len();
        let block: Vec<usize> = targets
            .chunks(size)
            .map(|bucket| {
                let held = |src: &Vec<Run>, t: &Target| -> usize {
                    src.iter().filter_map(|r| overlap(r, t)).map(|o| o.2).sum()
                };
                let most = members
                    .iter()
                    .flat_map(|src| bucket.iter().map(move |t| held(src, t)));
                most.max().unwrap_or(0)
            })
            .collect();
        let muon = o.kind == "muon";
        let ns_steps = if muon { o.muon.ns_steps } else { o.scion.ns_steps };
        let owned = || targets.chunks(size).filter_map(|b| b.get(me));
        let whole = owned().map(|t| t.rows * t.cols).max().unwrap_or(0);
        let work = owned()
            .map(|t| match direction_of(t, muon, ns_steps) {
                Direction::Orthogonalize(d) => d.work_len(),
                Direction::Normalize(_) => 0,
            })
            .max()
            .unwrap_or(0);
        let exchange = size * block.iter().copied().max().unwrap_or(0);
        let alloc = |what, len| crate::alloc::alloc(be, what, dtype, len);
        Ok(MatrixOpt {
            block,
            geometry,
            decays: global.entries.iter().map(|e| e.role.decays()).collect(),
            lr_scale: global.entries.iter().map(|e| e.lr_scale).collect(),
            targets,
            members,
            me,
            u: alloc("the matrix optimizer's directions", n)?,
            dir: alloc("the matrix optimizer's directions", n)?,
            send: alloc("the matrix optimizer's exchange buffers", exchange)?,
            recv: alloc("the matrix optimizer's exchange buffers", exchange)?,
            whole: alloc("the matrix optimizer's assembled matrix", whole)?,
            work: alloc("Newton–Schulz's work space", work)?,
        })
    }

    /// This rank's ranges of the entries updated as whole matrices.
    fn matrix_runs(&self) -> Vec<std::ops::Range<usize>> {
        self.members[self.me]
            .iter()
            .filter(|r| self.geometry[r.entry] != Geometry::AdamW)
            .map(|r| r.local..r.local + r.len as usize)
            .collect()
    }

    /// One step: AdamW for the element-wise entries, momentum and the whole-matrix direction
    /// for the others (`scale`: the gradient-clip factor; `step`: 1-based, for AdamW).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        be: &B,
        comm: Option<&dyn Comm<B>>,
        o: &Optimizer,
        (params, m, v): (&mut B::Buffer, &mut B::Buffer, &mut B::Buffer),
        grads: &B::Buffer,
        lr: f64,
        scale: f64,
        step: u32,
    ) -> Result<()> {
        self.adamw_runs(be, o, (params, m, v), grads, lr, scale, step)?;
        let muon = o.kind == "muon";
        let mu = if muon { o.muon.momentum } else { o.scion.momentum };
        let h = Momentum {
            mu,
            dampening: if muon { 1.0 } else { 1.0 - mu },
            nesterov: muon && o.muon.nesterov,
            grad_scale: scale,
        };
        for at in self.matrix_runs() {
            be.momentum_update(
                B::view_mut(m).range(at.clone()),
                B::view_mut(&mut self.u).range(at.clone()),
                B::view(grads).range(at.clone()),
                h,
                at.len(),
            )?;
        }
        self.directions(
            be,
            comm,
            muon,
            if muon { o.muon.ns_steps } else { o.scion.ns_steps },
        )?;
        let keep = if muon {
            1.0 - lr * o.weight_decay
        } else if o.scion.constrained {
            1.0 - lr
        } else {
            1.0
        };
        for at in self.matrix_runs() {
            be.apply_direction(
                B::view_mut(params).range(at.clone()),
                B::view(&self.dir).range(at.clone()),
                lr,
                keep,
                at.len(),
            )?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn adamw_runs(
        &self,
        be: &B,
        o: &Optimizer,
        (params, m, v): (&mut B::Buffer, &mut B::Buffer, &mut B::Buffer),
        grads: &B::Buffer,
        lr: f64,
        scale: f64,
        step: u32,
    ) -> Result<()> {
        for r in &self.members[self.me] {
            if self.geometry[r.entry] != Geometry::AdamW {
                continue;
            }
            let at = r.local..r.local + r.len as usize;
            let h = AdamW {
                lr: lr * self.lr_scale[r.entry],
                beta1: o.beta1,
                beta2: o.beta2,
                eps: o.eps,
                weight_decay: if self.decays[r.entry] { o.weight_decay } else { 0.0 },
                step,
                grad_scale: scale,
            };
            be.adamw_update(
                B::view_mut(params).range(at.clone()),
                B::view_mut(m).range(at.clone()),
                B::view_mut(v).range(at.clone()),
                B::view(grads).range(at.clone()),
                h,
                at.len(),
            )?;
        }
        Ok(())
    }

    /// Each target's direction, computed once on its owner, from `u` into this rank's
    /// pieces of `dir`.
    fn directions(&mut self, be: &B, comm: Option<&dyn Comm<B>>, muon: bool, ns_steps: usize) -> Result<()> {
        let size = self.members.len();
        let copy = |dst: B::Mut<'_>, src: B::Ref<'_>| -> Result<()> { Ok(be.cast(dst, src, src.len())?) };
        // The owner's matrices go in `whole`; the pieces to and from it in `send`/`recv`.
        let exchange = |send: &B::Buffer, recv: &mut B::Buffer, len: usize| -> Result<()> {
            match comm {
                Some(c) if size > 1 => c
                    .all_to_all(
                        be,
                        B::view(send).range(0..size * len),
                        B::view_mut(recv).range(0..size * len),
                    )
                    .map_err(|e| Error::Other(format!("optimizer all-to-all: {e}"))),
                _ => copy(B::view_mut(recv).range(0..len), B::view(send).range(0..len)),
            }
        };
        for (bucket, &len) in self.targets.chunks(size).zip(&self.block) {
            // To each owner, this rank's pieces of its target.
            for (d, t) in bucket.iter().enumerate() {
                let mut at = d * len;
                for (local, _, n) in self.members[self.me].iter().filter_map(|r| overlap(r, t)) {
                    copy(
                        B::view_mut(&mut self.send).range(at..at + n),
                        B::view(&self.u).range(local..local + n),
                    )?;
                    at += n;
                }
            }
            exchange(&self.send, &mut self.recv, len)?;
            // The owner assembles its target, computes the direction, and returns the pieces.
            if let Some(t) = bucket.get(self.me) {
                let numel = t.rows * t.cols;
                for src in 0..size {
                    let mut at = src * len;
                    for (_, off, n) in self.members[src].iter().filter_map(|r| overlap(r, t)) {
                        copy(
                            B::view_mut(&mut self.whole).range(off..off + n),
                            B::view(&self.recv).range(at..at + n),
                        )?;
                        at += n;
                    }
                }
                let whole = B::view_mut(&mut self.whole).range(0..numel);
                match direction_of(t, muon, ns_steps) {
                    Direction::Orthogonalize(d) => {
                        let work = B::view_mut(&mut self.work).range(0..d.work_len());
                        be.newton_schulz(whole, work, d)?
                    }
                    Direction::Normalize(d) => be.matrix_normalize(whole, d)?,
                }
                for src in 0..size {
                    let mut at = src * len;
                    for (_, off, n) in self.members[src].iter().filter_map(|r| overlap(r, t)) {
                        copy(
                            B::view_mut(&mut self.send).range(at..at + n),
                            B::view(&self.whole).range(off..off + n),
                        )?;
                        at += n;
                    }
                }
            }
            exchange(&self.send, &mut self.recv, len)?;
            for (d, t) in bucket.iter().enumerate() {
                let mut at = d * len;
                for (local, _, n) in self.members[self.me].iter().filter_map(|r| overlap(r, t)) {
                    copy(
                        B::view_mut(&mut self.dir).range(local..local + n),
                        B::view(&self.recv).range(at..at + n),
                    )?;
                    at += n;
                }
            }
        }
        Ok(())
    }
}
