//! Training on a device mesh: one call of [`train_rank`] per rank, over any [`Comm`]
//! (threads in one process, MPI processes, NCCL).
//!
//! Samples are split over the data-parallel ranks exactly as one process would see them
//! (rank `d` of `dp` takes the `d`-th slice of every micro-batch, see
//! [`crate::data::sample_indices`]), each rank's loss is scaled by `1/dp`, and gradients are
//! summed by the FSDP reduce-scatter over `dp_shard` and an all-reduce over `dp_replicate`.
//! The result is the single-process run up to the order of floating-point sums.
//!
//! Under tensor, sequence and context parallelism ([`crate::model::Par`]) each rank holds its
//! tp share of every split tensor (initialized from the same global draw) and its share of
//! every sequence; its loss is its share of the micro-batch mean. Gradients of tensors every
//! tp rank holds whole are partial sums and are all-reduced over the tp group; all gradients
//! are all-reduced over the cp group (every cp rank saw other tokens).

pub mod fsdp;

pub use fsdp::{CommTime, Fsdp, Memory};

use crate::config::ModelConfig;
use crate::data::{sample_indices, Source, Split};
use crate::metrics::{diverged, MeshReport};
use crate::model::{gpt::mlp_hidden, Dit, Gpt, Model, Par};
use crate::optim::{lr_at, AdamWState};
use crate::train::{dtype_of, non_finite_loss, with_model, ModelJob};
use crate::{Config, Error, Result};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_kernels::{Backend, CpuBackend, DType, ElementwiseOps, HostVec, Slice};
use weft_parallel::{Comm, Dim, Mesh, ModelDims, SeqSplit};

/// What one rank reports at the end of a run.
#[derive(Clone, Debug)]
pub struct RankOutcome {
    pub rank: usize,
    /// Mean training loss of every step (identical on all ranks).
    pub losses: Vec<f64>,
    /// The full parameter vector after the last step (assembled from the shards).
    pub params: Vec<f32>,
    pub memory: Memory,
    /// Time blocked waiting for parameter gathers, and how many there were.
    pub gather_wait: Duration,
    pub gathers: usize,
    /// Wall time of the training steps.
    pub step_time: Duration,
}

/// The mesh a config describes.
pub fn mesh_of(cfg: &Config) -> Mesh {
    let p = &cfg.parallel;
    Mesh::new(p.dp_replicate, p.dp_shard, p.cp, p.tp)
}

/// The model sizes the mesh must divide.
pub fn model_dims(cfg: &Config) -> ModelDims {
    match &cfg.model {
        ModelConfig::Dit(m) => {
            let toks = m.latent[0] / m.patch[0] * (m.latent[1] / m.patch[1]) * (m.latent[2] / m.patch[2]);
            ModelDims {
                heads: m.heads,
                kv_heads: m.heads,
                hidden: vec![
                    ("model.width", m.width),
                    (
                        "the MLP hidden size",
                        (m.width as f64 * m.mlp_ratio).round() as usize,
                    ),
                ],
                tokens: ("the latent tokens per clip", toks),
                causal: false,
                ulysses: cfg.parallel.ulysses,
            }
        }
        ModelConfig::Gpt(m) => ModelDims {
            heads: m.heads,
            kv_heads: m.kv_heads.unwrap_or(m.heads),
            hidden: vec![("model.width", m.width), ("the MLP hidden size", mlp_hidden(m))],
            tokens: ("model.seq_len", m.seq_len),
            causal: true,
            ulysses: cfg.parallel.ulysses,
        },
    }
}

