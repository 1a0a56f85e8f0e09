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

pub mod comm;
pub mod mesh;

pub use comm::{Collective, Comm, HostComm, Pending};
pub use mesh::{Dim, Mesh, MeshError, ModelDims};

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
