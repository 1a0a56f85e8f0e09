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
