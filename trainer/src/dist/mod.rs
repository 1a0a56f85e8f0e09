//! Training on a device mesh: one call of [`train_rank`] per rank, over any [`Comm`]
//! (threads in one process, MPI processes, NCCL).
//!
//! Samples are split over the data-parallel ranks exactly as one process would see them
//! (rank `d` of `dp` takes the `d`-th slice of every micro-batch, see
//! [`crate::data::sample_indices`]), each rank's loss is scaled by `1/dp`, and gradients are
//! summed by the FSDP reduce-scatter over `dp_shard` and an all-reduce over `dp_replicate`.
//! The result is the single-process run up to the order of floating-point sums.

pub mod fsdp;

pub use fsdp::{CommTime, Fsdp, Memory};

use crate::config::ModelConfig;
use crate::data::{sample_indices, Source, Split};
use crate::model::{gpt::mlp_hidden, Model};
use crate::optim::{lr_at, AdamWState};
use crate::train::{dtype_of, with_model, ModelJob};
use crate::{Config, Error, Result};
use std::time::{Duration, Instant};
use weft_kernels::{Backend, CpuBackend, DType, ElementwiseOps};
use weft_parallel::{Comm, Dim, Mesh, ModelDims};

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
                ulysses: 1,
            }
        }
        ModelConfig::Gpt(m) => ModelDims {
            heads: m.heads,
            kv_heads: m.kv_heads.unwrap_or(m.heads),
            hidden: vec![("model.width", m.width), ("the MLP hidden size", mlp_hidden(m))],
            tokens: ("model.seq_len", m.seq_len),
            causal: true,
            ulysses: 1,
        },
    }
}

/// Refuse a mesh that does not fit `world` ranks or the model, before any rank starts.
pub fn check_mesh(cfg: &Config, world: usize) -> Result<Mesh> {
    let mesh = mesh_of(cfg);
    mesh.validate(world, &model_dims(cfg))
        .map_err(|e| Error::from_mesh(&e.0))?;
    if mesh.size(Dim::Tp) > 1 || mesh.size(Dim::Cp) > 1 {
        return Err(Error::config(
            "parallel.tp",
            "and `parallel.cp` must be 1 in this version: tensor, sequence and context parallelism \
             are not wired into the models yet (data parallelism, dp_shard × dp_replicate, is)",
        ));
    }
    Ok(mesh)
}

/// Train on this rank of `world`. Every rank of the mesh calls this with the same config.
pub fn train_rank(cfg: &Config, world: &dyn Comm<CpuBackend>, prefetch: bool) -> Result<RankOutcome> {
    let mesh = check_mesh(cfg, world.size())?;
    tracing::debug!(rank = world.rank(), transport = world.kind(), "rank starting");
    let job = Rank {
        cfg,
        mesh,
        world,
        prefetch,
    };
    with_model(cfg, &CpuBackend::new(), job)
}

struct Rank<'a> {
    cfg: &'a Config,
    mesh: Mesh,
    world: &'a dyn Comm<CpuBackend>,
    prefetch: bool,
}

impl ModelJob for Rank<'_> {
    type Out = RankOutcome;
    fn run<M, S>(self, be: &CpuBackend, model: M, src: &S, _: fn(&[M::Batch]) -> f64) -> Result<RankOutcome>
    where
        M: Model<CpuBackend>,
        S: Source<Batch = M::Batch>,
    {
        let dt = dtype_of(self.cfg);
        run(self.cfg, be, self.mesh, self.world, model, src, dt, self.prefetch)
    }
}

fn comm_err(e: weft_parallel::Error) -> Error {
    Error::Other(e.to_string())
}

