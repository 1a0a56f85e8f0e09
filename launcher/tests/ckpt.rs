//! Checkpoints through the `weft` binary: a SIGTERM saves and exits 0 and the resumed run
//! ends with the bits of an uninterrupted one; `weft ckpt inspect|verify|export`; and a full
//! disk fails saves without stopping training or touching the last good checkpoint.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn weft() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weft"))
}

fn config() -> std::path::PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs")).join("dit-tiny.toml")
}

fn sets(out: &Path, name: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "model.width=32",
        "model.depth=2",
        "model.heads=2",
        "model.latent=[4, 8, 8, 3]",
        "training.micro_batch=4",
        "training.val_every=0",
        "training.val_batches=1",
        "training.peak_flops=1e11",
        "optimizer.warmup_steps=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("job.out_dir=\"{}\"", out.display()));
    v.push(format!("job.name=\"{name}\""));
    v.extend(extra.iter().map(|s| s.to_string()));
    v.into_iter().flat_map(|s| ["--set".to_string(), s]).collect()
}

fn ok(out: Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err + &String::from_utf8_lossy(&out.stdout)
}

fn params(run: &Path) -> Vec<f32> {
    weft_trainer::export::load(&run.join("model.safetensors"), weft_trainer::job::layout_of)
        .unwrap()
        .1
}

#[test]
fn sigterm_saves_and_exits_0_and_resume_matches_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let steps = "training.steps=60";
    ok(weft()
        .arg("train")
        .arg(config())
        .args(sets(dir.path(), "straight", &[steps]))
        .arg("--no-progress")
        .output()
        .unwrap());
    let child = weft()
        .arg("train")
        .arg(config())
        .args(sets(dir.path(), "pre", &[steps]))
        .arg("--no-progress")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until a few steps are done, then preempt.
    let metrics = dir.path().join("pre/metrics.jsonl");
    let t = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |s| s.matches("\"step\"").count()) < 3 {
        assert!(t.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let log = ok(out);
    assert!(log.contains("stopping early"), "{log}");
    let root = dir.path().join("pre/checkpoints");
    let step: u64 = {
        let latest = std::fs::read_to_string(root.join("latest")).unwrap();
        latest.trim().trim_start_matches("step_").parse().unwrap()
    };
    assert!((3..60).contains(&step), "saved at step {step}");
    // The CLI sees it.
    let inspect = ok(weft().args(["ckpt", "inspect"]).arg(&root).output().unwrap());
    assert!(
        inspect.contains(&format!("step {step}")) && inspect.contains("model.final.linear.weight"),
        "{inspect}"
    );
    let verify = ok(weft().args(["ckpt", "verify"]).arg(&root).output().unwrap());
    assert!(verify.contains(": ok"), "{verify}");
    // Resume to the end: the uninterrupted run's bits.
    ok(weft()
        .arg("train")
        .arg(config())
        .args(sets(dir.path(), "pre", &[steps]))
        .args(["--no-progress", "--resume", "auto"])
        .output()
        .unwrap());
    assert!(params(&dir.path().join("pre")) == params(&dir.path().join("straight")));
    // Export: one safetensors file equal to the checkpoint's parameters.
    let file = dir.path().join("exported.safetensors");
    ok(weft()
        .args(["ckpt", "export"])
        .arg(&root)
        .arg("--to")
        .arg(&file)
        .output()
        .unwrap());
    let (cfg, exported) = weft_trainer::export::load(&file, weft_trainer::job::layout_of).unwrap();
    assert_eq!(exported.len(), params(&dir.path().join("straight")).len());
    // The file holds the parameters, not the flat buffer's alignment padding.
    let count = weft_trainer::job::layout_of(&cfg).params();
    let py = Command::new("python3")
        .args([
            "-c",
            "import sys; from safetensors.numpy import load_file; t = load_file(sys.argv[1]); \
             print(len(t), sum(v.size for v in t.values()))",
        ])
        .arg(&file)
        .output();
    match py {
        Ok(o) if o.status.success() => {
            let s = String::from_utf8_lossy(&o.stdout);
            assert!(s.trim().ends_with(&format!(" {count}")), "{s}");
        }
        _ => eprintln!(
            "skipped: the safetensors Python package is not installed (pip install safetensors numpy)"
        ),
    }
}

#[test]
fn a_full_disk_fails_saves_but_not_training_nor_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // Size of one checkpoint of this model, measured on a normal disk.
    let probe = dir.path().join("probe");
    ok(weft()
        .arg("train")
        .arg(config())
        .args(sets(
            dir.path(),
            "probe",
            &["training.steps=1", "checkpoint.interval=1"],
        ))
        .arg("--no-progress")
        .output()
        .unwrap());
    let one = common::checkpoint_bytes(&probe.join("checkpoints"));
    // A filesystem with room for one checkpoint and a half.
    let Some(small) = common::Mount::room_for_1_5(&dir.path().join("small"), one) else {
        return;
    };
    let mnt = &small.0;
    let ckdir = format!("checkpoint.dir=\"{}\"", mnt.display());
    let out = weft()
        .arg("train")
        .arg(config())
        .args(sets(
            dir.path(),
            "full",
            &[
                "training.steps=4",
                "checkpoint.interval=1",
                "checkpoint.keep=1",
                &ckdir,
            ],
        ))
        .arg("--no-progress")
        .output()
        .unwrap();
    let verified = weft_checkpoint::latest_valid(mnt)
        .unwrap()
        .map(|c| c.manifest.step);
    drop(small);
    let log = ok(out);
    assert!(log.contains("checkpoint save failed"), "{log}");
    assert!(log.contains("4 steps"), "training finished: {log}");
    assert_eq!(verified, Some(1), "the first checkpoint stays the good one");
}

