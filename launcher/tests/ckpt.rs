//! Checkpoints through the `weft` binary: a SIGTERM saves and exits 0 and the resumed run
//! ends with the bits of an uninterrupted one; `weft ckpt inspect|verify|export`; and a full
//! disk fails saves without stopping training or touching the last good checkpoint.

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
    weft_trainer::export::load(&run.join("model.safetensors"), weft_trainer::train::layout_of)
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
    let (_, exported) = weft_trainer::export::load(&file, weft_trainer::train::layout_of).unwrap();
    assert_eq!(exported.len(), params(&dir.path().join("straight")).len());
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
            assert!(s.trim().ends_with(&exported.len().to_string()), "{s}");
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
