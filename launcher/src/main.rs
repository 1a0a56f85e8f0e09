//! `weft`: the command line of the weft trainer.

mod attempt;
mod bench;
mod bench_ckpt;
mod bench_fsdp;
mod bench_mfu;
mod bench_step;
mod ckpt;
mod commands;
mod coord;
mod dist;
mod gpu;
mod health;
mod launch;
mod rankside;
mod record;
mod runlock;
mod selftest;
mod sentinel;
mod slurm;
mod store;
mod sweep;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "Distributed training of video diffusion transformers and language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure the compute engine on this machine.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Show the compute devices weft can use here.
    Info,
    /// Start the ranks of a run, watch them, and restart from the latest checkpoint when one
    /// fails.
    Launch(launch::LaunchArgs),
    /// Train a model: in this process, on threads (one per rank of the mesh), or as one MPI
    /// rank when started by `mpirun`/`srun`.
    Train(commands::TrainArgs),
    /// Generate from trained weights: clips (GIF + PNG) for a DiT, text for a GPT.
    Sample(commands::SampleArgs),
    /// Validate a config and print the model's size.
    Config(commands::ConfigArgs),
    /// Prepare data.
    Data {
        #[command(subcommand)]
        what: commands::DataWhat,
    },
    /// Train each width a few steps under SP and muP and check that muP's activations stay
    /// flat in width (CSV and plots).
    CoordCheck(coord::CoordArgs),
    /// Run a grid of runs from a sweep file (locally or as a SLURM job array), then fit the
    /// best learning rate per width and scaling laws, and write a report.
    Sweep(sweep::SweepArgs),
    /// Internal: watch the node of a SLURM job's driver and requeue the job if it is lost.
    #[command(hide = true)]
    Sentinel(sentinel::SentinelArgs),
    /// Check every op of a backend against the CPU reference, then measure GEMM and attention
    /// throughput (table, and JSON with `--out`).
    Selftest(selftest::SelftestArgs),
    /// Inspect, verify or export checkpoints.
    Ckpt {
        #[command(subcommand)]
        what: ckpt::CkptWhat,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Matmul GFLOP/s against the machine's measured sgemm peak, and attention tokens/s.
    Kernels(bench::KernelBenchArgs),
    /// One training step of the tiny DiT and GPT, in weft and in PyTorch (same run).
    Step(bench_step::StepBenchArgs),
    /// A config's training step on its device: steps/s, tokens/s, TFLOP/s and MFU against the
    /// device's measured GEMM peak, next to the same model in PyTorch (same run).
    Mfu(bench_mfu::MfuBenchArgs),
    /// How much FSDP all-gather time is hidden behind compute, on MPI ranks.
    Fsdp(bench_fsdp::FsdpBenchArgs),
    /// Training stall per checkpoint (background vs synchronous save) and write speed vs the
    /// disk's own.
    Ckpt(bench_ckpt::CkptBenchArgs),
}

/// This binary, to start ranks and runs with. A driver or a sweep outlives a rebuild: when
/// the file was replaced while it ran (Linux then reports the old path with " (deleted)"),
/// the new file at that path is the one to start.
pub(crate) fn weft_exe() -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let text = exe.display().to_string();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => std::path::PathBuf::from(path),
        None => exe,
    })
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: logs redirected to files stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The error and its causes, without a stack trace: `RUST_BACKTRACE=1`, set on many
            // machines, is for panics, not for a user's mistake. `WEFT_BACKTRACE=1` adds it.
            eprintln!("error: {e:#}");
            if std::env::var_os("WEFT_BACKTRACE").is_some_and(|v| v == "1") {
                eprintln!("{}", e.backtrace());
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Bench {
            what: BenchWhat::Kernels(args),
        } => bench::kernels(&args),
        Command::Bench {
            what: BenchWhat::Step(args),
        } => bench_step::step(&args),
        Command::Bench {
            what: BenchWhat::Mfu(args),
        } => bench_mfu::mfu(&args),
        Command::Bench {
            what: BenchWhat::Fsdp(args),
        } => bench_fsdp::fsdp(&args),
        Command::Bench {
            what: BenchWhat::Ckpt(args),
        } => bench_ckpt::ckpt(&args),
        Command::Launch(a) => launch::launch(&a),
        Command::Train(a) => commands::train(&a),
        Command::Sample(a) => commands::sample(&a),
        Command::Config(a) => commands::config(&a),
        Command::Data { what } => commands::data(&what),
        Command::Ckpt { what } => ckpt::run(&what),
        Command::CoordCheck(a) => coord::coord_check(&a),
        Command::Sweep(a) => sweep::sweep(&a),
        Command::Sentinel(a) => sentinel::sentinel(&a),
        Command::Selftest(a) => selftest::selftest(&a),
        Command::Info => {
            bench::info();
            Ok(())
        }
    }
}
