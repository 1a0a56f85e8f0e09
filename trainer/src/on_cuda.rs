//! Ranks on CUDA devices (`training.device = "cuda"` or `"cuda:N"`): each rank makes its
//! backend on its device and trains through the same loop as on the CPU
//! ([`crate::train::train_rank_on`]), with the host communicator for control and a device
//! communicator for parameters and gradients:
//! - one process, or thread ranks of one process: all on device `N`, exchanging through its
//!   memory ([`weft_parallel::comm::shared`]; NCCL refuses two ranks on one device);
//! - one process per rank (MPI, SLURM): rank `r` of a node takes device `N + local rank`, and
//!   the data communicator is NCCL, bootstrapped over the host group.

use crate::train::{train_rank_on, RankOutcome, TrainOptions};
use crate::{Config, Error, Result};
use weft_kernels::cuda::CudaBackend;
use weft_kernels::CpuBackend;
use weft_parallel::comm::shared::{self, SharedComm};
use weft_parallel::comm::HostComm;
use weft_parallel::Comm;

fn backend(cfg: &Config, ordinal: usize) -> Result<CudaBackend> {
    CudaBackend::new(ordinal).map_err(|e| Error::Device {
        device: cfg.training.device.clone(),
        why: format!("cuda:{ordinal}: {e}"),
    })
}

/// `cfg`'s `parallel.world()` ranks as threads of this process on device `ordinal`. `wrap`
/// turns each rank's host group into its control communicator (a supervisor's watch).
pub fn threads(
    cfg: &Config,
    ordinal: usize,
    opts: TrainOptions,
    wrap: &(dyn Fn(usize, HostComm) -> Result<Box<dyn Comm<CpuBackend>>> + Sync),
) -> Result<Vec<RankOutcome>> {
    shared::run(
        cfg.parallel.world(),
        |rank, control, data: SharedComm<CudaBackend>| {
            let be = backend(cfg, ordinal)?;
            if rank == 0 {
                tracing::info!(device = %weft_kernels::Backend::name(&be), "ranks share one device");
            }
            train_rank_on(cfg, &be, wrap(rank, control)?.as_ref(), &data, opts)
        },
    )
}

/// This process as one rank of `world` (started by MPI or SLURM): device `ordinal + the
/// rank's index on its node`, NCCL for its data. `control` carries the host decisions.
pub fn nccl_rank(
    cfg: &Config,
    ordinal: usize,
    world: &HostComm,
    control: &dyn Comm<CpuBackend>,
    opts: TrainOptions,
) -> Result<RankOutcome> {
    let local = local_rank().unwrap_or(0);
    let be = backend(cfg, ordinal + local)?;
    let rank = control.rank();
    let bootstrap = world.split_host(0, rank).map_err(crate::mesh::comm_err)?;
    let data = weft_parallel::comm::nccl::NcclComm::world(&be, bootstrap).map_err(crate::mesh::comm_err)?;
    tracing::debug!(rank, local, device = %weft_kernels::Backend::name(&be), "rank bound");
    train_rank_on(cfg, &be, control, &data, opts)
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
