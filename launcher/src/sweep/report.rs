//! What a sweep shows, fitted and plotted: `report.md`, `fits.json`, `lr_transfer.{png,svg}`
//! and `scaling.{png,svg}` in the sweep's directory.
//!
//! - **Learning-rate transfer.** Runs that differ only in `lr` form a curve; curves that differ
//!   only in `width` form a family (one per parametrization, optimizer, …). Each curve's best
//!   rate is the vertex of a parabola in log lr ([`super::fit::log_parabola_min`]); a
//!   family reports how far the best rate moves across its widths.
//! - **Scaling.** Runs with a `compute` axis that differ only in model size (`width`, `depth`,
//!   `heads`) form an isoFLOP curve; its optimum (a parabola in log parameters) gives the best
//!   model size and loss for that budget. Across budgets: `L = E + A·C^(−α)` fitted with
//!   standard errors and R² ([`super::fit::power_law`], at least 4 budgets), the best
//!   size `N_opt = k·C^a` ([`super::fit::log_line`]), and the loss against parameters
//!   `L = E + A·N^(−α)` over each size's best run.

use super::fit::{self, LogLine, Minimum, PowerLaw};
use super::plot::{self, Panel, Series, Style};
use super::results::{collect, RunResult};
use super::spec::Sweep;
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A group key: the run's axis values except `drop`, as `axis=value` text.
fn key(r: &RunResult, drop: &[&str]) -> String {
    let parts: Vec<String> = r
        .point
        .iter()
        .filter(|(k, _)| !drop.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={}", v.as_str().map_or(v.to_string(), str::to_string)))
        .collect();
    if parts.is_empty() {
        "all runs".into()
    } else {
        parts.join(", ")
    }
}

fn group<'a>(rows: &[&'a RunResult], drop: &[&str]) -> BTreeMap<String, Vec<&'a RunResult>> {
    let mut m: BTreeMap<String, Vec<&RunResult>> = BTreeMap::new();
    for r in rows {
        m.entry(key(r, drop)).or_default().push(r);
    }
    m
}

/// One width's loss against learning rate.
#[derive(Serialize)]
pub struct Curve {
    pub width: usize,
    /// `(lr, loss)`, by lr; diverged runs have an infinite loss.
    pub points: Vec<(f64, f64)>,
    pub best: Option<Minimum>,
}

/// Curves that differ only in width.
#[derive(Serialize)]
pub struct Family {
    pub label: String,
    pub curves: Vec<Curve>,
    /// Largest over smallest best learning rate across the widths.
    pub shift: Option<f64>,
    /// Largest over smallest width.
    pub width_span: f64,
}

fn lr_transfer(rows: &[&RunResult]) -> Vec<Family> {
    let mut out = Vec::new();
    let with_lr: Vec<&RunResult> = rows
        .iter()
        .copied()
        .filter(|r| r.point.contains_key("lr"))
        .collect();
    for (label, fam) in group(&with_lr, &["lr", "width"]) {
        let mut curves = Vec::new();
        for (_, runs) in group(&fam, &["lr"]) {
            if runs.len() < 3 {
                continue;
            }
            let mut points: Vec<(f64, f64)> = runs.iter().map(|r| (r.lr, r.loss())).collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (x, y): (Vec<f64>, Vec<f64>) = points.iter().copied().unzip();
            curves.push(Curve {
                width: runs[0].width,
                points,
                best: fit::log_parabola_min(&x, &y),
            });
        }
        if curves.is_empty() {
            continue;
        }
        curves.sort_by_key(|c| c.width);
        let best: Vec<f64> = curves.iter().filter_map(|c| c.best.map(|b| b.x)).collect();
        let shift = (best.len() >= 2).then(|| {
            best.iter().copied().fold(f64::MIN, f64::max) / best.iter().copied().fold(f64::MAX, f64::min)
        });
        let width_span = curves[curves.len() - 1].width as f64 / curves[0].width as f64;
        out.push(Family {
            label,
            curves,
            shift,
            width_span,
        });
    }
    out
}

/// One compute budget's loss against model size.
#[derive(Serialize)]
pub struct IsoFlop {
    pub compute: f64,
    /// `(parameters, loss)`, by size.
    pub points: Vec<(f64, f64)>,
    pub best: Option<Minimum>,
}

/// The scaling study of one family of runs with a `compute` axis.
#[derive(Serialize)]
pub struct Scaling {
    pub label: String,
    pub budgets: Vec<IsoFlop>,
    /// Best loss against compute: `L = E + A·C^(−α)` over the budgets' optima.
    pub loss_vs_compute: Option<PowerLaw>,
    /// Best model size against compute.
    pub size_vs_compute: Option<LogLine>,
    /// Loss against parameters over each size's best run: `L = E + A·N^(−α)`.
    pub loss_vs_params: Option<PowerLaw>,
    /// `(compute, parameters, loss)` of every run of the family.
    pub runs: Vec<(f64, f64, f64)>,
}

