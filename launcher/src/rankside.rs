//! A rank's side of `weft launch`: join the driver's store (`WEFT_STORE`, `WEFT_SECRET`,
//! `WEFT_ATTEMPT` in the environment), send a heartbeat after every step, stop when the driver
//! is gone ([`orphan`]), and — a test-only switch — inject the fault `WEFT_FAULT` names.
//!
//! `WEFT_FAULT = kind:rank:step[:attempt]` (attempt 1 when omitted; several, comma-separated,
//! for a soak): at `step` of `attempt`, rank `rank` `crash`es (abort), `exit`s with status 3,
//! `hang`s forever, or from then on is `slow` (sleeps `WEFT_FAULT_SLOW_MS`, default 300 ms, per
//! step: a straggler); `slowgemm:rank:0` makes that rank's preflight matmul 1000× slower (a slow
//! node, caught before any step); `latejoin:rank:0` makes that rank join the store 3 s late.

mod orphan;

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// This process's rank under mpirun/srun (0 for a single process).
pub(crate) fn env_rank() -> usize {
    ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .unwrap_or(0)
}

/// This node's host name.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Crash,
    Exit,
    Hang,
    Slow,
    SlowGemm,
    LateJoin,
}

#[derive(Clone, Copy, Debug)]
struct Fault {
    kind: Kind,
    rank: usize,
    step: u64,
    attempt: u64,
}

fn parse_fault(s: &str) -> Result<Fault> {
    let p: Vec<&str> = s.split(':').collect();
    if p.len() < 3 || p.len() > 4 {
        bail!("WEFT_FAULT={s}: expected kind:rank:step[:attempt]");
    }
    let kind = match p[0] {
        "crash" => Kind::Crash,
        "exit" => Kind::Exit,
        "hang" => Kind::Hang,
        "slow" => Kind::Slow,
        "slowgemm" => Kind::SlowGemm,
        "latejoin" => Kind::LateJoin,
        k => bail!("WEFT_FAULT: unknown fault `{k}` (crash, exit, hang, slow, slowgemm, latejoin)"),
    };
    Ok(Fault {
        kind,
        rank: p[1].parse()?,
        step: p[2].parse()?,
        attempt: p.get(3).map_or(Ok(1), |a| a.parse())?,
    })
}

/// The preflight a rank reports when it joins: free memory, free disk where the checkpoints
/// go, the rate of a short f32 matmul on this node, and its GPUs' health (NVML).
fn health(cfg: &weft_trainer::Config, slow: bool) -> serde_json::Value {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let mem = sysinfo::System::new()
        .map(|mut s| {
            s.refresh_memory();
            gib(s.available_memory())
        })
        .unwrap_or(f64::NAN);
    // The disk holding the checkpoint directory (its nearest existing ancestor).
    let mut path = std::fs::canonicalize(".")
        .unwrap_or_default()
        .join(cfg.checkpoint_dir());
    while !path.exists() && path.pop() {}
    let disk = sysinfo::Disks::new_with_refreshed_list()
        .ok()
        .and_then(|d| {
            d.iter()
                .filter(|x| path.starts_with(x.mount_point()))
                .max_by_key(|x| x.mount_point().as_os_str().len())
                .map(|x| gib(x.available_space()))
        })
        .unwrap_or(f64::NAN);
    let gflops = gemm_gflops() / if slow { 1000.0 } else { 1.0 };
    serde_json::json!({"mem_free_gib": mem, "disk_free_gib": disk, "gemm_gflops": gflops,
                       "gpus": crate::gpu::snapshot()})
}

