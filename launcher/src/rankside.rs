//! A rank's side of `weft launch`: join the driver's store (`WEFT_STORE`, `WEFT_SECRET`,
//! `WEFT_ATTEMPT` in the environment), send a heartbeat after every step, and — a test-only
//! switch — inject the fault `WEFT_FAULT` names.
//!
//! `WEFT_FAULT = kind:rank:step[:attempt]` (attempt 1 when omitted; several, comma-separated,
//! for a soak): at `step` of `attempt`, rank `rank` `crash`es (abort), `exit`s with status 3,
//! `hang`s forever, or from then on is `slow` (sleeps `WEFT_FAULT_SLOW_MS`, default 300 ms, per
//! step: a straggler).

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// This process's rank under mpirun/srun (0 for a single process).
fn env_rank() -> usize {
    ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .unwrap_or(0)
}

fn hostname() -> String {
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
        k => bail!("WEFT_FAULT: unknown fault `{k}` (crash, exit, hang, slow)"),
    };
    Ok(Fault {
        kind,
        rank: p[1].parse()?,
        step: p[2].parse()?,
        attempt: p.get(3).map_or(Ok(1), |a| a.parse())?,
    })
}

/// The preflight a rank reports when it joins: free memory, free disk where the checkpoints
/// go, and the rate of a short f32 matmul on this node.
fn health(cfg: &weft_trainer::Config) -> serde_json::Value {
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
    serde_json::json!({"mem_free_gib": mem, "disk_free_gib": disk, "gemm_gflops": gemm_gflops()})
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
    let hello = serde_json::json!({
        "join": {"rank": rank, "host": hostname(), "attempt": attempt, "pid": std::process::id(),
                 "health": health(cfg)},
        "secret": secret,
    });
    writeln!(sock, "{hello}")?;
    let mut answer = String::new();
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    BufReader::new(sock.try_clone()?)
        .read_line(&mut answer)
        .with_context(|| format!("no answer from the run's store at {addr}"))?;
    if !answer.contains("\"ok\"") {
        bail!("the run's store at {addr} refused this rank: {}", answer.trim());
    }
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
    let slow = Duration::from_millis(
        std::env::var("WEFT_FAULT_SLOW_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    );
    let (tx, rx) = std::sync::mpsc::channel::<(usize, u64, f64, f64)>();
    std::thread::Builder::new()
        .name("weft-heartbeat".into())
        .spawn(move || loop {
            // A beat after every step, and every quarter second what each rank is doing in its
            // collectives (the driver names a hung rank from it).
            match rx.recv_timeout(Duration::from_millis(250)) {
                Ok((r, step, secs, compute)) => {
                    let beat = serde_json::json!({"beat": {"rank": r, "step": step, "seconds": secs, "compute": compute}});
                    if writeln!(sock, "{beat}").is_err() {
                        break;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    for (r, done, blocked) in weft_trainer::observe::activity() {
                        let s = serde_json::json!({"status": {"rank": r, "collectives": done, "blocked": blocked}});
                        if writeln!(sock, "{s}").is_err() {
                            return;
                        }
                    }
                }
                Err(_) => break,
            }
        })?;
    let tx = std::sync::Mutex::new(tx);
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
        let _ = tx.lock().map(|t| t.send((r, step, wall, (wall - comm).max(0.0))));
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
