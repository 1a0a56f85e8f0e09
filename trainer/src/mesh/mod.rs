//! The device mesh of a run: its shape ([`mesh_of`], checked against the model and the world
//! by [`check_mesh`]), each rank's communicators ([`Groups`]) and tensor/sequence/context
//! split ([`par_of`]), FSDP ([`fsdp`]), and the whole weights assembled from the shards
//! ([`assemble`]).
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
mod pool;

pub use fsdp::{CommTime, Fsdp, Memory};

use crate::config::ModelConfig;
use crate::model::{gpt::mlp_hidden, Dit, Gpt, Par};
use crate::{Config, Error, Layout, Result};
use std::sync::Arc;
use weft_kernels::{Backend, CpuBackend, Ops};
use weft_parallel::{Comm, Dim, Mesh, ModelDims, SeqSplit};

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
/// every unit (a `dp_shard` beyond the smallest unit's length leaves ranks holding only the
/// zeros that fill a unit's last shard).
pub fn check_mesh(cfg: &Config, world: usize) -> Result<Mesh> {
    let mesh = mesh_of(cfg);
    mesh.validate(world, &model_dims(cfg))
        .map_err(|e| Error::from_mesh(&e.0))?;
    let ds = cfg.parallel.dp_shard;
    let layout = layout_tp(cfg, cfg.parallel.tp);
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
                let params: usize = layout
                    .entries
                    .iter()
                    .filter(|e| u.contains(&e.offset))
                    .map(|e| e.numel())
                    .sum();
                return Err(Error::config(
                    "parallel.dp_shard",
                    format!(
                        "({ds}) must not exceed the length of the smallest FSDP unit ({name}: {} \
                         elements per tp rank, {params} of them parameters): each shard rank must \
                         hold part of every unit, not only the padding that fills its last shard",
                        u.len()
                    ),
                ));
            }
        }
    }
    Ok(mesh)
}

/// The communicators of one rank, split from the world by the mesh: host *control* groups
/// for scalars and decisions, and device *data* groups for parameters and gradients.
pub struct Groups<B: Backend> {
    /// Control: every rank (the loss, stop requests, the resume choice).
    pub world: Box<dyn Comm<CpuBackend>>,
    /// Control: `[dp_shard, tp]`, ranks holding disjoint parameters (the gradient norm's
    /// partial sums; the matrix optimizers' exchanges).
    pub owners: Box<dyn Comm<CpuBackend>>,
    /// Control: the FSDP shard group and the tp group (assembling the final weights).
    pub host_shard: Box<dyn Comm<CpuBackend>>,
    pub host_tp: Box<dyn Comm<CpuBackend>>,
    /// Data: the FSDP shard group (gathers and reduce-scatters).
    pub shard: Box<dyn Comm<B>>,
    /// Data: `[dp_replicate, cp]`, ranks holding the same shard of the same parameters.
    pub replicas: Box<dyn Comm<B>>,
    /// Data: the tp group.
    pub tp: Arc<dyn Comm<B>>,
    /// Data: `[dp_shard, tp]`, as `owners` (the matrix optimizers' exchanges).
    pub data_owners: Box<dyn Comm<B>>,
}

impl<B: Backend> Groups<B> {
    /// Split `control` (host) and `data` (device) — two communicators over the same world —
    /// by `mesh`; also returns the data cp group, which [`par_of`] splits further.
    pub fn split(
        mesh: &Mesh,
        control: &dyn Comm<CpuBackend>,
        data: &dyn Comm<B>,
    ) -> Result<(Self, Box<dyn Comm<B>>)> {
        let rank = control.rank();
        if data.rank() != rank || data.size() != control.size() {
            return Err(Error::Other(format!(
                "the data communicator (rank {} of {}) does not match the control one (rank {rank} of {})",
                data.rank(),
                data.size(),
                control.size()
            )));
        }
        let host = |dims: &[Dim]| control.split(mesh.color(rank, dims), rank).map_err(comm_err);
        let dev = |dims: &[Dim]| data.split(mesh.color(rank, dims), rank).map_err(comm_err);
        let groups = Groups {
            world: control.split(0, rank).map_err(comm_err)?,
            owners: host(&[Dim::Shard, Dim::Tp])?,
            host_shard: host(&[Dim::Shard])?,
            host_tp: host(&[Dim::Tp])?,
            shard: dev(&[Dim::Shard])?,
            replicas: dev(&[Dim::Replicate, Dim::Cp])?,
            tp: Arc::from(dev(&[Dim::Tp])?),
            data_owners: dev(&[Dim::Shard, Dim::Tp])?,
        };
        Ok((groups, dev(&[Dim::Cp])?))
    }
}

/// This rank's tensor/sequence/context split.
pub fn par_of<B: Backend>(
    cfg: &Config,
    mesh: &Mesh,
    rank: usize,
    g: &Groups<B>,
    cp: Box<dyn Comm<B>>,
) -> Result<Par<B>> {
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

pub(crate) fn comm_err(e: weft_parallel::Error) -> Error {
    Error::Other(e.to_string())
}

/// This tp rank's parameter layout of `cfg` (tp = 1: the whole model's).
pub fn layout_tp(cfg: &Config, tp: usize) -> Layout {
    match &cfg.model {
        ModelConfig::Dit(m) => Dit::<CpuBackend>::layout_tp(m, tp),
        ModelConfig::Gpt(m) => Gpt::<CpuBackend>::layout_tp(m, tp),
    }
}

/// The split of each sequence a rank of `cfg`'s mesh holds.
pub fn seq_split(cfg: &Config) -> SeqSplit {
    let dims = model_dims(cfg);
    let p = &cfg.parallel;
    SeqSplit {
        t: dims.tokens.1,
        ring: (p.cp / p.ulysses.max(1)).max(1),
        ulysses: p.ulysses,
        tp: p.tp,
        causal: dims.causal,
    }
}

/// The full parameter vector from the shards (all-gathered over the shard group).
pub fn assemble<B: Ops>(
    be: &B,
    store: &Fsdp<'_, B>,
    layout: &crate::Layout,
    shard: &dyn Comm<CpuBackend>,
) -> Result<Vec<f32>> {
    let n = store.shard_len();
    let mine: Vec<f32> = crate::model::download_f32(be, B::view(&store.params))?;
    let mut all: Vec<f32> =
        crate::alloc::host_zeros("the gathered weights (f32)", n.saturating_mul(shard.size()))?;
    shard
        .all_gather(&CpuBackend, (&mine).into(), (&mut all).into())
        .map_err(comm_err)?;
    let mut out: Vec<f32> = crate::alloc::host_zeros("the assembled weights (f32)", layout.len())?;
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
