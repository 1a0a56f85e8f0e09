//! `weft selftest cpu|gpu`: every op of every family on a backend against the CPU reference
//! (the largest error per op and dtype), every collective of the communicators its ranks
//! train through, then GEMM and attention throughput — the check a machine gets before it
//! trains, from the release binary alone.

mod accuracy;
mod attention_speed;
mod cases;
mod comm;
mod compare;
mod ctx;
mod gemm;
mod report;
mod sizes;
mod timing;

use anyhow::{bail, Context, Result};
use report::{Report, SCHEMA};
use sizes::Sizes;
use std::path::PathBuf;
use std::time::Duration;
use timing::Deadline;
use weft_kernels::cuda::CudaBackend;
use weft_kernels::{Backend, CpuBackend, Ops};

/// The backend under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The CPU backend, against its own f64 runs (what CI runs: it tests the harness).
    Cpu,
    /// The CUDA backend on one device, against the CPU backend.
    Gpu,
}

#[derive(clap::Args)]
pub struct SelftestArgs {
    /// The backend to test.
    #[arg(value_enum)]
    pub target: Target,
    /// Small shapes: the whole suite in seconds (CI).
    #[arg(long)]
    pub quick: bool,
    /// Write the result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Start no new case after this many seconds; what did not run is listed as skipped
    /// (default: 60 with --quick, 360 without).
    #[arg(long, value_name = "SECONDS")]
    pub max_seconds: Option<f64>,
    /// Only the accuracy suite (no throughput).
    #[arg(long)]
    pub accuracy_only: bool,
    /// CUDA device ordinal (gpu).
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Add an error to one op's outputs on the backend under test (shows that the comparison
    /// catches it).
    #[arg(long, value_name = "OP", hide = true)]
    pub inject_fault: Option<String>,
}

/// Runs the self-test, prints its table, writes its JSON; fails when an op is out of limits.
pub fn selftest(a: &SelftestArgs) -> Result<()> {
    if let Some(op) = &a.inject_fault {
        if !cases::ALL_OPS.contains(&op.as_str()) {
            bail!(
                "--inject-fault {op}: not an op; one of {}",
                cases::ALL_OPS.join(", ")
            );
        }
    }
    if let Some(s) = a.max_seconds {
        if !(s.is_finite() && s > 0.0) {
            bail!("--max-seconds {s}: must be a positive number of seconds");
        }
    }
    let report = match a.target {
        Target::Cpu => {
            let comm = comm::shared_device(|| Ok(CpuBackend::new()));
            run_suite(&CpuBackend::new(), a, comm)?
        }
        Target::Gpu => gpu(a)?,
    };
    print!("{}", report.table());
    if let Some(path) = &a.out {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    let failed: Vec<String> = report
        .accuracy
        .iter()
        .filter(|r| !r.pass)
        .map(|r| format!("{} [{}]", r.op, r.dtype))
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} ops out of limits: {}",
            failed.len(),
            report.accuracy.len(),
            failed.join(", ")
        );
    }
    let broken: Vec<String> = report
        .comm
        .iter()
        .filter(|r| !r.pass)
        .map(|r| format!("{} {} [{}]", r.transport, r.collective, r.dtype))
        .collect();
    if !broken.is_empty() {
        bail!("{} collectives failed: {}", broken.len(), broken.join(", "));
    }
    if !report.ok {
        bail!("the accuracy suite did not run to the end within the time limit (see `skipped`)");
    }
    Ok(())
}

/// The whole suite on `be`: accuracy against the CPU, the communicators' rows `comm` (run by
/// the caller, which knows which communicators the device has), then GEMM and attention
/// throughput.
pub fn run_suite<B: Ops>(be: &B, a: &SelftestArgs, comm: Vec<comm::CommRow>) -> Result<Report> {
    let sizes = if a.quick { Sizes::quick() } else { Sizes::full() };
    let limit = a.max_seconds.unwrap_or(if a.quick { 60.0 } else { 360.0 });
    let deadline = Deadline::new(Duration::from_secs_f64(limit));
    let mut skipped = Vec::new();
    let accuracy = accuracy::run(be, &sizes, a.inject_fault.as_deref(), &deadline, &mut skipped)?;
    let (gemm, attention) = if a.accuracy_only {
        (None, Vec::new())
    } else {
        (
            Some(gemm::run(be, &sizes, &deadline, &mut skipped)?),
            attention_speed::run(be, &sizes, &deadline, &mut skipped)?,
        )
    };
    let all_ran = !skipped.iter().any(|s: &String| s.starts_with("accuracy"));
    let ok = all_ran && !accuracy.is_empty() && accuracy.iter().all(|r| r.pass);
    Ok(Report {
        schema: SCHEMA,
        weft_version: env!("CARGO_PKG_VERSION"),
        target: match a.target {
            Target::Cpu => "cpu",
            Target::Gpu => "gpu",
        },
        device: be.name(),
        reference: CpuBackend::new().name(),
        sizes,
        ok,
        accuracy,
        comm,
        gemm,
        attention,
        skipped,
        seconds: deadline.elapsed(),
    })
}

/// The CUDA backend on `--device`. Opening it fails with the reason in builds without CUDA
/// support and on machines without a driver or the CUDA libraries.
fn gpu(a: &SelftestArgs) -> Result<Report> {
    let be = CudaBackend::new(a.device).with_context(|| format!("opening CUDA device {}", a.device))?;
    gpu_suite(&be, a)
}

/// The suite on the CUDA backend.
///
/// The suite on the CUDA device.
#[cfg(any(feature = "cuda", feature = "cuda-12"))]
fn gpu_suite(be: &CudaBackend, a: &SelftestArgs) -> Result<Report> {
    let mut comm = comm::shared_device(|| Ok(CudaBackend::new(a.device)?));
    comm.extend(comm::nccl(a.device));
    run_suite(be, a, comm)
}

/// Without CUDA support no [`CudaBackend`] exists ([`CudaBackend::new`] has already failed).
#[cfg(not(any(feature = "cuda", feature = "cuda-12")))]
fn gpu_suite(be: &CudaBackend, _a: &SelftestArgs) -> Result<Report> {
    bail!("{}: this binary was built without CUDA support", be.name())
}
