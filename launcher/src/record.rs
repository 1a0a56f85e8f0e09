//! The run's record, written by the launch driver: `events.jsonl` (one line per attempt
//! start, failure, detection, end) and `launch.json` (the summary).
//!
//! The record must survive the failure it records, a full disk included. When the driver
//! starts it sets aside a reserve file (`.record-reserve`, [`RESERVE`] bytes) in the run
//! directory, and gives it back for the last writes (`launch.json` and the `end` event), once
//! the ranks have ended. A write that fails is reported on stderr with the file's path and what
//! it would have said, so nothing is lost silently, and no temporary file is left behind.

use anyhow::{Context, Result};
use serde_json::json;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Bytes set aside for the record's last writes.
pub const RESERVE: u64 = 1 << 20;

/// `events.jsonl`, appended to, and the reserve that keeps room for the end of the record.
pub(crate) struct Events {
    file: File,
    path: PathBuf,
    reserve: PathBuf,
    t0: Instant,
    /// The first failed write was reported (later ones are counted).
    failed_writes: usize,
}

impl Events {
    /// Open `dir/events.jsonl` for appending and set aside the reserve.
    pub(crate) fn open(dir: &Path) -> Result<Events> {
        let path = dir.join("events.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let reserve = dir.join(".record-reserve");
        // Written, not only sized: a sparse file would reserve nothing.
        let set_aside = File::create(&reserve)
            .and_then(|mut f| {
                f.write_all(&vec![0u8; RESERVE as usize])?;
                f.sync_all()
            })
            .with_context(|| format!("setting aside {} bytes in {}", RESERVE, reserve.display()));
        if let Err(e) = set_aside {
            let _ = std::fs::remove_file(&reserve);
            return Err(e.context("the run directory has no room for the run's record"));
        }
        Ok(Events {
            file,
            path,
            reserve,
            t0: Instant::now(),
            failed_writes: 0,
        })
    }

    /// Give the reserve back to the file system (once).
    fn release_reserve(&self) -> bool {
        std::fs::remove_file(&self.reserve).is_ok()
    }

    /// Append one event, stamped with the time and the seconds since the driver started.
    pub(crate) fn log(&mut self, mut v: serde_json::Value) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        v["time"] = json!(now.as_secs_f64());
        v["elapsed_s"] = json!(self.t0.elapsed().as_secs_f64());
        // After a failed write (part of a line may have landed), start on a fresh line.
        let line = if self.failed_writes > 0 {
            format!("\n{v}\n")
        } else {
            format!("{v}\n")
        };
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            self.failed_writes += 1;
            if self.failed_writes == 1 {
                eprintln!(
                    "weft launch: cannot write {}: {e}; the events from here on go to stderr",
                    self.path.display()
                );
            }
            eprint!("event: {line}");
        }
    }

    /// The end of the record: the summary `launch.json` into `dir`, then the `end` event. The
    /// reserve is given back first when the disk is full (the ranks have ended: nothing else
    /// takes the room). If even that fails, the summary goes to stderr naming its file.
    pub(crate) fn finish(&mut self, dir: &Path, summary: &serde_json::Value, end: serde_json::Value) {
        let path = dir.join("launch.json");
        let text = serde_json::to_string_pretty(summary).unwrap_or_default();
        let mut r = write_atomic(&path, text.as_bytes());
        if r.is_err() && self.release_reserve() {
            r = write_atomic(&path, text.as_bytes());
        }
        self.release_reserve();
        self.log(end);
        if let Err(e) = r {
            eprintln!(
                "weft launch: {e:#}; the summary that belongs in {} follows:\n{text}",
                path.display()
            );
        }
    }
}

/// Write `path` whole or not at all: a temporary file beside it, fsync, rename, fsync the
/// directory. Errors name the file; the temporary file never outlives a failure.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let r = File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|_| std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display())));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return r;
    }
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(d)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", d.display()))?;
    }
    Ok(())
}

