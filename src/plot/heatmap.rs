//! Heatmaps: a grid of cells colored by value (viridis), row labels on the
//! left, column labels below, a color bar on the right, and the values
//! printed in the cells of small grids.
//!
//! Laid out by hand rather than on a plotters chart: cell-centered labels
//! that thin out on long grids (200 steps x 8 experts) are simpler in pixels.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontTransform;

use super::axis::nice_ticks;
use super::canvas::{fmt_tick, render, DrawResult, Figure, FONT};
use crate::{Error, Result};

/// Values are printed in the cells of grids up to this many rows and columns.
const MAX_ANNOTATED: usize = 16;

/// Draw `values` (`[row][column]`, `row_labels.len()` rows of
/// `col_labels.len()` values) as a heatmap into `<stem>.svg` and
/// `<stem>.png` and return both paths.
///
/// The color scale runs from 0 (or the minimum, if negative) to the maximum
/// finite value; non-finite cells are light grey. `Error::Data` if the grid
/// is empty or its shape does not match the labels.
pub fn heatmap(
    stem: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    col_labels: &[String],
    row_labels: &[String],
    values: &[Vec<f64>],
) -> Result<Vec<PathBuf>> {
    let bad = |what: String| Error::Data(format!("heatmap \"{title}\" ({}): {what}", stem.display()));
    if values.is_empty() || col_labels.is_empty() {
        return Err(bad("nothing to plot: the grid has no cells; pass at least one row and one column".into()));
    }
    if values.len() != row_labels.len() {
        return Err(bad(format!(
            "{} rows of values but {} row labels; pass one label per row",
            values.len(),
            row_labels.len()
        )));
    }
    if let Some((i, row)) = values.iter().enumerate().find(|(_, r)| r.len() != col_labels.len()) {
        return Err(bad(format!(
            "row {i} has {} values but there are {} column labels; pass one value per column in every row",
            row.len(),
            col_labels.len()
        )));
    }
    let finite = values.iter().flatten().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((0f64, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    // All-zero or all-missing grids still get a usable scale.
    let hi = if hi > lo { hi } else { lo + 1.0 };
    render(stem, &HeatFigure { title, x_label, y_label, col_labels, row_labels, values, lo, hi })
}

struct HeatFigure<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    col_labels: &'a [String],
    row_labels: &'a [String],
    values: &'a [Vec<f64>],
    /// Color scale bounds, `lo < hi`.
    lo: f64,
    hi: f64,
}

const MISSING: RGBColor = RGBColor(225, 225, 225);
const FRAME: RGBColor = RGBColor(120, 120, 120);

impl HeatFigure<'_> {
    /// A cell value with the same decimals in every cell: two significant
    /// digits of the largest magnitude (shares print as `0.36`, `0.00`).
    fn fmt_value(&self, v: f64) -> String {
        let top = self.lo.abs().max(self.hi.abs());
        if (1e-3..1e4).contains(&top) {
            let decimals = (1 - top.log10().floor() as i32).clamp(0, 5) as usize;
            format!("{v:.decimals$}")
        } else {
            fmt_tick(v)
        }
    }

    fn color(&self, v: f64) -> RGBColor {
        if v.is_finite() {
            ViridisRGB.get_color_normalized(v.clamp(self.lo, self.hi), self.lo, self.hi)
        } else {
            MISSING
        }
    }
}

/// Show every `k`-th of `n` labels so that labels `extent` pixels long fit
/// into `room` pixels.
fn label_stride(n: usize, extent: u32, room: i32) -> usize {
    let fit = (room.max(1) as f64 / extent.max(1) as f64).floor().max(1.0) as usize;
    n.div_ceil(fit).max(1)
}

