//! # weft-parallel
//!
//! The device mesh and everything that moves data between ranks.
//!
//! - [`mesh`]: `dp_replicate × dp_shard × cp × tp`, validation against the world size and the
//!   model, and the rank groups of every dimension (pure functions).
//! - [`comm`]: the [`Comm`] trait (all-gather, reduce-scatter, all-reduce, all-to-all,
//!   broadcast, send/recv; blocking and started in the background) and its transports:
//!   threads ([`comm::local`]), MPI ([`comm::mpi`], feature `mpi`), NCCL ([`comm::nccl`],
//!   feature `cuda`).
//! - [`seq`]: which tokens each context- and sequence-parallel rank holds.
//! - [`sp`]: the sequence-parallel boundaries of Megatron-style tensor parallelism
//!   (all-gather into a parallel region, reduce-scatter out of it).
//! - [`cp`]: context-parallel attention — ring attention with log-sum-exp merging, Ulysses
//!   all-to-all, and the two combined.

pub mod comm;
pub mod cp;
pub mod mesh;
pub mod seq;
pub mod sp;

pub use comm::{Collective, Comm, HostComm, Pending};
pub use mesh::{Dim, Mesh, MeshError, ModelDims};
pub use seq::SeqSplit;

/// Errors of the mesh and of communication.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("comm: {0}")]
    Comm(String),
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error(transparent)]
    Kernel(#[from] weft_kernels::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
