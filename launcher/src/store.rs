//! The run's control plane: a small TCP store the driver runs and every rank joins.
//!
//! Messages are JSON lines. A client's first line must be
//! `{"join": {"rank": R, "host": H, "attempt": A}, "secret": S}` with the run's secret (made per
//! run, handed to ranks through their environment, never logged); anything else is answered
//! with an error and the connection closed, and so is a join for a rank outside this attempt's
//! placement or one that already joined it. What a client says about itself (its host, its
//! process id) is kept as *reported* for the log only: the driver knows where each rank runs
//! from its own placement ([`Placement`]), and ends only the processes it started. Turned-away
//! clients are logged at most once per peer address a minute, with a count of the others.
//!
//! After the driver's `{"ok": true}`, the driver sends `{"ping": true}` every quarter second
//! (a rank that hears nothing for `launch.orphan_timeout_s` knows its driver is gone) and
//! `{"ended": why}` when the attempt is over (a rank still running then exits), and the
//! rank sends
//! `{"beat": {"rank": R, "step": N, "seconds": T, "compute": C}}` after every step, a `status`
//! (collectives completed, blocked in one) every quarter second, its all-reduce check
//! (`comm`) once before the first step, a `save` when a checkpoint save failed, an `abort`
//! when its NCCL watchdog aborted a communicator (a hung collective, a dead peer), and on GPU
//! nodes a `gpu` health reading now and then. After its all-reduce check a rank waits for the
//! driver's verdict on the whole preflight: `{"go": true}` or `{"stop": why}`. A malformed line or one longer than 64 KiB ends
//! that connection only; the driver keeps running.

mod rejections;

pub use rejections::Rejections;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const MAX_LINE: u64 = 64 * 1024;

/// How often the driver pings every joined rank.
pub const PING: Duration = Duration::from_millis(250);

/// Where the launcher placed this attempt's ranks: rank `r` runs on `nodes[r / per_node]`
/// (the block distribution `srun --ntasks-per-node` uses; one node, all ranks, locally).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Placement {
    pub nodes: Vec<String>,
    pub per_node: usize,
}

impl Placement {
    /// The node rank `rank` was placed on; `None` for a rank outside this attempt.
    pub fn host(&self, rank: usize) -> Option<&str> {
        if self.per_node == 0 {
            return None;
        }
        self.nodes.get(rank / self.per_node).map(String::as_str)
    }
}

/// What the driver knows of one rank in the current attempt.
#[derive(Clone, Debug)]
pub struct RankState {
    /// The node the launcher placed it on (its own record, never the rank's word).
    pub host: String,
    /// The host and process id the rank reported when it joined: for the log only.
    pub reported: Option<(String, Option<u32>)>,
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
            reported: None,
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
    /// Where this attempt's ranks run (set by the driver before it starts them).
    pub placement: Placement,
    /// Clients turned away (bad secret, malformed messages, a second join).
    pub rejected: usize,
    /// The log of turned-away clients, limited per peer address.
    pub rejections: Rejections,
    /// Checkpoint saves that failed, in the order reported (the driver logs and drains them).
    pub save_failures: Vec<SaveFailure>,
    /// How many of `save_failures` the driver has logged.
    pub save_logged: usize,
    /// Communicators a rank's NCCL watchdog aborted, in the order reported (logged and
    /// drained by the driver, like `save_failures`).
    pub comm_aborts: Vec<CommAbort>,
    pub aborts_logged: usize,
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

/// A communicator a rank's NCCL watchdog aborted, and why.
#[derive(Clone, Debug, Deserialize)]
pub struct CommAbort {
    pub rank: usize,
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
    Abort(CommAbort),
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
                // Rejections not logged yet are counted in one line when their minute is up.
                let b = board.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(5));
                    loop {
                        tick.tick().await;
                        b.lock().expect("board").rejections.flush(Instant::now());
                    }
                });
                loop {
                    let Ok((sock, peer)) = listener.accept().await else {
                        continue;
                    };
                    let (secret, board) = (secret.clone(), board.clone());
                    tokio::spawn(async move {
                        let _ = serve(sock, peer.ip(), &secret, board).await;
                    });
                }
            })
        })?;
    Ok(addr)
}