/// Refuse a mesh that does not fit `world` ranks or the model, before any rank starts: the
/// sizes the tp and cp groups split must divide, and every FSDP shard rank must hold part of
/// every unit (a `dp_shard` beyond the smallest unit's parameters leaves ranks holding only
/// padding).
pub fn check_mesh(cfg: &Config, world: usize) -> Result<Mesh> {
    let mesh = mesh_of(cfg);
    mesh.validate(world, &model_dims(cfg))
        .map_err(|e| Error::from_mesh(&e.0))?;
    let ds = cfg.parallel.dp_shard;
    let layout = crate::memory::layout_tp(cfg, cfg.parallel.tp);
    if ds > 1 && !layout.overflows() {
        let units = layout.units();
        let last = units.len() - 1;
        if let Some((i, u)) = units.iter().enumerate().min_by_key(|(_, u)| u.len()) {
            if u.len() < ds {
                let name = match i {
                    0 => "the input layers".to_string(),
                    i if i == last => "the output layers".to_string(),
                    i => format!("block {}", i - 1),
                };
                return Err(Error::config(
                    "parallel.dp_shard",
                    format!(
                        "({ds}) must not exceed the parameters of the smallest FSDP unit ({name}: {} \
                         per tp rank): each shard rank must hold part of every unit, not only padding",
                        u.len()
                    ),
                ));
            }
        }
    }
    Ok(mesh)
}

/// The whole model's layout (every tensor at its global shape).
pub fn global_layout(cfg: &Config) -> crate::Layout {
    cfg.parametrize(match &cfg.model {
        ModelConfig::Dit(m) => Dit::<CpuBackend>::layout_of(m),
        ModelConfig::Gpt(m) => Gpt::<CpuBackend>::layout_of(m),
    })
}

/// The communicators of one rank, split from the world by the mesh.
struct Groups {
    shard: Box<dyn Comm<CpuBackend>>,
    /// `[dp_replicate, cp]`: ranks holding the same shard of the same parameters.
    replicas: Box<dyn Comm<CpuBackend>>,
    /// `[dp_shard, tp]`: ranks holding disjoint parameters (the grad norm's group).
    owners: Box<dyn Comm<CpuBackend>>,
    tp: Arc<dyn Comm<CpuBackend>>,
}

/// Train on this rank of `world`. Every rank of the mesh calls this with the same config.
pub fn train_rank(cfg: &Config, world: &dyn Comm<CpuBackend>, prefetch: bool) -> Result<RankOutcome> {
    let mesh = check_mesh(cfg, world.size())?;
    let rank = world.rank();
    tracing::debug!(rank, transport = world.kind(), "rank starting");
    let split = |dims: &[Dim]| world.split(mesh.color(rank, dims), rank).map_err(comm_err);
    let groups = Groups {
        shard: split(&[Dim::Shard])?,
        replicas: split(&[Dim::Replicate, Dim::Cp])?,
        owners: split(&[Dim::Shard, Dim::Tp])?,
        tp: Arc::from(split(&[Dim::Tp])?),
    };
    let cp = split(&[Dim::Cp])?;
    let par = par_of(cfg, &mesh, rank, &groups, cp)?;
    let job = Rank {
        cfg,
        mesh,
        world,
        groups,
        prefetch,
    };
    with_model(cfg, &CpuBackend::new(), Some(par), job)
}

/// This rank's tensor/sequence/context split.
fn par_of(
    cfg: &Config,
    mesh: &Mesh,
    rank: usize,
    g: &Groups,
    cp: Box<dyn Comm<CpuBackend>>,
) -> Result<Par<CpuBackend>> {
    let dims = model_dims(cfg);
    let (cps, u) = (mesh.size(Dim::Cp), cfg.parallel.ulysses);
    let ci = mesh.coord(rank, Dim::Cp);
    let (ring_rank, ulysses_rank) = (ci / u, ci % u);
    let cp = if cps > 1 {
        // Ulysses is the inner (fastest) part of cp.
        let ring = cp.split(ulysses_rank, ci).map_err(comm_err)?;
        let uly = cp.split(ring_rank, ci).map_err(comm_err)?;
        Some((Arc::from(ring), Arc::from(uly)))
    } else {
        None
    };
    let tp = mesh.size(Dim::Tp);
    Ok(Par {
        tp: (tp > 1).then(|| g.tp.clone()),
        cp,
        split: SeqSplit {
            t: dims.tokens.1,
            ring: cps / u,
            ulysses: u,
            tp,
            causal: dims.causal,
        },
        tp_rank: mesh.coord(rank, Dim::Tp),
        ring_rank,
        ulysses_rank,
    })
}

