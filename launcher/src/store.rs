//! The run's control plane: a small TCP store the driver runs and every rank joins.
//!
//! Messages are JSON lines. A client's first line must be
//! `{"join": {"rank": R, "host": H, "attempt": A}, "secret": S}` with the run's secret (made per
//! run, handed to ranks through their environment, never logged); anything else is answered
//! with an error and the connection closed. After the driver's `{"ok": true}`, the rank sends
//! `{"beat": {"rank": R, "step": N, "seconds": T, "compute": C}}` after every step, a `status`
//! (collectives completed, blocked in one) every quarter second, its all-reduce check
//! (`comm`) once before the first step, a `save` when a checkpoint save failed, and on GPU
//! nodes a `gpu` health reading now and then. After its all-reduce check a rank waits for the
//! driver's verdict on the whole preflight: `{"go": true}` or `{"stop": why}`. A malformed line or one longer than 64 KiB ends
//! that connection only; the driver keeps running.

use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const MAX_LINE: u64 = 64 * 1024;

/// What the driver knows of one rank in the current attempt.
#[derive(Clone, Debug)]
pub struct RankState {
    pub host: String,
    pub step: u64,
    /// When `step` last advanced (or the rank joined).
    pub progress: Instant,
    /// Collectives completed, and whether it is blocked in one (its last status).
    pub collectives: u64,
    pub blocked: bool,
    /// Its preflight, when it joined.
    pub health: Option<Health>,
    /// When its connection closed (the process ended).
    pub gone: Option<Instant>,
    /// Recent compute times per step (step time less time blocked in collectives), newest
    /// last.
    pub times: Vec<f64>,
    /// Its all-reduce check before the first step.
    pub comm: Option<CommCheck>,
    /// Its node's GPUs, last reading (none without NVML).
    pub gpus: Vec<GpuHealth>,
}

impl RankState {
    fn new(host: String, step: u64, health: Option<Health>) -> Self {
        RankState {
            host,
            step,
            progress: Instant::now(),
            collectives: 0,
            blocked: false,
            gpus: health.as_ref().map(|h| h.gpus.clone()).unwrap_or_default(),
            health,
            gone: None,
            times: vec![],
            comm: None,
        }
    }
}

/// Shared between the store's tasks and the driver.
#[derive(Debug, Default)]
pub struct Board {
    pub attempt: u64,
    pub ranks: HashMap<usize, RankState>,
    /// Step time of every step seen (rank 0), for productive-time accounting.
    pub step_times: HashMap<u64, f64>,
    /// Process ids of this attempt's ranks (to end them on this machine).
    pub pids: Vec<u32>,
    /// Clients turned away (bad secret, malformed messages).
    pub rejected: usize,
    /// Checkpoint saves that failed, in the order reported (the driver logs and drains them).
    pub save_failures: Vec<SaveFailure>,
    /// How many of `save_failures` the driver has logged.
    pub save_logged: usize,
    /// The driver's preflight verdict for this attempt: ranks wait for it after their
    /// all-reduce check, so no step runs on a refused attempt.
    pub go: Option<Result<(), String>>,
}

/// A checkpoint save a rank reported as failed (the run goes on; see `weft_trainer::ckpt`).
#[derive(Clone, Debug, Deserialize)]
pub struct SaveFailure {
    pub rank: usize,
    pub step: u64,
    pub error: String,
    #[serde(skip)]
    pub host: String,
}

/// A rank's preflight (see `rankside`).
#[derive(Clone, Debug, Deserialize)]
pub struct Health {
    pub mem_free_gib: f64,
    pub disk_free_gib: f64,
    pub gemm_gflops: f64,
    /// The node's GPUs (empty where NVML is absent).
    #[serde(default)]
    pub gpus: Vec<GpuHealth>,
}

