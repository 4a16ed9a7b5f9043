//! Roofline charts: achieved FLOP/s against arithmetic intensity on log-log
//! axes, under the roof `min(peak, bandwidth * intensity)`.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::axis::LogAxis;
use super::canvas::{fmt_si, fmt_tick, render, series_color, DrawResult, Figure, FONT};
use super::legend::legend_position;
use crate::{Error, Result};

/// One measured kernel or op on a roofline chart.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RooflinePoint {
    /// Label drawn beside the marker.
    pub name: String,
    /// Arithmetic intensity (FLOP per byte moved to or from memory).
    pub intensity: f64,
    /// Achieved FLOP/s.
    pub achieved: f64,
}

/// Draw a roofline chart into `<stem>.svg` and `<stem>.png` and return both
/// paths: the roof `min(peak_flops, bandwidth * intensity)` (FLOP/s, bytes/s)
/// from a quarter of the smallest to four times the largest intensity, and
/// each point as a marker labelled with its name.
///
/// Points without a finite, positive intensity and FLOP/s cannot sit on log
/// axes and are skipped. `Error::Data` if the peak or bandwidth is not
/// finite and positive, or no point is left.
pub fn roofline(
    stem: &Path,
    title: &str,
    peak_flops: f64,
    bandwidth: f64,
    points: &[RooflinePoint],
) -> Result<Vec<PathBuf>> {
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if !positive(peak_flops) || !positive(bandwidth) {
        return Err(Error::Data(format!(
            "roofline \"{title}\" ({}): peak {peak_flops} FLOP/s and bandwidth {bandwidth} B/s must both be finite and positive",
            stem.display()
        )));
    }
    let points: Vec<&RooflinePoint> = points.iter().filter(|p| positive(p.intensity) && positive(p.achieved)).collect();
    if points.is_empty() {
        return Err(Error::Data(format!(
            "nothing to plot: roofline \"{title}\" ({}) has no point with a finite, positive intensity and FLOP/s",
            stem.display()
        )));
    }
    let min_of = |f: fn(&RooflinePoint) -> f64| points.iter().map(|p| f(p)).fold(f64::INFINITY, f64::min);
    let max_of = |f: fn(&RooflinePoint) -> f64| points.iter().map(|p| f(p)).fold(0.0, f64::max);
    let x = min_of(|p| p.intensity) / 4.0..max_of(|p| p.intensity) * 4.0;
    let roof = |i: f64| peak_flops.min(bandwidth * i);
    let y = min_of(|p| p.achieved).min(roof(x.start)) / 2.0..max_of(|p| p.achieved).max(peak_flops) * 2.0;
    let ridge = peak_flops / bandwidth;
    let mut roof_line = vec![(x.start, roof(x.start))];
    if x.start < ridge && ridge < x.end {
        roof_line.push((ridge, peak_flops));
    }
    roof_line.push((x.end, roof(x.end)));
    let lines: Vec<Vec<(f64, f64)>> =
        std::iter::once(roof_line.clone()).chain(points.iter().map(|p| vec![(p.intensity, p.achieved)])).collect();
    let legend = legend_position(&lines, &x, &y, true, true);
    let roof_name = format!("roof: {}FLOP/s peak, {}B/s", fmt_si(peak_flops), fmt_si(bandwidth));
    render(stem, &RooflineFigure { title, roof_name, roof_line, points, x, y, legend })
}

struct RooflineFigure<'a> {
    title: &'a str,
    roof_name: String,
    roof_line: Vec<(f64, f64)>,
    points: Vec<&'a RooflinePoint>,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    legend: SeriesLabelPosition,
}

impl Figure for RooflineFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, (FONT, 22))
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(70)
            .build_cartesian_2d(LogAxis::new(self.x.clone()), LogAxis::new(self.y.clone()))?;
        chart
            .configure_mesh()
            .x_desc("arithmetic intensity (FLOP/byte)")
            .y_desc("achieved FLOP/s")
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .x_label_formatter(&|v| fmt_tick(*v))
            .y_label_formatter(&|v| fmt_si(*v))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()?;
        let roof = RGBColor(40, 40, 40);
        chart
            .draw_series(LineSeries::new(self.roof_line.iter().copied(), roof.stroke_width(2)))?
            .label(self.roof_name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], roof.stroke_width(2)));
        let label = TextStyle::from((FONT, 11).into_font());
        for (i, p) in self.points.iter().enumerate() {
            let color = series_color(i);
            let marker = EmptyElement::at((p.intensity, p.achieved))
                + Circle::new((0, 0), 4, color.filled())
                + Text::new(p.name.clone(), (6, -12), label.clone());
            chart.draw_series(std::iter::once(marker))?;
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