struct Rank<'a> {
    cfg: &'a Config,
    mesh: Mesh,
    world: &'a dyn Comm<CpuBackend>,
    groups: Groups,
    prefetch: bool,
}

impl ModelJob for Rank<'_> {
    type Out = RankOutcome;
    fn run<M, S>(
        self,
        be: &CpuBackend,
        model: M,
        src: &S,
        baseline: fn(&[M::Batch]) -> f64,
    ) -> Result<RankOutcome>
    where
        M: Model<CpuBackend>,
        S: Source<Batch = M::Batch>,
    {
        let dt = dtype_of(self.cfg);
        let ctx = (self.mesh, self.world, &self.groups);
        run(self.cfg, be, ctx, model, (src, baseline), dt, self.prefetch)
    }
}

/// The constant predictor's loss on held-out batches.
type Baseline<T> = fn(&[T]) -> f64;

fn comm_err(e: weft_parallel::Error) -> Error {
    Error::Other(e.to_string())
}

fn run<M, S>(
    cfg: &Config,
    be: &CpuBackend,
    (mesh, world, groups): (Mesh, &dyn Comm<CpuBackend>, &Groups),
    mut model: M,
    (src, baseline): (&S, Baseline<M::Batch>),
    dt: DType,
    prefetch: bool,
) -> Result<RankOutcome>
where
    M: Model<CpuBackend>,
    S: Source<Batch = M::Batch>,
{
    let rank = world.rank();
    let (shard, replicas) = (groups.shard.as_ref(), groups.replicas.as_ref());
    let (tp, tp_rank) = (mesh.size(Dim::Tp), mesh.coord(rank, Dim::Tp));
    let t = &cfg.training;
    let layout = cfg.parametrize(model.layout().clone());
    // The f32 draw of the initial weights lives only until the shard is taken from it.
    let mut store = Fsdp::new(
        be,
        shard,
        &layout,
        &layout.init_tp(cfg.job.seed, tp, tp_rank)?,
        dt,
    )?;
    store.set_prefetch(prefetch);
    let n = store.shard_len();
    let segs = store.segments(&layout);
    let replicated = replicated_in_shard(&store, &layout);
    // What this rank adds to the gradient norm: its shard, less the replicated tensors on
    // tp ranks other than 0.
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
    let mut adam = AdamWState::for_config(be, dt, n, cfg)?;
    if ["muon", "scion"].contains(&cfg.optimizer.kind.as_str()) {
        // Every owners-group rank's pieces (the shards are a pure function of the mesh).
        let members = mesh
            .group(rank, &[Dim::Shard, Dim::Tp])
            .into_iter()
            .map(|r| {
                let pieces = store.pieces_for(&layout, mesh.coord(r, Dim::Shard));
                crate::ckpt::ShardMap::sharded(&layout, &pieces, tp, mesh.coord(r, Dim::Tp), false).runs
            })
            .collect();
        let me = mesh.index_in(rank, &[Dim::Shard, Dim::Tp]);
        let global = global_layout(cfg);
        adam.set_matrix(crate::optim::matrix::MatrixOpt::new(
            &global,
            &cfg.optimizer,
            members,
            me,
        ));
    }
    let activations = model.activation_bytes();
    let optim_buffers = adam.buffers().len();
    let memory = |store: &Fsdp<'_, CpuBackend>| Memory {
        params: n * dt.size(),
        grads: n * dt.size(),
        optimizer: optim_buffers * n * dt.size(),
        activations,
        comm_peak: store.peak,
    };
    let (dp, dp_rank) = (mesh.dp(), mesh.dp_rank(rank));
    let (b, tokens) = model.batch_shape();
    let (start, mut saver) = checkpoints(cfg, (&mesh, world), &layout, &mut store, &mut adam)?;
    let mut losses = Vec::with_capacity(t.steps as usize);
    // Each rank evaluates its share of the held-out batches one process with the global
    // micro-batch evaluates; rank 0 reports, against the constant predictor of all of them.
    let val = crate::eval::val_batches(src, t.val_batches, b, (dp_rank, dp))?;
    let mut report = if rank == 0 {
        let all = crate::eval::val_batches(src, t.val_batches, b * dp, (0, 1))?;
        Some(MeshReport::start(
            cfg,
            be,
            baseline(&all),
            (b, tokens),
            start > 0,
        )?)
    } else {
        None
    };
    let started = Instant::now();
    let log_every = (t.steps / 20).max(1);
    for step in start..t.steps {
        let t_step = Instant::now();
        // Time blocked in collectives this step (what a supervisor needs to tell a straggler
        // from the ranks waiting for it).
        let gathers_before = store.time.gather_wait;
        let mut wait = Duration::ZERO;
        let mut timed = |t: Instant| wait += t.elapsed();
        be.fill(CpuBackend::view_mut(&mut store.grads), 0.0, n)?;
        let mut loss = 0.0;
        for micro in 0..t.grad_accum {
            let idx = sample_indices(step, micro, t.grad_accum, dp_rank, dp, b);
            let batch = src.batch(Split::Train, &idx)?;
            let l = model.forward_with(be, &mut store, &batch)?;
            if !l.is_finite() {
                let e = non_finite_loss(cfg, &model, step, l, &batch, &idx);
                if let Some(r) = report.as_mut() {
                    r.metrics.write(diverged(step, l, &e))?;
                }
                return Err(e);
            }
            loss += l / t.grad_accum as f64;
            model.backward_with(be, &mut store, 1.0 / (t.grad_accum * dp) as f64)?;
            let t0 = Instant::now();
            store.finish_micro_batch(be)?;
            timed(t0);
        }
        // Replicas (HSDP) and cp ranks hold the same shard: sum their gradients.
        let t0 = Instant::now();
        replicas
            .all_reduce(be, CpuBackend::view_mut(&mut store.grads))
            .map_err(comm_err)?;
        timed(t0);
        if tp > 1 {
            sum_replicated(be, groups.tp.as_ref(), &mut store.grads, &replicated)?;
        }
        // Global norm: each element counted once, by the shard rank that owns it and (for a
        // tensor every tp rank holds whole) by tp rank 0.
        let mut sq = vec![0f64];
        for r in &counted {
            sq[0] += adam.sum_squares(be, CpuBackend::view(&store.grads).range(r.clone()))?;
        }
        let t0 = Instant::now();
        groups.owners.all_reduce(be, (&mut sq).into()).map_err(comm_err)?;
        timed(t0);
        let norm = sq[0].sqrt();
        let lr = lr_at(&cfg.optimizer, t.steps, step);
        if adam.is_matrix() {
            let owners = Some(groups.owners.as_ref());
            adam.step_matrix(
                owners,
                &cfg.optimizer,
                &mut store.params,
                &store.grads,
                lr,
                Some(norm),
            )?;
        } else {
            let (p, g) = (
                CpuBackend::view_mut(&mut store.params),
                CpuBackend::view(&store.grads),
            );
            adam.step_segments(be, &cfg.optimizer, &segs, p, g, lr, norm)?;
        }
        // Each rank's loss is its share of its data-parallel replica's loss (the cp·tp
        // shares add up to it); the mean over replicas is the run's loss.
        // With the loss, the ranks agree on stopping early: a stop signal on any rank stops
        // them all at this step boundary.
        let stop = if crate::ckpt::stop_requested() { 1.0 } else { 0.0 };
        let mut l = vec![loss / dp as f64, stop];
        let t0 = Instant::now();
        world.all_reduce(be, (&mut l).into()).map_err(comm_err)?;
        timed(t0);
        losses.push(l[0]);
        let state = crate::ckpt::State {
            step: step + 1,
            adam_step: adam.step,
            samples_seen: (step + 1) * (b * t.grad_accum * dp) as u64,
        };
        let comm = wait + (store.time.gather_wait - gathers_before);
        crate::observe::step_done(rank, step + 1, t_step.elapsed().as_secs_f64(), comm.as_secs_f64());
        let exit =
            step + 1 < t.steps && ((t.exit_after > 0 && step + 1 - start >= t.exit_after) || l[1] > 0.0);
        saver.after_step(
            state,
            &crate::ckpt::named(cfg, &store.params, adam.buffers()),
            exit,
        )?;
        if let Some(r) = report.as_mut() {
            let secs = t_step.elapsed().as_secs_f64();
            let mut line = r
                .rate
                .step_line(step + 1, l[0], norm, lr, secs, started.elapsed().as_secs_f64());
            line["step_s"] = secs.into();
            line["comm_s"] = comm.as_secs_f64().into();
            r.metrics.write(line)?;
            if (step + 1) % log_every == 0 || step + 1 == t.steps {
                tracing::info!(
                    step = step + 1,
                    loss = format!("{:.5}", l[0]),
                    grad_norm = format!("{norm:.4}"),
                    "train"
                );
            }
        }
        if crate::eval::due(t, step + 1) && !exit {
            let mine = crate::eval::validate(be, &mut model, &mut store, &val)?;
            // Free the gathered input and output layers: the next step must gather the
            // updated parameters.
            store.finish_micro_batch(be)?;
            // The cp·tp shares of a replica add up to its loss on its slice of the batches;
            // the mean over the replicas is the loss on all of them.
            let mut v = vec![mine / dp as f64];
            world.all_reduce(be, (&mut v).into()).map_err(comm_err)?;
            if let Some(r) = report.as_mut() {
                r.validated(step + 1, v[0])?;
            }
        }
        if exit {
            if rank == 0 {
                tracing::info!(
                    step = step + 1,
                    "stopping early (training.exit_after or a stop signal)"
                );
            }
            break;
        }
    }
    saver.finish();
    if let Some(r) = &report {
        tracing::info!("{}", crate::eval::versus_baseline(r.val_loss, r.val_baseline));
    }
    let step_time = started.elapsed();
    let local = assemble(be, &store, &layout, shard)?;
    let params = if tp > 1 {
        let mut all: Vec<f32> =
            crate::memory::host_zeros("the tp ranks' weights (f32)", local.len().saturating_mul(tp))?;
        groups
            .tp
            .all_gather(be, (&local).into(), (&mut all).into())
            .map_err(comm_err)?;
        let global = global_layout(cfg);
        let mut out: Vec<f32> = crate::memory::host_zeros("the whole model's weights (f32)", global.len())?;
        for (r, piece) in all.chunks(local.len()).enumerate() {
            layout.place_tp(&global, piece, tp, r, &mut out);
        }
        out
    } else {
        local
    };
    Ok(RankOutcome {
        rank,
        losses,
        params,
        memory: memory(&store),
        gather_wait: store.time.gather_wait,
        gathers: store.time.gathers,
        step_time,
    })
}

