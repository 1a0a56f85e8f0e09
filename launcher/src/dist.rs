//! `weft train` on a mesh: ranks as threads of this process, or this process as one MPI rank
//! (when started by `mpirun -n N` or `srun --mpi=pmix`).

use anyhow::{bail, Context, Result};
use serde_json::json;
use weft_kernels::CpuBackend;
use weft_parallel::comm::local;
use weft_parallel::comm::watch::{Activity, Watched};
use weft_trainer::device::Device;
use weft_trainer::mesh::check_mesh;
use weft_trainer::train::{train_rank, RankOutcome};
use weft_trainer::Config;

/// `comm`, reporting its collective activity to a supervisor (`weft launch`).
fn watched(rank: usize, comm: weft_parallel::HostComm) -> Watched<CpuBackend> {
    let activity = std::sync::Arc::new(Activity::default());
    weft_trainer::observe::set_activity(rank, activity.clone());
    Watched::new(Box::new(comm), activity)
}

/// Whether an MPI launcher started this process.
pub fn under_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

pub fn train(cfg: &Config) -> Result<()> {
    let world = cfg.parallel.world();
    if under_mpi() {
        return train_mpi(cfg);
    }
    check_mesh(cfg, world)?;
    tracing::info!(
        "{world} ranks as threads of this process (mesh {:?})",
        weft_trainer::mesh::mesh_of(cfg).sizes
    );
    let outs = match weft_trainer::device::resolve(cfg)? {
        Device::Cpu => local::run(world, |rank, comm| {
            let comm = watched(rank, comm);
            crate::rankside::comm_check(&CpuBackend, &comm)?;
            anyhow::Ok(train_rank(cfg, &comm, true)?)
        })?,
        Device::Cuda(n) => cuda::threads(cfg, n)?,
    };
    for o in &outs {
        report_memory(o);
    }
    finish(cfg, &outs[0], "threads")
}

#[cfg(feature = "mpi")]
fn train_mpi(cfg: &Config) -> Result<()> {
    let mpi = weft_parallel::comm::mpi::MpiWorld::init()?;
    // Refuse a mesh that does not fit before this rank does any work.
    check_mesh(cfg, mpi.size())?;
    let out = {
        let comm = watched(mpi.rank(), mpi.comm());
        match weft_trainer::device::resolve(cfg)? {
            Device::Cpu => {
                crate::rankside::comm_check(&CpuBackend, &comm)?;
                train_rank(cfg, &comm, true)?
            }
            Device::Cuda(n) => cuda::nccl_rank(cfg, n, &mpi.comm(), &comm)?,
        }
    };
    report_memory(&out);
    if out.rank == 0 {
        finish(cfg, &out, "mpi")?;
    }
    Ok(())
}

#[cfg(not(feature = "mpi"))]
fn train_mpi(_: &Config) -> Result<()> {
    bail!("this weft was built without the `mpi` feature; rebuild with `--features mpi` to run under mpirun/srun")
}

/// Ranks on CUDA devices ([`weft_trainer::on_cuda`]).
#[cfg(any(feature = "cuda", feature = "cuda-12"))]
mod cuda {
    use super::watched;
    use anyhow::Result;
    use weft_trainer::on_cuda;
    use weft_trainer::train::{train_rank_on, RankOutcome, TrainOptions};
    use weft_trainer::Config;

    const OPTS: TrainOptions = TrainOptions {
        progress: false,
        prefetch: true,
    };

    /// Every rank a thread of this process, all on device `n`.
    pub fn threads(cfg: &Config, n: usize) -> Result<Vec<RankOutcome>> {
        Ok(on_cuda::threads(cfg, n, |rank, be, host, data| {
            let comm = watched(rank, host);
            crate::rankside::comm_check(be, data).map_err(|e| weft_trainer::Error::Other(e.to_string()))?;
            train_rank_on(cfg, be, &comm, data, OPTS)
        })?)
    }

    /// This process as one MPI rank, on its node's device and NCCL.
    #[cfg(feature = "mpi")]
    pub fn nccl_rank(
        cfg: &Config,
        n: usize,
        world: &weft_parallel::comm::HostComm,
        control: &dyn weft_parallel::Comm<weft_kernels::CpuBackend>,
    ) -> Result<RankOutcome> {
        Ok(on_cuda::nccl_rank(cfg, n, world, |be, data| {
            crate::rankside::comm_check(be, data).map_err(|e| weft_trainer::Error::Other(e.to_string()))?;
            train_rank_on(cfg, be, control, data, OPTS)
        })?)
    }
}

/// Without CUDA support `training.device` never resolves to CUDA.
#[cfg(not(any(feature = "cuda", feature = "cuda-12")))]
mod cuda {
    use anyhow::Result;
    use weft_trainer::train::RankOutcome;
    use weft_trainer::Config;

    pub fn threads(_: &Config, _: usize) -> Result<Vec<RankOutcome>> {
        unreachable!("device::resolve refuses CUDA in a build without it")
    }
    #[cfg(feature = "mpi")]
    pub fn nccl_rank(
        _: &Config,
        _: usize,
        _: &weft_parallel::comm::HostComm,
        _: &dyn weft_parallel::Comm<weft_kernels::CpuBackend>,
    ) -> Result<RankOutcome> {
        unreachable!("device::resolve refuses CUDA in a build without it")
    }
}

fn report_memory(o: &RankOutcome) {
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    let m = o.memory;
    tracing::info!(
        rank = o.rank,
        "held: parameters {:.3} MiB, gradients {:.3} MiB, optimizer {:.3} MiB (sum {:.3} MiB); \
         activations {:.3} MiB; communication buffers peak {:.3} MiB, of which gathered \
         parameters {:.3} MiB; waited {:.1} ms for {} gathers",
        mib(m.params),
        mib(m.grads),
        mib(m.optimizer),
        mib(m.params + m.grads + m.optimizer),
        mib(m.activations),
        mib(m.comm_peak),
        mib(m.gathered_peak),
        o.gather_wait.as_secs_f64() * 1e3,
        o.gathers
    );
    if let (Some(used), Some(total)) = (m.device_in_use, m.device_total) {
        tracing::info!(
            rank = o.rank,
            "device memory in use (the driver's count): {:.3} GiB of {:.3} GiB",
            used as f64 / (1u64 << 30) as f64,
            total as f64 / (1u64 << 30) as f64
        );
    }
}

/// FNV-1a of the parameters' bits: equal runs print equal digests.
fn digest(v: &[f32]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for x in v {
        for b in x.to_bits().to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
    }
    format!("{h:016x}")
}

/// Rank 0 (which wrote the weights): write a summary, print the result.
fn finish(cfg: &Config, o: &RankOutcome, transport: &str) -> Result<()> {
    let dir = cfg.run_dir();
    let weights = &o.weights;
    let summary = json!({
        "transport": transport,
        "mesh": weft_trainer::mesh::mesh_of(cfg).sizes,
        "losses": o.losses,
        "params_digest": digest(&o.params),
        "memory_rank0": o.memory,
        "step_time_s": o.step_time.as_secs_f64(),
    });
    let path = dir.join("sharded.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| format!("writing {}", path.display()))?;
    if o.losses.is_empty() {
        bail!("no steps were run");
    }
    println!(
        "{}: {} steps on {} ranks ({transport}), final train loss {:.5}, parameters {}, weights {}",
        cfg.job.name,
        o.losses.len(),
        cfg.parallel.world(),
        o.losses.last().unwrap(),
        digest(&o.params),
        weights.display()
    );
    Ok(())
}
