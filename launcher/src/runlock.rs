//! One run directory, one owner: the exclusive lock that `weft launch`, `weft train` and
//! `weft sweep` take on the directory they write before they write anything.
//!
//! The lock is an advisory `flock` on `<dir>/lock`, held for the life of the process (the
//! kernel drops it when the process ends, however it ends). The file holds the holder's record
//! as JSON — host, pid, start time, command, and for a launch driver the process group of its
//! ranks — so that a second start can name who holds the run:
//!
//! - held: the second start refuses, naming the holder;
//! - free, and the record says its holder released it: taken;
//! - free, but the record was never released (the holder was killed): taken over with a line
//!   saying so — unless the ranks that driver started are still running on this host (a driver
//!   killed with `SIGKILL` leaves its ranks behind until their orphan timeout), in which case
//!   the start refuses rather than run beside them.
//!
//! Ranks started by `weft launch` (`WEFT_STORE` in their environment) do not lock: their driver
//! holds the lock for them. Under a bare `mpirun`, rank 0 locks for the run.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::rankside::hostname;

/// Who holds (or last held) a run directory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// Unix seconds.
    pub started: u64,
    /// What holds it: `weft launch`, `weft train`, `weft sweep`.
    pub command: String,
    /// A launch driver's ranks: the process group it started them in (on `host`).
    #[serde(default)]
    pub ranks_pgid: Option<u32>,
    /// Set when the holder let go on its own.
    #[serde(default)]
    pub released: bool,
}

/// How long a start waits for a lock held by a process on another node (see `acquire`).
const REMOTE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// A held run-directory lock; released (and its record marked so) when dropped.
pub struct RunLock {
    file: File,
    path: PathBuf,
    holder: Holder,
}

/// Whether this is a requeued SLURM job's later start.
pub(crate) fn restarted_job() -> bool {
    std::env::var("SLURM_RESTART_COUNT").is_ok_and(|n| n.trim() != "0")
}

/// Whether process `pid` exists on this host.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Live processes on this host in process group `pgid` (field 5 of `/proc/<pid>/stat`);
/// zombies, which hold nothing, do not count.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
                let Some((_, rest)) = s.rsplit_once(')') else {
                    return false;
                };
                let mut f = rest.split_whitespace();
                let state = f.next().unwrap_or("Z");
                let group = f.nth(1).and_then(|g| g.parse::<u32>().ok());
                group == Some(pgid) && state != "Z" && state != "X"
            })
        })
        .collect()
}

fn describe(h: &Holder) -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_sub(h.started);
    format!(
        "`{}` (pid {} on host {}, started {since} s ago)",
        h.command, h.pid, h.host
    )
}

