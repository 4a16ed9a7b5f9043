//! Plots of a sweep directory (`results.jsonl` and the points' runs): the
//! validation curves overlaid, and the final validation loss (or dropped
//! fraction) against each swept key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::canvas::fmt_tick;
use super::run::{dir_name, floor_line, read_jsonl, read_metrics};
use super::{line_chart, LineOpts, Series};
use crate::{Error, Result};

const N_EXPERTS: &str = "model.n_experts";
const MOE_EVERY: &str = "model.moe_every";
const CAPACITY: &str = "model.capacity_factor";

/// The fields of one `results.jsonl` row these plots use (read leniently:
/// missing or null fields are `None`).
struct Point {
    label: String,
    overrides: BTreeMap<String, Value>,
    run_dir: Option<PathBuf>,
    val_loss: Option<f64>,
    /// Dropped fraction in training (train capacity factor).
    dropped: Option<f64>,
    /// Dropped fraction at the final evaluation (eval capacity factor).
    eval_dropped: Option<f64>,
}

/// A finite number, or a string holding one (hand-written overrides).
fn num(v: &Value) -> Option<f64> {
    let x = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    x.filter(|x| x.is_finite())
}

fn value_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Point {
    fn from_json(index: usize, v: &Value) -> Point {
        let field = |k: &str| v.get(k).and_then(num);
        Point {
            label: v.get("label").and_then(Value::as_str).map_or_else(|| format!("point {index}"), str::to_string),
            overrides: v
                .get("overrides")
                .and_then(Value::as_object)
                .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            run_dir: v.get("run_dir").and_then(Value::as_str).map(PathBuf::from),
            val_loss: field("val_loss"),
            dropped: field("dropped_frac"),
            eval_dropped: field("eval_dropped_frac"),
        }
    }

    fn get(&self, key: &str) -> Option<f64> {
        self.overrides.get(key).and_then(num)
    }

    fn is_dense(&self) -> bool {
        self.get(MOE_EVERY) == Some(0.0)
    }
}

/// The keys whose value (or absence) differs between points, in key order,
/// each with its legend name: the last part of the key, or the whole key
/// where two would share it.
fn varying_keys(points: &[Point]) -> Vec<(String, String)> {
    let mut values: BTreeMap<&str, Vec<Option<String>>> = BTreeMap::new();
    for k in points.iter().flat_map(|p| p.overrides.keys()) {
        values.entry(k).or_default();
    }
    for (k, seen) in values.iter_mut() {
        *seen = points.iter().map(|p| p.overrides.get(*k).map(value_str)).collect();
    }
    let keys: Vec<&str> = values.iter().filter(|(_, v)| v.iter().any(|x| x != &v[0])).map(|(k, _)| *k).collect();
    let short = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    keys.iter()
        .map(|&k| {
            let clash = keys.iter().filter(|&&o| short(o) == short(k)).count() > 1;
            (k.to_string(), if clash { k.to_string() } else { short(k) })
        })
        .collect()
}