fn fails(out: Output) -> String {
    let log = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "expected a failure: {log}");
    log
}

/// Every path under `dir` with its size (files) — what a listing would show.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out = vec![];
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::metadata(&p).unwrap();
            let name = p.strip_prefix(dir).unwrap().display().to_string();
            if m.is_dir() {
                todo.push(p);
                out.push((name + "/", 0));
            } else {
                out.push((name, m.len()));
            }
        }
    }
    out.sort();
    out
}

/// Damage a single-process run's checkpoint of step `step`: a flipped data byte, a cut data
/// file, or an unreadable manifest.
fn damage(root: &Path, step: u64, how: &str) {
    let dir = root.join(format!("step_{step:08}"));
    let data = dir.join("rank_00000.bin");
    match how {
        "flip" => {
            let mut b = std::fs::read(&data).unwrap();
            b[100] ^= 0x08;
            std::fs::write(&data, b).unwrap();
        }
        "cut" => {
            let b = std::fs::read(&data).unwrap();
            std::fs::write(&data, &b[..b.len() - 10]).unwrap();
        }
        _ => std::fs::write(dir.join("manifest.json"), "{\"version\": 1, \"st").unwrap(),
    }
}

fn train(dir: &Path, name: &str, extra: &[&str], resume: Option<&str>) -> Output {
    let mut c = weft();
    c.arg("train")
        .arg(config())
        .args(sets(dir, name, extra))
        .arg("--no-progress");
    if let Some(r) = resume {
        c.args(["--resume", r]);
    }
    c.output().unwrap()
}

#[test]
fn all_checkpoints_damaged_refuses_to_resume_and_changes_nothing_until_told_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let root = run.join("checkpoints");
    let saves = ["training.steps=3", "checkpoint.interval=1", "checkpoint.keep=5"];
    ok(train(dir.path(), "run", &saves, None));
    damage(&root, 1, "cut");
    damage(&root, 2, "manifest");
    damage(&root, 3, "flip");
    let before = listing(&root);
    let metrics = std::fs::read(run.join("metrics.jsonl")).unwrap();
    // One process, and a mesh of threads (rank 0 refuses; no rank hangs).
    for mesh in [None, Some("parallel.dp_shard=2")] {
        let mut extra = saves.to_vec();
        extra[0] = "training.steps=6";
        extra.extend(mesh);
        let log = fails(train(dir.path(), "run", &extra, Some("auto")));
        for (step, why) in [
            ("step_00000001", "truncated"),
            ("step_00000002", "unreadable manifest"),
            ("step_00000003", "fails its checksum"),
        ] {
            assert!(
                log.lines().any(|l| l.contains(step) && l.contains(why)),
                "{mesh:?}: {step} refused for `{why}`: {log}"
            );
        }
        assert!(log.contains("--resume fresh"), "{log}");
        assert_eq!(
            listing(&root),
            before,
            "{mesh:?}: nothing deleted, moved or written"
        );
        assert!(std::fs::read(run.join("metrics.jsonl")).unwrap() == metrics);
    }
    // `verify` lists each; exit 1.
    let log = fails(weft().args(["ckpt", "verify"]).arg(&run).output().unwrap());
    assert_eq!(log.matches(": damaged: ").count(), 3, "{log}");
    // Told to start over: step 0, saying so; the damaged checkpoints kept aside.
    let log = ok(train(dir.path(), "run", &saves, Some("fresh")));
    assert!(
        log.contains("checkpoint.resume = fresh: starting at step 0"),
        "{log}"
    );
    assert!(log.contains("3 steps"), "{log}");
    let aside: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("replaced_"))
        .collect();
    assert_eq!(aside.len(), 1, "{:?}", listing(&root));
    let kept = listing(&root.join(&aside[0]));
    for (name, _) in before.iter().filter(|(n, _)| n.starts_with("step_")) {
        assert!(kept.iter().any(|(k, _)| k == name), "{name} kept: {kept:?}");
    }
    let first = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(
        first.lines().next().unwrap().contains("\"start\""),
        "metrics start over"
    );
    ok(weft().args(["ckpt", "verify"]).arg(&run).output().unwrap());
}