/// Resume this rank's shard (parameters and AdamW state) if `checkpoint.resume` asks for it,
/// and set up its saves. Rank 0 picks the checkpoint (verifying every byte, falling back past
/// damaged ones) and the others open the one it picked; any mesh can load any checkpoint.
/// Returns the first step to run.
fn checkpoints(
    cfg: &Config,
    (mesh, world): (&Mesh, &dyn Comm<CpuBackend>),
    layout: &crate::Layout,
    store: &mut Fsdp<'_, CpuBackend>,
    adam: &mut AdamWState<CpuBackend>,
) -> Result<(u64, crate::ckpt::Checkpointer)> {
    use crate::ckpt;
    let rank = world.rank();
    let (tp, tp_rank) = (mesh.size(Dim::Tp), mesh.coord(rank, Dim::Tp));
    let writer = mesh.coord(rank, Dim::Replicate) == 0 && mesh.coord(rank, Dim::Cp) == 0;
    let map = ckpt::ShardMap::sharded(layout, &store.pieces(layout), tp, tp_rank, writer);
    // Rank 0 chooses (and clears half-written saves of a crashed attempt) and names this
    // attempt's saves; the all-reduce tells the others, and keeps them from saving before the
    // clean-up.
    let mut chosen = vec![0f64; 2];
    let mine = if rank == 0 {
        weft_checkpoint::clean_partial(&cfg.checkpoint_dir())?;
        let c = ckpt::find_resume(cfg)?;
        chosen[0] = c.as_ref().map_or(0.0, |c| (c.manifest.step + 1) as f64);
        chosen[1] = weft_checkpoint::new_attempt() as f64;
        c
    } else {
        None
    };
    world
        .all_reduce(&CpuBackend::new(), (&mut chosen).into())
        .map_err(comm_err)?;
    let mut start = 0;
    if chosen[0] > 0.0 {
        let c = match mine {
            Some(c) => c,
            None => ckpt::open_step(cfg, chosen[0] as u64 - 1)?,
        };
        let bufs = ckpt::named(cfg, &mut store.params, adam.buffers_mut());
        let s = ckpt::load(&c, &map, layout, bufs)?;
        (start, adam.step) = (s.step, s.adam_step);
        if rank == 0 {
            tracing::info!(step = start, from = %c.dir.display(), mesh = ?c.manifest.mesh, "resumed");
        }
    }
    let head = (rank == 0).then(|| {
        let p = &cfg.parallel;
        let sizes = vec![p.dp_replicate, p.dp_shard, p.cp, p.tp];
        ckpt::Checkpointer::head(cfg, &global_layout(cfg), sizes)
    });
    let saver =
        ckpt::Checkpointer::new(cfg, layout, map, rank, world.size(), head).with_attempt(chosen[1] as u64);
    Ok((start, saver))
}