/// Series of `(x, y)` points, one per combination of the varying keys other
/// than `exclude`, named `key=value, ...` (`default` if none), each sorted
/// by x.
fn grouped<'a>(
    points: impl Iterator<Item = &'a Point>,
    xy: impl Fn(&Point) -> Option<(f64, f64)>,
    varying: &[(String, String)],
    exclude: &[&str],
    default: &str,
) -> Vec<Series> {
    let mut series: Vec<Series> = Vec::new();
    for p in points {
        let Some(point) = xy(p) else { continue };
        let parts: Vec<String> = varying
            .iter()
            .filter(|(k, _)| !exclude.contains(&k.as_str()))
            .filter_map(|(k, short)| p.overrides.get(k).map(|v| format!("{short}={}", value_str(v))))
            .collect();
        let name = if parts.is_empty() { default.to_string() } else { parts.join(", ") };
        match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push(point),
            None => series.push(Series { name, points: vec![point] }),
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    series
}

fn y_label(floor: Option<f64>) -> String {
    match floor {
        Some(f) => format!("final val loss (floor {})", fmt_tick(f)),
        None => "final val loss".into(),
    }
}

/// A point's `metrics.jsonl`: at its `run_dir` (relative to the current
/// directory), else in the sweep directory under the run's own name (a sweep
/// plotted from another directory than it ran in).
fn point_metrics(sweep_dir: &Path, run_dir: &Path) -> Result<Option<super::run::Metrics>> {
    if let Some(m) = read_metrics(&run_dir.join("metrics.jsonl"))? {
        return Ok(Some(m));
    }
    match run_dir.file_name() {
        Some(own) if run_dir.is_relative() => read_metrics(&sweep_dir.join(own).join("metrics.jsonl")),
        _ => Ok(None),
    }
}

/// Plot a sweep directory into `sweep_dir/plots/` and return the files
/// written (each chart as `.svg` and `.png`):
///
/// - `loss_vs_step`, `loss_vs_time`: every point's validation curve, named by
///   its label (points whose run has no `metrics.jsonl` are left out);
/// - `final_loss_vs_experts` if points set `model.n_experts`: final val loss
///   against the expert count (log x), one series per combination of the
///   other swept keys, dense points (`model.moe_every = 0`) as reference lines;
/// - `dropped_vs_capacity` and `loss_vs_capacity` if points set
///   `model.capacity_factor`: the dropped fraction (in training and at the
///   final evaluation) and the final val loss; dropless points (factor <= 0)
///   are drawn at 1.5x the largest factor, as the title says;
/// - `loss_vs_<key>` for every other swept key with numeric values (log x
///   when all are positive and span more than 10x; zeros then sit at a tenth
///   of the smallest positive value, as the title says).
///
/// `Error::Data` if `results.jsonl` is missing or empty, or nothing in it
/// can be plotted.
pub fn plot_sweep(sweep_dir: &Path) -> Result<Vec<PathBuf>> {
    let no_results = || Error::Data(format!("no results in {}: run `switchyard sweep` first", sweep_dir.display()));
    let rows = read_jsonl(&sweep_dir.join("results.jsonl"))?.ok_or_else(no_results)?;
    if rows.is_empty() {
        return Err(no_results());
    }
    let points: Vec<Point> = rows.iter().enumerate().map(|(i, (_, v))| Point::from_json(i, v)).collect();
    let floor = rows.iter().find_map(|(_, v)| v.get("loss_floor").and_then(num));
    let out = sweep_dir.join("plots");
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let name = dir_name(sweep_dir);
    let varying = varying_keys(&points);
    let mut files = Vec::new();

    let (mut by_step, mut by_time) = (Vec::new(), Vec::new());
    for p in &points {
        let Some(run_dir) = &p.run_dir else { continue };
        let Some(m) = point_metrics(sweep_dir, run_dir)? else { continue };
        by_step.push(Series { name: p.label.clone(), points: m.val_by_step() });
        by_time.push(Series { name: p.label.clone(), points: m.val_by_time() });
    }
    for (stem, what, x_label, series) in
        [("loss_vs_step", "step", "step", by_step), ("loss_vs_time", "time", "elapsed (s)", by_time)]
    {
        if series.iter().any(|s| !s.points.is_empty()) {
            let opts = LineOpts { hlines: floor_line(floor), ..Default::default() };
            let title = format!("{name}: val loss vs {what}");
            files.extend(line_chart(&out.join(stem), &title, x_label, "val loss (nats/token)", &series, &opts)?);
        }
    }

    let has = |key: &str| points.iter().any(|p| p.overrides.contains_key(key));
    let mut handled = vec![CAPACITY];
    if has(N_EXPERTS) {
        handled.extend([N_EXPERTS, MOE_EVERY]);
        let moe = points.iter().filter(|p| !p.is_dense());
        let series = grouped(moe, |p| Some((p.get(N_EXPERTS)?, p.val_loss?)), &varying, &[N_EXPERTS, MOE_EVERY], "MoE");
        let dense: Vec<&Point> = points.iter().filter(|p| p.is_dense() && p.val_loss.is_some()).collect();
        let hlines = dense
            .iter()
            .filter_map(|p| {
                let name = if dense.len() == 1 { "dense".to_string() } else { format!("dense ({})", p.label) };
                Some((p.val_loss?, name))
            })
            .collect();
        if !series.is_empty() {
            let opts = LineOpts { log_x: true, markers: true, hlines, ..Default::default() };
            let title = format!("{name}: final val loss vs experts");
            let stem = out.join("final_loss_vs_experts");
            files.extend(line_chart(&stem, &title, "experts (model.n_experts)", &y_label(floor), &series, &opts)?);
        }
    }

    if has(CAPACITY) {
        let largest = points.iter().filter_map(|p| p.get(CAPACITY)).fold(0.0, f64::max);
        let dropless_x = if largest > 0.0 { largest * 1.5 } else { 1.0 };
        let x_of = |p: &Point| p.get(CAPACITY).map(|cf| if cf > 0.0 { cf } else { dropless_x });
        let note = if points.iter().any(|p| p.get(CAPACITY).is_some_and(|cf| cf <= 0.0)) {
            format!(" (dropless at x = {})", fmt_tick(dropless_x))
        } else {
            String::new()
        };
        let x_label = "capacity factor (model.capacity_factor)";
        let named = |series: Vec<Series>, kind: &str| -> Vec<Series> {
            series
                .into_iter()
                .map(|s| Series {
                    name: if s.name.is_empty() { kind.into() } else { format!("{}, {kind}", s.name) },
                    ..s
                })
                .collect()
        };
        let train = grouped(points.iter(), |p| Some((x_of(p)?, p.dropped?)), &varying, &[CAPACITY], "");
        let eval = grouped(points.iter(), |p| Some((x_of(p)?, p.eval_dropped?)), &varying, &[CAPACITY], "");
        let mut dropped = named(train, "in training");
        dropped.extend(named(eval, "final eval"));
        let opts = LineOpts { markers: true, ..Default::default() };
        if !dropped.is_empty() {
            let title = format!("{name}: dropped fraction vs capacity{note}");
            let stem = out.join("dropped_vs_capacity");
            files.extend(line_chart(&stem, &title, x_label, "dropped fraction of assignments", &dropped, &opts)?);
        }
        let loss = grouped(points.iter(), |p| Some((x_of(p)?, p.val_loss?)), &varying, &[CAPACITY], "val loss");
        if !loss.is_empty() {
            let title = format!("{name}: final val loss vs capacity{note}");
            files.extend(line_chart(&out.join("loss_vs_capacity"), &title, x_label, &y_label(floor), &loss, &opts)?);
        }
    }

    for (key, _) in varying.iter().filter(|(k, _)| !handled.contains(&k.as_str())) {
        let present: Vec<&Value> = points.iter().filter_map(|p| p.overrides.get(key)).collect();
        let xs: Vec<f64> = present.iter().filter_map(|v| num(v)).collect();
        let distinct = xs.iter().any(|&x| x != xs[0]);
        if xs.len() != present.len() || !distinct {
            continue;
        }
        let positive = xs.iter().copied().filter(|&x| x > 0.0);
        let (lo, hi) = positive.fold((f64::INFINITY, 0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
        let log_x = xs.iter().all(|&x| x >= 0.0) && hi > 0.0 && hi / lo > 10.0;
        let zero_x = lo / 10.0;
        let note = if log_x && xs.contains(&0.0) { format!(" (0 at x = {})", fmt_tick(zero_x)) } else { String::new() };
        let x_of = |p: &Point| p.get(key).map(|x| if log_x && x == 0.0 { zero_x } else { x });
        let series = grouped(points.iter(), |p| Some((x_of(p)?, p.val_loss?)), &varying, &[key], "val loss");
        if series.is_empty() {
            continue;
        }
        let opts = LineOpts { log_x, markers: true, ..Default::default() };
        let title = format!("{name}: final val loss vs {key}{note}");
        let safe: String = key
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
            .collect();
        let stem = out.join(format!("loss_vs_{safe}"));
        files.extend(line_chart(&stem, &title, key, &y_label(floor), &series, &opts)?);
    }

    if files.is_empty() {
        return Err(Error::Data(format!(
            "nothing to plot in {}: no point of results.jsonl has a val_loss or a run with metrics.jsonl",
            sweep_dir.display()
        )));
    }
    Ok(files)
}
