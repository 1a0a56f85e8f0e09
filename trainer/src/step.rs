//! One optimizer step, the same for one process and for any mesh, on any backend:
//! zero the gradients → micro-batches of forward and backward (FSDP gathers the parameters
//! and reduce-scatters the gradients of each unit) → gradient reduction over the replicas and
//! the cp and tp groups → the global norm and clipping → the optimizer → the step's loss and
//! the ranks' agreement on stopping.
//!
//! One process is a mesh of one: its FSDP store has a single shard and its collectives are
//! copies. Scalars and decisions (the loss, a stop request, the norm's partial sums) travel on
//! the host control communicators; the device data communicators only ever see gradient and
//! parameter buffers.

use crate::data::{sample_indices, Source, Split};
use crate::job::Precision;
use crate::mesh::{comm_err, Fsdp, Groups};
use crate::model::download_f64;
use crate::model::Model;
use crate::optim::{lr_at, AdamWState};
use crate::{Config, Error, Layout, Result};
use std::ops::Range;
use std::time::{Duration, Instant};
use weft_kernels::{CpuBackend, DType, Ops, Slice};
use weft_parallel::{Dim, Mesh};

/// What a step reports.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// The step's training loss: the mean over the global batch (equal on every rank).
    pub loss: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    /// Whether any rank was asked to stop (a signal): all ranks stop after this step.
    pub stop: bool,
    /// Time blocked in collectives (gathers, reductions, the scalars' all-reduces).
    pub comm: Duration,
}

/// A rank's training state between steps: its shard of the master parameters, gradients and
/// optimizer state, and where its pieces lie.
pub struct Step<'c, B: Ops> {
    pub store: Fsdp<'c, B>,
    pub adam: AdamWState<B>,
    groups: &'c Groups<B>,
    mesh: Mesh,
    rank: usize,
    /// `(length, decays, learning-rate factor)` of every piece of the shard.
    segs: Vec<(usize, bool, f64)>,
    /// What this rank adds to the gradient norm: its shard, less the tensors every tp rank
    /// holds whole on tp ranks other than 0.
    counted: Vec<Range<usize>>,
    /// Ranges of the shard holding tensors every tp rank holds whole (their gradients are
    /// partial sums over the tp group).
    replicated: Vec<Range<usize>>,
    /// f64 on the device: each micro-batch's loss, then this rank's Σg² (see [`Step::run`]).
    scalars: B::Buffer,
}

impl<'c, B: Ops> Step<'c, B> {
    /// Shard the initial parameters of `layout` (this rank's tp share, from the global draw of
    /// `job.seed`) and set up the optimizer of `cfg`.
    pub fn new(
        cfg: &Config,
        be: &B,
        groups: &'c Groups<B>,
        (mesh, rank): (Mesh, usize),
        layout: &Layout,
        prefetch: bool,
    ) -> Result<Self> {
        let (tp, tp_rank) = (mesh.size(Dim::Tp), mesh.coord(rank, Dim::Tp));
        let prec = Precision::of(cfg);
        // The f32 draw of the initial weights lives only until the shard is taken from it.
        let mut store = Fsdp::new(
            be,
            groups.shard.as_ref(),
            layout,
            &layout.init_tp(cfg.job.seed, tp, tp_rank)?,
            prec,
        )?;
        store.set_prefetch(prefetch);
        let n = store.shard_len();
        let segs = store.segments(layout);
        let replicated = replicated_in_shard(&store, layout);
        let counted = if tp_rank == 0 {
            std::iter::once(0..n).collect()
        } else {
            let mut v = vec![];
            let mut at = 0;
            for r in &replicated {
                v.push(at..r.start);
                at = r.end;
            }
            v.push(at..n);
            v
        };
        let mut adam = AdamWState::for_config(be, prec.master, n, cfg)?;
        if ["muon", "scion"].contains(&cfg.optimizer.kind.as_str()) {
            // Every owners-group rank's pieces (the shards are a pure function of the mesh).
            let members = mesh
                .group(rank, &[Dim::Shard, Dim::Tp])
                .into_iter()
                .map(|r| {
                    let pieces = store.pieces_for(layout, mesh.coord(r, Dim::Shard));
                    crate::ckpt::ShardMap::sharded(layout, &pieces, tp, mesh.coord(r, Dim::Tp), false).runs
                })
                .collect();
            let me = mesh.index_in(rank, &[Dim::Shard, Dim::Tp]);
            adam.set_matrix(crate::optim::matrix::MatrixOpt::new(
                be,
                &crate::job::global_layout(cfg),
                &cfg.optimizer,
                members,
                me,
                (prec.master, n),
            )?);
        }
        Ok(Step {
            store,
            adam,
            groups,
            mesh,
            rank,
            segs,
            counted,
            replicated,
            scalars: be.alloc(DType::F64, cfg.training.grad_accum + 1)?,
        })
    }