/// One failure of `launch.json` as a line for people: what, where, how fast it was detected,
/// and how it was recovered (or that it was not).
pub(crate) fn failure_line(f: &serde_json::Value) -> String {
    let rank = f["rank"].as_u64().map_or("?".into(), |r| r.to_string());
    let mut s = format!(
        "failure: {} (rank {rank}, host {}, step {})",
        f["kind"].as_str().unwrap_or("?"),
        f["host"].as_str().unwrap_or("?"),
        f["step"].as_u64().map_or("?".into(), |r| r.to_string()),
    );
    if let Some(d) = f["time_to_detect_s"].as_f64() {
        s += &format!(": detected in {d:.2} s");
    }
    match (f["time_to_recover_s"].as_f64(), f["steps_lost"].as_u64()) {
        (Some(r), Some(lost)) => s += &format!(", recovered in {r:.2} s, {lost} steps lost"),
        _ => s += ", not recovered",
    }
    s
}

/// A previous driver of this run that ended without writing its `end` event (its node died,
/// or it was killed): recorded as a `driver_lost` event and returned as a failure for
/// `launch.json` — the step its ranks had reached (the last step in `metrics.jsonl`) and the
/// time since its last event. `unended` is what [`unended_attempt`] found. The caller fills in
/// the recovery when the run resumes.
pub(crate) fn driver_lost(
    dir: &Path,
    unended: Option<(serde_json::Value, Option<f64>)>,
    events: &mut Events,
) -> Option<(serde_json::Value, u64)> {
    let (a, last_time) = unended?;
    let reached = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["step"].as_u64())
        .max()
        .unwrap_or(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let silent = last_time.map(|t| (now - t).max(0.0));
    tracing::warn!(
        "the previous driver of this run ended without recording its end (its node was lost, or \
         it was killed) in attempt {} at step {reached}; resuming from the newest checkpoint",
        a["attempt"]
    );
    let ev = json!({"event": "driver_lost", "kind": "driver_lost", "attempt": a["attempt"],
        "rank": null, "host": a["host"], "nodes": a["nodes"], "step": reached,
        "time_to_detect_s": silent,
        "detail": "the previous driver ended without writing its end event"});
    events.log(ev.clone());
    Some((ev, reached))
}

/// The last `attempt` event of `dir/events.jsonl` when no `end` event follows it (a driver
/// that did not finish its record), and the time of the file's last event.
pub(crate) fn unended_attempt(dir: &Path) -> Option<(serde_json::Value, Option<f64>)> {
    let text = std::fs::read_to_string(dir.join("events.jsonl")).ok()?;
    let mut last_attempt: Option<serde_json::Value> = None;
    let mut last_time = None;
    let mut ended = true;
    for v in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        last_time = v["time"].as_f64().or(last_time);
        match v["event"].as_str() {
            Some("attempt") => {
                ended = false;
                last_attempt = Some(v);
            }
            Some("end") => ended = true,
            _ => {}
        }
    }
    Some((last_attempt.filter(|_| !ended)?, last_time))
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.reserve);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_names_its_file_and_the_reserve_is_kept_for_the_end() {
        let d = std::env::temp_dir().join(format!("weft-record-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let ev = Events::open(&d).unwrap();
        assert_eq!(
            std::fs::metadata(d.join(".record-reserve")).unwrap().len(),
            RESERVE
        );
        // A target that cannot be written (a directory in the way): the error names the file
        // and no temporary remains; the reserve stays for the end of the record.
        std::fs::create_dir_all(d.join("launch.json/x")).unwrap();
        let e = write_atomic(&d.join("launch.json"), b"{}").unwrap_err();
        assert!(format!("{e:#}").contains("launch.json"), "{e:#}");
        assert!(!d.join("launch.json.tmp").exists());
        assert!(d.join(".record-reserve").exists());
        std::fs::remove_dir_all(d.join("launch.json")).unwrap();
        let mut ev = ev;
        ev.finish(&d, &json!({"outcome": "finished"}), json!({"event": "end"}));
        assert!(!d.join(".record-reserve").exists());
        assert!(std::fs::read_to_string(d.join("launch.json"))
            .unwrap()
            .contains("finished"));
        assert!(std::fs::read_to_string(d.join("events.jsonl"))
            .unwrap()
            .contains("\"end\""));
        drop(ev);
        let _ = std::fs::remove_dir_all(&d);
    }
}
