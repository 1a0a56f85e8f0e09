//! The self-test's result: printed as a table, written as JSON (`--out`).

use super::accuracy::AccuracyRow;
use super::attention_speed::AttentionRow;
use super::comm::CommRow;
use super::gemm::GemmReport;
use super::sizes::Sizes;
use serde::Serialize;
use std::fmt::Write;

/// The JSON document's `schema` value; bump it when a field changes meaning.
pub const SCHEMA: &str = "weft-selftest/1";

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub weft_version: &'static str,
    /// `cpu` or `gpu`.
    pub target: &'static str,
    /// The backend under test, as it names itself.
    pub device: String,
    /// The reference backend.
    pub reference: String,
    pub sizes: Sizes,
    /// Every accuracy row passed (and none could not run).
    pub ok: bool,
    pub accuracy: Vec<AccuracyRow>,
    /// Every collective of the communicators the device's ranks train through.
    pub comm: Vec<CommRow>,
    pub gemm: Option<GemmReport>,
    pub attention: Vec<AttentionRow>,
    /// What did not run, and why.
    pub skipped: Vec<String>,
    pub seconds: f64,
}

/// `x` with `prec` decimals, or three significant digits when that would show nothing
/// (throughputs of a CPU in TFLOP/s); `-` when absent.
fn num(x: Option<f64>, prec: usize) -> String {
    match x {
        Some(v) if v != 0.0 && v.abs() < 10f64.powi(-(prec as i32)) => {
            let digits = (2 - v.abs().log10().floor() as i32).max(0) as usize;
            format!("{v:.digits$}")
        }
        Some(v) => format!("{v:.prec$}"),
        None => "-".into(),
    }
}

impl Report {
    /// The tables a person reads.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "weft selftest {} ({} shapes): {}",
            self.target, self.sizes.profile, self.device
        );
        let _ = writeln!(
            s,
            "reference: {}, f64 runs on the same rounded inputs",
            self.reference
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<12} {:<28} {:<5} {:>11} {:>11} {:>9} {:<6} worst output",
            "family", "op", "dtype", "max rel err", "vs cpu", "limit", "result"
        );
        for r in &self.accuracy {
            let vs = r
                .vs_cpu_rel_err
                .map(|v| format!("{v:.2e}"))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                s,
                "{:<12} {:<28} {:<5} {:>11.2e} {:>11} {:>9.0e} {:<6} {}{}",
                r.family,
                r.op,
                r.dtype,
                r.max_rel_err,
                vs,
                r.limit,
                if r.pass { "ok" } else { "FAIL" },
                r.worst,
                r.error.as_ref().map(|e| format!(" — {e}")).unwrap_or_default()
            );
        }
        let failed = self.accuracy.iter().filter(|r| !r.pass).count();
        let _ = writeln!(s, "accuracy: {} rows, {failed} failed", self.accuracy.len());
        if !self.comm.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "{:<14} {:>5} {:<28} {:<5} result",
                "communicator", "ranks", "collective", "dtype"
            );
            for r in &self.comm {
                let _ = writeln!(
                    s,
                    "{:<14} {:>5} {:<28} {:<5} {}{}",
                    r.transport,
                    r.ranks,
                    r.collective,
                    r.dtype,
                    if r.pass { "ok" } else { "FAIL" },
                    r.error.as_ref().map(|e| format!(" — {e}")).unwrap_or_default()
                );
            }
            let failed = self.comm.iter().filter(|r| !r.pass).count();
            let _ = writeln!(s, "collectives: {} rows, {failed} failed", self.comm.len());
        }
        if let Some(g) = &self.gemm {
            let _ = writeln!(s);
            if let Some(p) = &g.peak {
                let _ = writeln!(
                    s,
                    "peak  {} gemm {}x{}x{}: {:.2} TFLOP/s (the reference for the % columns)",
                    p.dtype, p.m, p.n, p.k, p.tflops
                );
            }
            let _ = writeln!(
                s,
                "{:<10} {:<12} {:>6} {:>6} {:>6} {:>9} {:>7} {:>9} {:>7}",
                "gemm bf16", "layer", "M", "K", "N", "fwd TF/s", "of peak", "bwd TF/s", "of peak"
            );
            for r in &g.rows {
                let _ = writeln!(
                    s,
                    "{:<10} {:<12} {:>6} {:>6} {:>6} {:>9} {:>6}% {:>9} {:>6}%{}",
                    r.model,
                    r.layer,
                    r.m,
                    r.k,
                    r.n,
                    num(r.fwd_tflops, 2),
                    num(r.fwd_pct_of_peak, 0),
                    num(r.bwd_tflops, 2),
                    num(r.bwd_pct_of_peak, 0),
                    r.error.as_ref().map(|e| format!("  {e}")).unwrap_or_default()
                );
            }
        }
        if !self.attention.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "{:<16} {:>6} {:>3} {:>4} {:>4} {:>10} {:>9} {:>10} {:>9}",
                "attention bf16", "T", "B", "NH", "HD", "fwd ms", "fwd TF/s", "bwd ms", "bwd TF/s"
            );
            for r in &self.attention {
                let _ = writeln!(
                    s,
                    "{:<16} {:>6} {:>3} {:>4} {:>4} {:>10} {:>9} {:>10} {:>9}{}",
                    if r.causal { "causal" } else { "full" },
                    r.t,
                    r.b,
                    r.nh,
                    r.hd,
                    num(r.fwd_ms, 3),
                    num(r.fwd_tflops, 2),
                    num(r.bwd_ms, 3),
                    num(r.bwd_tflops, 2),
                    r.error.as_ref().map(|e| format!("  {e}")).unwrap_or_default()
                );
            }
        }
        for k in &self.skipped {
            let _ = writeln!(s, "skipped: {k}");
        }
        let _ = writeln!(s, "{:.1} s", self.seconds);
        s
    }
}
