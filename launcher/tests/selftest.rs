//! `weft selftest cpu --quick`, run for real: the CPU backend against its own f64 runs, the
//! table and the JSON it writes, and a deliberately wrong op caught by the comparison.

use serde_json::Value;
use std::process::{Command, Output};

fn weft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .expect("weft runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every method of `Ops` (50): each must have a row.
const OPS: &[&str] = &[
    "matmul_forward",
    "matmul_backward",
    "layernorm_forward",
    "layernorm_backward",
    "rmsnorm_forward",
    "rmsnorm_backward",
    "gelu_forward",
    "gelu_backward",
    "silu_forward",
    "silu_backward",
    "swiglu_forward",
    "swiglu_backward",
    "modulate_forward",
    "modulate_backward",
    "gate_forward",
    "gate_backward",
    "rope_forward",
    "rope_backward",
    "attention_forward",
    "attention_merge",
    "attention_backward",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "mse_forward",
    "mse_backward",
    "embedding_forward",
    "embedding_backward",
    "patchify_forward",
    "patchify_backward",
    "unpatchify_forward",
    "unpatchify_backward",
    "timestep_embedding_forward",
    "timestep_embedding_backward",
    "add_forward",
    "add_backward",
    "scale_forward",
    "scale_backward",
    "accumulate",
    "fill",
    "cast",
    "swap_axes",
    "sum_squares",
    "sum",
    "l2norm_forward",
    "l2norm_backward",
    "adamw_update",
    "ademamix_update",
    "momentum_update",
    "newton_schulz",
    "matrix_normalize",
    "apply_direction",
];

/// The optimizer ops take f32 or f64 only (`sum_squares` also reads bf16).
const F32_ONLY: &[&str] = &[
    "l2norm_forward",
    "l2norm_backward",
    "adamw_update",
    "ademamix_update",
    "momentum_update",
    "newton_schulz",
    "matrix_normalize",
    "apply_direction",
];

fn rows(json: &Value) -> &Vec<Value> {
    json["accuracy"].as_array().expect("accuracy rows")
}

fn row<'a>(json: &'a Value, op: &str, dtype: &str) -> Option<&'a Value> {
    rows(json).iter().find(|r| r["op"] == op && r["dtype"] == dtype)
}

