//! One attempt of a launched run, watched until it ends: the ranks' exit, hangs, stragglers,
//! the preflight and the eviction check, from what the store's board shows.

mod proctree;

use crate::launch::End;
use crate::record::Events;
use crate::store::{self, Board};
use anyhow::Result;
use serde_json::json;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Send `sig` to every process of the attempt: its process group (mpirun or srun, which pass
/// it on) and, on SLURM, its job steps. Only processes the driver started are signalled: the
/// attempt's child and, locally, the processes under it — never a pid a rank reported.
pub(crate) fn kill_attempt(child: &mut Child, alloc: Option<&crate::slurm::Allocation>, sig: &str) {
    if let Some(al) = alloc {
        al.signal_steps(sig);
    } else if sig == "KILL" {
        // Ranks mpirun started may sit in process groups of their own: end each one under it
        // (found before any of them ends, while the tree is whole).
        let pids = proctree::descendants(child.id());
        if !pids.is_empty() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(pids.iter().map(u32::to_string))
                .status();
        }
    }
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), "--", &format!("-{}", child.id())])
        .status();
}

/// The signal that ended a process: its own (the rank process itself, in threads mode), or the
/// one `mpirun`/`srun` pass on as exit status 128 + N.
fn exit_signal(status: std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status
        .signal()
        .or(status.code().filter(|c| (129..=192).contains(c)).map(|c| c - 128))
}

