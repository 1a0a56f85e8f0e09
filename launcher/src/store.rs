//! The run's control plane: a small TCP store the driver runs and every rank joins.
//!
//! Messages are JSON lines. A client's first line must be
//! `{"join": {"rank": R, "host": H, "attempt": A}, "secret": S}` with the run's secret (made per
//! run, handed to ranks through their environment, never logged); anything else is answered
//! with an error and the connection closed. After the driver's `{"ok": true}`, the rank sends
//! `{"beat": {"rank": R, "step": N, "seconds": T}}` after every step. A malformed line or one
//! longer than 64 KiB ends that connection only; the driver keeps running.

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
}

/// A rank's preflight (see `rankside`).
#[derive(Clone, Debug, Deserialize)]
pub struct Health {
    pub mem_free_gib: f64,
    pub disk_free_gib: f64,
    pub gemm_gflops: f64,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum Msg {
    Beat(Beat),
    Status(Status),
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
                        let _ = serve(sock, &secret, &board).await;
                    });
                }
            })
        })?;
    Ok(addr)
}

async fn serve(sock: tokio::net::TcpStream, secret: &str, board: &Mutex<Board>) -> std::io::Result<()> {
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
                RankState {
                    host: hello.join.host.clone(),
                    step: 0,
                    progress: Instant::now(),
                    collectives: 0,
                    blocked: false,
                    health: hello.join.health.clone(),
                    gone: None,
                    times: vec![],
                },
            );
        }
        current
    };
    if !current {
        reject("a rank of another attempt");
        return wr.write_all(b"{\"error\":\"stale attempt\"}\n").await;
    }
    wr.write_all(b"{\"ok\":true}\n").await?;
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
            return wr.write_all(b"{\"error\":\"malformed message\"}\n").await;
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
            b.ranks.insert(
                beat.rank,
                RankState {
                    host: hello.join.host.clone(),
                    step: beat.step,
                    progress: Instant::now(),
                    collectives: 0,
                    blocked: false,
                    health: None,
                    gone: None,
                    times: vec![beat.compute],
                },
            );
        }
    }
}