fn scaling(rows: &[&RunResult]) -> Vec<Scaling> {
    let size = ["width", "depth", "heads"];
    let with_c: Vec<&RunResult> = rows
        .iter()
        .copied()
        .filter(|r| r.point.contains_key("compute"))
        .collect();
    let mut out = Vec::new();
    for (label, fam) in group(&with_c, &["compute", "width", "depth", "heads"]) {
        let mut budgets = Vec::new();
        for (_, runs) in group(&fam, &size) {
            let mut points: Vec<(f64, f64)> = runs.iter().map(|r| (r.params as f64, r.loss())).collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (x, y): (Vec<f64>, Vec<f64>) = points.iter().copied().unzip();
            let compute = runs[0].point["compute"].as_f64().unwrap_or(runs[0].compute);
            let best = if points.len() >= 3 {
                fit::log_parabola_min(&x, &y)
            } else {
                None
            };
            budgets.push(IsoFlop {
                compute,
                points,
                best,
            });
        }
        budgets.sort_by(|a, b| a.compute.total_cmp(&b.compute));
        let opt: Vec<(f64, Minimum)> = budgets
            .iter()
            .filter_map(|b| Some((b.compute, b.best?)))
            .collect();
        let c: Vec<f64> = opt.iter().map(|o| o.0).collect();
        let l: Vec<f64> = opt.iter().map(|o| o.1.y).collect();
        let n: Vec<f64> = opt.iter().map(|o| o.1.x).collect();
        // Each size's best loss over the budgets.
        let mut by_size: BTreeMap<usize, f64> = BTreeMap::new();
        for r in &fam {
            let e = by_size.entry(r.params).or_insert(f64::INFINITY);
            *e = e.min(r.loss());
        }
        let (np, lp): (Vec<f64>, Vec<f64>) = by_size
            .iter()
            .filter(|(_, l)| l.is_finite())
            .map(|(n, l)| (*n as f64, *l))
            .unzip();
        out.push(Scaling {
            label,
            loss_vs_compute: fit::power_law(&c, &l),
            size_vs_compute: fit::log_line(&c, &n),
            loss_vs_params: fit::power_law(&np, &lp),
            runs: fam
                .iter()
                .map(|r| (r.compute, r.params as f64, r.loss()))
                .collect(),
            budgets,
        });
    }
    out
}

#[derive(Serialize)]
struct Fits<'a> {
    runs: usize,
    done: usize,
    diverged: usize,
    lr_transfer: &'a [Family],
    scaling: &'a [Scaling],
}

/// Collect the results, fit, plot, and write the report; prints the headline numbers.
pub fn write(s: &Sweep) -> Result<()> {
    let rows = collect(s)?;
    if rows.is_empty() {
        bail!("no finished runs in {} yet", s.dir.display());
    }
    let refs: Vec<&RunResult> = rows.iter().collect();
    let lr = lr_transfer(&refs);
    let sc = scaling(&refs);
    let diverged = rows.iter().filter(|r| r.status == "diverged").count();
    let fits = Fits {
        runs: s.runs.len(),
        done: rows.len() - diverged,
        diverged,
        lr_transfer: &lr,
        scaling: &sc,
    };
    crate::record::write_atomic(
        &s.dir.join("fits.json"),
        serde_json::to_string_pretty(&fits)?.as_bytes(),
    )?;
    if !lr.is_empty() {
        plot::draw(&s.dir.join("lr_transfer"), &lr_panels(&lr))?;
    }
    if !sc.is_empty() {
        plot::draw(&s.dir.join("scaling"), &scaling_panels(&sc))?;
    }
    let md = markdown(s, &fits);
    crate::record::write_atomic(&s.dir.join("report.md"), md.as_bytes())?;
    for f in &lr {
        if let Some(x) = f.shift {
            println!(
                "{}: best learning rate moves {x:.2}× across widths {}–{} ({:.0}×)",
                f.label,
                f.curves[0].width,
                f.curves[f.curves.len() - 1].width,
                f.width_span
            );
        }
    }
    for f in &sc {
        if let Some(p) = &f.loss_vs_compute {
            println!(
                "{}: L = {:.4} + {:.3e}·C^-{:.4} (α ± {:.4}), R² = {:.4}, over {} budgets",
                f.label,
                p.e,
                p.a,
                p.alpha,
                p.se[2],
                p.r2,
                f.budgets.len()
            );
        }
    }
    println!("report: {}", s.dir.join("report.md").display());
    Ok(())
}

