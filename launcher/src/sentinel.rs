//! `weft sentinel` (internal): what keeps a SLURM run going when the node its driver runs on
//! is lost.
//!
//! The driver runs inside the batch script, on the job's first node (the batch host). If that
//! node dies, the driver dies with it; SLURM keeps a `--no-kill` job running on the other nodes
//! with nothing to drive it until the time limit. So the driver starts one sentinel on every
//! other node of the allocation (a job step of its own, `--no-kill --overlap`, named
//! [`STEP_NAME`], which the driver never signals; the first three of them watch). A sentinel asks SLURM — not the driver, not
//! the ranks — about the batch host once a second. When SLURM reports it down for
//! `launch.orphan_timeout_s`, the sentinel requeues the job (`scontrol requeue`):
//! SLURM ends every step, and the job starts again on healthy nodes (its node count is a range:
//! it needs no spare to start), where the new driver records the lost driver and resumes from
//! the newest checkpoint. A lost driver node therefore costs the steps since the last
//! checkpoint, plus SLURM's own detection (`SlurmdTimeout`), the orphan timeout and the
//! requeue.
//!
//! Sentinels on several nodes may all see the loss: each waits its index × 2 s more than the
//! one before it, and a requeue of a job already requeued is refused by SLURM harmlessly.

use anyhow::{bail, Result};
use clap::Args;
use std::process::Command;
use std::time::{Duration, Instant};

/// The job step name of the sentinels (the driver leaves this step alone when it signals its
/// ranks' steps).
pub const STEP_NAME: &str = "weft-sentinel";

/// How many of the sentinels watch (the first ones of the step); the others end at once.
const WATCHERS: u64 = 3;

#[derive(Args)]
pub struct SentinelArgs {
    /// The job to requeue.
    #[arg(long)]
    pub job: String,
    /// The node the driver runs on.
    #[arg(long)]
    pub batch_host: String,
    /// Seconds the batch host must stay down before the job is requeued.
    #[arg(long)]
    pub timeout_s: f64,
    /// The run's `events.jsonl`, where the requeue is recorded.
    #[arg(long)]
    pub events: std::path::PathBuf,
}

/// Whether SLURM reports `node` down (`scontrol show node`: `State=DOWN…`). `None` when SLURM
/// itself cannot be asked.
fn node_lost(node: &str) -> Option<bool> {
    let o = Command::new("scontrol")
        .args(["show", "node", node])
        .output()
        .ok()?;
    if !o.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let state = text.split_whitespace().find_map(|w| w.strip_prefix("State="))?;
    // DOWN only: a node merely not responding for a while (a stalled slurmd) may still run
    // a healthy driver.
    Some(state.starts_with("DOWN"))
}

/// This sentinel's place among the job's sentinels (`SLURM_PROCID` of its step).
fn index() -> u64 {
    std::env::var("SLURM_PROCID")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Watch the batch host until it is lost long enough, then requeue the job. Runs until SLURM
/// ends the step (the job ends, or the requeue ends it).
pub fn sentinel(a: &SentinelArgs) -> Result<()> {
    if a.timeout_s.is_nan() || a.timeout_s <= 0.0 {
        bail!("--timeout-s {}: must be > 0", a.timeout_s);
    }
    // A few sentinels are enough, and spare slurmctld the questions of hundreds.
    if index() >= WATCHERS {
        return Ok(());
    }
    let wait = Duration::from_secs_f64(a.timeout_s) + Duration::from_secs(2 * index());
    let mut lost_since: Option<Instant> = None;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        match node_lost(&a.batch_host) {
            Some(true) => {
                let since = *lost_since.get_or_insert_with(|| {
                    tracing::warn!(node = a.batch_host, "SLURM reports the driver's node lost");
                    Instant::now()
                });
                if since.elapsed() >= wait {
                    break;
                }
            }
            Some(false) => lost_since = None,
            None => {}
        }
    }
    tracing::warn!(
        job = a.job,
        "the driver's node {} has been lost for {:.0} s: requeueing the job, which resumes from \
         its newest checkpoint on healthy nodes",
        a.batch_host,
        wait.as_secs_f64()
    );
    let st = Command::new("scontrol").args(["requeue", &a.job]).status()?;
    if !st.success() {
        // Another sentinel was first (the job is already pending), or SLURM refused.
        tracing::warn!(job = a.job, "scontrol requeue {} ended with {st}", a.job);
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let line = serde_json::json!({"event": "sentinel_requeue", "job": a.job,
            "lost_node": a.batch_host, "lost_for_s": wait.as_secs_f64(), "time": now});
        let appended = std::fs::OpenOptions::new()
            .append(true)
            .open(&a.events)
            .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes()));
        if let Err(e) = appended {
            tracing::warn!("cannot record the requeue in {}: {e}", a.events.display());
        }
    }
    // SLURM ends this step with the job.
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}
