//! A rank whose driver is gone stops by itself. The driver's store pings every joined rank
//! (see `crate::store`); a rank that hears nothing from it for `launch.orphan_timeout_s` —
//! its connection closed (the driver died) or went silent (the driver's node died) — asks
//! the trainer to save and stop (the flag SIGTERM sets: the ranks agree on it at the next
//! step and exit 0), and if it is still running
//! `launch.orphan_timeout_s` later (stuck in a collective with a rank that died with the
//! driver), exits at once with [`ORPHAN_EXIT`]. A rank whose attempt the driver ended (it
//! says so) exits at once.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Exit status of a rank that ended itself after losing its driver (EX_TEMPFAIL: start the
/// run again to continue).
pub const ORPHAN_EXIT: i32 = 75;

/// The longest line the driver sends.
const MAX_LINE: usize = 64 * 1024;

/// How often the reader wakes to check the time without a message.
const TICK: Duration = Duration::from_millis(250);

/// Watch the store connection `rd` for the rest of the process (a thread): pass the
/// preflight's verdicts on to `verdicts`, and end the rank as the module says once nothing
/// has come for `timeout`. Events are recorded in `<run_dir>/events.jsonl`.
pub(super) fn watch(
    rd: BufReader<TcpStream>,
    verdicts: Sender<String>,
    (rank, timeout, run_dir): (usize, Duration, PathBuf),
) -> std::io::Result<()> {
    rd.get_ref().set_read_timeout(Some(TICK))?;
    std::thread::Builder::new()
        .name("weft-orphan-watch".into())
        .spawn(move || {
            let why = wait_for_loss(rd, verdicts, timeout);
            orphaned(rank, &why, timeout, &run_dir)
        })?;
    Ok(())
}

/// Read the driver's lines until none has come for `timeout`; returns what happened to the
/// connection. Verdicts (`go`, `stop`) go to `verdicts`, which is dropped once the connection
/// is lost (a rank waiting for one then stops).
fn wait_for_loss(mut rd: BufReader<TcpStream>, verdicts: Sender<String>, timeout: Duration) -> String {
    let mut verdicts = Some(verdicts);
    let mut last = Instant::now();
    let mut line = String::new();
    let mut lost: Option<String> = None;
    loop {
        if lost.is_some() {
            verdicts = None;
            std::thread::sleep(TICK);
        } else {
            match rd.read_line(&mut line) {
                Ok(0) => lost = Some("its connection closed".into()),
                Ok(_) if line.ends_with('\n') => {
                    last = Instant::now();
                    if line.contains("\"go\"") || line.contains("\"stop\"") {
                        if let Some(v) = &verdicts {
                            let _ = v.send(std::mem::take(&mut line));
                        }
                    } else if line.contains("\"ended\"") {
                        abandoned(line.trim());
                    } else if line.contains("\"error\"") {
                        tracing::warn!("the run's store: {}", line.trim());
                    }
                    line.clear();
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => lost = Some(format!("its connection failed: {e}")),
            }
            if line.len() > MAX_LINE {
                lost = Some("it sent a line longer than 64 KiB".into());
            }
        }
        if last.elapsed() >= timeout {
            return lost.unwrap_or_else(|| "it went silent".into());
        }
    }
}

/// The rank lost its driver (`why`): save and stop, and exit at once if still running
/// `timeout` later. (Under SLURM the job is requeued by the sentinels, which ask SLURM whether
/// the driver's node is really lost — see `crate::sentinel` — not by a rank that may only have
/// lost its connection.)
fn orphaned(rank: usize, why: &str, timeout: Duration, run_dir: &std::path::Path) -> ! {
    let t = Instant::now();
    let secs = timeout.as_secs_f64();
    let detail = format!(
        "lost the run's driver ({why}; nothing from it for {secs} s, launch.orphan_timeout_s): \
         saving and stopping"
    );
    tracing::error!(rank, "{detail}");
    record(
        run_dir,
        serde_json::json!({"event": "orphaned", "rank": rank, "detail": detail}),
    );
    weft_trainer::ckpt::stop_flag().store(true, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(timeout.saturating_sub(t.elapsed()));
    tracing::error!(
        rank,
        "still running {secs} s after the stop request (stuck in a collective with a rank that \
         is gone?): exiting with status {ORPHAN_EXIT}"
    );
    record(
        run_dir,
        serde_json::json!({"event": "orphan_exit", "rank": rank, "status": ORPHAN_EXIT}),
    );
    let _ = std::io::stderr().flush();
    // At once: no exit handlers, which could wait on the collective that is stuck.
    signal_hook::low_level::exit(ORPHAN_EXIT)
}

/// The driver ended this rank's attempt (`line` says so) and goes on without it: exit at
/// once, saving nothing (the next attempt owns the checkpoints) and requeueing nothing.
fn abandoned(line: &str) -> ! {
    tracing::error!("the run's driver ended this rank's attempt ({line}): exiting with status {ORPHAN_EXIT}");
    let _ = std::io::stderr().flush();
    signal_hook::low_level::exit(ORPHAN_EXIT)
}

/// Append `event` (with the time) to the run's `events.jsonl`, in one write.
fn record(run_dir: &std::path::Path, mut event: serde_json::Value) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    event["time"] = serde_json::json!(now.as_secs_f64());
    let path = run_dir.join("events.jsonl");
    let wrote = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{event}\n").as_bytes()));
    if let Err(e) = wrote {
        tracing::warn!("cannot record {event} in {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A driver on `listener` that sends `lines`, pings every 50 ms for `ping_for`, then
    /// closes the connection (`close`) or goes silent with it open.
    fn driver(listener: TcpListener, lines: &'static str, ping_for: Duration, close: bool) {
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(lines.as_bytes()).unwrap();
            let t = Instant::now();
            while t.elapsed() < ping_for {
                let _ = s.write_all(b"{\"ping\":true}\n");
                std::thread::sleep(Duration::from_millis(50));
            }
            if !close {
                std::thread::sleep(Duration::from_secs(30));
            }
        });
    }

    fn reader(listener: &TcpListener) -> BufReader<TcpStream> {
        let s = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        s.set_read_timeout(Some(TICK)).unwrap();
        BufReader::new(s)
    }

    #[test]
    fn a_rank_notices_a_closed_or_silent_driver_after_the_timeout_and_not_before() {
        for close in [true, false] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let rd = reader(&listener);
            driver(
                listener,
                "{\"go\":true}\n{\"ping\":true}\n",
                Duration::from_millis(1500),
                close,
            );
            let (tx, rx) = std::sync::mpsc::channel();
            let t = Instant::now();
            let timeout = Duration::from_secs(1);
            let why = wait_for_loss(rd, tx, timeout);
            let took = t.elapsed();
            assert_eq!(rx.recv().unwrap().trim(), "{\"go\":true}");
            // Pings for 1.5 s kept it supervised; then 1 s of nothing.
            assert!(took >= Duration::from_millis(2400), "{close}: {took:?}");
            assert!(took < Duration::from_secs(5), "{close}: {took:?}");
            let want = if close { "closed" } else { "went silent" };
            assert!(why.contains(want), "{close}: {why}");
            // The verdict channel is dropped once the connection is lost.
            assert!(rx.recv().is_err());
        }
    }
}
