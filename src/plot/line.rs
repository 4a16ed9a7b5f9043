//! Line charts: several named series of (x, y) points, optional log axes,
//! markers and dashed horizontal reference lines (e.g. the loss floor).

use std::ops::Range;
use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use super::axis::LogAxis;
use super::canvas::{fmt_tick, reference_color, render, series_color, DrawResult, Figure, FONT};
use super::legend::legend_position;
use crate::{Error, Result};

/// One named curve of a line chart.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// `(x, y)` points in drawing order; non-finite points (and non-positive
    /// ones on a log axis) are skipped.
    pub points: Vec<(f64, f64)>,
}

/// Options of [`line_chart`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LineOpts {
    /// Logarithmic x axis.
    pub log_x: bool,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// Draw a marker at every point (series of one point always get one).
    pub markers: bool,
    /// Dashed horizontal reference lines `(y, legend label)`.
    pub hlines: Vec<(f64, String)>,
}

/// A log x axis with markers is ticked at the points' x values up to this many.
const MAX_DATA_TICKS: usize = 12;

/// Draw `series` as lines into `<stem>.svg` and `<stem>.png` (800x500,
/// white background) and return both paths.
///
/// The legend goes where the lines leave room (a corner if one is free); the
/// axis ranges cover every drawn point and reference line with a little
/// padding. A log x
/// axis with markers is ticked at the points' x values when there are at
/// most 12 of them (swept values).
/// `Error::Data` if no series has a drawable point.
pub fn line_chart(
    stem: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    opts: &LineOpts,
) -> Result<Vec<PathBuf>> {
    let drawable = |v: f64, log: bool| v.is_finite() && (!log || v > 0.0);
    let curves: Vec<Curve> = series
        .iter()
        .enumerate()
        .map(|(color, s)| {
            let pts = s.points.iter().copied().filter(|&(x, y)| drawable(x, opts.log_x) && drawable(y, opts.log_y));
            Curve { color, name: &s.name, points: pts.collect() }
        })
        .filter(|c| !c.points.is_empty())
        .collect();
    if curves.is_empty() {
        let what = if opts.log_x || opts.log_y { "finite, positive (log axis)" } else { "finite" };
        return Err(Error::Data(format!(
            "nothing to plot: no series of \"{title}\" ({}) has a {what} point; pass at least one",
            stem.display()
        )));
    }
    let hlines: Vec<(f64, &str)> =
        opts.hlines.iter().filter(|(y, _)| drawable(*y, opts.log_y)).map(|(y, name)| (*y, name.as_str())).collect();
    let all = || curves.iter().flat_map(|c| c.points.iter().copied());
    let x = padded_range(all().map(|p| p.0), opts.log_x);
    let y = padded_range(all().map(|p| p.1).chain(hlines.iter().map(|h| h.0)), opts.log_y);
    let lines =
        curves.iter().map(|c| c.points.clone()).chain(hlines.iter().map(|h| vec![(x.start, h.0), (x.end, h.0)]));
    let legend = legend_position(&lines.collect::<Vec<_>>(), &x, &y, opts.log_x, opts.log_y);
    // Marked points on a log x axis are swept values: tick them, if few.
    let mut x_ticks: Vec<f64> = all().map(|p| p.0).collect();
    x_ticks.sort_by(f64::total_cmp);
    x_ticks.dedup();
    if !(opts.log_x && opts.markers && x_ticks.len() <= MAX_DATA_TICKS) {
        x_ticks.clear();
    }
    let fig = LineFigure { title, x_label, y_label, curves, hlines, markers: opts.markers, x, y, legend };
    match (opts.log_x, opts.log_y) {
        (false, false) => {
            render(stem, &Axes(&fig, || (RangedCoordf64::from(fig.x.clone()), RangedCoordf64::from(fig.y.clone()))))
        }
        (true, false) => render(
            stem,
            &Axes(&fig, || (LogAxis::with_ticks(fig.x.clone(), x_ticks.clone()), RangedCoordf64::from(fig.y.clone()))),
        ),
        (false, true) => {
            render(stem, &Axes(&fig, || (RangedCoordf64::from(fig.x.clone()), LogAxis::new(fig.y.clone()))))
        }
        (true, true) => render(
            stem,
            &Axes(&fig, || (LogAxis::with_ticks(fig.x.clone(), x_ticks.clone()), LogAxis::new(fig.y.clone()))),
        ),
    }
}

/// The range of `values` (non-empty) padded by 5% of the span on each side
/// (of the log span on a log axis); a range of non-negative values stays
/// non-negative, and a single value gets a range around it.
fn padded_range(values: impl Iterator<Item = f64>, log: bool) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if log {
        let (l, h) = (lo.log10(), hi.log10());
        let pad = ((h - l) * 0.05).max(0.05);
        return 10f64.powf(l - pad)..10f64.powf(h + pad);
    }
    let span = hi - lo;
    let pad = if span > 0.0 { span * 0.05 } else { lo.abs().max(1.0) * 0.05 };
    let start = if lo >= 0.0 { (lo - pad).max(0.0) } else { lo - pad };
    start..hi + pad
}

/// A series ready to draw.
struct Curve<'a> {
    /// Index of the series: its color.
    color: usize,
    name: &'a str,
    /// The drawable points, at least one.
    points: Vec<(f64, f64)>,
}

/// A line chart with its data filtered and its ranges chosen.
struct LineFigure<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    /// Non-empty.
    curves: Vec<Curve<'a>>,
    hlines: Vec<(f64, &'a str)>,
    markers: bool,
    x: Range<f64>,
    y: Range<f64>,
    legend: SeriesLabelPosition,
}

/// A figure together with the coordinate types of its axes (linear or log),
/// built on demand because plotters' coordinates are not `Clone`.
struct Axes<'a, F>(&'a LineFigure<'a>, F);

impl<X, Y, F> Figure for Axes<'_, F>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
    F: Fn() -> (X, Y),
{
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let (x, y) = (self.1)();
        self.0.draw_on(root, x, y)
    }
}

impl LineFigure<'_> {
    fn draw_on<DB, X, Y>(&self, root: &DrawingArea<DB, Shift>, x: X, y: Y) -> DrawResult<DB>
    where
        DB: DrawingBackend,
        X: Ranged<ValueType = f64> + ValueFormatter<f64>,
        Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, (FONT, 22))
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(70)
            .build_cartesian_2d(x, y)?;
        chart
            .configure_mesh()
            .x_desc(self.x_label)
            .y_desc(self.y_label)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .x_label_formatter(&|v| fmt_tick(*v))
            .y_label_formatter(&|v| fmt_tick(*v))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()?;
        for c in &self.curves {
            let color = series_color(c.color);
            chart
                .draw_series(LineSeries::new(c.points.iter().copied(), color.stroke_width(2)))?
                .label(c.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2)));
            if self.markers || c.points.len() == 1 {
                chart.draw_series(c.points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            }
        }
        for (j, &(level, name)) in self.hlines.iter().enumerate() {
            let color = reference_color(j);
            let ends = [(self.x.start, level), (self.x.end, level)];
            chart
                .draw_series(DashedLineSeries::new(ends, 8, 5, color.stroke_width(1)))?
                .label(name)
                .legend(move |(x, y)| DashedPathElement::new(vec![(x, y), (x + 22, y)], 6, 4, color.stroke_width(1)));
        }
        chart
            .configure_series_labels()
            .position(self.legend.clone())
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(190, 190, 190))
            .draw()
    }
}
