//! Ranks on CUDA devices (`training.device = "cuda"` or `"cuda:N"`): each rank makes its
//! backend on its device and its device communicator for parameters and gradients, and runs
//! what it is given (the training loop, [`crate::train::train_rank_on`], with the host
//! communicator for control):
//! - one process, or thread ranks of one process: all on device `N`, exchanging through its
//!   memory ([`weft_parallel::comm::shared`]; NCCL refuses two ranks on one device);
//! - one process per rank (MPI, SLURM): rank `r` of a node takes device `N + local rank`, and
//!   the data communicator is NCCL, bootstrapped over the host group.

use crate::{Config, Result};
use weft_kernels::cuda::CudaBackend;
use weft_parallel::comm::shared::{self, SharedComm};
use weft_parallel::comm::HostComm;
use weft_parallel::Comm;

/// Device `ordinal` (its error names the device number and the reason).
fn backend(cfg: &Config, ordinal: usize) -> Result<CudaBackend> {
    CudaBackend::new(ordinal).map_err(|e| crate::device::unusable(cfg, e))
}

/// `cfg`'s `parallel.world()` ranks as threads of this process on device `ordinal`:
/// `rank(rank, backend, host group, data communicator)` on each (the training loop,
/// [`crate::train::train_rank_on`], with the host group as control).
pub fn threads<T: Send>(
    cfg: &Config,
    ordinal: usize,
    rank: impl Fn(usize, &CudaBackend, HostComm, &dyn Comm<CudaBackend>) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    shared::run(
        cfg.parallel.world(),
        |r, control, data: SharedComm<CudaBackend>| {
            let be = backend(cfg, ordinal)?;
            if r == 0 {
                tracing::info!(device = %weft_kernels::Backend::name(&be), "ranks share one device");
            }
            rank(r, &be, control, &data)
        },
    )
}

/// This process as one rank of `world` (started by MPI or SLURM): device `ordinal + the
/// rank's index on its node`, NCCL for its data; `rank(backend, data communicator)`.
pub fn nccl_rank<T>(
    cfg: &Config,
    ordinal: usize,
    world: &HostComm,
    rank: impl FnOnce(&CudaBackend, &dyn Comm<CudaBackend>) -> Result<T>,
) -> Result<T> {
    let local = local_rank().unwrap_or(0);
    let be = backend(cfg, ordinal + local)?;
    let me = Comm::<weft_kernels::CpuBackend>::rank(world);
    let bootstrap = world.split_host(0, me)?;
    let data = weft_parallel::comm::nccl::NcclComm::world(&be, bootstrap)?;
    tracing::debug!(rank = me, local, device = %weft_kernels::Backend::name(&be), "rank bound");
    rank(&be, &data)
}

/// This process's index among the ranks on its node, as the MPI launcher or SLURM says.
pub fn local_rank() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
        "LOCAL_RANK",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
}
