//! Where a chart's legend goes: the candidate spot its drawn lines cross
//! least.

use std::ops::Range;

use plotters::chart::SeriesLabelPosition;

/// Legend size as a fraction of the plotting area: about a third of the
/// width, one 18-pixel row per entry of a ~380-pixel-high area.
const WIDTH: f64 = 0.34;
const ROW: f64 = 18.0 / 380.0;

/// Samples per line segment: lines crossing a box count, not just vertices.
const SAMPLES: usize = 16;

/// Position of `v` in `r` as a fraction in [0, 1], in log space on a log axis.
fn fraction(v: f64, r: &Range<f64>, log: bool) -> f64 {
    if log {
        (v.ln() - r.start.ln()) / (r.end.ln() - r.start.ln())
    } else {
        (v - r.start) / (r.end - r.start)
    }
}

/// The legend position (of the corners, then the middles of the sides)
/// whose box holds the fewest samples of `lines`; ties go to the earlier,
/// so upper right first, the usual empty spot of a falling loss curve.
/// Each line is a polyline in data coordinates on axes `x` and `y`; the
/// legend has `lines.len()` entries.
pub(crate) fn legend_position(
    lines: &[Vec<(f64, f64)>],
    x: &Range<f64>,
    y: &Range<f64>,
    log_x: bool,
    log_y: bool,
) -> SeriesLabelPosition {
    use SeriesLabelPosition::*;
    let h = (lines.len() as f64 * ROW + 0.03).min(0.9);
    let (right, left, center) = ((1.0 - WIDTH, 1.0), (0.0, WIDTH), (0.5 - WIDTH / 2.0, 0.5 + WIDTH / 2.0));
    let (upper, lower, middle) = ((1.0 - h, 1.0), (0.0, h), (0.5 - h / 2.0, 0.5 + h / 2.0));
    let spots = [
        (UpperRight, right, upper),
        (UpperLeft, left, upper),
        (LowerRight, right, lower),
        (LowerLeft, left, lower),
        (MiddleRight, right, middle),
        (MiddleLeft, left, middle),
        (UpperMiddle, center, upper),
        (LowerMiddle, center, lower),
    ];
    let mut counts = [0usize; 8];
    let mut count = |fx: f64, fy: f64| {
        for (n, (_, (x0, x1), (y0, y1))) in counts.iter_mut().zip(&spots) {
            *n += usize::from((*x0..=*x1).contains(&fx) && (*y0..=*y1).contains(&fy));
        }
    };
    for line in lines {
        let pts: Vec<(f64, f64)> =
            line.iter().map(|&(px, py)| (fraction(px, x, log_x), fraction(py, y, log_y))).collect();
        if let [(fx, fy)] = pts[..] {
            count(fx, fy);
        }
        for w in pts.windows(2) {
            let ((ax, ay), (bx, by)) = (w[0], w[1]);
            for k in 0..=SAMPLES {
                let t = k as f64 / SAMPLES as f64;
                count(ax + (bx - ax) * t, ay + (by - ay) * t);
            }
        }
    }
    let best = (0..spots.len()).min_by_key(|&i| counts[i]).unwrap_or(0);
    spots[best].0.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legend_avoids_the_lines() {
        let (x, y) = (0.0..10.0, 0.0..10.0);
        // A falling curve: from the upper left to the lower right.
        let falling = vec![(0.0, 10.0), (2.0, 4.0), (10.0, 1.0)];
        assert!(matches!(
            legend_position(std::slice::from_ref(&falling), &x, &y, false, false),
            SeriesLabelPosition::UpperRight
        ));
        // Plus a line across the top and one across the bottom right: the
        // legend goes to the middle right, between the curve and the bottom line.
        let top = vec![(0.0, 9.8), (10.0, 9.8)];
        let bottom = vec![(0.0, 0.5), (10.0, 0.5)];
        let pos = legend_position(&[falling, top, bottom], &x, &y, false, false);
        assert!(matches!(pos, SeriesLabelPosition::MiddleRight), "{pos:?}");
    }
}