/// Best of three 256³ f32 matmuls, GFLOP/s.
fn gemm_gflops() -> f64 {
    use weft_kernels::{Backend, CpuBackend, DType, HostVec, MatmulDims, MatmulOps};
    let (be, n) = (CpuBackend::new(), 256);
    let a = HostVec::from(vec![0.5f32; n * n]);
    let Ok(mut c) = be.alloc(DType::F32, n * n) else {
        return f64::NAN;
    };
    (0..3)
        .map(|_| {
            let t = std::time::Instant::now();
            let d = MatmulDims::linear(n, n, n);
            let _ = be.matmul_forward(CpuBackend::view_mut(&mut c), a.view(), a.view(), None, d);
            2.0 * (n * n * n) as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// Messages for the driver, sent by the heartbeat thread (set once the rank has joined).
static OUTBOX: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<Msg>>> =
    std::sync::OnceLock::new();

/// The store's verdicts on the preflight, read by [`comm_check`], and how long to wait for one.
static VERDICTS: std::sync::OnceLock<(std::sync::Mutex<std::sync::mpsc::Receiver<String>>, Duration)> =
    std::sync::OnceLock::new();

enum Msg {
    /// `(rank, step, wall seconds, compute seconds)` after a step.
    Beat(usize, u64, f64, f64),
    /// Anything else, ready to send.
    Line(serde_json::Value),
}

fn send(m: Msg) {
    if let Some(tx) = OUTBOX.get() {
        let _ = tx.lock().map(|t| t.send(m));
    }
}

/// What this process's NCCL watchdog aborted since the last call (`sent`: how many were
/// already reported).
fn nccl_aborts(sent: &mut usize) -> Vec<String> {
    #[cfg(any(feature = "cuda", feature = "cuda-12"))]
    {
        let all = weft_parallel::comm::watchdog::failures();
        let new = all.get(*sent..).unwrap_or_default().to_vec();
        *sent = all.len();
        new
    }
    #[cfg(not(any(feature = "cuda", feature = "cuda-12")))]
    {
        let _ = sent;
        vec![]
    }
}

/// The preflight's all-reduce check, on a rank of a launched run (nothing otherwise): every
/// rank contributes a known vector of 4 MiB on its device, through the communicator its
/// gradients will use (NCCL or the shared-device one on GPUs), the sum is checked exactly, and
/// the best of three timings is reported as bus bandwidth, before the first step.
pub fn comm_check<B: weft_kernels::Ops>(be: &B, comm: &dyn weft_parallel::Comm<B>) -> Result<()> {
    use weft_kernels::HostVec;
    if OUTBOX.get().is_none() {
        return Ok(());
    }
    let (n, len) = (comm.size(), 1usize << 20);
    let value = |r: usize, i: usize| ((r + 1) * (i % 7 + 1)) as f32;
    let mut best = f64::INFINITY;
    let mut ok = true;
    let mut buf = be.alloc(weft_kernels::DType::F32, len)?;
    for round in 0..4 {
        let mine = HostVec::from((0..len).map(|i| value(comm.rank(), i)).collect::<Vec<_>>());
        be.upload(mine.view(), B::view_mut(&mut buf))?;
        be.synchronize()?;
        let t = std::time::Instant::now();
        comm.all_reduce(be, B::view_mut(&mut buf))
            .map_err(|e| anyhow::anyhow!("preflight all-reduce: {e}"))?;
        be.synchronize()?;
        let secs = t.elapsed().as_secs_f64();
        if round > 0 {
            best = best.min(secs);
        }
        let mut got = HostVec::zeros(weft_kernels::DType::F32, len);
        be.download(B::view(&buf), got.view_mut())?;
        let HostVec::F32(got) = &got else {
            unreachable!("an f32 buffer")
        };
        ok &= (0..len).all(|i| got[i] == (0..n).map(|r| value(r, i)).sum::<f32>());
    }
    let bytes = (len * 4) as f64;
    let busbw = if n > 1 {
        2.0 * (n - 1) as f64 / n as f64 * bytes / best / 1e9
    } else {
        f64::INFINITY
    };
    tracing::debug!(rank = comm.rank(), ok, busbw_gbps = busbw, "preflight all-reduce");
    send(Msg::Line(
        serde_json::json!({"comm": {"rank": comm.rank(), "ok": ok,
        "busbw_gbps": if busbw.is_finite() { busbw } else { 1e9 }}}),
    ));
    // No step before the driver has judged every rank's preflight.
    let mut answer = String::new();
    if let Some((verdicts, wait)) = VERDICTS.get() {
        let rx = verdicts
            .lock()
            .map_err(|_| anyhow::anyhow!("store reader poisoned"))?;
        answer = rx
            .recv_timeout(*wait)
            .map_err(|e| anyhow::anyhow!("no preflight verdict from the run's driver ({e})"))?;
    }
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
    if v["go"] != true {
        bail!(
            "the driver stopped this attempt at the preflight: {}",
            v["stop"].as_str().unwrap_or(answer.trim())
        );
    }
    Ok(())
}

/// Join the run's store if this process was started by `weft launch`.
pub fn attach(cfg: &weft_trainer::Config) -> Result<()> {
    let Ok(addr) = std::env::var("WEFT_STORE") else {
        return Ok(());
    };
    let secret = std::env::var("WEFT_SECRET").context("WEFT_STORE is set but WEFT_SECRET is not")?;
    let attempt: u64 = std::env::var("WEFT_ATTEMPT")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let rank = env_rank();
    let sock_addr = addr.parse().with_context(|| format!("WEFT_STORE={addr}"))?;
    let mut sock = TcpStream::connect_timeout(&sock_addr, Duration::from_secs(10))
        .with_context(|| format!("cannot reach the run's store at {addr}"))?;
    // Faults of this attempt (a comma-separated list may give one per attempt: a soak).
    let faults: Vec<Fault> = match std::env::var("WEFT_FAULT") {
        Ok(list) => list
            .split(',')
            .map(parse_fault)
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|f| f.attempt == attempt)
            .collect(),
        Err(_) => vec![],
    };
    let slow_gemm = faults.iter().any(|f| f.kind == Kind::SlowGemm && f.rank == rank);
    if faults.iter().any(|f| f.kind == Kind::LateJoin && f.rank == rank) {
        std::thread::sleep(Duration::from_secs(3));
    }
    crate::gpu::watch_xid();
    let hello = serde_json::json!({
        "join": {"rank": rank, "host": hostname(), "attempt": attempt, "pid": std::process::id(),
                 "health": health(cfg, slow_gemm)},
        "secret": secret,
    });
    writeln!(sock, "{hello}")?;
    let mut answer = String::new();
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut inbox = BufReader::new(sock.try_clone()?);
    inbox
        .read_line(&mut answer)
        .with_context(|| format!("no answer from the run's store at {addr}"))?;
    if !answer.contains("\"ok\"") {
        bail!("the run's store at {addr} refused this rank: {}", answer.trim());
    }
    // The verdict comes once every rank has checked in; from now on the driver's silence for
    // launch.orphan_timeout_s means it is gone.
    let (verdicts, rx) = std::sync::mpsc::channel();
    let wait = Duration::from_secs_f64(cfg.launch.startup_timeout_s);
    let _ = VERDICTS.set((std::sync::Mutex::new(rx), wait));
    let orphan_timeout = Duration::from_secs_f64(cfg.launch.orphan_timeout_s);
    orphan::watch(inbox, verdicts, (rank, orphan_timeout, cfg.run_dir()))?;
    let slow = Duration::from_millis(
        std::env::var("WEFT_FAULT_SLOW_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    );
    let (tx, rx) = std::sync::mpsc::channel::<Msg>();
    let _ = OUTBOX.set(std::sync::Mutex::new(tx));
    std::thread::Builder::new()
        .name("weft-heartbeat".into())
        .spawn(move || {
            let mut gpu_read = std::time::Instant::now();
            let mut aborts_sent = 0;
            loop {
                // A beat after every step, every quarter second what each rank is doing in its
                // collectives (the driver names a hung rank from it), and every 10 s the GPUs.
                let lines = match rx.recv_timeout(Duration::from_millis(250)) {
                    Ok(Msg::Beat(r, step, secs, compute)) => vec![
                        serde_json::json!({"beat": {"rank": r, "step": step, "seconds": secs, "compute": compute}}),
                    ],
                    Ok(Msg::Line(v)) => vec![v],
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        let mut v: Vec<_> = weft_trainer::observe::activity()
                            .into_iter()
                            .map(|(r, done, blocked)| serde_json::json!({"status": {"rank": r, "collectives": done, "blocked": blocked}}))
                            .collect();
                        for why in nccl_aborts(&mut aborts_sent) {
                            v.push(serde_json::json!({"abort": {"rank": rank, "error": why}}));
                        }
                        if gpu_read.elapsed() > Duration::from_secs(10) {
                            gpu_read = std::time::Instant::now();
                            let gpus = crate::gpu::snapshot();
                            if !gpus.is_empty() {
                                v.push(serde_json::json!({"gpu": {"rank": rank, "gpus": gpus}}));
                            }
                        }
                        v
                    }
                    Err(_) => return,
                };
                for line in lines {
                    if writeln!(sock, "{line}").is_err() {
                        return;
                    }
                }
            }
        })?;
    weft_trainer::observe::set_save_hook(Box::new(|r, step, error| {
        send(Msg::Line(
            serde_json::json!({"save": {"rank": r, "step": step, "error": error}}),
        ));
    }));
    // Step time as the interval between a rank's hook calls (so time lost between steps counts),
    // and its compute part: the interval less the time blocked in collectives.
    let last = std::sync::Mutex::new(std::collections::HashMap::<usize, std::time::Instant>::new());
    weft_trainer::observe::set_step_hook(Box::new(move |r, step, secs, comm| {
        let now = std::time::Instant::now();
        let wall = last
            .lock()
            .ok()
            .and_then(|mut m| m.insert(r, now))
            .map_or(secs, |t| (now - t).as_secs_f64());
        send(Msg::Beat(r, step, wall, (wall - comm).max(0.0)));
        for f in faults.iter().filter(|f| f.rank == r && step >= f.step) {
            match f.kind {
                Kind::Crash if step == f.step => std::process::abort(),
                Kind::Exit if step == f.step => std::process::exit(3),
                Kind::Hang if step == f.step => loop {
                    std::thread::sleep(Duration::from_secs(3600));
                },
                Kind::Slow => std::thread::sleep(slow),
                _ => {}
            }
        }
    }));
    Ok(())
}