#[test]
fn the_newest_valid_checkpoint_wins_and_verify_inspect_take_a_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let root = run.join("checkpoints");
    let saves = |steps: &'static str| vec![steps, "checkpoint.interval=1", "checkpoint.keep=5"];
    ok(train(dir.path(), "run", &saves("training.steps=4"), None));
    // All good: exit 0, one line each; `latest` pointing back is reported, not damage.
    std::fs::write(root.join("latest"), "step_00000002").unwrap();
    let log = ok(weft().args(["ckpt", "verify"]).arg(&run).output().unwrap());
    assert_eq!(log.matches(": ok (step ").count(), 4, "{log}");
    assert!(
        log.contains("names step_00000002; --resume auto takes step_00000004"),
        "{log}"
    );
    let log = ok(weft().args(["ckpt", "inspect"]).arg(&run).output().unwrap());
    assert!(
        log.contains("step 4,") && log.contains("model.final.linear.weight"),
        "{log}"
    );
    // Resume: the newest valid checkpoint beats `latest`, with a line saying so.
    let log = ok(train(dir.path(), "run", &saves("training.steps=5"), Some("auto")));
    assert!(
        log.contains("`latest` names step_00000002, but step_00000004 is newer and verifies"),
        "{log}"
    );
    assert!(
        log.contains("resumed") && log.contains("checkpoints/step_00000004\n"),
        "{log}"
    );
    // Damage the two newest: exit 1 listing them while the older ones are fine.
    damage(&root, 4, "flip");
    damage(&root, 5, "cut");
    let log = fails(weft().args(["ckpt", "verify"]).arg(&run).output().unwrap());
    for step in ["step_00000004", "step_00000005"] {
        assert!(
            log.lines().any(|l| l.contains(&format!("{step}: damaged: "))),
            "{log}"
        );
    }
    assert_eq!(log.matches(": ok (step ").count(), 3, "{log}");
    assert!(log.contains("2 of 5 checkpoints damaged"), "{log}");
    // One checkpoint directory: its own verdict.
    ok(weft()
        .args(["ckpt", "verify"])
        .arg(root.join("step_00000003"))
        .output()
        .unwrap());
    fails(
        weft()
            .args(["ckpt", "verify"])
            .arg(root.join("step_00000004"))
            .output()
            .unwrap(),
    );
    // Inspect the run: the newest that verifies, naming the refused ones.
    let log = ok(weft().args(["ckpt", "inspect"]).arg(&run).output().unwrap());
    assert!(log.contains("step 3,") && log.contains("refused"), "{log}");
    // Resuming goes past them, keeps them aside, and the run is whole again.
    let log = ok(train(dir.path(), "run", &saves("training.steps=6"), Some("auto")));
    assert!(
        log.contains("resuming from") && log.contains("checkpoints/step_00000003\n"),
        "{log}"
    );
    ok(weft().args(["ckpt", "verify"]).arg(&run).output().unwrap());
    let refused = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("refused_"))
        .expect("a refused_ directory");
    let why = std::fs::read_to_string(refused.join("why.txt")).unwrap();
    assert!(
        why.contains("step_00000004: piece of") && why.contains("step_00000005: "),
        "{why}"
    );
}