/// After a rank's connection closed: the signal that ended the attempt's process, if it ends
/// within a second (a rank killed by the kernel takes its launcher down with it).
fn signal_of(child: &Child) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    for _ in 0..20 {
        // Read without reaping (`/proc/<pid>/stat` of a zombie: state `Z`, and field 52 is its
        // wait status), so the attempt is still ended as a whole afterwards.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).ok()?;
        let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        if rest.first() == Some(&"Z") {
            let raw: i32 = rest.get(49)?.parse().ok()?;
            return exit_signal(std::process::ExitStatus::from_raw(raw));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

pub(crate) fn signal_name(sig: i32) -> String {
    match sig {
        9 => "killed by SIGKILL (signal 9) — likely out of memory (the kernel's OOM killer)".into(),
        6 => "aborted (SIGABRT, signal 6) — an allocation failure or a failed assertion".into(),
        11 => "segmentation fault (SIGSEGV, signal 11)".into(),
        7 => "bus error (SIGBUS, signal 7) — a memory-mapped file shrank, or a hardware fault".into(),
        15 => "terminated (SIGTERM, signal 15)".into(),
        s => format!("killed by signal {s}"),
    }
}

/// What a detected failure reports: kind, rank, host, detail, step.
type Failure = (&'static str, Option<usize>, String, String, u64);

/// End the attempt (every rank) after a failure was detected, and report it.
fn end_failed(
    child: &mut Child,
    alloc: Option<&crate::slurm::Allocation>,
    (kind, rank, host, detail, step): Failure,
) -> Result<End> {
    kill_attempt(child, alloc, "KILL");
    let _ = child.wait();
    Ok(End::Failed {
        kind,
        rank,
        host,
        detail,
        step,
    })
}

pub(crate) fn watch(
    (mut child, alloc): (Child, Option<&crate::slurm::Allocation>),
    board: &Mutex<Board>,
    (l, world, steps, weights): (&weft_trainer::config::Launch, usize, u64, &std::path::Path),
    term: &AtomicBool,
    bar: &indicatif::ProgressBar,
    (pending, failures): (&mut Option<(Instant, u64, u64)>, &mut [serde_json::Value]),
    events: &mut Events,
) -> Result<End> {
    let start = Instant::now();
    let began = SystemTime::now();
    let mut forwarded = false;
    let mut preflight_done = false;
    let mut comm_done = false;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if term.load(Ordering::SeqCst) && !forwarded {
            // Preemption: the ranks save at the next step boundary and exit 0. SIGUSR1, because
            // mpirun passes it on where SIGTERM would make it kill the ranks.
            kill_attempt(&mut child, alloc, "USR1");
            events.log(json!({"event": "preempt", "detail": "the ranks were told to save and stop"}));
            forwarded = true;
        }
        let mut b = board.lock().expect("board");
        // Failed saves: logged with their node; training goes on and the last good checkpoint
        // stays the one to resume from.
        while b.save_logged < b.save_failures.len() {
            let f = b.save_failures[b.save_logged].clone();
            b.save_logged += 1;
            tracing::warn!(
                rank = f.rank,
                host = f.host,
                step = f.step,
                "checkpoint save failed: {}",
                f.error
            );
            events.log(
                json!({"event": "save_failed", "rank": f.rank, "host": f.host, "step": f.step,
                "error": f.error, "detail": "training continues; the last good checkpoint is kept"}),
            );
        }
        // Communicators a rank's NCCL watchdog aborted: the rank fails with the reason; the
        // log names it and its node now, not when the attempt is over.
        while b.aborts_logged < b.comm_aborts.len() {
            let a = b.comm_aborts[b.aborts_logged].clone();
            b.aborts_logged += 1;
            tracing::error!(rank = a.rank, host = a.host, "{}", a.error);
            events.log(json!({"event": "comm_abort", "rank": a.rank, "host": a.host, "error": a.error}));
        }
        // The step the run reached (a failure is reported at it).
        let top = b.ranks.values().map(|r| r.step).max().unwrap_or(0);
        let step = top;
        bar.set_position(top);
        if !preflight_done && b.ranks.len() == world {
            preflight_done = true;
            // The eviction held: no rank runs on a node taken out of the run.
            let evicted = alloc.map_or(&[][..], |a| &a.evicted[..]);
            if let Some((&k, r)) = b.ranks.iter().find(|(_, r)| evicted.contains(&r.host)) {
                let (host, detail) = (
                    r.host.clone(),
                    format!("rank {k} was placed on evicted node {}", r.host),
                );
                drop(b);
                return end_failed(&mut child, alloc, ("placement", Some(k), host, detail, 0));
            }
            if let Some((rank, host, kind, detail)) = crate::health::preflight(&b, l) {
                drop(b);
                return end_failed(&mut child, alloc, (kind, Some(rank), host, detail, 0));
            }
            continue;
        }
        let gpu = crate::health::gpu_during_run(&b, l).map(|(k, h, d)| (k, h, "gpu_health", d));
        let comm = if comm_done {
            None
        } else {
            comm_done = b.ranks.values().filter(|r| r.comm.is_some()).count() == world;
            let verdict = crate::health::comm_preflight(&b, l, world);
            if comm_done || verdict.is_some() {
                b.go = Some(verdict.as_ref().map_or(Ok(()), |v| Err(v.3.clone())));
            }
            if comm_done && verdict.is_none() {
                let bw = b.ranks.values().filter_map(|r| Some(r.comm.as_ref()?.busbw_gbps));
                let gflops = b
                    .ranks
                    .values()
                    .filter_map(|r| Some(r.health.as_ref()?.gemm_gflops));
                let gpus: usize = b.ranks.values().map(|r| r.gpus.len()).sum();
                events.log(json!({"event": "preflight", "ok": true,
                    "allreduce_busbw_gbps": bw.fold(f64::INFINITY, f64::min),
                    "gemm_gflops_min": gflops.fold(f64::INFINITY, f64::min),
                    "gpus_checked": gpus}));
            }
            verdict
        };
        if let Some((rank, host, kind, detail)) = gpu.or(comm) {
            drop(b);
            return end_failed(&mut child, alloc, (kind, Some(rank), host, detail, step));
        }
        if let Some((at, reached, resumed)) = *pending {
            // The first step of a new attempt: the previous failure is recovered.
            if top > 0 && b.ranks.len() == world {
                let (recover, lost) = (at.elapsed().as_secs_f64(), reached.saturating_sub(resumed));
                events.log(json!({"event": "recovered", "time_to_recover_s": recover,
                    "resumed_at_step": resumed, "steps_lost": lost}));
                if let Some(f) = failures.last_mut() {
                    f["time_to_recover_s"] = json!(recover);
                    f["steps_lost"] = json!(lost);
                }
                *pending = None;
            }
        }
        // A rank process that ended before the last step died: no need to wait for mpirun.
        let died = b
            .ranks
            .iter()
            .filter(|(_, r)| r.gone.is_some() && r.step < steps && !forwarded)
            .min_by_key(|(_, r)| r.gone)
            .map(|(&k, r)| (k, r.host.clone(), r.step));
        if let Some((first, _, _)) = died {
            // A process that dies at once (a crash) is the first to go. One that lingers while
            // exiting lets the others stall in collectives waiting for it, until the launcher
            // ends them and one of those may go first: after a stall, name the rank the others
            // wait for (not blocked in a collective, or with the fewest completed).
            let stalled = b
                .ranks
                .values()
                .map(|r| r.progress.elapsed())
                .min()
                .is_some_and(|t| t > Duration::from_millis(500));
            let culprit = if stalled {
                b.ranks
                    .iter()
                    .min_by_key(|(_, r)| (r.blocked, r.collectives, r.gone.is_none()))
                    .map(|(&k, _)| k)
                    .unwrap_or(first)
            } else {
                first
            };
            let r = &b.ranks[&culprit];
            let (rank, host, at) = (culprit, r.host.clone(), r.step);
            drop(b);
            // The attempt's processes, while the tree is whole (once the child ends, its
            // children are re-parented and no longer found under it).
            let tree = proctree::descendants(child.id());
            let how = signal_of(&child).map_or(String::new(), |s| format!(": {}", signal_name(s)));
            if alloc.is_none() && !tree.is_empty() {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .args(tree.iter().map(u32::to_string))
                    .status();
            }
            let detail = format!("rank {rank} ended at step {at} of {steps}{how}");
            return end_failed(&mut child, alloc, ("exit", Some(rank), host, detail, step));
        }
        if let Some(status) = child.try_wait()? {
            drop(b);
            if forwarded {
                return Ok(End::Preempted);
            }
            if status.success() {
                return Ok(End::Finished);
            }
            let written = std::fs::metadata(weights)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= began);
            let done = written && {
                let b = board.lock().expect("board");
                b.ranks.len() == world && b.ranks.values().all(|r| r.step >= steps)
            };
            if done {
                // Every rank reported the last step (and rank 0 wrote the weights before it
                // ended): a failure while shutting down loses nothing.
                events.log(json!({"event": "exit_after_last_step", "status": status.to_string()}));
                tracing::warn!("the ranks exited with {status} after the last step; the run is complete");
                return Ok(End::Finished);
            }
            kill_attempt(&mut child, alloc, "KILL");
            let b = board.lock().expect("board");
            // The rank that stopped sending first is the likeliest culprit.
            let culprit = b
                .ranks
                .iter()
                .min_by_key(|(_, r)| r.step)
                .map(|(&k, r)| (k, r.host.clone()));
            let how = exit_signal(status).map_or(String::new(), |s| format!(" ({})", signal_name(s)));
            return Ok(End::Failed {
                kind: "exit",
                rank: culprit.as_ref().map(|c| c.0),
                host: culprit.map(|c| c.1).unwrap_or_else(|| "localhost".into()),
                detail: format!("the ranks exited with {status}{how}"),
                step,
            });
        }
        // Hang: a rank (or all of them) stopped making progress.
        let stuck = if b.ranks.len() < world {
            (start.elapsed().as_secs_f64() > l.startup_timeout_s).then(|| {
                let missing = (0..world).find(|r| !b.ranks.contains_key(r));
                (
                    missing,
                    "did not join or take a first step in launch.startup_timeout_s".to_string(),
                )
            })
        } else {
            // The stuck rank is the one the others wait for: not blocked in a collective, or
            // with the fewest completed.
            // Before its first step a rank has launch.startup_timeout_s from the attempt's start
            // (it waits in the preflight for the ranks of a node that starts later).
            let stale = |r: &&store::RankState| {
                if r.step == 0 {
                    start.elapsed().as_secs_f64() > l.startup_timeout_s
                } else {
                    r.progress.elapsed().as_secs_f64() > l.hang_timeout_s
                }
            };
            let any = b.ranks.values().any(|r| stale(&r));
            any.then(|| {
                b.ranks
                    .iter()
                    .min_by_key(|(_, r)| (r.blocked, r.collectives, r.step))
                    .map(|(&k, r)| {
                        let what = if r.blocked {
                            "blocked in a collective"
                        } else {
                            "not in a collective"
                        };
                        let detail = if r.step == 0 {
                            format!(
                                "no first step in launch.startup_timeout_s = {} s ({what})",
                                l.startup_timeout_s
                            )
                        } else {
                            format!(
                                "no progress past step {} for {:.0} s ({what})",
                                r.step, l.hang_timeout_s
                            )
                        };
                        (Some(k), detail)
                    })
            })
            .flatten()
        };
        if let Some((rank, detail)) = stuck {
            let host = rank
                .and_then(|r| b.ranks.get(&r))
                .map_or("localhost".into(), |r| r.host.clone());
            drop(b);
            return end_failed(&mut child, alloc, ("hang", rank, host, detail, step));
        }
        // Straggler: compute time well above the other ranks', for a window of steps.
        let w = l.straggler_window.max(1);
        if world > 1 && b.ranks.len() == world && b.ranks.values().all(|r| r.times.len() >= w) {
            let recent =
                |r: &store::RankState| crate::launch::median(&mut r.times[r.times.len() - w..].to_vec());
            let mut all: Vec<f64> = b.ranks.values().map(recent).collect();
            let mid = crate::launch::median(&mut all).max(1e-3);
            if let Some((&k, r)) = b.ranks.iter().find(|(_, r)| recent(r) > l.straggler_factor * mid) {
                let (host, detail) = (
                    r.host.clone(),
                    format!(
                        "compute {:.0} ms per step vs a median of {:.0} ms over the last {w} steps",
                        recent(r) * 1e3,
                        mid * 1e3
                    ),
                );
                drop(b);
                return end_failed(&mut child, alloc, ("straggler", Some(k), host, detail, step));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn a_rank_killed_by_a_signal_is_named_with_it() {
        // The rank process itself killed (threads mode): its own signal.
        let killed = std::process::ExitStatus::from_raw(9);
        assert_eq!(exit_signal(killed), Some(9));
        assert!(signal_name(9).contains("likely out of memory"));
        // mpirun/srun report a rank's signal N as exit status 128 + N.
        let via_mpirun = std::process::ExitStatus::from_raw(137 << 8);
        assert_eq!(exit_signal(via_mpirun), Some(9));
        let aborted = std::process::ExitStatus::from_raw(134 << 8);
        assert!(signal_name(exit_signal(aborted).unwrap()).contains("SIGABRT"));
        // Read from a process that ended, without reaping it.
        let child = Command::new("sh").args(["-c", "kill -9 $$"]).spawn().unwrap();
        assert_eq!(signal_of(&child), Some(9));
        let mut child = child;
        assert_eq!(exit_signal(child.wait().unwrap()), Some(9));
        // A plain failure carries no signal.
        assert_eq!(exit_signal(std::process::ExitStatus::from_raw(1 << 8)), None);
    }
}