    /// Run 0-based step `step` of `cfg` on `model` with batches from `src`. A non-finite loss
    /// or gradient norm stops every rank at the same point, before the optimizer: this rank's
    /// error is [`Error::NonFinite`] (or [`Error::NonFiniteInput`] when its batch holds NaN or
    /// infinity), [`Error::NonFiniteElsewhere`] when other ranks' losses were, or
    /// [`Error::NonFiniteNorm`].
    pub fn run<M, S>(&mut self, cfg: &Config, be: &B, model: &mut M, src: &S, step: u64) -> Result<StepStats>
    where
        M: Model<B>,
        S: Source<Batch = M::Batch>,
    {
        let t = &cfg.training;
        let (mesh, g) = (self.mesh, self.groups);
        let (dp, dp_rank) = (mesh.dp(), mesh.dp_rank(self.rank));
        let (b, _) = model.batch_shape();
        let n = self.store.shard_len();
        let gathers_before = self.store.time.gather_wait;
        let mut wait = Duration::ZERO;
        let mut timed = |t: Instant| wait += t.elapsed();
        be.fill(B::view_mut(&mut self.store.grads), 0.0, n)?;
        // The micro-batches' losses and the gradient norm's partial sum stay on the device
        // (`scalars`: one f64 per micro-batch, then Σg²) until one download after the
        // gradients are reduced. A non-finite loss is found only then, and all ranks stop
        // together below (every rank must reach the same collectives first).
        let accum = t.grad_accum;
        let zeros = vec![0f64; accum + 1];
        be.upload((&zeros).into(), B::view_mut(&mut self.scalars))?;
        for micro in 0..accum {
            let idx = sample_indices(step, micro, accum, dp_rank, dp, b);
            let batch = src.batch(Split::Train, &idx)?;
            let slot = B::view_mut(&mut self.scalars).range(micro..micro + 1);
            model.forward_into(be, &mut self.store, &batch, slot)?;
            model.backward_with(be, &mut self.store, 1.0 / (accum * dp) as f64)?;
            let t0 = Instant::now();
            self.store.finish_micro_batch(be)?;
            timed(t0);
        }
        // Replicas (HSDP) and cp ranks hold the same shard: sum their gradients.
        let t0 = Instant::now();
        g.replicas
            .all_reduce(be, B::view_mut(&mut self.store.grads))
            .map_err(comm_err)?;
        timed(t0);
        if mesh.size(Dim::Tp) > 1 {
            sum_replicated(be, g, &mut self.store.grads, &self.replicated)?;
        }
        // Global norm: each element counted once, by the shard rank that owns it and (for a
        // tensor every tp rank holds whole) by tp rank 0.
        for r in &self.counted {
            let acc = B::view_mut(&mut self.scalars).range(accum..accum + 1);
            be.sum_squares(acc, B::view(&self.store.grads).range(r.clone()), r.len())?;
        }
        // The step's one download: the losses and this rank's Σg².
        let scalars = download_f64(be, B::view(&self.scalars))?;
        let mut loss = 0.0;
        let mut bad = None;
        for (micro, &l) in scalars[..accum].iter().enumerate() {
            if !l.is_finite() && bad.is_none() {
                let idx = sample_indices(step, micro, accum, dp_rank, dp, b);
                let batch = src.batch(Split::Train, &idx)?;
                bad = Some(non_finite_loss(cfg, model, step, l, &batch, &idx));
            }
            loss += l / accum as f64;
        }
        let mut sq = vec![scalars[accum]];
        let t0 = Instant::now();
        g.owners
            .all_reduce(&CpuBackend, (&mut sq).into())
            .map_err(comm_err)?;
        timed(t0);
        let norm = sq[0].sqrt();
        // Each rank's loss is its share of its data-parallel replica's loss (the cp·tp shares
        // add up to it); the mean over replicas is the run's loss. With the loss, the ranks
        // agree, before the optimizer, on stopping (a stop signal on any rank stops them all at
        // this step boundary) and on a non-finite loss anywhere (all of them stop).
        let stop = if crate::ckpt::stop_requested() { 1.0 } else { 0.0 };
        let mine = if bad.is_some() { 1.0 } else { 0.0 };
        let mut l = vec![loss / dp as f64, stop, mine];
        let t0 = Instant::now();
        g.world
            .all_reduce(&CpuBackend, (&mut l).into())
            .map_err(comm_err)?;
        timed(t0);
        if let Some(e) = bad {
            return Err(e);
        }
        if l[2] > 0.0 {
            return Err(Error::NonFiniteElsewhere {
                step,
                ranks: l[2] as usize,
            });
        }
        if !norm.is_finite() {
            return Err(Error::NonFiniteNorm { step, norm });
        }
        let lr = lr_at(&cfg.optimizer, t.steps, step);
        if self.adam.is_matrix() {
            let (p, gr) = (&mut self.store.params, &self.store.grads);
            let owners = Some(g.data_owners.as_ref());
            self.adam
                .step_matrix(be, owners, &cfg.optimizer, p, gr, lr, Some(norm))?;
        } else {
            let (p, gr) = (B::view_mut(&mut self.store.params), B::view(&self.store.grads));
            self.adam
                .step_segments(be, &cfg.optimizer, &self.segs, p, gr, lr, norm)?;
        }
        Ok(StepStats {
            loss: l[0],
            grad_norm: norm,
            lr,
            stop: l[1] > 0.0,
            comm: wait + (self.store.time.gather_wait - gathers_before),
        })
    }
}