fn lr_panels(fams: &[Family]) -> Vec<Panel> {
    fams.iter()
        .map(|f| {
            let mut series = Vec::new();
            let mut marks = Vec::new();
            for (i, c) in f.curves.iter().enumerate() {
                series.push(Series {
                    label: format!("width {}", c.width),
                    points: c.points.clone(),
                    style: Style::Line,
                    color: i,
                });
                if let Some(b) = c.best {
                    marks.push((b.x, b.y));
                }
            }
            Panel {
                title: format!(
                    "{} (best lr moves {})",
                    f.label,
                    f.shift.map_or("?".into(), |x| format!("{x:.2}×"))
                ),
                x: "learning rate".into(),
                y: "held-out loss".into(),
                xlog: true,
                ylog: true,
                marks,
                series,
                y_cap: Some(2.0),
            }
        })
        .collect()
}

/// `n` points of `f` evenly spaced in log x over `[lo, hi]`.
fn curve(lo: f64, hi: f64, f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
    (0..=40)
        .map(|i| {
            let x = (lo.ln() + (hi.ln() - lo.ln()) * i as f64 / 40.0).exp();
            (x, f(x))
        })
        .collect()
}

fn scaling_panels(sc: &[Scaling]) -> Vec<Panel> {
    let mut panels = Vec::new();
    for f in sc {
        let mut iso = Vec::new();
        for (i, b) in f.budgets.iter().enumerate() {
            iso.push(Series {
                label: format!("C = {:.1e}", b.compute),
                points: b.points.clone(),
                style: Style::Line,
                color: i,
            });
        }
        panels.push(Panel {
            title: format!("{}: isoFLOP curves", f.label),
            x: "parameters".into(),
            y: "held-out loss".into(),
            xlog: true,
            ylog: true,
            marks: f
                .budgets
                .iter()
                .filter_map(|b| b.best.map(|m| (m.x, m.y)))
                .collect(),
            series: iso,
            y_cap: Some(2.0),
        });
        let (clo, chi) = f
            .runs
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(r.0), h.max(r.0)));
        let mut lc = vec![Series {
            label: "every run".into(),
            points: f.runs.iter().map(|r| (r.0, r.2)).collect(),
            style: Style::Points,
            color: 20,
        }];
        if let Some(p) = &f.loss_vs_compute {
            lc.push(Series {
                label: "fit".into(),
                points: curve(clo, chi, |c| p.at(c)),
                style: Style::Fit,
                color: 0,
            });
        }
        let opt: Vec<(f64, f64)> = f
            .budgets
            .iter()
            .filter_map(|b| b.best.map(|m| (b.compute, m.y)))
            .collect();
        lc.push(Series {
            label: "compute-optimal".into(),
            points: opt,
            style: Style::Line,
            color: 0,
        });
        let fit_text = f.loss_vs_compute.as_ref().map_or(String::new(), |p| {
            format!(": α = {:.3} ± {:.3}, R² = {:.3}", p.alpha, p.se[2], p.r2)
        });
        panels.push(Panel {
            title: format!("loss vs compute{fit_text}"),
            x: "training FLOPs".into(),
            y: "held-out loss".into(),
            xlog: true,
            ylog: true,
            marks: vec![],
            series: lc,
            y_cap: Some(2.0),
        });
        let nopt: Vec<(f64, f64)> = f
            .budgets
            .iter()
            .filter_map(|b| b.best.map(|m| (b.compute, m.x)))
            .collect();
        let mut ns = vec![Series {
            label: "best size".into(),
            points: nopt,
            style: Style::Line,
            color: 1,
        }];
        if let Some(l) = &f.size_vs_compute {
            ns.push(Series {
                label: "fit".into(),
                points: curve(clo, chi, |c| l.k * c.powf(l.a)),
                style: Style::Fit,
                color: 1,
            });
        }
        panels.push(Panel {
            title: f.size_vs_compute.map_or("best size vs compute".into(), |l| {
                format!("N_opt ∝ C^{:.2} (R² = {:.3})", l.a, l.r2)
            }),
            x: "training FLOPs".into(),
            y: "parameters".into(),
            xlog: true,
            ylog: true,
            marks: vec![],
            series: ns,
            y_cap: None,
        });
    }
    panels
}

