//! Panels of lines and points (PNG and SVG) for the sweep report, drawn with plotters and the
//! bundled font.

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// How a series is drawn.
#[derive(Clone, Copy, PartialEq)]
pub enum Style {
    /// Measured, in order: markers joined by a line.
    Line,
    /// Measured, unordered: markers only.
    Points,
    /// A fitted curve: a dashed line.
    Fit,
}

/// A set of points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub style: Style,
    /// Colour index: a measured series and its fit share one.
    pub color: usize,
}

/// One chart.
pub struct Panel {
    pub title: String,
    pub x: String,
    pub y: String,
    pub xlog: bool,
    pub ylog: bool,
    /// Points to ring (the optima).
    pub marks: Vec<(f64, f64)>,
    pub series: Vec<Series>,
    /// Cap the y range at this many times the highest of the series' lowest values
    /// (diverging runs would flatten the interesting part).
    pub y_cap: Option<f64>,
}

/// Draw `panels` side by side into `<stem>.svg` and `<stem>.png`.
pub fn draw(stem: &Path, panels: &[Panel]) -> Result<()> {
    crate::coord::register_font();
    let size = (520 * panels.len().max(1) as u32, 420);
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    draw_on(SVGBackend::new(&svg, size).into_drawing_area(), panels)?;
    draw_on(BitMapBackend::new(&png, size).into_drawing_area(), panels)
}

fn range(v: impl Iterator<Item = f64> + Clone, log: bool) -> (f64, f64) {
    let ok = v.filter(|x| x.is_finite() && (!log || *x > 0.0));
    let (lo, hi) = ok.fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(x), h.max(x)));
    if lo > hi {
        return (1.0, 10.0);
    }
    if log {
        let pad = (hi / lo).powf(0.06).max(1.05);
        // At least a decade, so that the axis has labelled ticks.
        let widen = (10.0 / (hi * pad / (lo / pad))).max(1.0).sqrt();
        (lo / pad / widen, hi * pad * widen)
    } else {
        let pad = ((hi - lo) * 0.06).max(1e-9 * hi.abs().max(1.0));
        (lo - pad, hi + pad)
    }
}

fn draw_on<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, panels: &[Panel]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("plotting: {e:?}");
    root.fill(&WHITE).map_err(err)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (p, area) in panels.iter().zip(&areas) {
        let all = || {
            p.series
                .iter()
                .flat_map(|s| s.points.iter().copied())
                .chain(p.marks.iter().copied())
        };
        let xs = range(all().map(|q| q.0), p.xlog);
        let (ylo, mut yhi) = range(all().map(|q| q.1), p.ylog);
        if let Some(cap) = p.y_cap {
            let lows = p.series.iter().map(|s| {
                s.points
                    .iter()
                    .map(|q| q.1)
                    .filter(|y| y.is_finite())
                    .fold(f64::MAX, f64::min)
            });
            let top = lows.filter(|l| *l < f64::MAX).fold(f64::MIN, f64::max);
            if top > f64::MIN {
                yhi = yhi.min(top * cap);
            }
        }
        let clamp = |(x, y): (f64, f64)| (x, y.min(yhi));
        let mut b = ChartBuilder::on(area);
        b.caption(&p.title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(56);
        let fmt = |v: &f64| {
            if v.abs() >= 1e4 || (v.abs() < 1e-2 && *v != 0.0) {
                format!("{v:.1e}")
            } else {
                format!("{v:.3}")
            }
        };
        macro_rules! body {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(p.x.as_str())
                    .y_desc(p.y.as_str())
                    .x_labels(6)
                    .y_labels(8)
                    .x_label_formatter(&fmt)
                    .y_label_formatter(&fmt)
                    .light_line_style(WHITE.mix(0.0))
                    .label_style(("sans-serif", 11))
                    .draw()
                    .map_err(err)?;
                for s in &p.series {
                    let color = Palette99::pick(s.color).to_rgba();
                    let pts: Vec<(f64, f64)> = s
                        .points
                        .iter()
                        .copied()
                        .filter(|q| q.1.is_finite())
                        .map(clamp)
                        .collect();
                    match s.style {
                        Style::Fit => {
                            chart
                                .draw_series(DashedLineSeries::new(pts, 6, 4, color.stroke_width(1)))
                                .map_err(err)?;
                        }
                        Style::Line => {
                            chart
                                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                                .map_err(err)?
                                .label(s.label.clone())
                                .legend(move |(x, y)| {
                                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                                });
                            chart
                                .draw_series(pts.into_iter().map(|q| Circle::new(q, 3, color.filled())))
                                .map_err(err)?;
                        }
                        Style::Points => {
                            chart
                                .draw_series(pts.into_iter().map(|q| Circle::new(q, 3, color.filled())))
                                .map_err(err)?
                                .label(s.label.clone())
                                .legend(move |(x, y)| Circle::new((x + 8, y), 3, color.filled()));
                        }
                    }
                }
                chart
                    .draw_series(
                        p.marks
                            .iter()
                            .map(|&q| Circle::new(clamp(q), 7, BLACK.stroke_width(2))),
                    )
                    .map_err(err)?;
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .label_font(("sans-serif", 11))
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .draw()
                    .map_err(err)?;
            }};
        }
        let (x0, x1) = xs;
        match (p.xlog, p.ylog) {
            (true, true) => body!(b
                .build_cartesian_2d((x0..x1).log_scale(), (ylo..yhi).log_scale())
                .map_err(err)?),
            (true, false) => body!(b
                .build_cartesian_2d((x0..x1).log_scale(), ylo..yhi)
                .map_err(err)?),
            (false, true) => body!(b
                .build_cartesian_2d(x0..x1, (ylo..yhi).log_scale())
                .map_err(err)?),
            (false, false) => body!(b.build_cartesian_2d(x0..x1, ylo..yhi).map_err(err)?),
        }
    }
    root.present().map_err(err)?;
    Ok(())
}
