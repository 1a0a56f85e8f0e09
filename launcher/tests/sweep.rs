//! `weft sweep` on this machine: a grid of tiny DiT runs (SP and muP × widths × learning
//! rates, and an isoFLOP grid over four compute budgets) trained two at a time, scored,
//! fitted and reported; a second invocation skips every finished run; a sweep stopped with
//! SIGTERM resumes its interrupted runs from their checkpoints and ends with the same
//! numbers as a sweep that was never stopped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn config() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs")).join("dit-tiny.toml")
}

/// A sweep file named `name` in `dir`, writing under `dir/out`.
fn sweep_file(dir: &Path, name: &str, set: &str, grids: &str) -> PathBuf {
    let text = format!(
        r#"name = "{name}"
base = "{base}"
out_dir = "{out}"
eval_samples = 16
head_dim = 8

[set]
"model.depth" = 1
"training.val_every" = 0
"training.val_batches" = 1
"training.peak_flops" = 1e11
"optimizer.warmup_steps" = 1
"mup.base_width" = 16
{set}

{grids}"#,
        base = config().display(),
        out = dir.join("out").display()
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn weft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    text
}

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

const SMALL: &str = "\"model.latent\" = [4, 8, 8, 3]\n\"training.micro_batch\" = 2\n\"training.steps\" = 4\n";

const GRIDS: &str = r#"[[grid]]
parametrization = ["sp", "mup"]
width = [16, 32]
lr = { from = 1e-3, to = 1e-2, num = 3 }

[[grid]]
parametrization = "mup"
width = [8, 16, 24]
compute = [2e8, 4e8, 8e8, 1.6e9]
"#;

#[test]
fn a_sweep_runs_its_grid_fits_and_reports_and_skips_finished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = sweep_file(dir.path(), "grid", SMALL, GRIDS);
    let f = file.to_str().unwrap();
    let text = ok(&weft(&["sweep", f, "--dry-run"]));
    assert!(text.contains("24 runs"), "{text}");
    assert!(
        text.contains("sp_w16_lr1e-3") && text.contains("mup_w24_C1.6e9"),
        "{text}"
    );

    let text = ok(&weft(&["sweep", f, "--jobs", "2"]));
    let out = dir.path().join("out/grid");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 24, "{csv}");
    let fits = json(&out.join("fits.json"));
    assert_eq!(
        fits["done"].as_u64().unwrap() + fits["diverged"].as_u64().unwrap(),
        24
    );
    // Two families (SP, muP) of two widths, each with a best rate; the shift is printed.
    let fams = fits["lr_transfer"].as_array().unwrap();
    assert_eq!(fams.len(), 2, "{fits}");
    for fam in fams {
        assert_eq!(fam["curves"].as_array().unwrap().len(), 2, "{fam}");
        assert!(fam["shift"].as_f64().unwrap() >= 1.0, "{fam}");
    }
    assert!(text.contains("best learning rate moves"), "{text}");
    // The isoFLOP study: 4 budgets of 3 sizes; the steps fall as the model grows.
    let sc = &fits["scaling"][0];
    assert_eq!(sc["budgets"].as_array().unwrap().len(), 4, "{sc}");
    let rows: Vec<serde_json::Value> = json(&out.join("results.json")).as_array().unwrap().clone();
    let steps = |name: &str| {
        rows.iter().find(|r| r["name"] == name).unwrap()["steps"]
            .as_u64()
            .unwrap()
    };
    assert!(steps("mup_w8_C1.6e9") > steps("mup_w24_C1.6e9"));
    assert!(steps("mup_w16_C1.6e9") >= 2 * steps("mup_w16_C4e8") - 1);
    for r in &rows {
        let c = r["compute"].as_f64().unwrap();
        if let Some(b) = r["point"]["compute"].as_f64() {
            // To within one step's FLOPs.
            assert!(
                (c - b).abs() <= r["flops_per_step"].as_f64().unwrap() * 0.51,
                "{r}"
            );
        }
        assert!(r["eval_loss"].as_f64().unwrap().is_finite(), "{r}");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("## Learning-rate transfer") && report.contains("## Scaling"),
        "{report}"
    );
    for p in ["lr_transfer.png", "lr_transfer.svg", "scaling.png", "scaling.svg"] {
        assert!(std::fs::metadata(out.join(p)).unwrap().len() > 1000, "{p}");
    }

    // Again: nothing to train, the same numbers.
    let before = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let text = ok(&weft(&["sweep", f]));
    assert!(text.contains("24 finished, 0 to train"), "{text}");
    assert_eq!(std::fs::read_to_string(out.join("results.csv")).unwrap(), before);
}

#[test]
fn a_stopped_sweep_resumes_its_runs_and_matches_one_never_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let grid = "[[grid]]\nwidth = [16, 32]\nlr = 3e-3\n";
    // Long enough to be stopped mid-run: 300 steps, a checkpoint every 25.
    let set = "\"training.micro_batch\" = 4\n\"training.steps\" = 300\n\"checkpoint.interval\" = 25\n";
    let stopped = sweep_file(dir.path(), "stopped", set, grid);
    let whole = sweep_file(dir.path(), "whole", set, grid);
    let child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["sweep", stopped.to_str().unwrap(), "--jobs", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let runs = dir.path().join("out/stopped/runs");
    let t = Instant::now();
    while !runs.join("w32_lr3e-3/checkpoints/latest").exists() {
        assert!(t.elapsed() < Duration::from_secs(120), "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let text = ok(&o);
    assert!(
        text.contains("stopped; unfinished runs keep their checkpoints"),
        "{text}"
    );
    assert!(!runs.join("w32_lr3e-3/result.json").exists(), "{text}");

    let text = ok(&weft(&["sweep", stopped.to_str().unwrap()]));
    let log = std::fs::read_to_string(runs.join("w32_lr3e-3/train.log")).unwrap();
    assert!(log.contains("resumed"), "{log}\n{text}");
    ok(&weft(&["sweep", whole.to_str().unwrap()]));
    let a = json(&dir.path().join("out/stopped/results.json"));
    let b = json(&dir.path().join("out/whole/results.json"));
    for (x, y) in a.as_array().unwrap().iter().zip(b.as_array().unwrap()) {
        assert_eq!(x["name"], y["name"]);
        assert_eq!(x["eval_loss"], y["eval_loss"], "resumed run differs: {x} vs {y}");
        assert_eq!(x["train_loss"], y["train_loss"], "{x} vs {y}");
    }
}
