//! One run directory, one owner, and a record that survives a full disk: a second `weft launch`
//! (or `weft train`) of a running run is refused naming the holder and the first finishes
//! untouched; a run directory on a disk that fills up still gets `launch.json` and the `end`
//! event, and no temporary files are left behind.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn config() -> std::path::PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs")).join("dit-tiny.toml")
}

fn weft(what: &str, out: &Path, name: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weft"));
    c.arg(what).arg(config()).args(common::tiny_run(out, name, extra));
    c
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_second_start_of_a_running_run_is_refused_and_the_first_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let out = weft("launch", dir.path(), "clean", &[]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = json(&dir.path().join("clean/sharded.json"))["params_digest"].clone();

    // The first launch, slowed so the others land while it runs.
    let mut first = weft("launch", dir.path(), "twice", &[])
        .env("WEFT_FAULT", "slow:0:1")
        .env("WEFT_FAULT_SLOW_MS", "150")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let metrics = dir.path().join("twice/metrics.jsonl");
    let t = Instant::now();
    while !metrics.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the first launch never trained"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for what in ["launch", "train"] {
        let second = weft(what, dir.path(), "twice", &[]).output().unwrap();
        let err = String::from_utf8_lossy(&second.stderr);
        assert!(
            !second.status.success(),
            "a second `weft {what}` ran beside the first"
        );
        assert!(
            err.contains("is in use by `weft launch`") && err.contains(&format!("pid {}", first.id())),
            "{err}"
        );
        assert!(!err.contains("stack backtrace"), "{err}");
    }
    assert!(first.wait().unwrap().success());
    let s = json(&dir.path().join("twice/launch.json"));
    assert_eq!(
        (s["outcome"].as_str(), s["attempts"].as_u64()),
        (Some("finished"), Some(1)),
        "{s}"
    );
    assert_eq!(
        json(&dir.path().join("twice/sharded.json"))["params_digest"],
        want
    );
    // Released: the record says so, and the next holder takes it without a word about stale
    // locks.
    assert_eq!(json(&dir.path().join("twice/lock"))["released"], true);
}

#[test]
fn a_full_run_directory_still_gets_its_record() {
    let dir = tempfile::tempdir().unwrap();
    // Room for the record's reserve and a little more: the ranks' checkpoints and weights do
    // not fit, so the run fails; what matters is that the driver says so in launch.json.
    let Some(small) = common::Mount::with_size(&dir.path().join("small"), (1 << 20) + (160 << 10)) else {
        return;
    };
    let out = weft(
        "launch",
        &small.0,
        "full",
        &["launch.max_restarts=1", "launch.min_free_disk_gib=0"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let run = small.0.join("full");
    let s = json(&run.join("launch.json"));
    assert!(s["outcome"].is_string(), "{s}");
    let events = std::fs::read_to_string(run.join("events.jsonl")).unwrap();
    assert!(
        events.lines().any(|l| l.contains("\"event\":\"end\"")),
        "no end event:\n{events}\n{err}"
    );
    let leftovers: Vec<_> = walk(&run)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "tmp") || p.ends_with(".record-reserve"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}\n{err}");
    assert!(!err.contains("stack backtrace"), "{err}");
}

fn walk(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
