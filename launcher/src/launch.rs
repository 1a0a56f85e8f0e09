//! `weft launch`: start the ranks of a run, watch them, and keep the run going through
//! failures.
//!
//! The driver runs the control-plane store ([`crate::store`]), starts an *attempt* (all ranks,
//! as MPI processes under `mpirun`, or one process running the mesh as threads), and watches
//! it: a rank's exit, a rank whose step stops advancing (`launch.hang_timeout_s`), a straggler
//! (`launch.straggler_factor × ` the median compute time over `launch.straggler_window` steps).
//! On a failure it ends the attempt, records what it saw, waits (exponential back-off) and
//! starts the next attempt with `--resume auto` from the newest committed checkpoint. A run
//! that fails twice at the same step without progress, or more than `launch.max_restarts`
//! times, stops. SIGTERM to the driver (preemption) is passed to the ranks, which save and exit;
//! the driver then exits 0 and a new `weft launch` continues the run.
//!
//! The run directory gets `events.jsonl` (one line per attempt start, failure, detection,
//! end) and `launch.json`: wall time, productive training time, the effective training time
//! ratio (ETTR), and per failure the time to detect, time to recover and steps lost.

use crate::record::Events;
use crate::store::{self, Board};
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weft_trainer::Config;

#[derive(Args)]
pub struct LaunchArgs {
    /// The run config (TOML).
    pub config: PathBuf,
    /// Nodes to run on (this machine is one node).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Rank processes per node: the mesh's world size (MPI processes), or 1 to run the mesh
    /// as threads of one process. Default: the world size.
    #[arg(long)]
    pub procs_per_node: Option<usize>,
    /// Override a config value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print the attempt plan (and with --slurm the batch script) and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Run on SLURM: outside an allocation, write and submit a batch script whose job runs
    /// this driver; inside one, start each attempt with `srun` on the healthy nodes.
    #[arg(long)]
    pub slurm: bool,
    /// Extra nodes to allocate, swapped in for evicted ones (SLURM).
    #[arg(long, default_value_t = 0)]
    pub spare_nodes: usize,
    #[command(flatten)]
    pub sbatch: crate::slurm::SbatchArgs,
}

/// Why an attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum End {
    Finished,
    Preempted,
    Failed {
        kind: &'static str,
        rank: Option<usize>,
        host: String,
        detail: String,
        step: u64,
    },
}

fn secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn as_root() -> bool {
    std::env::var("USER").as_deref() == Ok("root") || std::env::var_os("HOME").is_some_and(|h| h == "/root")
}

/// `mpirun` for `n` local processes (allowing root, as CI containers run).
pub fn mpirun(n: usize) -> Command {
    let mut cmd = Command::new("mpirun");
    if as_root() {
        cmd.arg("--allow-run-as-root");
    }
    cmd.args(["--oversubscribe", "-n", &n.to_string()]);
    cmd
}

/// Whether this binary was built with MPI and `mpirun` is on the PATH.
fn mpi_here() -> bool {
    cfg!(feature = "mpi")
        && std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("mpirun").is_file()))
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

