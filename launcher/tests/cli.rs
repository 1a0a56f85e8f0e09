//! The `weft` binary, run for real.

use std::process::Command;

fn weft(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .expect("weft runs")
}

#[test]
fn info_lists_the_devices() {
    let out = weft(&["info"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cpu : cpu ("), "{text}");
    assert!(text.lines().any(|l| l.starts_with("cuda: ")), "{text}");
}

#[test]
fn kernel_benchmark_reports_ratios_against_measured_peak() {
    let out = weft(&["bench", "kernels", "--quick", "--min-ms", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let peak: f64 = text
        .lines()
        .find(|l| l.starts_with("peak"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no peak line in:\n{text}"));
    assert!(peak > 0.0);
    let matmul_rows = text
        .lines()
        .filter(|l| l.contains(" -> ") && l.contains('%'))
        .count();
    assert_eq!(matmul_rows, 4, "{text}");
    let attention_rows: Vec<&str> = text.lines().filter(|l| l.contains("T=256")).collect();
    assert_eq!(attention_rows.len(), 2, "{text}");
    for row in attention_rows {
        let tok_s: f64 = row
            .split_whitespace()
            .rev()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .expect("fwd tok/s");
        assert!(tok_s > 0.0, "{row}");
    }
}

#[test]
fn an_unknown_subcommand_is_a_usage_error() {
    let out = weft(&["bench", "nonsense"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand"));
}

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

#[test]
fn a_bad_config_is_refused_before_training_naming_the_key() {
    let cfg = format!("{ROOT}/configs/dit-tiny.toml");
    let out = weft(&[
        "train",
        &cfg,
        "--set",
        "model.heads=3",
        "--set",
        "job.out_dir=\"/nonexistent/x\"",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`model.heads` (3) must divide model.width (128)"),
        "{err}"
    );
    let ok = weft(&[
        "config",
        &format!("{ROOT}/configs/llama-8b.toml"),
        "--set",
        "training.skip_memory_check=true",
    ]);
    assert!(String::from_utf8_lossy(&ok.stdout).contains("parameters: 8030261248"));
}

/// `weft config` prints the memory estimate and refuses a model no machine can hold, with
/// the numbers; a value of the wrong type is named by its key.
#[test]
fn config_refuses_what_cannot_fit_with_the_numbers() {
    let cfg = format!("{ROOT}/configs/gpt-tiny.toml");
    let ok = weft(&["config", &cfg]);
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(
        text.contains("peak per rank") && text.contains(": fits"),
        "{text}"
    );
    let big = [
        "config",
        &cfg,
        "--set",
        "model.width=131072",
        "--set",
        "model.depth=577",
        "--set",
        "model.heads=1024",
        "--set",
        "model.kv_heads=1024",
        "--set",
        "model.mlp_hidden=14336",
    ];
    let out = weft(&big);
    assert!(!out.status.success());
    let (text, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        text.contains("42.9 T parameters") && text.contains("optimizer state"),
        "{text}"
    );
    assert!(
        err.contains("does not fit: needs") && err.contains("short"),
        "{err}"
    );
    let out = weft(&["config", &cfg, "--set", "model.width=big"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`model.width` invalid type: string \"big\", expected usize"),
        "{err}"
    );
}

/// A dry run checks the mesh against the model (and the memory) before anything starts.
#[test]
fn a_dry_run_refuses_a_mesh_the_model_cannot_divide() {
    let cfg = format!("{ROOT}/configs/dit-tiny.toml");
    let dir = tempfile::tempdir().unwrap();
    let out_dir = format!("job.out_dir=\"{}\"", dir.path().display());
    let out = weft(&[
        "launch",
        &cfg,
        "--dry-run",
        "--set",
        &out_dir,
        "--set",
        "parallel.dp_shard=100000",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`parallel.dp_shard` (100000) must not exceed"),
        "{err}"
    );
    let ok = weft(&[
        "launch",
        &cfg,
        "--dry-run",
        "--set",
        &out_dir,
        "--set",
        "parallel.dp_shard=2",
    ]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // A shard group the model divides, but more ranks than this machine holds.
    let out = weft(&[
        "launch",
        &cfg,
        "--dry-run",
        "--set",
        &out_dir,
        "--set",
        "parallel.dp_shard=4096",
        "--set",
        "training.micro_batch=64",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not fit in memory") && err.contains("4096 ranks on this machine"),
        "{err}"
    );
}

#[test]
fn train_then_sample_a_tiny_dit_end_to_end() {
    let dir = std::env::temp_dir().join(format!("weft-cli-{}", std::process::id()));
    let cfg = format!("{ROOT}/configs/dit-tiny.toml");
    let out_dir = format!("job.out_dir=\"{}\"", dir.display());
    let sets = [
        "model.width=32",
        "model.depth=1",
        "model.heads=2",
        "model.latent=[2, 8, 8, 3]",
        "model.patch=[1, 4, 4]",
        "training.steps=3",
        "training.micro_batch=2",
        "training.val_batches=1",
        "optimizer.warmup_steps=1",
        "training.peak_flops=1e11",
    ];
    let mut args = vec!["train", cfg.as_str(), "--no-progress", "--set", out_dir.as_str()];
    for s in &sets {
        args.extend(["--set", s]);
    }
    let out = weft(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("val loss"));
    let run = dir.join("dit-tiny");
    let s = weft(&[
        "sample",
        run.to_str().unwrap(),
        "--classes",
        "2",
        "--per-class",
        "1",
        "--steps",
        "2",
    ]);
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    assert!(run.join("samples/samples.gif").exists() && run.join("samples/samples.png").exists());
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"loss\"")).count(), 3);
    std::fs::remove_dir_all(&dir).ok();
}

/// `weft coord-check` on the tiny DiT: muP's activations stay flat in width, SP's read-out
/// grows; the CSV and plots are written.
#[test]
fn coord_check_finds_mup_flat_and_sp_growing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/dit-tiny.toml");
    let out = dir.path().to_str().unwrap();
    let out = weft(&[
        "coord-check",
        cfg,
        "--widths",
        "16,32,64",
        "--steps",
        "3",
        "--out",
        out,
        "--set",
        "model.depth=1",
        "--set",
        "training.micro_batch=4",
        "--set",
        "optimizer.lr=0.01",
        "--set",
        "training.peak_flops=1e11",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("muP: pass") && text.contains("SP: grows with width"),
        "{text}"
    );
    let csv = std::fs::read_to_string(dir.path().join("coord.csv")).unwrap();
    // 2 parametrizations × 3 widths × 3 steps × 5 layer types (no read-out at step 1: the
    // DiT's final layer starts at zero), plus the header.
    assert!(csv.lines().count() > 80, "{csv}");
    for f in ["coord.svg", "coord.png"] {
        assert!(std::fs::metadata(dir.path().join(f)).unwrap().len() > 1000, "{f}");
    }
}

/// `training.device = "cuda"` on a machine that cannot run CUDA: `weft train` and `weft
/// launch` fail with the reason, before any rank starts or the run directory is made.
#[test]
fn a_cuda_device_this_machine_lacks_is_refused_before_any_rank_starts() {
    let Err(why) = weft_kernels::cuda::CudaBackend::new(0) else {
        eprintln!("skipped: this machine has a CUDA device");
        return;
    };
    let want = format!("training.device = \"cuda\": {why}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!("{ROOT}/configs/dit-tiny.toml");
    let out_dir = format!("job.out_dir={:?}", dir.path().display().to_string());
    for (what, mesh) in [
        ("train", "parallel.dp_shard=1"),
        ("launch", "parallel.dp_shard=2"),
    ] {
        let out = weft(&[
            what,
            &cfg,
            "--set",
            "training.device=\"cuda\"",
            "--set",
            mesh,
            "--set",
            &out_dir,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "weft {what}: {err}");
        assert!(err.contains(&want), "weft {what}: {err}");
        assert!(!err.contains("rank"), "weft {what} started ranks: {err}");
        assert!(
            out.stdout.is_empty(),
            "weft {what}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let made: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(made.is_empty(), "weft {what} wrote {made:?}");
    }
    // The launch's plan: refused for `cuda`, given for `cpu`, so the refusal is the device's.
    for (device, ok) in [("cuda", false), ("cpu", true)] {
        let set = format!("training.device={device:?}");
        let out = weft(&["launch", "--dry-run", &cfg, "--set", &set, "--set", &out_dir]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{device}: {err}");
        assert_eq!(err.contains(&want), !ok, "{device}: {err}");
    }
}

/// `weft bench mfu` on the CPU backend: the step's rate against the GEMM peak measured in the
/// same run, its JSON, and the PyTorch side through the script protocol (here a stand-in
/// script that reports a fixed step time, so the ratio column is checked exactly; the real
/// `tools/bench_torch.py` needs PyTorch, which it reports as missing with status 3).
#[test]
fn mfu_benchmark_reports_the_step_against_the_measured_peak_and_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = format!("job.out_dir=\"{}\"", dir.path().display());
    let torch = dir.path().join("torch.py");
    std::fs::write(
        &torch,
        "import json, sys\nspec = json.loads(sys.argv[1])['mfu']\n\
         assert spec['kind'] == 'gpt' and spec['device'] == 'cpu' and spec['dtype'] == 'f32'\n\
         assert spec['batch'] == 2 and spec['steps'] == 1 and spec['model']['width'] > 0\n\
         print(json.dumps({'torch': 'stand-in', 'eager_step_s': 10.0}))\n",
    )
    .unwrap();
    let out = weft(&[
        "bench",
        "mfu",
        "../configs/gpt-tiny.toml",
        "--steps",
        "1",
        "--set",
        &out_dir,
        "--set",
        "training.micro_batch=2",
        "--script",
        torch.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("GEMM peak on this device"), "{text}");
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("gpt-tiny/bench_mfu.json")).unwrap())
            .unwrap();
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{j}");
    let (weft, torch) = (&rows[0], &rows[1]);
    assert_eq!(weft["name"], "weft");
    let (step, flops, peak) = (
        weft["step_s"].as_f64().unwrap(),
        j["flops_per_step"].as_f64().unwrap(),
        j["peak_flops"].as_f64().unwrap(),
    );
    assert!(step > 0.0 && flops > 0.0 && peak > 0.0, "{j}");
    let mfu = weft["mfu"].as_f64().unwrap();
    assert!((mfu - flops / step / peak).abs() < 1e-9 * mfu, "{j}");
    assert!(mfu > 0.0 && mfu < 1.0, "MFU {mfu} outside (0, 1): {j}");
    assert_eq!(j["samples_per_step"], 2);
    let tokens = weft["tokens_per_s"].as_f64().unwrap();
    assert!((tokens - 2.0 * j["tokens_per_sample"].as_f64().unwrap() / step).abs() < 1e-6 * tokens);
    // The stand-in's 10 s step: weft's speed-up over it is 10 s / weft's step.
    assert_eq!(torch["step_s"], 10.0);
    assert!((torch["weft_speedup"].as_f64().unwrap() - 10.0 / step).abs() < 1e-9 * 10.0 / step);
    assert!(
        text.lines().any(|l| l.starts_with("PyTorch eager stand-in")),
        "{text}"
    );
}

/// A SLURM job of CUDA ranks asks for a GPU per rank on every node unless `--gres` says
/// otherwise; a CPU job asks for none.
#[test]
fn a_slurm_job_on_cuda_asks_for_one_gpu_per_rank() {
    if !cfg!(feature = "mpi") {
        return; // --slurm needs MPI ranks; this build has none (the test says so by passing)
    }
    let cfg = format!("{ROOT}/configs/dit-tiny.toml");
    let dir = tempfile::tempdir().unwrap();
    let out_dir = format!("job.out_dir=\"{}\"", dir.path().display());
    let job = |device: &str, extra: &[&str]| {
        let dev = format!("training.device=\"{device}\"");
        let mut args = vec![
            "launch",
            "--slurm",
            "--nodes",
            "2",
            "--dry-run",
            &cfg,
            "--set",
            &out_dir,
            "--set",
            "parallel.dp_shard=8",
            "--set",
            &dev,
        ];
        args.extend(extra);
        weft(&args)
    };
    let out = job("cpu", &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("--gres"), "{text}");
    let out = job("cuda", &[]);
    if !cfg!(any(feature = "cuda", feature = "cuda-12")) {
        assert!(!out.status.success());
        return;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("#SBATCH --ntasks-per-node=4\n"), "{text}");
    assert!(text.contains("#SBATCH --gres=gpu:4\n"), "{text}");
    let out = job("cuda", &["--gres", "gpu:h100:8"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("#SBATCH --gres=gpu:h100:8\n") && !text.contains("gpu:4"),
        "{text}"
    );
}