/// One GPU's health as NVML reports it (see `crate::gpu`).
#[derive(Clone, Debug, Default, serde::Serialize, Deserialize, PartialEq)]
pub struct GpuHealth {
    pub index: u32,
    pub name: String,
    pub temp_c: Option<u32>,
    /// Uncorrected ECC errors since the driver loaded (volatile counter).
    pub ecc_uncorrected: Option<u64>,
    /// Pages waiting to be retired (a reset is due).
    pub retirement_pending: Option<bool>,
    /// Hardware clock throttling in effect (thermal or power brake), by NVML's names.
    pub throttle: Vec<String>,
    /// Critical Xid errors seen since the rank started.
    pub xids: Vec<u64>,
}

/// A rank's all-reduce check before its first step: a known sum, and the bus bandwidth.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
pub struct CommCheck {
    pub rank: usize,
    /// The reduced values were exactly the expected sum.
    pub ok: bool,
    /// Bus bandwidth `2·(n−1)/n · bytes / time` (as nccl-tests reports it), GB/s.
    pub busbw_gbps: f64,
}

#[derive(Deserialize)]
struct GpuMsg {
    rank: usize,
    gpus: Vec<GpuHealth>,
}

#[derive(Deserialize)]
struct Join {
    rank: usize,
    host: String,
    attempt: u64,
    /// The rank's process id on its host.
    pid: Option<u32>,
    health: Option<Health>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Hello {
    join: Join,
    secret: String,
}

#[derive(Deserialize)]
struct Beat {
    rank: usize,
    step: u64,
    seconds: f64,
    compute: f64,
}

#[derive(Deserialize)]
struct Status {
    rank: usize,
    collectives: u64,
    blocked: bool,
}

/// What the store sends a joined rank.
enum Answer {
    /// The preflight's verdict, once the driver has it: `{"go": true}` or `{"stop": why}`.
    Verdict,
    Error(&'static str),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum Msg {
    Beat(Beat),
    Status(Status),
    Comm(CommCheck),
    Save(SaveFailure),
    Gpu(GpuMsg),
}

/// Equal without an early exit on the first differing byte.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Start the store on `bind` (port 0: any free port) in a background runtime.
pub fn start(secret: String, board: Arc<Mutex<Board>>, bind: (&str, u16)) -> anyhow::Result<SocketAddr> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // The preferred port may still be held (a previous incarnation of the job): any port will do.
    let listener = match rt.block_on(TcpListener::bind(bind)) {
        Ok(l) => l,
        Err(_) if bind.1 != 0 => rt.block_on(TcpListener::bind((bind.0, 0)))?,
        Err(e) => return Err(e.into()),
    };
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("weft-store".into())
        .spawn(move || {
            rt.block_on(async move {
                loop {
                    let Ok((sock, _)) = listener.accept().await else {
                        continue;
                    };
                    let (secret, board) = (secret.clone(), board.clone());
                    tokio::spawn(async move {
                        let _ = serve(sock, &secret, board).await;
                    });
                }
            })
        })?;
    Ok(addr)
}

async fn serve(sock: tokio::net::TcpStream, secret: &str, board: Arc<Mutex<Board>>) -> std::io::Result<()> {
    let (rd, mut wr) = sock.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    let reject = |why: &str| {
        board.lock().expect("board").rejected += 1;
        tracing::warn!("store: turned a client away: {why}");
    };
    let mut first = (&mut rd).take(MAX_LINE);
    let read = first.read_line(&mut line);
    let hello: Hello = match tokio::time::timeout(std::time::Duration::from_secs(10), read).await {
        Ok(Ok(n)) if n > 0 => match serde_json::from_str(&line) {
            Ok(h) => h,
            Err(_) => {
                reject("malformed join");
                return wr.write_all(b"{\"error\":\"malformed join\"}\n").await;
            }
        },
        Ok(Err(_)) => {
            reject("malformed join (not UTF-8 text)");
            return wr.write_all(b"{\"error\":\"malformed join\"}\n").await;
        }
        _ => {
            reject("no join message");
            return Ok(());
        }
    };
    if !same(&hello.secret, secret) {
        reject("wrong secret");
        return wr.write_all(b"{\"error\":\"wrong secret\"}\n").await;
    }
    let current = {
        let mut b = board.lock().expect("board");
        let current = hello.join.attempt == b.attempt;
        if current {
            b.pids.extend(hello.join.pid);
            b.ranks.insert(
                hello.join.rank,
                RankState::new(hello.join.host.clone(), 0, hello.join.health.clone()),
            );
        }
        current
    };
    if !current {
        reject("a rank of another attempt");
        return wr.write_all(b"{\"error\":\"stale attempt\"}\n").await;
    }
    wr.write_all(b"{\"ok\":true}\n").await?;
    // Answers go out from their own task: the preflight's verdict waits for every rank's check
    // while this task goes on reading (ranks that are threads of one process share a
    // connection).
    let (out, mut answers) = tokio::sync::mpsc::unbounded_channel::<Answer>();
    let (attempt, b2) = (hello.join.attempt, board.clone());
    tokio::spawn(async move {
        while let Some(a) = answers.recv().await {
            let line = match a {
                Answer::Error(e) => format!("{{\"error\":\"{e}\"}}\n"),
                Answer::Verdict => loop {
                    let go = {
                        let b = b2.lock().expect("board");
                        if b.attempt != attempt {
                            return;
                        }
                        b.go.clone()
                    };
                    match go {
                        Some(Ok(())) => break "{\"go\":true}\n".to_string(),
                        Some(Err(why)) => break format!("{}\n", serde_json::json!({ "stop": why })),
                        None => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                    }
                },
            };
            if wr.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    loop {
        line.clear();
        let n = (&mut rd).take(MAX_LINE).read_line(&mut line).await.unwrap_or(0);
        if n == 0 {
            // The rank's process is gone (finished or died): the first to go names a crash.
            let mut b = board.lock().expect("board");
            if b.attempt == hello.join.attempt {
                if let Some(r) = b.ranks.get_mut(&hello.join.rank) {
                    r.gone.get_or_insert_with(Instant::now);
                }
            }
            return Ok(());
        }
        let Ok(msg) = serde_json::from_str::<Msg>(&line) else {
            reject("malformed message");
            let _ = out.send(Answer::Error("malformed message"));
            return Ok(());
        };
        let mut b = board.lock().expect("board");
        if b.attempt != hello.join.attempt {
            return Ok(());
        }
        let beat = match msg {
            Msg::Beat(beat) => beat,
            Msg::Status(s) => {
                if let Some(r) = b.ranks.get_mut(&s.rank) {
                    (r.collectives, r.blocked) = (s.collectives, s.blocked);
                }
                continue;
            }
            Msg::Comm(c) => {
                // Ranks that are threads of one process report through its connection.
                let health = hello.join.health.clone();
                let host = hello.join.host.clone();
                let rank = c.rank;
                b.ranks
                    .entry(rank)
                    .or_insert_with(|| RankState::new(host, 0, health))
                    .comm = Some(c);
                let _ = out.send(Answer::Verdict);
                continue;
            }
            Msg::Save(mut f) => {
                f.host = hello.join.host.clone();
                b.save_failures.push(f);
                continue;
            }
            Msg::Gpu(g) => {
                if let Some(r) = b.ranks.get_mut(&g.rank) {
                    r.gpus = g.gpus;
                }
                continue;
            }
        };
        if beat.rank == 0 {
            b.step_times.insert(beat.step, beat.seconds);
        }
        if let Some(r) = b.ranks.get_mut(&beat.rank) {
            if beat.step > r.step {
                r.step = beat.step;
                r.progress = Instant::now();
            }
            r.times.push(beat.compute);
            if r.times.len() > 64 {
                r.times.remove(0);
            }
        } else {
            let mut r = RankState::new(hello.join.host.clone(), beat.step, None);
            r.times.push(beat.compute);
            b.ranks.insert(beat.rank, r);
        }
    }
}