impl RunLock {
    /// Take the lock of run directory `dir` (created if missing) for `command`.
    pub fn acquire(dir: &Path, command: &str) -> Result<RunLock> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let read_record = || -> Option<Holder> {
            let mut text = String::new();
            // A record too large to be ours is treated as unreadable.
            let _ = (&file).rewind();
            let _ = (&file).take(64 * 1024).read_to_string(&mut text);
            serde_json::from_str(&text).ok()
        };
        let waited = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                // A holder on a node that is gone keeps a lock on a network file system until
                // the server notices (an NFSv4 lease, typically 90 s): a requeued SLURM job,
                // restarted on other nodes, waits that long for it before refusing.
                Err(std::fs::TryLockError::WouldBlock)
                    if restarted_job()
                        && read_record().is_some_and(|h| h.host != hostname())
                        && waited.elapsed() < REMOTE_WAIT =>
                {
                    std::thread::sleep(std::time::Duration::from_secs(2));
                }
                Err(e) => {
                    Self::refused(dir, &path, e, read_record())?;
                    // A file system without locks: say so and go on unlocked.
                    break;
                }
            }
        }
        let previous = read_record();
        if let Some(h) = previous.filter(|h| !h.released) {
            let here = h.host == hostname();
            if here {
                if let Some(pg) = h.ranks_pgid {
                    // Ranks that just lost their driver may be finishing their last save.
                    let mut left = group_members(pg);
                    for _ in 0..100 {
                        if left.is_empty() {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        left = group_members(pg);
                    }
                    if !left.is_empty() {
                        bail!(
                            "{}: the ranks of a previous {} are still running (process group {pg}: \
                             pids {left:?}); they end within launch.orphan_timeout_s, or end them \
                             with `kill -- -{pg}`",
                            dir.display(),
                            describe(&h)
                        );
                    }
                }
            }
            tracing::warn!(
                "{}: taking over the lock of {}, which ended without releasing it{}",
                dir.display(),
                describe(&h),
                if here && alive(h.pid) {
                    " (its pid now belongs to another process)"
                } else {
                    ""
                }
            );
        }
        let holder = Holder {
            host: hostname(),
            pid: std::process::id(),
            started: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            command: command.into(),
            ranks_pgid: None,
            released: false,
        };
        let mut lock = RunLock { file, path, holder };
        lock.write()?;
        Ok(lock)
    }

    /// The lock was not taken (`e`): refuse, naming the holder; or, where the file system
    /// does not support locks, warn and return `Ok` (the run goes on unlocked).
    fn refused(dir: &Path, path: &Path, e: std::fs::TryLockError, previous: Option<Holder>) -> Result<()> {
        match e {
            std::fs::TryLockError::WouldBlock => {
                let who = previous.as_ref().map_or("another process".into(), describe);
                let orphans = previous
                    .as_ref()
                    .filter(|h| h.host == hostname() && !alive(h.pid))
                    .map_or(String::new(), |_| {
                        " — that process is gone, but processes it started still hold the lock \
                         (ranks end within launch.orphan_timeout_s of losing their driver)"
                            .into()
                    });
                bail!(
                    "{} is in use by {who}{orphans}; two runs must not share a run directory \
                     (stop that one, or pick another job.name)",
                    dir.display()
                );
            }
            // ENOLCK, ENOSYS, EOPNOTSUPP: e.g. Lustre mounted without `flock`.
            std::fs::TryLockError::Error(e)
                if e.kind() == std::io::ErrorKind::Unsupported
                    || matches!(e.raw_os_error(), Some(37 | 38 | 95)) =>
            {
                tracing::warn!(
                    "{}: this file system does not support locks ({e}); the run directory is not \
                     protected against a second run",
                    path.display()
                );
                Ok(())
            }
            std::fs::TryLockError::Error(e) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }

    /// Record the process group of the ranks this holder started (a launch driver's attempt).
    pub fn set_ranks(&mut self, pgid: Option<u32>) -> Result<()> {
        self.holder.ranks_pgid = pgid;
        self.write()
    }

    fn write(&mut self) -> Result<()> {
        let text = serde_json::to_string(&self.holder)? + "\n";
        let path = &self.path;
        self.file
            .set_len(0)
            .and_then(|_| self.file.rewind())
            .and_then(|_| self.file.write_all(text.as_bytes()))
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("writing the lock record {}", path.display()))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        self.holder.released = true;
        self.holder.ranks_pgid = None;
        let _ = self.write();
        let _ = self.file.unlock();
    }
}

/// Whether this process is a rank started by `weft launch` (whose driver holds the lock).
pub fn under_launch() -> bool {
    std::env::var_os("WEFT_STORE").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weft-runlock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_second_holder_is_refused_and_named() {
        let d = tmp("second");
        let a = RunLock::acquire(&d, "weft launch").unwrap();
        let e = RunLock::acquire(&d, "weft train").err().unwrap().to_string();
        assert!(e.contains("in use by `weft launch`"), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(a);
        let b = RunLock::acquire(&d, "weft train").unwrap();
        assert_eq!(b.holder.command, "weft train");
        drop(b);
        let rec: Holder = serde_json::from_str(&std::fs::read_to_string(d.join("lock")).unwrap()).unwrap();
        assert!(rec.released);
    }

    #[test]
    fn a_dead_holder_is_taken_over_unless_its_ranks_live() {
        let d = tmp("stale");
        std::fs::create_dir_all(&d).unwrap();
        // A holder that was killed: never released, its pid gone, its ranks' group alive (this
        // test's own process group stands in for them).
        let dead = {
            let mut c = std::process::Command::new("true").spawn().unwrap();
            c.wait().unwrap();
            c.id()
        };
        let own_pgid = std::fs::read_to_string("/proc/self/stat")
            .unwrap()
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse::<u32>()
            .unwrap();
        let mut h = Holder {
            host: hostname(),
            pid: dead,
            started: 0,
            command: "weft launch".into(),
            ranks_pgid: Some(own_pgid),
            released: false,
        };
        std::fs::write(d.join("lock"), serde_json::to_string(&h).unwrap()).unwrap();
        let e = RunLock::acquire(&d, "weft launch").err().unwrap().to_string();
        assert!(e.contains("still running"), "{e}");
        // Its ranks gone: taken over.
        h.ranks_pgid = None;
        std::fs::write(d.join("lock"), serde_json::to_string(&h).unwrap()).unwrap();
        let l = RunLock::acquire(&d, "weft launch").unwrap();
        assert_eq!(l.holder.pid, std::process::id());
    }
}
