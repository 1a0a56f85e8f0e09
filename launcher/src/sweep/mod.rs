//! `weft sweep SWEEP.toml`: expand a sweep file (a base config and grids of axes) into runs,
//! train them — several at a time on this machine, or as a SLURM job array whose tasks each
//! run one through the launcher (`weft launch --slurm`) — and fit what they show
//! ([`report`]): the best learning rate per width, and scaling laws over compute.
//!
//! Runs live in `<sweep>/runs/<name>/`. A run is finished when its `result.json` exists (it
//! trained every step and was scored on held-out samples, or it diverged); `weft sweep` skips
//! finished runs and resumes the others from their newest checkpoint, so the same command
//! continues an interrupted sweep. SIGINT/SIGTERM tell the running trainers to save and stop.

mod fit;
mod plot;
mod report;
mod results;
mod spec;

use anyhow::{bail, Context, Result};
use clap::Args;
use spec::{Run, Sweep};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct SweepArgs {
    /// The sweep file (TOML; see the `weft-launcher` docs of `sweep::spec` or `docs/sweep/`).
    pub sweep: PathBuf,
    /// Runs at once on this machine (default: cores / `threads_per_run`).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// List the runs, their steps and status, and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Start nothing: collect the finished runs' results and write the report.
    #[arg(long)]
    pub report: bool,
    /// Submit the unfinished runs as a SLURM job array (one task per run, each through `weft
    /// launch --slurm`) and a report job that runs after the array ends.
    #[arg(long)]
    pub slurm: bool,
    /// SLURM: nodes per run.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// SLURM: ranks per node (default: the mesh's world size / --nodes).
    #[arg(long)]
    pub procs_per_node: Option<usize>,
    /// SLURM: array tasks running at once (`--array=…%N`).
    #[arg(long)]
    pub max_parallel: Option<usize>,
    #[command(flatten)]
    pub sbatch: crate::slurm::SbatchArgs,
    /// Inside a submitted array: run the task `SLURM_ARRAY_TASK_ID` of this run list.
    #[arg(long, hide = true)]
    pub array_task: Option<PathBuf>,
}