pub fn launch(a: &LaunchArgs) -> Result<()> {
    let cfg = Config::load(&a.config, &a.set)?;
    let world = cfg.parallel.world();
    weft_trainer::mesh::check_mesh(&cfg, world)?;
    // The device, before any rank starts: checked on this machine for a local run and for a
    // SLURM job's driver (on the allocation's first node); a submission, perhaps from a login
    // node without GPUs, checks only that this weft can run it.
    if a.slurm && std::env::var_os("SLURM_JOB_ID").is_none() {
        weft_trainer::device::resolve(&cfg)?;
    } else {
        weft_trainer::device::check(&cfg)?;
    }
    // Every rank of a local run shares this machine's memory. On SLURM this may be a login
    // node: there each rank checks its own node when it starts.
    if !a.slurm {
        weft_trainer::memory::check(&cfg, world)?;
    }
    // One MPI process per rank where this binary has MPI and `mpirun` is here (always on
    // SLURM); otherwise the ranks run as threads of one process. On CUDA, a process per rank
    // needs a GPU per rank (NCCL refuses two ranks on one GPU): with fewer GPUs here, the
    // ranks are threads sharing one.
    let on_gpu = weft_trainer::device::resolve(&cfg)? != weft_trainer::device::Device::Cpu;
    let gpus = if on_gpu && !a.slurm {
        crate::gpu::snapshot().len()
    } else {
        0
    };
    let procs = a
        .procs_per_node
        .unwrap_or(if a.slurm || (mpi_here() && (!on_gpu || gpus >= world)) {
            world / a.nodes.max(1)
        } else {
            1
        });
    if on_gpu && !a.slurm && procs > 1 && gpus < procs {
        bail!(
            "--procs-per-node {procs} on CUDA needs a GPU per rank (NCCL refuses two ranks on one \
             GPU), and this machine has {gpus}; use --procs-per-node 1 to run the ranks as threads \
             sharing one GPU"
        );
    }
    if (a.slurm || procs > 1) && !cfg!(feature = "mpi") {
        bail!(
            "{} needs MPI ranks, and this weft was built without the `mpi` feature; rebuild with \
             `--features mpi`{}",
            if a.slurm {
                "--slurm"
            } else {
                "--procs-per-node > 1"
            },
            if a.slurm {
                ""
            } else {
                ", or run the ranks as threads (--procs-per-node 1)"
            }
        );
    }
    if a.slurm {
        if procs * a.nodes != world {
            bail!(
                "--nodes {} × --procs-per-node {procs} = {} ranks, but the mesh has {world}",
                a.nodes,
                procs * a.nodes
            );
        }
        if std::env::var_os("SLURM_JOB_ID").is_none() {
            return crate::slurm::submit_job(a, &cfg, procs);
        }
    } else if a.nodes != 1 {
        bail!("--nodes {}: more than one node needs --slurm", a.nodes);
    } else if procs != world && procs != 1 {
        bail!(
            "--procs-per-node {procs}: the mesh has {world} ranks; use {world} (one MPI process each) or 1 (threads)"
        );
    }
    let mut alloc = if a.slurm {
        Some(crate::slurm::Allocation::from_env(a.nodes, procs)?)
    } else {
        None
    };
    let l = cfg.launch.clone();
    let me = crate::weft_exe()?.display().to_string();
    let mut train_args = vec![
        me.clone(),
        "train".into(),
        a.config.display().to_string(),
        "--no-progress".into(),
    ];
    for s in &a.set {
        train_args.extend(["--set".to_string(), s.clone()]);
    }
    // Every attempt continues the run from its newest good checkpoint, if there is one (a new
    // `weft launch` of a preempted run too), unless the config names one. `fresh` applies to
    // the first attempt of this launch only: a restart, or a requeued SLURM job, continues
    // what that attempt saved instead of starting over again.
    let requeued = crate::runlock::restarted_job();
    let unended = crate::record::unended_attempt(&cfg.run_dir());
    let lost_before = unended.is_some();
    let resume_first = match cfg.checkpoint.resume.as_str() {
        "" => "auto",
        // (Nor after a lost driver: its attempt already started over.)
        "fresh" if requeued || lost_before => "auto",
        r => r,
    };
    let resume_later = if resume_first == "fresh" {
        "auto"
    } else {
        resume_first
    };
    let resume_args = |attempt: u64| {
        let r = if attempt <= 1 { resume_first } else { resume_later };
        ["--resume".to_string(), r.to_string()]
    };
    let rank_cmd =
        |alloc: &Option<crate::slurm::Allocation>, attempt: u64| -> Result<(Command, Vec<String>)> {
            let mut train_args = train_args.clone();
            train_args.extend(resume_args(attempt));
            Ok(match alloc {
                Some(al) => {
                    let nodes = al.placement()?;
                    let mut args = train_args.clone();
                    args.extend(shrink_sets(&cfg, a.nodes, al.need)?);
                    (al.srun(&nodes, &args), nodes)
                }
                None if procs > 1 => {
                    let mut c = mpirun(procs);
                    c.args(&train_args);
                    (c, vec!["localhost".into()])
                }
                None => {
                    let mut c = Command::new(&train_args[0]);
                    c.args(&train_args[1..]);
                    (c, vec!["localhost".into()])
                }
            })
        };
    if a.dry_run {
        println!(
            "run {} — {} ranks ({})",
            cfg.job.name,
            world,
            if procs > 1 { "MPI processes" } else { "threads" }
        );
        println!("the first attempt runs: {:?}", rank_cmd(&alloc, 1)?.0);
        println!(
            "hang after {} s without progress; straggler at {}× the median over {} steps; at most {} restarts",
            l.hang_timeout_s, l.straggler_factor, l.straggler_window, l.max_restarts
        );
        return Ok(());
    }
    let dir = cfg.run_dir();
    // One owner per run directory, before anything in it is written.
    let mut lock = crate::runlock::RunLock::acquire(&dir, "weft launch")?;
    let mut events = Events::open(&dir)?;
    let lost = crate::record::driver_lost(&dir, unended, &mut events);
    let secret = secret();
    let board = Arc::new(Mutex::new(Board::default()));
    let addr = match &alloc {
        // Ranks on other nodes reach the store at this node's address, the only one it
        // listens on.
        Some(al) => {
            let host = crate::slurm::store_host();
            let a = store::start(
                secret.clone(),
                board.clone(),
                (&host, crate::slurm::store_port(&al.job)),
            )?;
            format!("{host}:{}", a.port())
        }
        None => store::start(secret.clone(), board.clone(), ("127.0.0.1", 0))?.to_string(),
    };
    // On SLURM, sentinels on the other nodes requeue the job if this node is lost.
    let mut sentinels = match &alloc {
        Some(al) => al.start_sentinels(&me, l.orphan_timeout_s, &dir.join("events.jsonl"))?,
        None => None,
    };
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, term.clone())?;
    }
    // SIGUSR1 is what the batch job gets before its time limit (`--signal=B:USR1@120`): save,
    // stop, and on SLURM requeue the job, which then resumes by itself.
    let requeue = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, requeue.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, term.clone())?;
    tracing::info!(run = %dir.display(), ranks = world, store = %addr, "launching");
    let bar = indicatif::ProgressBar::new(cfg.training.steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ETA {eta} {msg}",
        )
        .expect("valid template"),
    );
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let started = Instant::now();
    let mut last_fail: Option<(u64, &'static str)> = None;
    // (detected at, last step reached, step resumed from)
    let mut pending_recovery: Option<(Instant, u64, u64)> = None;
    // A driver lost before this one is this run's first failure, recovered when this one's
    // first attempt takes a step.
    let mut failures: Vec<serde_json::Value> = vec![];
    if let Some((ev, reached)) = lost {
        failures.push(ev);
        pending_recovery = Some((Instant::now(), reached, 0));
    }
    let mut attempt = 0u64;
    let outcome = loop {
        attempt += 1;
        {
            let mut b = board.lock().expect("board");
            b.attempt = attempt;
            b.ranks.clear();
            b.go = None;
        }
        if let Some(al) = alloc.as_mut() {
            if l.allow_shrink && al.healthy() < al.need && al.healthy() > 0 {
                events.log(json!({"event": "shrink", "nodes_from": al.need, "nodes_to": al.healthy()}));
                tracing::warn!("no spare node left: continuing on {} nodes", al.healthy());
                al.need = al.healthy();
            }
        }
        let (mut cmd, nodes) = match rank_cmd(&alloc, attempt) {
            Ok(c) => c,
            Err(e) => {
                events.log(json!({"event": "give_up", "reason": e.to_string()}));
                tracing::error!("{e}");
                break "failed";
            }
        };
        // Where each rank runs, by the launcher's own record (what ranks say is not trusted).
        board.lock().expect("board").placement = store::Placement {
            nodes: nodes.clone(),
            per_node: alloc.as_ref().map_or(world, |al| al.procs),
        };
        cmd.env("WEFT_STORE", &addr)
            .env("WEFT_SECRET", &secret)
            .env("WEFT_ATTEMPT", attempt.to_string());
        // Its own process group, so that ending the attempt ends every rank.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        if let Some(p) = pending_recovery.as_mut() {
            // This attempt resumes from the newest committed checkpoint.
            p.2 = latest_step(&cfg.checkpoint_dir());
        }
        let child = match cmd.spawn().context("starting the ranks") {
            Ok(c) => c,
            Err(e) => {
                events.log(json!({"event": "give_up", "reason": format!("{e:#}")}));
                tracing::error!("{e:#}");
                break "failed";
            }
        };
        // A relaunch after this driver is killed refuses while these ranks still run.
        if let Err(e) = lock.set_ranks(Some(child.id())) {
            tracing::warn!("{e:#}");
        }
        events.log(
            json!({"event": "attempt", "attempt": attempt, "ranks": world, "nodes": nodes,
            "host": crate::rankside::hostname(), "pid": child.id()}),
        );
        bar.set_message(format!("attempt {attempt}, {world} ranks"));
        let steps = cfg.training.steps;
        let end = crate::attempt::watch(
            (child, alloc.as_ref()),
            &board,
            (
                &l,
                alloc.as_ref().map_or(world, |al| al.need * procs),
                steps,
                &dir.join("model.safetensors"),
            ),
            &term,
            &bar,
            (&mut pending_recovery, &mut failures),
            &mut events,
        )?;
        match end {
            End::Finished => break "finished",
            End::Preempted => break "preempted",
            End::Failed {
                kind,
                rank,
                host,
                detail,
                step,
            } => {
                let detected = Instant::now();
                let last_beat = board
                    .lock()
                    .expect("board")
                    .ranks
                    .values()
                    .map(|r| r.progress)
                    .max()
                    .unwrap_or(detected);
                let detect_s = (detected - last_beat).as_secs_f64();
                tracing::warn!(attempt, kind, ?rank, host, step, "{detail}");
                let ev = json!({"event": "failure", "attempt": attempt, "kind": kind, "rank": rank,
                    "host": host, "step": step, "detail": detail, "time_to_detect_s": detect_s});
                events.log(ev.clone());
                failures.push(ev);
                let suspects = failures.iter().map(|f| format!("{f}\n")).collect::<String>();
                if let Err(e) = crate::record::write_atomic(&dir.join("suspects.jsonl"), suspects.as_bytes())
                {
                    tracing::warn!("{e:#}");
                }
                // Steps lost: the furthest any rank got, less the checkpoint the next attempt
                // resumes from (read when it starts).
                let reached = board
                    .lock()
                    .expect("board")
                    .ranks
                    .values()
                    .map(|r| r.step)
                    .max()
                    .unwrap_or(step);
                pending_recovery = Some((detected, reached, 0));
                if let Some(al) = alloc.as_mut() {
                    // The node of the failing rank leaves the run (a spare takes its place).
                    let why = format!(
                        "{kind} of rank {} at step {step}",
                        rank.map_or("?".into(), |r| r.to_string())
                    );
                    if al.nodes.contains(&host) {
                        let drained = al.evict(&host, &why);
                        events
                            .log(json!({"event": "evict", "host": host, "reason": why, "drained": drained}));
                        tracing::warn!(host, drained, "evicted {host}: {why}");
                    }
                }
                if last_fail == Some((step, kind)) && step == 0 {
                    break "failed";
                }
                if failures.len() > l.max_restarts {
                    events.log(json!({"event": "give_up", "reason": "launch.max_restarts reached"}));
                    break "failed";
                }
                if last_fail == Some((step, kind)) {
                    events.log(
                        json!({"event": "give_up", "reason": "the same failure twice at the same step"}),
                    );
                    break "failed";
                }
                last_fail = Some((step, kind));
                std::thread::sleep(Duration::from_secs_f64(
                    l.backoff_s * 2f64.powi(failures.len() as i32 - 1),
                ));
            }
        }
    };
    bar.finish_and_clear();
    if let Some(mut s) = sentinels.take() {
        // srun passes SIGTERM on to the sentinels and ends their step.
        let _ = Command::new("kill").args(["-TERM", &s.id().to_string()]).status();
        // Not forever: the record's end comes next.
        for _ in 0..50 {
            if s.try_wait().is_ok_and(|st| st.is_some()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = s.kill();
        let _ = s.wait();
    }
    let outcome = match (&alloc, outcome) {
        (Some(al), "preempted") if requeue.load(Ordering::SeqCst) => {
            events.log(json!({"event": "requeue", "job": al.job}));
            "requeued"
        }
        (_, o) => o,
    };
    let wall = started.elapsed().as_secs_f64();
    // `+ 0.0`: an empty float sum is -0.0.
    let productive: f64 = board.lock().expect("board").step_times.values().sum::<f64>() + 0.0;
    let ettr = if wall > 0.0 { productive / wall } else { 0.0 };
    let summary = json!({
        "outcome": outcome,
        "attempts": attempt,
        "wall_s": wall,
        "productive_s": productive,
        "ettr": ettr,
        "failures": failures,
        "save_failures": board.lock().expect("board").save_failures.iter()
            .map(|f| json!({"rank": f.rank, "host": f.host, "step": f.step, "error": f.error}))
            .collect::<Vec<_>>(),
    });
    events.finish(
        &dir,
        &summary,
        json!({"event": "end", "outcome": outcome, "ettr": ettr}),
    );
    println!(
        "{}: {outcome} after {attempt} attempt(s), {wall:.1} s; productive training {productive:.1} s, ETTR {:.1}%",
        cfg.job.name,
        100.0 * ettr
    );
    for f in &failures {
        println!("  {}", crate::record::failure_line(f));
    }
    if outcome == "requeued" {
        if let Some(al) = &alloc {
            // The job goes back to the queue; its next start resumes from the checkpoint.
            let st = Command::new("scontrol").args(["requeue", &al.job]).status()?;
            if !st.success() {
                bail!(
                    "scontrol requeue {} failed ({st}); submit again to continue",
                    al.job
                );
            }
            // SLURM now ends this incarnation of the job; exiting first would race with the
            // requeue and could be recorded as the job's end. Wait to be stopped.
            let _ = std::io::stdout().flush();
            for _ in 0..600 {
                std::thread::sleep(Duration::from_millis(100));
            }
            tracing::warn!("still running 60 s after the requeue of job {}", al.job);
        }
    }
    match outcome {
        "finished" | "preempted" | "requeued" => Ok(()),
        _ => bail!("the run failed; see {}", dir.join("events.jsonl").display()),
    }
}

/// The config changes for running on `now` of the `planned` nodes: `dp_shard` shrinks with the
/// world and `grad_accum` grows so that the global batch is unchanged.
fn shrink_sets(cfg: &Config, planned: usize, now: usize) -> Result<Vec<String>> {
    if now == planned {
        return Ok(vec![]);
    }
    let p = &cfg.parallel;
    let others = p.dp_replicate * p.cp * p.tp;
    let world = p.world() * now / planned;
    let shard = world / others;
    let (dp, dp_now) = (p.dp(), p.dp_replicate * shard);
    if shard == 0 || !world.is_multiple_of(others) || !(cfg.training.grad_accum * dp).is_multiple_of(dp_now) {
        bail!(
            "cannot shrink the mesh to {now} of {planned} nodes: dp_replicate × cp × tp = {others} \
             and the global batch must divide over the remaining ranks"
        );
    }
    let accum = cfg.training.grad_accum * dp / dp_now;
    Ok(vec![
        "--set".into(),
        format!("parallel.dp_shard={shard}"),
        "--set".into(),
        format!("training.grad_accum={accum}"),
    ])
}

/// The step of the checkpoint `latest` names under `dir` (0 if none).
fn latest_step(dir: &std::path::Path) -> u64 {
    std::fs::read_to_string(dir.join("latest"))
        .ok()
        .and_then(|s| s.trim().strip_prefix("step_")?.parse().ok())
        .unwrap_or(0)
}