fn law(p: &Option<PowerLaw>, var: &str) -> String {
    match p {
        Some(p) => format!(
            "`L = E + A·{var}^(−α)`: E = {:.4} ± {:.4}, A = {:.4e} ± {:.2e}, α = {:.4} ± {:.4}; R² = {:.4}",
            p.e, p.se[0], p.a, p.se[1], p.alpha, p.se[2], p.r2
        ),
        None => {
            format!("`L = E + A·{var}^(−α)`: not fitted (it needs at least 4 points with a falling trend)")
        }
    }
}

/// `p` relative to the working directory when it lies below it (reports get committed).
fn rel(p: &std::path::Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|d| p.strip_prefix(d).ok().map(|r| r.display().to_string()))
        .unwrap_or_else(|| p.display().to_string())
}

fn markdown(s: &Sweep, f: &Fits<'_>) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# Sweep `{}`\n", s.name);
    let _ = writeln!(
        m,
        "{} of {} runs finished ({} diverged), from `{}` over the base config `{}`. Every run is \
         scored on the same {} held-out samples. Per-run numbers: [`results.csv`](results.csv), \
         [`results.json`](results.json); the fits: [`fits.json`](fits.json).\n",
        f.done + f.diverged,
        f.runs,
        f.diverged,
        rel(&s.file),
        rel(&s.base),
        s.eval_samples
    );
    if !f.lr_transfer.is_empty() {
        let _ = writeln!(
            m,
            "## Learning-rate transfer\n\n![loss against learning rate per width](lr_transfer.png)\n"
        );
        let _ = writeln!(
            m,
            "The best rate of each width is the vertex of a parabola in log lr fitted to the lowest \
             point and up to two neighbours on each side, leaving out neighbours above 1.5× the \
             lowest loss (\"lowest\" where the parabola does not open upwards inside that range).\n"
        );
        let _ = writeln!(
            m,
            "| family | width | best lr | loss there | how |\n| --- | ---: | ---: | ---: | --- |"
        );
        for fam in f.lr_transfer {
            for c in &fam.curves {
                let (lr, l, how) = c.best.map_or(("—".into(), "—".into(), "all diverged"), |b| {
                    (
                        format!("{:.3e}", b.x),
                        format!("{:.4}", b.y),
                        if b.fitted { "parabola" } else { "lowest" },
                    )
                });
                let _ = writeln!(m, "| {} | {} | {lr} | {l} | {how} |", fam.label, c.width);
            }
        }
        m.push('\n');
        for fam in f.lr_transfer {
            if let Some(x) = fam.shift {
                let _ = writeln!(
                    m,
                    "- **{}**: the best learning rate moves **{x:.2}×** across widths {}–{} ({:.0}× in width).",
                    fam.label,
                    fam.curves[0].width,
                    fam.curves[fam.curves.len() - 1].width,
                    fam.width_span
                );
            }
        }
        m.push('\n');
    }
    for sc in f.scaling {
        let _ = writeln!(
            m,
            "## Scaling: {}\n\n![isoFLOP curves, loss and best size against compute](scaling.png)\n",
            sc.label
        );
        let _ = writeln!(m, "| compute (FLOPs) | runs | best size (params) | best loss | how |\n| ---: | ---: | ---: | ---: | --- |");
        for b in &sc.budgets {
            let (n, l, how) = b
                .best
                .map_or(("—".into(), "—".into(), "fewer than 3 sizes"), |o| {
                    (
                        format!("{:.0}", o.x),
                        format!("{:.4}", o.y),
                        if o.fitted { "parabola" } else { "lowest" },
                    )
                });
            let _ = writeln!(
                m,
                "| {:.2e} | {} | {n} | {l} | {how} |",
                b.compute,
                b.points.len()
            );
        }
        let _ = writeln!(
            m,
            "\n- Loss against compute (the budgets' optima): {}",
            law(&sc.loss_vs_compute, "C")
        );
        match &sc.size_vs_compute {
            Some(l) => {
                let _ = writeln!(
                    m,
                    "- Best size against compute: `N_opt = {:.3e}·C^{:.3}` (exponent ± {:.3}); R² = {:.4}",
                    l.k, l.a, l.se_a, l.r2
                );
            }
            None => {
                let _ = writeln!(
                    m,
                    "- Best size against compute: not fitted (it needs 2 budgets with an optimum)"
                );
            }
        }
        let _ = writeln!(
            m,
            "- Loss against parameters (each size's best run): {}\n",
            law(&sc.loss_vs_params, "N")
        );
    }
    if f.scaling.is_empty() {
        let _ = writeln!(
            m,
            "No grid has a `compute` axis, so there is no isoFLOP study in this sweep."
        );
    }
    let _ = writeln!(m, "\nRegenerate with `weft sweep {} --report`.", rel(&s.file));
    m
}
