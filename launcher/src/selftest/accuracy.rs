//! Every accuracy case on the backend under test, against the CPU: the truth is the CPU's f64
//! run on the same (rounded) inputs, and where the backend is not the CPU itself, the CPU's run
//! in the same dtype is measured too (how far the device is from the reference backend).

use super::cases::{cases, Case};
use super::compare::{limit, measure, passes};
use super::ctx::{Ctx, Output, Prec};
use super::sizes::Sizes;
use super::timing::Deadline;
use anyhow::{bail, Result};
use serde::Serialize;
use std::any::TypeId;
use weft_kernels::{CpuBackend, DType, Ops};

/// The largest error of one op in one dtype, over every output of every case that calls it.
#[derive(Clone, Debug, Serialize)]
pub struct AccuracyRow {
    pub family: &'static str,
    pub op: String,
    pub dtype: &'static str,
    /// Against the f64 CPU run (`max |got − want| / max |want|`).
    pub max_rel_err: f64,
    pub max_abs_err: f64,
    /// The output with the largest error: `case/argument`.
    pub worst: String,
    /// Against the CPU backend in the same dtype (absent when the backend is the CPU).
    pub vs_cpu_rel_err: Option<f64>,
    pub limit: f64,
    pub pass: bool,
    /// Why the op could not be run or compared.
    pub error: Option<String>,
}

/// Runs every case in every dtype it takes. `fault` (an op name) adds an error to that op's
/// outputs on the backend under test, to show that the comparison catches one.
pub fn run<B: Ops>(
    be: &B,
    sizes: &Sizes,
    fault: Option<&str>,
    deadline: &Deadline,
    skipped: &mut Vec<String>,
) -> Result<Vec<AccuracyRow>> {
    let cpu = CpuBackend::new();
    let is_cpu = TypeId::of::<B>() == TypeId::of::<CpuBackend>();
    let mut rows: Vec<AccuracyRow> = Vec::new();
    for (case, reference) in cases::<B>().iter().zip(cases::<CpuBackend>()) {
        for &dt in case.dtypes {
            if deadline.passed() {
                skipped.push(format!(
                    "accuracy: {} {} [{dt}] (time limit)",
                    case.family, case.name
                ));
                continue;
            }
            let got = match run_case(be, case, Prec::native(dt), sizes, fault) {
                Ok(outs) => outs,
                Err(e) => {
                    rows.push(AccuracyRow {
                        family: case.family,
                        op: format!("({})", case.name),
                        dtype: dt.name(),
                        max_rel_err: f64::INFINITY,
                        max_abs_err: f64::INFINITY,
                        worst: String::new(),
                        vs_cpu_rel_err: None,
                        limit: limit(dt),
                        pass: false,
                        error: Some(format!("{e:#}")),
                    });
                    continue;
                }
            };
            let truth_prec = Prec {
                store: DType::F64,
                round: dt,
            };
            let truth = run_case(&cpu, &reference, truth_prec, sizes, None)?;
            let same = if is_cpu {
                None
            } else {
                Some(run_case(&cpu, &reference, Prec::native(dt), sizes, None)?)
            };
            record(
                &mut rows,
                case.family,
                case.name,
                dt,
                &got,
                &truth,
                same.as_deref(),
            )?;
        }
    }
    Ok(rows)
}

fn run_case<B: Ops>(
    be: &B,
    case: &Case<B>,
    p: Prec,
    sizes: &Sizes,
    fault: Option<&str>,
) -> Result<Vec<Output>> {
    let mut ctx = Ctx::new(be, p, fault);
    (case.run)(&mut ctx, sizes)?;
    be.synchronize()?;
    Ok(ctx.outs)
}

/// Folds one case's outputs into the rows of their ops.
fn record(
    rows: &mut Vec<AccuracyRow>,
    family: &'static str,
    case: &str,
    dt: DType,
    got: &[Output],
    truth: &[Output],
    same: Option<&[Output]>,
) -> Result<()> {
    if got.len() != truth.len() {
        bail!(
            "case {case} [{dt}]: the backend wrote {} outputs, the reference {}",
            got.len(),
            truth.len()
        );
    }
    for (i, (g, t)) in got.iter().zip(truth).enumerate() {
        if (g.op, g.arg) != (t.op, t.arg) {
            bail!(
                "case {case} [{dt}]: output {i} is {}/{} here, {}/{} in the reference",
                g.op,
                g.arg,
                t.op,
                t.arg
            );
        }
        let m = measure(&g.values, &t.values);
        let vs_cpu = same
            .and_then(|s| s.get(i))
            .map(|s| measure(&g.values, &s.values).rel);
        let row = match rows.iter_mut().position(|r| r.op == g.op && r.dtype == dt.name()) {
            Some(j) => &mut rows[j],
            None => {
                rows.push(AccuracyRow {
                    family,
                    op: g.op.to_string(),
                    dtype: dt.name(),
                    max_rel_err: 0.0,
                    max_abs_err: 0.0,
                    worst: String::new(),
                    vs_cpu_rel_err: same.map(|_| 0.0),
                    limit: limit(dt),
                    pass: true,
                    error: None,
                });
                rows.last_mut().expect("just pushed")
            }
        };
        if row.worst.is_empty() || m.rel > row.max_rel_err || m.mismatch.is_some() {
            row.worst = format!("{case}/{}", g.arg);
        }
        row.max_rel_err = row.max_rel_err.max(m.rel);
        row.max_abs_err = row.max_abs_err.max(m.abs);
        if let (Some(r), Some(v)) = (row.vs_cpu_rel_err.as_mut(), vs_cpu) {
            *r = r.max(v);
        }
        if !passes(&m, dt) {
            row.pass = false;
            if let Some(why) = m.mismatch {
                row.error.get_or_insert(format!("{case}/{}: {why}", g.arg));
            }
        }
    }
    Ok(())
}
