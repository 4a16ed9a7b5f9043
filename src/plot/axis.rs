//! Tick placement: "nice" linear ticks, and a log axis whose ticks are
//! readable on ranges of less than a decade too (plotters' own log axis only
//! ticks from the first power of ten inside the range, so a loss gap from
//! 0.2 to 1.6 gets one label).

use std::ops::Range;

use plotters::coord::combinators::LogCoord;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::prelude::*;

/// At most `max` (>= 1) ticks in `[lo, hi]`, at multiples of 1, 2 or 5
/// times a power of ten.
pub(crate) fn nice_ticks(lo: f64, hi: f64, max: usize) -> Vec<f64> {
    let span = hi - lo;
    if !(span > 0.0 && span.is_finite()) {
        return vec![lo];
    }
    let raw = span / max.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * mag).find(|&s| s >= raw).unwrap_or(10.0 * mag);
    let (first, last) = ((lo / step).ceil() as i64, (hi / step).floor() as i64);
    (first..=last).map(|k| k as f64 * step).collect()
}

/// At most `max` ticks in `[lo, hi]` (`0 < lo < hi`) for a log axis: the
/// densest of 1..9, 1-2-5 or 1 times each power of ten (every k-th power on
/// wide ranges) that fits, or nice linear ticks where those give more than
/// two, e.g. on a range inside one decade.
pub(crate) fn log_ticks(lo: f64, hi: f64, max: usize) -> Vec<f64> {
    let max = max.max(1);
    let (d0, d1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let at = |mults: &[f64], every: i32| -> Vec<f64> {
        (d0..=d1)
            .filter(|d| d.rem_euclid(every) == 0)
            .flat_map(|d| mults.iter().map(move |m| m * 10f64.powi(d)))
            .filter(|v| (lo..=hi).contains(v))
            .collect()
    };
    const ALL: [f64; 9] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
    let decades = [at(&ALL, 1), at(&[1.0, 2.0, 5.0], 1)]
        .into_iter()
        .chain((1..).map(|every| at(&[1.0], every)))
        .find(|t| t.len() <= max)
        .unwrap_or_default();
    if decades.len() > 2 {
        return decades;
    }
    let linear = nice_ticks(lo, hi, max.min(6));
    if linear.len() > decades.len() {
        linear
    } else {
        decades
    }
}

/// A logarithmic axis over `f64`: plotters' log scale for the mapping,
/// [`log_ticks`] or given ticks for the ticks.
pub(crate) struct LogAxis {
    coord: LogCoord<f64>,
    range: Range<f64>,
    /// Ticks to use where at most the requested number (the swept values of
    /// a sweep chart: 2, 4, 8, 16 experts read better than 2, 5, 10).
    ticks: Vec<f64>,
}

impl LogAxis {
    /// An axis over `range` (`0 < start < end`).
    pub(crate) fn new(range: Range<f64>) -> LogAxis {
        LogAxis::with_ticks(range, Vec::new())
    }

    /// An axis over `range` ticked at `ticks` when they are not too many
    /// (and not empty).
    pub(crate) fn with_ticks(range: Range<f64>, ticks: Vec<f64>) -> LogAxis {
        LogAxis { coord: range.clone().log_scale().into(), range, ticks }
    }
}

impl Ranged for LogAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.coord.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        let max = hint.max_num_points();
        if !self.ticks.is_empty() && self.ticks.len() <= max {
            return self.ticks.clone();
        }
        log_ticks(self.range.start, self.range.end, max)
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-12 * y.abs().max(1.0))
    }

    #[test]
    fn linear_ticks_step_by_one_two_five() {
        assert!(close(&nice_ticks(0.0, 0.2356, 5), &[0.0, 0.05, 0.1, 0.15, 0.2]));
        assert!(close(&nice_ticks(-39.0, 839.0, 10), &[0.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0]));
        assert_eq!(nice_ticks(1.0, 1.0, 5), [1.0]);
    }

    #[test]
    fn log_ticks_inside_a_decade_and_across_many() {
        // 0.2 .. 1.6: 1..9 multiples give 0.2, 0.3, ..., 1 (9 ticks).
        assert!(close(&log_ticks(0.2, 1.6, 10), &[0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]));
        assert!(close(&log_ticks(0.2, 1.6, 5), &[0.2, 0.5, 1.0]));
        // Inside one decade with no power of ten: linear ticks.
        assert!(close(&log_ticks(1.2, 1.9, 10), &[1.2, 1.4, 1.6, 1.8]));
        // Twelve decades, at most 5 ticks: every third power.
        assert!(close(&log_ticks(1e-3, 1e9, 5), &[1e-3, 1.0, 1e3, 1e6, 1e9]));
    }
}
