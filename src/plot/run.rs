//! Plots of one run directory: losses against steps and time, the gap to the
//! loss floor, expert load over training and domain x expert routing.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::{heatmap, line_chart, LineOpts, Series};
use crate::train::metrics::{EvalRecord, TrainRecord};
use crate::{Error, Result};

/// Training curves are thinned to this many points: enough for an 800-pixel
/// chart, and a 100k-step run stays a small SVG.
const MAX_CURVE_POINTS: usize = 2000;

/// Expert-load heatmaps show at most this many steps (rows).
const MAX_LOAD_ROWS: usize = 100;

/// The lines of a JSON-lines file as `(line number, value)`, or `None` if the
/// file does not exist. A last line without its newline is a record still
/// being written (a live run) and is skipped if it does not parse.
pub(crate) fn read_jsonl(path: &Path) -> Result<Option<Vec<(usize, Value)>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let n = text.lines().count();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(v) => out.push((i + 1, v)),
            Err(_) if i + 1 == n && !text.ends_with('\n') => {}
            Err(e) => {
                return Err(Error::Data(format!(
                    "{} line {}: not JSON ({e}); the file is damaged: delete or repair that line",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    Ok(Some(out))
}

/// The records of a run's `metrics.jsonl`, in file order.
pub(crate) struct Metrics {
    /// `kind = "train"` lines.
    pub(crate) train: Vec<TrainRecord>,
    /// `kind = "eval"` lines.
    pub(crate) eval: Vec<EvalRecord>,
}

/// Read `path` (a `metrics.jsonl`); `None` if it does not exist. Lines of
/// other kinds are ignored.
pub(crate) fn read_metrics(path: &Path) -> Result<Option<Metrics>> {
    let Some(lines) = read_jsonl(path)? else { return Ok(None) };
    let mut m = Metrics { train: Vec::new(), eval: Vec::new() };
    let bad = |line: usize, kind: &str, e: serde_json::Error| {
        Error::Data(format!(
            "{} line {line}: not a {kind} record ({e}); it was written by another version of switchyard, or damaged",
            path.display()
        ))
    };
    for (line, v) in lines {
        match v.get("kind").and_then(Value::as_str) {
            Some("train") => m.train.push(serde_json::from_value(v).map_err(|e| bad(line, "train", e))?),
            Some("eval") => m.eval.push(serde_json::from_value(v).map_err(|e| bad(line, "eval", e))?),
            _ => {}
        }
    }
    Ok(Some(m))
}

impl Metrics {
    /// Seconds since the run started for each train record, summed over
    /// resumes (each resume restarts `elapsed_s` from zero).
    pub(crate) fn elapsed(&self) -> Vec<f64> {
        let (mut offset, mut prev) = (0.0, 0.0);
        self.train
            .iter()
            .map(|r| {
                if r.elapsed_s < prev {
                    offset += prev;
                }
                prev = r.elapsed_s;
                r.elapsed_s + offset
            })
            .collect()
    }

    /// `(step, val_loss)` of every evaluation.
    pub(crate) fn val_by_step(&self) -> Vec<(f64, f64)> {
        self.eval.iter().map(|e| (e.step as f64, e.val_loss)).collect()
    }

    /// `(elapsed seconds, val_loss)` of every evaluation whose step has a
    /// train record (evaluations run right after their step).
    pub(crate) fn val_by_time(&self) -> Vec<(f64, f64)> {
        let at: HashMap<u64, f64> = self.train.iter().map(|r| r.step).zip(self.elapsed()).collect();
        self.eval.iter().filter_map(|e| Some((*at.get(&e.step)?, e.val_loss))).collect()
    }
}

/// Indices of at most `max` (>= 2) evenly spaced elements of `0..n`, the
/// first and the last included.
pub(crate) fn evenly_spaced(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    (0..max).map(|i| i * (n - 1) / (max - 1)).collect()
}

fn thin(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    evenly_spaced(points.len(), MAX_CURVE_POINTS).into_iter().map(|i| points[i]).collect()
}

/// The last path component of `dir`, for chart titles.
pub(crate) fn dir_name(dir: &Path) -> String {
    dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// `loss_floor` from `summary.json`, if the file exists and has one. Read
/// leniently: a summary that does not parse only costs the floor line.
fn read_floor(run_dir: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(run_dir.join("summary.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v.get("loss_floor")?.as_f64().filter(|f| f.is_finite())
}

/// The floor as a reference line, if known.
pub(crate) fn floor_line(floor: Option<f64>) -> Vec<(f64, String)> {
    floor.map(|f| (f, format!("loss floor {}", super::canvas::fmt_tick(f)))).into_iter().collect()
}

/// The fields of `routing.json` (a list of `train::routing::LayerRouting`)
/// these plots use.
#[derive(Deserialize)]
struct LayerDomains {
    layer: usize,
    #[serde(default)]
    by_domain: Vec<Vec<u64>>,
}

/// Each row of `counts` divided by its sum (NaN for an empty row).
fn shares<T: Copy + Into<f64>>(counts: &[T]) -> Vec<f64> {
    let total: f64 = counts.iter().map(|&c| c.into()).sum();
    counts.iter().map(|&c| if total > 0.0 { c.into() / total } else { f64::NAN }).collect()
}

fn expert_labels(n: usize) -> Vec<String> {
    (0..n).map(|e| format!("e{e}")).collect()
}

/// Plot a run directory into `run_dir/plots/` and return the files written
/// (each chart as `.svg` and `.png`):
///
/// - `loss_vs_step`, `loss_vs_time`: train loss (and train CE where it
///   differs: MoE models), val loss and the loss floor when known;
/// - `gap_to_floor`: val loss minus the floor, log scale (floor known);
/// - `expert_load_layer{L}`: per MoE layer, the share of tokens each expert
///   kept per logged step (at most 100 evenly spaced steps);
/// - `routing_layer{L}`: per MoE layer, the domain x expert shares from
///   `routing.json` (synthetic data).
///
/// Reads `metrics.jsonl`, and `summary.json` and `routing.json` if present.
/// `Error::Data` if `metrics.jsonl` is missing or has no train record.
pub fn plot_run(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let no_metrics = || {
        Error::Data(format!(
            "no metrics in {}: it is not a run directory, or the run has not logged a step yet",
            run_dir.display()
        ))
    };
    let m = read_metrics(&run_dir.join("metrics.jsonl"))?.ok_or_else(no_metrics)?;
    if m.train.is_empty() {
        return Err(no_metrics());
    }
    let floor = read_floor(run_dir);
    let out = run_dir.join("plots");
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let name = dir_name(run_dir);
    let mut files = Vec::new();

    let moe = m.train.iter().any(|r| (r.loss - r.ce).abs() > 1e-12);
    let elapsed = m.elapsed();
    for (stem, x_label, xs) in [
        ("loss_vs_step", "step", m.train.iter().map(|r| r.step as f64).collect::<Vec<_>>()),
        ("loss_vs_time", "elapsed (s, summed over resumes)", elapsed),
    ] {
        let by_x = |f: fn(&TrainRecord) -> f64| thin(xs.iter().copied().zip(m.train.iter().map(f)).collect());
        let mut series = vec![Series { name: "train loss".into(), points: by_x(|r| r.loss) }];
        if moe {
            series.push(Series { name: "train CE".into(), points: by_x(|r| r.ce) });
        }
        let val = if stem == "loss_vs_step" { m.val_by_step() } else { m.val_by_time() };
        series.push(Series { name: "val loss".into(), points: val });
        let opts = LineOpts { hlines: floor_line(floor), ..Default::default() };
        let title = format!("{name}: loss vs {}", if stem == "loss_vs_step" { "step" } else { "time" });
        files.extend(line_chart(&out.join(stem), &title, x_label, "loss (nats/token)", &series, &opts)?);
    }

    if let Some(f) = floor {
        let gap: Vec<(f64, f64)> =
            m.eval.iter().map(|e| (e.step as f64, e.val_loss - f)).filter(|&(_, g)| g > 0.0).collect();
        if !gap.is_empty() {
            let series = [Series { name: "val loss - floor".into(), points: gap }];
            let opts = LineOpts { log_y: true, markers: true, ..Default::default() };
            let title = format!("{name}: gap to the loss floor ({})", super::canvas::fmt_tick(f));
            files.extend(line_chart(
                &out.join("gap_to_floor"),
                &title,
                "step",
                "val loss - floor (nats)",
                &series,
                &opts,
            )?);
        }
    }

    let layers: BTreeSet<usize> = m.train.iter().flat_map(|r| r.moe.iter().map(|l| l.layer)).collect();
    for layer in layers {
        let logged: Vec<(u64, &[f32])> = m
            .train
            .iter()
            .filter_map(|r| r.moe.iter().find(|l| l.layer == layer).map(|l| (r.step, l.tokens_per_expert.as_slice())))
            .collect();
        let experts = logged.iter().map(|(_, t)| t.len()).max().unwrap_or(0);
        if experts == 0 {
            continue;
        }
        let rows = evenly_spaced(logged.len(), MAX_LOAD_ROWS);
        let row_labels: Vec<String> = rows.iter().map(|&i| format!("step {}", logged[i].0)).collect();
        let values: Vec<Vec<f64>> = rows
            .iter()
            .map(|&i| {
                let mut row = shares(logged[i].1);
                row.resize(experts, f64::NAN);
                row
            })
            .collect();
        let title = format!("{name}: expert load, layer {layer} (share of kept tokens)");
        let stem = out.join(format!("expert_load_layer{layer}"));
        files.extend(heatmap(&stem, &title, "expert", "step", &expert_labels(experts), &row_labels, &values)?);
    }

    let routing_path = run_dir.join("routing.json");
    if routing_path.exists() {
        let text = std::fs::read_to_string(&routing_path).map_err(|e| Error::io(&routing_path, e))?;
        let layers: Vec<LayerDomains> = serde_json::from_str(&text).map_err(|e| {
            Error::Data(format!(
                "{}: not a list of layer routings ({e}); delete it to plot the run without it",
                routing_path.display()
            ))
        })?;
        for l in layers.iter().filter(|l| !l.by_domain.is_empty()) {
            let experts = l.by_domain.iter().map(Vec::len).max().unwrap_or(0);
            if experts == 0 {
                continue;
            }
            let values: Vec<Vec<f64>> = l
                .by_domain
                .iter()
                .map(|counts| {
                    let mut row = shares(&counts.iter().map(|&c| c as f64).collect::<Vec<_>>());
                    row.resize(experts, f64::NAN);
                    row
                })
                .collect();
            let row_labels: Vec<String> = (0..values.len()).map(|d| format!("domain {d}")).collect();
            let title = format!("{name}: routing by domain, layer {} (share of each domain's tokens)", l.layer);
            let stem = out.join(format!("routing_layer{}", l.layer));
            files.extend(heatmap(&stem, &title, "expert", "domain", &expert_labels(experts), &row_labels, &values)?);
        }
    }
    Ok(files)
}