pub fn sweep(a: &SweepArgs) -> Result<()> {
    let s = spec::load(&a.sweep)?;
    std::fs::create_dir_all(s.dir.join("runs")).with_context(|| format!("creating {}", s.dir.display()))?;
    if let Some(list) = &a.array_task {
        return array_task(&s, a, list);
    }
    if a.dry_run {
        for r in &s.runs {
            let cfg = s.config(r)?;
            let status = match results::read(&s, r) {
                Some(res) => res.status,
                None if s.run_dir(&r.name).join("checkpoints").exists() => "interrupted".into(),
                None => "new".into(),
            };
            println!("{:<32} {:>6} steps  {status}", r.name, cfg.training.steps);
        }
        println!("{} runs in {}", s.runs.len(), s.dir.display());
        return Ok(());
    }
    if a.report {
        return report::write(&s);
    }
    if a.slurm {
        return submit(&s, a);
    }
    // One sweep process per sweep directory (each run's trainer locks its own run directory).
    let _lock = crate::runlock::RunLock::acquire(&s.dir, "weft sweep")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = a.jobs.unwrap_or((cores / s.threads_per_run).max(1));
    let (failed, stopped) = run_local(&s, jobs)?;
    if stopped {
        println!(
            "{}: stopped; unfinished runs keep their checkpoints; run the same command to continue",
            s.name
        );
        return Ok(());
    }
    report::write(&s)?;
    if !failed.is_empty() {
        bail!(
            "{} runs failed (see their train.log; the next `weft sweep` retries them): {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// Train every unfinished run, `jobs` at a time, each a `weft train` child in a process group
/// of its own (so a terminal's Ctrl-C reaches only the sweep, which tells each trainer to save
/// and stop). Returns the runs that failed, and whether a signal stopped the sweep.
fn run_local(s: &Sweep, jobs: usize) -> Result<(Vec<String>, bool)> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let todo: VecDeque<&Run> = s.runs.iter().filter(|r| results::read(s, r).is_none()).collect();
    let skipped = s.runs.len() - todo.len();
    tracing::info!(
        sweep = %s.dir.display(),
        "{} runs: {skipped} finished, {} to train, {jobs} at a time",
        s.runs.len(),
        todo.len()
    );
    let bar = indicatif::ProgressBar::new(todo.len() as u64);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "[{elapsed_precise}] {wide_bar} {pos}/{len} runs ETA {eta} {msg}",
            )
            .expect("valid template"),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let queue = Mutex::new(todo);
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Some(run) = queue.lock().expect("queue").pop_front() else {
                    return;
                };
                let t = Instant::now();
                match train_one(s, run, &stop) {
                    Ok(Some(r)) => {
                        let loss = r.eval_loss.map_or("diverged".into(), |l| format!("{l:.4}"));
                        bar.println(format!(
                            "{}: {} in {:.0}s",
                            run.name,
                            loss,
                            t.elapsed().as_secs_f64()
                        ));
                        tracing::info!(run = run.name, loss, seconds = t.elapsed().as_secs(), "finished");
                    }
                    Ok(None) => tracing::info!(run = run.name, "stopped with a checkpoint"),
                    Err(e) => {
                        tracing::error!(run = run.name, "{e:#}");
                        failed.lock().expect("failed").push(run.name.clone());
                        if e.downcast_ref::<Unstartable>().is_some() {
                            // Every other run would fail the same way: start no more.
                            queue.lock().expect("queue").clear();
                        }
                    }
                }
                bar.inc(1);
            });
        }
    });
    bar.finish_and_clear();
    Ok((failed.into_inner().expect("failed"), stop.load(Ordering::SeqCst)))
}

/// A run's trainer could not be started at all (the binary is gone): the sweep stops.
#[derive(Debug)]
struct Unstartable(String);

impl std::fmt::Display for Unstartable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unstartable {}

/// Train `run` to its end (resuming its newest checkpoint), then score it.
fn train_one(s: &Sweep, run: &Run, stop: &AtomicBool) -> Result<Option<results::RunResult>> {
    let dir = s.run_dir(&run.name);
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("train.log"))?;
    let mut cmd = Command::new(crate::weft_exe()?);
    cmd.arg("train")
        .arg(&s.base)
        .args(["--no-progress", "--resume", "auto"]);
    for set in &run.sets {
        cmd.args(["--set", set]);
    }
    let mut child = {
        use std::os::unix::process::CommandExt;
        cmd.env("RAYON_NUM_THREADS", s.threads_per_run.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| Unstartable(format!("starting {}: {e}", cmd.get_program().to_string_lossy())))?
    };
    let mut told = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if stop.load(Ordering::SeqCst) && !told {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            told = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    match results::finish(s, run)? {
        Some(r) => Ok(Some(r)),
        None if status.success() => Ok(None),
        None => bail!(
            "weft train exited with {status}; see {}",
            dir.join("train.log").display()
        ),
    }
}