#[test]
fn the_cpu_suite_covers_every_op_and_writes_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("selftest.json");
    let out = weft(&["selftest", "cpu", "--quick", "--out", path.to_str().unwrap()]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();

    // The document.
    assert_eq!(json["schema"], "weft-selftest/1");
    assert_eq!(json["target"], "cpu");
    assert_eq!(json["ok"], true, "{all}");
    assert_eq!(json["sizes"]["profile"], "quick");
    assert!(json["device"].as_str().unwrap().starts_with("cpu ("));
    assert!(json["skipped"].as_array().unwrap().is_empty(), "{all}");

    // Accuracy: a row per op and dtype, each measured, within its limit, and the f32 rows
    // showing real rounding (the f32 run is not the f64 run in disguise).
    for op in OPS {
        let f32_row = row(&json, op, "f32").unwrap_or_else(|| panic!("no f32 row for {op}"));
        assert_eq!(f32_row["pass"], true, "{f32_row}");
        assert_eq!(f32_row["limit"], 1e-4);
        assert!(f32_row["vs_cpu_rel_err"].is_null(), "{f32_row}");
        if !F32_ONLY.contains(op) {
            let b = row(&json, op, "bf16").unwrap_or_else(|| panic!("no bf16 row for {op}"));
            assert_eq!(b["pass"], true, "{b}");
        }
    }
    assert_eq!(rows(&json).len(), 2 * OPS.len() - F32_ONLY.len());
    for r in rows(&json) {
        let e = r["max_rel_err"].as_f64().unwrap();
        assert!((0.0..=r["limit"].as_f64().unwrap()).contains(&e), "{r}");
        assert!(r["worst"].as_str().unwrap().contains('/'), "{r}");
    }
    let matmul = row(&json, "matmul_forward", "f32").unwrap()["max_rel_err"]
        .as_f64()
        .unwrap();
    assert!(matmul > 1e-9 && matmul < 1e-5, "f32 matmul against f64: {matmul}");
    let bf16 = row(&json, "attention_forward", "bf16").unwrap()["max_rel_err"]
        .as_f64()
        .unwrap();
    assert!(bf16 > 1e-4, "bf16 attention output is rounded: {bf16}");

    // Collectives: the shared-device communicator over two thread ranks, every collective
    // blocking and in the background, f32 and bf16, each exact.
    let comm = json["comm"].as_array().expect("comm rows");
    assert_eq!(comm.len(), 20, "{all}");
    for r in comm {
        assert_eq!(r["transport"], "shared-device");
        assert_eq!(r["ranks"], 2);
        assert_eq!(r["pass"], true, "{r}");
    }
    for c in [
        "all_gather",
        "reduce_scatter",
        "all_reduce",
        "all_to_all",
        "broadcast",
        "shift",
    ] {
        assert!(
            comm.iter().any(|r| r["collective"] == c && r["dtype"] == "bf16"),
            "{c}"
        );
    }
    assert!(all.contains("collectives: 20 rows, 0 failed"), "{all}");

    // Throughput: the peak and a row per layer GEMM, and attention at each length and mask,
    // with FLOPs counted as flash-attention counts them.
    let peak = json["gemm"]["peak"]["tflops"].as_f64().unwrap();
    assert!(peak > 0.0);
    assert_eq!(json["gemm"]["peak"]["dtype"], "bf16");
    let gemms = json["gemm"]["rows"].as_array().unwrap();
    assert_eq!(gemms.len(), 8);
    for g in gemms {
        let (f, pct) = (
            g["fwd_tflops"].as_f64().unwrap(),
            g["fwd_pct_of_peak"].as_f64().unwrap(),
        );
        assert!(
            f > 0.0 && (pct - 100.0 * f / peak).abs() < 1e-6 * pct.max(1.0),
            "{g}"
        );
        assert!(g["bwd_tflops"].as_f64().unwrap() > 0.0, "{g}");
    }
    let attn = json["attention"].as_array().unwrap();
    assert_eq!(attn.len(), 4);
    for a in attn {
        let (b, t, nh, hd) = (
            a["b"].as_f64().unwrap(),
            a["t"].as_f64().unwrap(),
            a["nh"].as_f64().unwrap(),
            a["hd"].as_f64().unwrap(),
        );
        let full = 4.0 * b * nh * hd * t * t;
        let want = if a["causal"] == true { full / 2.0 } else { full };
        assert_eq!(a["fwd_flops"].as_f64().unwrap(), want, "{a}");
        assert_eq!(a["bwd_flops"].as_f64().unwrap(), 2.5 * want, "{a}");
        let (ms, tf) = (a["fwd_ms"].as_f64().unwrap(), a["fwd_tflops"].as_f64().unwrap());
        assert!((tf - want / (ms * 1e-3) / 1e12).abs() <= 1e-9 * tf, "{a}");
        assert_eq!(a["hd"], 128);
    }

    // The table.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("max rel err"), "{stdout}");
    assert!(
        stdout.contains(&format!("accuracy: {} rows, 0 failed", rows(&json).len())),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("peak  bf16 gemm 256x256x256")),
        "{stdout}"
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("llama3-8b") || l.starts_with("dit-xl"))
            .count(),
        8
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("causal") || l.starts_with("full"))
            .count(),
        4
    );
}