/// Ranges of this rank's shard buffer that belong to tensors every tp rank holds whole.
fn replicated_in_shard<B: Ops>(store: &Fsdp<'_, B>, layout: &Layout) -> Vec<Range<usize>> {
    let rep = layout.replicated_ranges();
    let mut out = vec![];
    let mut at = 0;
    for (len, _, global) in store.pieces(layout) {
        if let Some(g) = global {
            // A piece lies inside one tensor: wholly replicated or not.
            if rep.iter().any(|r| r.start <= g.start && g.start < r.end) {
                out.push(at..at + len);
            }
        }
        at += len;
    }
    out
}

/// Sum `ranges` of `grads` over the tp group (packed into one all-reduce).
fn sum_replicated<B: Ops>(
    be: &B,
    g: &Groups<B>,
    grads: &mut B::Buffer,
    ranges: &[Range<usize>],
) -> Result<()> {
    let n: usize = ranges.iter().map(|r| r.len()).sum();
    let dt = B::view(grads).dtype();
    let mut packed = be.alloc(dt, n)?;
    let mut at = 0;
    for r in ranges {
        let src = B::view(grads).range(r.clone());
        be.cast(B::view_mut(&mut packed).range(at..at + r.len()), src, r.len())?;
        at += r.len();
    }
    g.tp.all_reduce(be, B::view_mut(&mut packed)).map_err(comm_err)?;
    let mut at = 0;
    for r in ranges {
        let src = B::view(&packed).range(at..at + r.len());
        be.cast(B::view_mut(grads).range(r.clone()), src, r.len())?;
        at += r.len();
    }
    Ok(())
}

/// The error for a non-finite `loss` at 0-based `step` on `batch` (the training samples
/// `idx`): the data's fault when the batch's inputs hold NaN or infinity, divergence
/// otherwise.
fn non_finite_loss<M: Model<B>, B: Ops>(
    cfg: &Config,
    model: &M,
    step: u64,
    loss: f64,
    batch: &M::Batch,
    idx: &[u64],
) -> Error {
    let bad = model.non_finite_samples(batch);
    if bad.is_empty() {
        return Error::NonFinite { step, loss };
    }
    Error::NonFiniteInput {
        step,
        source_desc: cfg.data.describe(),
        samples: bad.iter().filter_map(|&i| idx.get(i).copied()).collect(),
    }
}
