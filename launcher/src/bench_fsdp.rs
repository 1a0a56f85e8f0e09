//! `weft bench fsdp`: how much of FSDP's parameter all-gather time is hidden behind compute,
//! on the MPI transport. The same run is made twice on every rank: gathers issued only when a
//! block needs them (all of their time is exposed), then prefetched one block ahead. The
//! fraction hidden is `1 − exposed wait with prefetch / wait without`.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct FsdpBenchArgs {
    /// MPI ranks (FSDP over all of them). Overlap needs a core free for communication: on a
    /// 2-core machine use 2.
    #[arg(long, default_value_t = 2)]
    pub ranks: usize,
    /// Training steps per measurement.
    #[arg(long, default_value_t = 4)]
    pub steps: u64,
    /// Model config to shard.
    #[arg(long, default_value = "configs/dit-tiny.toml")]
    pub config: PathBuf,
}

pub fn fsdp(a: &FsdpBenchArgs) -> Result<()> {
    if !cfg!(feature = "mpi") {
        bail!("`weft bench fsdp` measures MPI ranks: rebuild with `--features mpi`");
    }
    if !crate::dist::under_mpi() {
        // Re-run this command as `ranks` MPI processes.
        let me = crate::weft_exe()?;
        let mut cmd = crate::launch::mpirun(a.ranks);
        cmd.arg(me)
            .args(["bench", "fsdp", "--steps", &a.steps.to_string(), "--config"])
            .arg(&a.config);
        let st = cmd
            .status()
            .context("starting mpirun (apt-get install openmpi-bin)")?;
        if !st.success() {
            bail!("mpirun exited with {st}");
        }
        return Ok(());
    }
    measure(a)
}

#[cfg(not(feature = "mpi"))]
fn measure(_: &FsdpBenchArgs) -> Result<()> {
    unreachable!("refused above without the `mpi` feature")
}

/// This process's part of the benchmark, as one MPI rank.
#[cfg(feature = "mpi")]
fn measure(a: &FsdpBenchArgs) -> Result<()> {
    use weft_kernels::CpuBackend;
    use weft_parallel::Comm;
    use weft_trainer::train::train_rank;
    use weft_trainer::Config;
    let mpi = weft_parallel::comm::mpi::MpiWorld::init()?;
    let n = mpi.size();
    let out = std::env::temp_dir().join(format!("weft-bench-fsdp-{}", std::process::id()));
    let sets = [
        format!("parallel.dp_shard={n}"),
        format!("training.steps={}", a.steps),
        "optimizer.warmup_steps=1".into(),
        "training.micro_batch=4".into(),
        "training.peak_flops=1e11".into(),
        format!("job.out_dir=\"{}\"", out.display()),
    ];
    let cfg = Config::load(&a.config, &sets)?;
    let comm = mpi.comm();
    let world: &dyn Comm<CpuBackend> = &comm;
    let off = train_rank(&cfg, world, false)?;
    let on = train_rank(&cfg, world, true)?;
    // The slowest rank decides: take the maximum over ranks of each number.
    let be = CpuBackend::new();
    let mut v = vec![
        off.gather_wait.as_secs_f64(),
        on.gather_wait.as_secs_f64(),
        off.step_time.as_secs_f64(),
        on.step_time.as_secs_f64(),
    ];
    let mut all = vec![0f64; 4 * n];
    world.all_gather(&be, (&v).into(), (&mut all).into())?;
    for (i, x) in v.iter_mut().enumerate() {
        *x = (0..n).map(|r| all[r * 4 + i]).fold(0.0, f64::max);
    }
    if mpi.rank() == 0 {
        let [total, exposed, t_off, t_on] = [v[0], v[1], v[2], v[3]];
        println!(
            "FSDP over MPI, {n} ranks, {} ({} gathers per run)",
            a.config.display(),
            on.gathers
        );
        println!(
            "all-gather time without prefetch (all exposed): {:8.1} ms",
            total * 1e3
        );
        println!(
            "exposed all-gather wait with prefetch:          {:8.1} ms",
            exposed * 1e3
        );
        println!(
            "hidden behind compute: {:.1}% (overlapped / total communication time)",
            100.0 * (1.0 - exposed / total.max(1e-12))
        );
        println!(
            "step time: {:.1} ms without prefetch, {:.1} ms with ({:.2}×)",
            t_off * 1e3 / a.steps as f64,
            t_on * 1e3 / a.steps as f64,
            t_off / t_on
        );
    }
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}