#[allow(clippy::too_many_arguments)]
fn run<M, S>(
    cfg: &Config,
    be: &CpuBackend,
    mesh: Mesh,
    world: &dyn Comm<CpuBackend>,
    mut model: M,
    src: &S,
    dt: DType,
    prefetch: bool,
) -> Result<RankOutcome>
where
    M: Model<CpuBackend>,
    S: Source<Batch = M::Batch>,
{
    let rank = world.rank();
    let split = |dims: &[Dim]| world.split(mesh.color(rank, dims), rank).map_err(comm_err);
    let shard = split(&[Dim::Shard])?;
    let replicas = split(&[Dim::Replicate, Dim::Cp])?;
    let t = &cfg.training;
    let layout = model.layout().clone();
    let init = layout.init(cfg.job.seed);
    let mut store = Fsdp::new(be, shard.as_ref(), &layout, &init, dt)?;
    store.set_prefetch(prefetch);
    let n = store.shard_len();
    let segs = store.segments(&layout);
    let mut adam = AdamWState::new(be, dt, n)?;
    let memory = |store: &Fsdp<'_, CpuBackend>| Memory {
        params: n * dt.size(),
        grads: n * dt.size(),
        optimizer: 2 * n * dt.size(),
        comm_peak: store.peak,
    };
    let (dp, dp_rank) = (mesh.dp(), mesh.dp_rank(rank));
    let (b, _) = model.batch_shape();
    let mut losses = Vec::with_capacity(t.steps as usize);
    let started = Instant::now();
    for step in 0..t.steps {
        be.fill(CpuBackend::view_mut(&mut store.grads), 0.0, n)?;
        let mut loss = 0.0;
        for micro in 0..t.grad_accum {
            let idx = sample_indices(step, micro, t.grad_accum, dp_rank, dp, b);
            let batch = src.batch(Split::Train, &idx)?;
            let l = model.forward_with(be, &mut store, &batch)?;
            if !l.is_finite() {
                return Err(Error::NonFinite { step, loss: l });
            }
            loss += l / t.grad_accum as f64;
            model.backward_with(be, &mut store, 1.0 / (t.grad_accum * dp) as f64)?;
            store.finish_micro_batch(be)?;
        }
        // Replicas (HSDP) hold the same shard: sum their gradients.
        replicas
            .all_reduce(be, CpuBackend::view_mut(&mut store.grads))
            .map_err(comm_err)?;
        // Global norm: every element is owned by exactly one rank of the shard group.
        let mut sq = vec![adam.sum_squares(be, CpuBackend::view(&store.grads))?];
        shard.all_reduce(be, (&mut sq).into()).map_err(comm_err)?;
        let norm = sq[0].sqrt();
        let lr = lr_at(&cfg.optimizer, t.steps, step);
        let (p, g) = (
            CpuBackend::view_mut(&mut store.params),
            CpuBackend::view(&store.grads),
        );
        adam.step_segments(be, &cfg.optimizer, &segs, p, g, lr, norm)?;
        let mut l = vec![loss / dp as f64];
        world.all_reduce(be, (&mut l).into()).map_err(comm_err)?;
        // Every rank of one data-parallel replica reports the same loss: divide by the others.
        losses.push(l[0] / (mesh.world() / dp) as f64);
        if rank == 0 {
            tracing::info!(
                step = step + 1,
                loss = format!("{:.5}", losses.last().unwrap()),
                grad_norm = format!("{norm:.4}"),
                "train"
            );
        }
    }
    let step_time = started.elapsed();
    let params = assemble(be, &store, &layout, shard.as_ref())?;
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

/// The full parameter vector from the shards (all-gathered over the shard group).
fn assemble(
    be: &CpuBackend,
    store: &Fsdp<'_, CpuBackend>,
    layout: &crate::Layout,
    shard: &dyn Comm<CpuBackend>,
) -> Result<Vec<f32>> {
    let n = store.shard_len();
    let mut mine = vec![0f32; n];
    be.cast((&mut mine).into(), CpuBackend::view(&store.params), n)?;
    let mut all = vec![0f32; n * shard.size()];
    shard
        .all_gather(be, (&mine).into(), (&mut all).into())
        .map_err(comm_err)?;
    let mut out = vec![0f32; layout.len()];
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
