//! `weft coord-check CONFIG --widths 64,128,256,512`: train each width a few steps under the
//! standard parametrization (SP) and under muP, record the mean |activation| of each layer
//! type at every step, and judge by the slope of log-activation against log-width: under
//! muP every layer stays flat (|slope| within the bound), under SP some grow.
//!
//! Writes `coord.csv`, `coord.svg` and `coord.png` (rows SP and muP, one panel per step, a
//! line per layer type) into the output directory.

use anyhow::{bail, Context, Result};
use clap::Args;
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct CoordArgs {
    /// The base config (TOML); its `model.width` is replaced by each width.
    pub config: PathBuf,
    /// Widths to train, smallest first (the smallest is muP's base width).
    #[arg(long, value_delimiter = ',', default_value = "64,128,256,512")]
    pub widths: Vec<usize>,
    /// Training steps per width.
    #[arg(long, default_value_t = 4)]
    pub steps: u64,
    /// A layer passes when |slope| of log mean|activation| vs log width is at most this.
    #[arg(long, default_value_t = 0.25)]
    pub bound: f64,
    /// Where the CSV and plots go.
    #[arg(long, default_value = "runs/coord-check")]
    pub out: PathBuf,
    /// Override a config value (repeatable), e.g. `--set optimizer.lr=0.01`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// `records[(param, width)]`: per step, the mean |activation| of each layer type.
type Records = BTreeMap<(String, usize), Vec<BTreeMap<String, f64>>>;

/// Least-squares slope of `y` against `x`.
pub fn slope(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
    sxy / sxx
}

pub fn coord_check(a: &CoordArgs) -> Result<()> {
    if a.widths.len() < 2 || a.widths.windows(2).any(|w| w[0] >= w[1]) {
        bail!(
            "--widths: give at least two widths, increasing (got {:?})",
            a.widths
        );
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut records = Records::new();
    for param in ["sp", "mup"] {
        for &width in &a.widths {
            let mut sets = a.set.clone();
            sets.extend([
                format!("model.width={width}"),
                format!("mup.enabled={}", param == "mup"),
                format!("mup.base_width={}", a.widths[0]),
                format!("training.steps={}", a.steps),
                "training.val_every=0".into(),
                "training.recompute=false".into(),
                "optimizer.warmup_steps=0".into(),
                "optimizer.schedule=\"constant\"".into(),
                "checkpoint.interval=0".into(),
                format!("job.name=\"coord-{param}-{width}\""),
                format!("job.out_dir=\"{}\"", a.out.join("runs").display()),
            ]);
            let cfg = weft_trainer::Config::load(&a.config, &sets)?;
            weft_trainer::observe::coord::enable(true);
            let run = weft_trainer::train::train(&cfg, weft_trainer::train::TrainOptions::default());
            let steps = weft_trainer::observe::coord::take();
            weft_trainer::observe::coord::enable(false);
            run?;
            tracing::info!(param, width, "recorded {} steps", steps.len());
            records.insert((param.into(), width), steps);
        }
    }
    write_csv(&a.out.join("coord.csv"), &records)?;
    let verdict = judge(a, &records);
    plot(&a.out.join("coord.svg"), &a.out.join("coord.png"), a, &records)?;
    println!("{verdict}");
    println!("wrote {}/coord.{{csv,svg,png}}", a.out.display());
    if !verdict.contains("muP: pass") {
        bail!("coordinate check failed under muP");
    }
    Ok(())
}

fn write_csv(path: &Path, records: &Records) -> Result<()> {
    let mut text = String::from("parametrization,width,step,layer,mean_abs\n");
    for ((param, width), steps) in records {
        for (s, layers) in steps.iter().enumerate() {
            for (layer, v) in layers {
                text += &format!("{param},{width},{},{layer},{v:e}\n", s + 1);
            }
        }
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Per parametrization, layer and step: the slope of log mean|activation| against log width.
pub fn slopes(widths: &[usize], records: &Records, param: &str) -> BTreeMap<(String, usize), f64> {
    let mut out = BTreeMap::new();
    let first = &records[&(param.to_string(), widths[0])];
    for (s, layers) in first.iter().enumerate() {
        for layer in layers.keys() {
            let pts: Vec<(f64, f64)> = widths
                .iter()
                .filter_map(|&w| {
                    let v = *records.get(&(param.to_string(), w))?.get(s)?.get(layer)?;
                    (v > 0.0).then(|| ((w as f64).ln(), v.ln()))
                })
                .collect();
            if pts.len() == widths.len() {
                let (x, y): (Vec<f64>, Vec<f64>) = pts.into_iter().unzip();
                out.insert((layer.clone(), s + 1), slope(&x, &y));
            }
        }
    }
    out
}

fn judge(a: &CoordArgs, records: &Records) -> String {
    let mut text = format!(
        "coordinate check over widths {:?}, {} steps: slope of log mean|activation| vs log width (bound ±{})\n",
        a.widths, a.steps, a.bound
    );
    let (sp, mup) = (
        slopes(&a.widths, records, "sp"),
        slopes(&a.widths, records, "mup"),
    );
    text += &format!("{:<10} {:>5} {:>8} {:>8}\n", "layer", "step", "SP", "muP");
    for ((layer, step), s) in &sp {
        let m = mup.get(&(layer.clone(), *step)).copied().unwrap_or(f64::NAN);
        text += &format!("{layer:<10} {step:>5} {s:>8.3} {m:>8.3}\n");
    }
    // Step 1 is the initialization's forward; training's effect shows from step 2 on.
    let trained = |m: &BTreeMap<(String, usize), f64>| -> Vec<f64> {
        m.iter().filter(|((_, s), _)| *s > 1).map(|(_, v)| *v).collect()
    };
    let worst = |v: Vec<f64>| v.into_iter().map(f64::abs).fold(0.0, f64::max);
    let (wm, ws) = (worst(trained(&mup)), worst(trained(&sp)));
    text += &format!(
        "muP: {} (largest |slope| {wm:.3}); SP: {} (largest |slope| {ws:.3})",
        if wm <= a.bound { "pass" } else { "FAIL" },
        if ws > a.bound {
            "grows with width, as expected"
        } else {
            "flat too"
        }
    );
    text
}

fn plot(svg: &Path, png: &Path, a: &CoordArgs, records: &Records) -> Result<()> {
    register_font();
    let size = (360 * a.steps as u32, 640);
    draw_panels(SVGBackend::new(svg, size).into_drawing_area(), a, records)?;
    draw_panels(BitMapBackend::new(png, size).into_drawing_area(), a, records)
}

/// The bundled DejaVu Sans (plotters draws text with it; no system fonts needed).
pub(crate) fn register_font() {
    static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
}

fn draw_panels<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    a: &CoordArgs,
    records: &Records,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("plotting: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((2, a.steps as usize));
    let (lo_w, hi_w) = (a.widths[0] as f64, *a.widths.last().unwrap() as f64);
    let all: Vec<f64> = records
        .values()
        .flatten()
        .flat_map(|m| m.values().copied())
        .filter(|v| *v > 0.0)
        .collect();
    let (lo, hi) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
    let layers: Vec<String> = records
        .values()
        .flatten()
        .flat_map(|m| m.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for (i, panel) in panels.iter().enumerate() {
        let (param, step) = (
            if i < a.steps as usize { "sp" } else { "mup" },
            i % a.steps as usize,
        );
        let title = format!("{} step {}", if param == "sp" { "SP" } else { "muP" }, step + 1);
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(48)
            .build_cartesian_2d((lo_w..hi_w).log_scale(), (lo * 0.8..hi * 1.25).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("width")
            .y_desc("mean |act|")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.2}"))
            .light_line_style(WHITE)
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(err)?;
        for (k, layer) in layers.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            let pts: Vec<(f64, f64)> = a
                .widths
                .iter()
                .filter_map(|&w| {
                    let v = *records.get(&(param.to_string(), w))?.get(step)?.get(layer)?;
                    (v > 0.0).then_some((w as f64, v))
                })
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(layer.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 10))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn slope_recovers_a_power_law() {
        let x: Vec<f64> = [64.0f64, 128.0, 256.0, 512.0].iter().map(|w| w.ln()).collect();
        let y: Vec<f64> = x.iter().map(|l| 0.7 * l + 1.3).collect();
        assert!((super::slope(&x, &y) - 0.7).abs() < 1e-12);
    }
}