/// Submit the unfinished runs as a job array, then a report job that waits for it.
fn submit(s: &Sweep, a: &SweepArgs) -> Result<()> {
    let todo: Vec<&Run> = s.runs.iter().filter(|r| results::read(s, r).is_none()).collect();
    if todo.is_empty() {
        println!("every run has finished; writing the report");
        return report::write(s);
    }
    let worlds: Vec<usize> = todo
        .iter()
        .map(|r| s.config(r).map(|c| c.parallel.world()))
        .collect::<Result<_>>()?;
    if worlds.iter().any(|w| *w != worlds[0]) {
        bail!("the runs' meshes differ in size ({worlds:?}); a job array needs one size per task");
    }
    let procs = a.procs_per_node.unwrap_or(worlds[0] / a.nodes.max(1)).max(1);
    let arrays = s.dir.join("arrays");
    std::fs::create_dir_all(&arrays)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let list = arrays.join(format!("{stamp}.json"));
    let names: Vec<&str> = todo.iter().map(|r| r.name.as_str()).collect();
    crate::record::write_atomic(&list, serde_json::to_string_pretty(&names)?.as_bytes())?;
    let me = crate::weft_exe()?.display().to_string();
    let file = s.file.display().to_string();
    let mut task = vec![me.clone(), "sweep".into(), file.clone(), "--array-task".into()];
    task.extend([list.display().to_string(), "--nodes".into(), a.nodes.to_string()]);
    task.extend(["--procs-per-node".into(), procs.to_string()]);
    let range = match a.max_parallel {
        Some(m) => format!("0-{}%{m}", names.len() - 1),
        None => format!("0-{}", names.len() - 1),
    };
    let out = s.dir.join("slurm");
    std::fs::create_dir_all(&out)?;
    let name = format!("{}-sweep", s.name);
    let job = a.sbatch.job(&name, (a.nodes, 0, procs), &out, Some(&range));
    let script = crate::slurm::script(&job, &task)?;
    let path = s.dir.join("sweep.sbatch");
    std::fs::write(&path, &script)?;
    let id = crate::slurm::submit(&path)?;
    // The report: after every task has ended, however it ended.
    let after = [format!("--dependency=afterany:{id}")];
    let rjob = crate::slurm::Job {
        name: &format!("{}-report", s.name),
        nodes: 1,
        procs: 1,
        extra: &after,
        array: None,
        gres: None,
        ..job
    };
    let rscript = crate::slurm::script(&rjob, &[me, "sweep".into(), file, "--report".into()])?;
    let rpath = s.dir.join("report.sbatch");
    std::fs::write(&rpath, &rscript)?;
    let rid = crate::slurm::submit(&rpath)?;
    println!(
        "submitted job array {id} ({} runs, {}) and report job {rid}; results in {}",
        names.len(),
        range,
        s.dir.display()
    );
    Ok(())
}

/// One task of a submitted array: run its run with the launcher's driver inside this
/// allocation (detection, eviction, restarts), then score it.
fn array_task(s: &Sweep, a: &SweepArgs, list: &Path) -> Result<()> {
    let names: Vec<String> = serde_json::from_str(&std::fs::read_to_string(list)?)
        .with_context(|| format!("reading {}", list.display()))?;
    let i: usize = std::env::var("SLURM_ARRAY_TASK_ID")
        .context("--array-task runs inside a SLURM array task (SLURM_ARRAY_TASK_ID)")?
        .parse()?;
    let name = names
        .get(i)
        .with_context(|| format!("task {i} of a {}-run array", names.len()))?;
    let run = s
        .runs
        .iter()
        .find(|r| &r.name == name)
        .with_context(|| format!("run {name} is no longer in {}", s.file.display()))?;
    if results::read(s, run).is_some() {
        println!("{name}: already finished");
        return Ok(());
    }
    let mut cmd = Command::new(crate::weft_exe()?);
    cmd.args(["launch", "--slurm", "--nodes", &a.nodes.to_string()]);
    if let Some(p) = a.procs_per_node {
        cmd.args(["--procs-per-node", &p.to_string()]);
    }
    cmd.arg(&s.base);
    for set in &run.sets {
        cmd.args(["--set", set]);
    }
    let status = cmd.status().context("starting weft launch")?;
    match results::finish(s, run)? {
        Some(r) => {
            println!(
                "{name}: {}",
                r.eval_loss
                    .map_or("diverged".into(), |l| format!("eval loss {l:.4}"))
            );
            Ok(())
        }
        None if status.success() => {
            println!("{name}: stopped with a checkpoint; submit the sweep again to continue");
            Ok(())
        }
        None => bail!("{name}: weft launch exited with {status}"),
    }
}