/// Ranges of this rank's shard buffer that belong to tensors every tp rank holds whole.
fn replicated_in_shard(store: &Fsdp<'_, CpuBackend>, layout: &crate::Layout) -> Vec<Range<usize>> {
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
fn sum_replicated(
    be: &CpuBackend,
    tp: &dyn Comm<CpuBackend>,
    grads: &mut HostVec,
    ranges: &[Range<usize>],
) -> Result<()> {
    let n: usize = ranges.iter().map(|r| r.len()).sum();
    let mut packed = be.alloc(grads.dtype(), n)?;
    let mut at = 0;
    for r in ranges {
        let src = CpuBackend::view(grads).range(r.clone());
        be.cast(
            CpuBackend::view_mut(&mut packed).range(at..at + r.len()),
            src,
            r.len(),
        )?;
        at += r.len();
    }
    tp.all_reduce(be, CpuBackend::view_mut(&mut packed))
        .map_err(comm_err)?;
    let mut at = 0;
    for r in ranges {
        let src = CpuBackend::view(&packed).range(at..at + r.len());
        be.cast(CpuBackend::view_mut(grads).range(r.clone()), src, r.len())?;
        at += r.len();
    }
    Ok(())
}

/// The full parameter vector from the shards (all-gathered over the shard group).
fn assemble(
    be: &CpuBackend,
    store: &Fsdp<'_, CpuBackend>,
    layout: &crate::Layout,
    shard: &dyn Comm<CpuBackend>,
) -> Result<Vec<f32>> {
    let n = store.shard_len();
    let mut mine: Vec<f32> = crate::memory::host_zeros("this rank's weights (f32)", n)?;
    be.cast((&mut mine).into(), CpuBackend::view(&store.params), n)?;
    let mut all: Vec<f32> =
        crate::memory::host_zeros("the gathered weights (f32)", n.saturating_mul(shard.size()))?;
    shard
        .all_gather(be, (&mine).into(), (&mut all).into())
        .map_err(comm_err)?;
    let mut out: Vec<f32> = crate::memory::host_zeros("the assembled weights (f32)", layout.len())?;
    for s in 0..shard.size() {
        // Rank s's pieces, in the order `pieces` lists them for rank s.
        let mut at = s * n;
        for (len, _, global) in store.pieces_for(layout, s) {
            if let Some(r) = global {
                out[r].copy_from_slice(&all[at..at + len]);
            }
            at += len;
        }
    }
    Ok(out)
}