async fn serve(
    sock: tokio::net::TcpStream,
    peer: IpAddr,
    secret: &str,
    board: Arc<Mutex<Board>>,
) -> std::io::Result<()> {
    let (rd, mut wr) = sock.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    let reject = |why: &str| {
        let mut b = board.lock().expect("board");
        b.rejected += 1;
        b.rejections.note(peer, why, Instant::now());
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
    let j = &hello.join;
    let refused = admit(&mut board.lock().expect("board"), j);
    if let Some(why) = refused {
        reject(&why);
        let answer = serde_json::json!({ "error": why });
        return wr.write_all(format!("{answer}\n").as_bytes()).await;
    }
    wr.write_all(b"{\"ok\":true}\n").await?;
    // Answers go out from their own task: the preflight's verdict waits for every rank's check
    // while this task goes on reading (ranks that are threads of one process share a
    // connection).
    let (out, mut answers) = tokio::sync::mpsc::unbounded_channel::<Answer>();
    let (attempt, b2) = (hello.join.attempt, board.clone());
    tokio::spawn(async move {
        // Pings tell the rank its driver is alive. When the attempt is over, the rank is told
        // so (a rank the driver could not end exits, rather than saving beside the next
        // attempt) and the connection closes.
        let mut ping = tokio::time::interval(PING);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poll = tokio::time::interval(Duration::from_millis(10));
        // Verdicts owed (one per rank of this connection that sent its check).
        let mut owed = 0usize;
        let current = || b2.lock().expect("board").attempt == attempt;
        loop {
            let line = tokio::select! {
                a = answers.recv() => match a {
                    None => return,
                    Some(Answer::Error(e)) => format!("{{\"error\":\"{e}\"}}\n"),
                    Some(Answer::Verdict) => {
                        owed += 1;
                        continue;
                    }
                },
                _ = poll.tick(), if owed > 0 => {
                    let go = {
                        let b = b2.lock().expect("board");
                        if b.attempt != attempt {
                            break;
                        }
                        b.go.clone()
                    };
                    let line = match go {
                        Some(Ok(())) => "{\"go\":true}\n".to_string(),
                        Some(Err(why)) => format!("{}\n", serde_json::json!({ "stop": why })),
                        None => continue,
                    };
                    line.repeat(std::mem::take(&mut owed))
                }
                _ = ping.tick() => {
                    if !current() {
                        break;
                    }
                    "{\"ping\":true}\n".to_string()
                }
            };
            if wr.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
        let ended = serde_json::json!({ "ended": format!("the driver ended attempt {attempt}") });
        let _ = wr.write_all(format!("{ended}\n").as_bytes()).await;
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
                let Some(host) = b.placement.host(c.rank).map(str::to_string) else {
                    drop(b);
                    reject("a check for a rank outside this attempt");
                    let _ = out.send(Answer::Error("no such rank"));
                    return Ok(());
                };
                let (health, rank) = (hello.join.health.clone(), c.rank);
                b.ranks
                    .entry(rank)
                    .or_insert_with(|| RankState::new(host, 0, health))
                    .comm = Some(c);
                let _ = out.send(Answer::Verdict);
                continue;
            }
            Msg::Save(mut f) => {
                f.host = b.placement.host(f.rank).unwrap_or("?").to_string();
                b.save_failures.push(f);
                continue;
            }
            Msg::Abort(mut a) => {
                a.host = b.placement.host(a.rank).unwrap_or("?").to_string();
                b.comm_aborts.push(a);
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
        } else if let Some(host) = b.placement.host(beat.rank).map(str::to_string) {
            let mut r = RankState::new(host, beat.step, None);
            r.times.push(beat.compute);
            b.ranks.insert(beat.rank, r);
        }
    }
}

/// Admit a join with the right secret to the board, or say why not: a rank of another
/// attempt, outside this attempt's placement, or one that already joined it (a rank process
/// joins once per attempt). The rank's host is the placement's; the host and pid it reports
/// are kept for the log only.
fn admit(b: &mut Board, j: &Join) -> Option<String> {
    if j.attempt != b.attempt {
        return Some("stale attempt".into());
    }
    let Some(host) = b.placement.host(j.rank).map(str::to_string) else {
        return Some(format!("rank {} is not part of this attempt", j.rank));
    };
    if b.ranks.contains_key(&j.rank) {
        return Some(format!("rank {} already joined this attempt", j.rank));
    }
    tracing::debug!(
        rank = j.rank,
        host,
        reported_host = j.host,
        reported_pid = j.pid,
        "rank joined"
    );
    let mut r = RankState::new(host, 0, j.health.clone());
    r.reported = Some((j.host.clone(), j.pid));
    b.ranks.insert(j.rank, r);
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;

    fn client(addr: SocketAddr, first: &str) -> (TcpStream, BufReader<TcpStream>, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        writeln!(s, "{first}").unwrap();
        let mut rd = BufReader::new(s.try_clone().unwrap());
        let mut answer = String::new();
        rd.read_line(&mut answer).unwrap();
        (s, rd, answer)
    }

    fn join(rank: usize, host: &str, pid: u32) -> String {
        serde_json::json!({"join": {"rank": rank, "host": host, "attempt": 1, "pid": pid},
                           "secret": "s3cret"})
        .to_string()
    }

    #[test]
    fn a_rank_is_placed_by_the_launcher_and_joins_once_per_attempt() {
        let board = Arc::new(Mutex::new(Board {
            attempt: 1,
            placement: Placement {
                nodes: vec!["n1".into(), "n2".into()],
                per_node: 2,
            },
            ..Board::default()
        }));
        let addr = start("s3cret".into(), board.clone(), ("127.0.0.1", 0)).unwrap();
        // A join with the secret that claims another host and pid: the rank is placed where
        // the launcher put it (rank 3 of 2 nodes × 2 on n2); the claim is kept as reported.
        let (mut s, mut rd, ok) = client(addr, &join(3, "victim-node", 1));
        assert!(ok.contains("\"ok\""), "{ok}");
        {
            let b = board.lock().unwrap();
            assert_eq!(b.ranks[&3].host, "n2");
            assert_eq!(b.ranks[&3].reported, Some(("victim-node".into(), Some(1))));
        }
        // The driver pings a joined rank.
        let mut ping = String::new();
        rd.read_line(&mut ping).unwrap();
        assert_eq!(ping.trim(), "{\"ping\":true}");
        // A save failure is reported on the placed node too.
        writeln!(
            s,
            "{}",
            serde_json::json!({"save": {"rank": 3, "step": 4, "error": "x"}})
        )
        .unwrap();
        // So is a communicator its watchdog aborted.
        writeln!(
            s,
            "{}",
            serde_json::json!({"abort": {"rank": 3, "error": "nccl communicator (rank 1 of 2) aborted: a collective has not finished after 600 s"}})
        )
        .unwrap();
        // A second join for a rank of this attempt is refused, and so is a rank outside it.
        let (_, _, again) = client(addr, &join(3, "n2", 2));
        assert!(again.contains("rank 3 already joined this attempt"), "{again}");
        let (_, _, outside) = client(addr, &join(4, "n1", 3));
        assert!(
            outside.contains("rank 4 is not part of this attempt"),
            "{outside}"
        );
        // So is a beat or check for a rank outside the placement on a joined connection.
        let (mut t, mut trd, ok) = client(addr, &join(0, "n1", 4));
        assert!(ok.contains("\"ok\""), "{ok}");
        writeln!(
            t,
            "{}",
            serde_json::json!({"comm": {"rank": 9, "ok": true, "busbw_gbps": 1.0}})
        )
        .unwrap();
        let mut answer = String::new();
        while trd.read_line(&mut answer).unwrap() > 0 && answer.contains("ping") {
            answer.clear();
        }
        assert!(answer.contains("no such rank"), "{answer}");
        // Closing the connection marks the rank gone (and the driver acts on n2, not on the
        // reported host).
        drop((s, rd));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let b = board.lock().unwrap();
            if b.ranks[&3].gone.is_some() {
                assert_eq!(b.save_failures[0].host, "n2");
                assert_eq!(b.comm_aborts[0].host, "n2");
                assert!(b.comm_aborts[0].error.contains("has not finished"));
                assert!(!b.ranks.contains_key(&9) && b.ranks.len() == 2);
                assert_eq!(b.rejected, 3);
                break;
            }
            drop(b);
            assert!(Instant::now() < deadline, "the closed connection was not noticed");
            std::thread::sleep(Duration::from_millis(10));
        }
        // When the attempt is over, a rank still connected is told so, and the connection
        // closes.
        let (_u, mut urd, ok) = client(addr, &join(1, "n1", 5));
        assert!(ok.contains("\"ok\""), "{ok}");
        board.lock().unwrap().attempt = 2;
        let mut lines = vec![];
        let mut l = String::new();
        while urd.read_line(&mut l).unwrap() > 0 {
            lines.push(std::mem::take(&mut l));
        }
        let last = lines.last().unwrap();
        assert!(
            last.contains("\"ended\"") && last.contains("attempt 1"),
            "{lines:?}"
        );
    }

    #[test]
    fn placement_is_the_block_distribution() {
        let p = Placement {
            nodes: vec!["a".into(), "b".into(), "c".into()],
            per_node: 4,
        };
        let hosts: Vec<_> = (0..13).map(|r| p.host(r)).collect();
        assert_eq!(
            &hosts[..5],
            [Some("a"), Some("a"), Some("a"), Some("a"), Some("b")]
        );
        assert_eq!((hosts[11], hosts[12]), (Some("c"), None));
        assert_eq!(Placement::default().host(0), None);
    }
}