#[test]
fn a_wrong_op_is_flagged_and_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("selftest.json");
    let out = weft(&[
        "selftest",
        "cpu",
        "--quick",
        "--accuracy-only",
        "--inject-fault",
        "rmsnorm_backward",
        "--out",
        path.to_str().unwrap(),
    ]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("2 of 94 ops out of limits: rmsnorm_backward [f32], rmsnorm_backward [bf16]"),
        "{all}"
    );
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["ok"], false);
    for r in rows(&json) {
        assert_eq!(r["pass"] == false, r["op"] == "rmsnorm_backward", "{r}");
    }
    assert!(json["gemm"].is_null() && json["attention"].as_array().unwrap().is_empty());
    assert!(
        all.lines()
            .any(|l| l.contains("rmsnorm_backward") && l.contains("FAIL")),
        "{all}"
    );
}

#[test]
fn what_cannot_run_is_said() {
    // Out of time: the rest is listed as skipped, and the run fails.
    let out = weft(&["selftest", "cpu", "--quick", "--max-seconds", "0.001"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("skipped: accuracy: optim sums of bf16 values [bf16] (time limit)"),
        "{all}"
    );
    assert!(all.contains("skipped: gemm: every shape (time limit)"), "{all}");
    assert!(
        all.contains("skipped: attention: T=256 full (time limit)"),
        "{all}"
    );
    assert!(
        all.contains("did not run to the end within the time limit"),
        "{all}"
    );
    // Bad arguments.
    let out = weft(&["selftest", "cpu", "--quick", "--inject-fault", "matmul"]);
    assert!(
        text(&out).contains("--inject-fault matmul: not an op"),
        "{}",
        text(&out)
    );
    let out = weft(&["selftest", "cpu", "--max-seconds", "-3"]);
    assert!(!out.status.success());
    // A GPU this build or machine cannot open.
    let out = weft(&["selftest", "gpu", "--quick"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("error: opening CUDA device 0:"), "{all}");
}

/// `tools/gpu-check.sh`, where this build cannot open a GPU: it runs each step it can, under a
/// time limit, and says what did not run.
fn gpu_check(args: &[&str], budget: &str) -> (Output, String, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/gpu-check.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .args(["--out", results.to_str().unwrap()])
        .env("GPU_CHECK_BUDGET", budget)
        .output()
        .expect("bash runs");
    let all = text(&out);
    (out, all, results, dir)
}

#[test]
fn the_gpu_check_script_says_what_did_not_run() {
    let weft_bin = env!("CARGO_BIN_EXE_weft");
    let (out, all, results, _dir) = gpu_check(&["--weft", weft_bin, "--quick"], "120");
    assert_eq!(out.status.code(), Some(1), "{all}");
    let summary = std::fs::read_to_string(results.join("summary.txt")).unwrap();
    assert!(summary.contains("weft selftest gpu: FAILED (exit 1"), "{summary}");
    assert!(all.contains("error: opening CUDA device 0:"), "{all}");
    assert!(summary.contains("NOT everything ran or passed"), "{summary}");
    // Without torch (as in CI) the comparison is named as not run; with it, it ran.
    assert!(
        summary.lines().any(|l| l.starts_with("pytorch sdpa: ")),
        "{summary}"
    );

    // A step that hangs is cut off at the budget.
    let dir = tempfile::tempdir().unwrap();
    let slow = dir.path().join("weft");
    std::fs::write(&slow, "#!/bin/sh\nsleep 60\n").unwrap();
    let mut perm = std::fs::metadata(&slow).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&slow, perm).unwrap();
    let start = std::time::Instant::now();
    let (out, all, _, _d) = gpu_check(&["--weft", slow.to_str().unwrap()], "5");
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("weft selftest gpu: TIMED OUT after 5 s"), "{all}");
    assert!(start.elapsed().as_secs() < 40, "{all}");

    // Usage errors.
    let (out, all, _, _d) = gpu_check(&["--weft", "/nonexistent/weft"], "60");
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("no executable weft at '/nonexistent/weft'"), "{all}");
    let (out, all, _, _d) = gpu_check(&["--frobnicate"], "60");
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("unknown argument '--frobnicate'"), "{all}");
    let (out, all, _, _d) = gpu_check(&["--weft", weft_bin], "soon");
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("GPU_CHECK_BUDGET='soon' is not a whole number"),
        "{all}"
    );
}