impl Figure for HeatFigure<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let (w, h) = root.dim_in_pixel();
        let (w, h) = (w as i32, h as i32);
        let label = TextStyle::from((FONT, 12).into_font());
        let desc = TextStyle::from((FONT, 15).into_font());
        let at = |hp, vp| Pos::new(hp, vp);

        root.draw_text(
            self.title,
            &TextStyle::from((FONT, 22).into_font()).pos(at(HPos::Center, VPos::Top)),
            (w / 2, 10),
        )?;

        let text_w = |labels: &[String]| -> std::result::Result<u32, _> {
            labels.iter().try_fold(0u32, |m, s| root.estimate_text_size(s, &label).map(|(tw, _)| m.max(tw)))
        };
        let (row_w, col_w) = (text_w(self.row_labels)?, text_w(self.col_labels)?);
        let line_h = root.estimate_text_size("0", &label)?.1.max(10);
        let ticks = nice_ticks(self.lo, self.hi, 5);
        let tick_w = ticks
            .iter()
            .try_fold(0u32, |m, &t| root.estimate_text_size(&fmt_tick(t), &label).map(|(tw, _)| m.max(tw)))?;

        // Grid box: y description and row labels on the left, column labels
        // and x description below, color bar on the right.
        let left = 12 + 18 + 8 + row_w as i32 + 6;
        let right = w - (14 + 16 + 6 + tick_w as i32 + 12);
        let top = 46;
        let bottom = h - (6 + line_h as i32 + 8 + 18 + 10);
        let (nr, nc) = (self.row_labels.len(), self.col_labels.len());
        let cell_w = (right - left) as f64 / nc as f64;
        let cell_h = (bottom - top) as f64 / nr as f64;
        let xs = |j: usize| left + (j as f64 * cell_w).round() as i32;
        let ys = |i: usize| top + (i as f64 * cell_h).round() as i32;

        for (i, row) in self.values.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                root.draw(&Rectangle::new([(xs(j), ys(i)), (xs(j + 1), ys(i + 1))], self.color(v).filled()))?;
            }
        }
        root.draw(&Rectangle::new([(left, top), (right, bottom)], FRAME.stroke_width(1)))?;

        if nr <= MAX_ANNOTATED && nc <= MAX_ANNOTATED {
            let size = (cell_h * 0.32).min(14.0);
            for (i, row) in self.values.iter().enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    let text = if v.is_finite() { self.fmt_value(v) } else { "-".into() };
                    let style = TextStyle::from((FONT, size).into_font());
                    if size < 8.0 || root.estimate_text_size(&text, &style)?.0 as f64 > cell_w - 4.0 {
                        continue;
                    }
                    // Viridis runs from dark purple to light yellow.
                    let light_cell = !v.is_finite() || (v - self.lo) / (self.hi - self.lo) > 0.55;
                    let ink = if light_cell { BLACK } else { WHITE };
                    let center = ((xs(j) + xs(j + 1)) / 2, (ys(i) + ys(i + 1)) / 2);
                    root.draw_text(&text, &style.color(&ink).pos(at(HPos::Center, VPos::Center)), center)?;
                }
            }
        }

        let every = label_stride(nr, line_h + 4, bottom - top);
        for i in (0..nr).step_by(every) {
            let y = (ys(i) + ys(i + 1)) / 2;
            root.draw_text(&self.row_labels[i], &label.pos(at(HPos::Right, VPos::Center)), (left - 6, y))?;
        }
        let every = label_stride(nc, col_w + 8, right - left);
        for j in (0..nc).step_by(every) {
            let x = (xs(j) + xs(j + 1)) / 2;
            root.draw_text(&self.col_labels[j], &label.pos(at(HPos::Center, VPos::Top)), (x, bottom + 6))?;
        }
        root.draw_text(self.x_label, &desc.pos(at(HPos::Center, VPos::Bottom)), ((left + right) / 2, h - 10))?;
        let vertical = desc.transform(FontTransform::Rotate270).pos(at(HPos::Center, VPos::Center));
        root.draw_text(self.y_label, &vertical, (12 + 9, (top + bottom) / 2))?;

        // Color bar, low at the bottom.
        let (bx0, bx1) = (right + 14, right + 30);
        let span = (bottom - top).max(1);
        for k in 0..span {
            let v = self.hi - (self.hi - self.lo) * k as f64 / span as f64;
            root.draw(&Rectangle::new([(bx0, top + k), (bx1, top + k + 1)], self.color(v).filled()))?;
        }
        root.draw(&Rectangle::new([(bx0, top), (bx1, bottom)], FRAME.stroke_width(1)))?;
        for &t in &ticks {
            let y = bottom - ((t - self.lo) / (self.hi - self.lo) * span as f64).round() as i32;
            root.draw(&PathElement::new(vec![(bx1, y), (bx1 + 3, y)], FRAME.stroke_width(1)))?;
            root.draw_text(&fmt_tick(t), &label.pos(at(HPos::Left, VPos::Center)), (bx1 + 6, y))?;
        }
        Ok(())
    }
}
