//! Experiment sweeps: a base config plus the axes to vary, every point
//! trained into its own run directory, one results table per sweep.
//!
//! A sweep file (TOML), e.g. `experiments/capacity.toml`:
//!
//! ```toml
//! name = "capacity"                 # the sweep's directory name under runs/sweeps/
//! description = "capacity factor vs loss and dropped tokens"
//! preset = "tiny"                   # or config = "base.toml" (relative to this file)
//! data = "synthetic"                # optional: data.source for every point
//!
//! [set]                             # overrides applied to every point
//! "train.steps" = 400
//!
//! [axes]                            # the cartesian product of these
//! "model.capacity_factor" = [0.5, 1.0, 1.25, 2.0, 0.0]
//!
//! [[points]]                        # and/or explicit points (each combined
//! "model.moe_every" = 0             # with every axes combination)
//! ```
//!
//! Points run in order into `<out>/<NN>-<label>/`; a point whose run
//! finished is skipped and one that was interrupted resumes from its last
//! checkpoint, so re-running a sweep continues it. After every point the
//! results table is rewritten from all finished points, in point order, as
//! `results.jsonl` and `results.csv`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backend::Backend;
use crate::config::Config;
use crate::train::metrics::{EvalRecord, TrainRecord};
use crate::train::{self, TrainOptions, TrainSummary};
use crate::{Error, Result};

/// One point of a sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Position in the sweep (0-based).
    pub index: usize,
    /// `key=value` pairs that distinguish it, short keys (`n_experts=8,top_k=1`).
    pub label: String,
    /// The overrides, full keys, in application order.
    pub overrides: Vec<(String, toml::Value)>,
    /// The resolved, validated config.
    pub cfg: Config,
}

impl Point {
    /// Its run directory name: `NN-label`, filesystem-safe.
    pub fn dir_name(&self) -> String {
        let safe: String = self
            .label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '=' | ',') { c } else { '_' })
            .collect();
        format!("{:02}-{safe}", self.index)
    }
}

/// A parsed sweep: its name, description and expanded points.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// Directory name under `runs/sweeps/`.
    pub name: String,
    /// What the sweep asks.
    pub description: String,
    /// Every point, in run order.
    pub points: Vec<Point>,
}

const TOP_KEYS: [&str; 7] = ["name", "description", "preset", "config", "data", "set", "axes"];

fn value_str(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn short(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

impl Sweep {
    /// Parse and expand `path`. `extra_sets` (`key=value`, from the command
    /// line) apply to the base before the axes; `data` replaces data.source;
    /// `scale` multiplies `train.steps` (and the eval and checkpoint cadence)
    /// to grow a CPU-sized sweep into a real study. Every point's config is
    /// validated before anything runs.
    pub fn load(path: &Path, extra_sets: &[String], data: Option<&str>, scale: f64) -> Result<Sweep> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(path, std::io::Error::new(e.kind(), format!("cannot read the sweep file ({e})"))))?;
        let bad = |msg: String| Error::Config(format!("sweep file {}: {msg}", path.display()));
        let doc: toml::Table = toml::from_str(&text)
            .map_err(|e| bad(format!("not valid TOML: {}", crate::config::toml_error(&e, &text, "the file"))))?;
        for key in doc.keys() {
            if !TOP_KEYS.contains(&key.as_str()) && key != "points" {
                return Err(bad(format!(
                    "unknown key `{key}`; a sweep file has {} and [[points]]",
                    TOP_KEYS.join(", ")
                )));
            }
        }
        let get_str = |k: &str| -> Result<Option<String>> {
            match doc.get(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(bad(format!("`{k}` must be a string, not {other}"))),
            }
        };
        let name = get_str("name")?
            .unwrap_or_else(|| path.file_stem().map_or_else(|| "sweep".into(), |s| s.to_string_lossy().into_owned()));
        let description = get_str("description")?.unwrap_or_default();
        let mut base = match (get_str("preset")?, get_str("config")?) {
            (Some(_), Some(_)) => return Err(bad("give either `preset` or `config`, not both".into())),
            (Some(p), None) => Config::preset(&p).map_err(|e| bad(e.to_string()))?,
            (None, Some(c)) => {
                let file = path.parent().unwrap_or(Path::new(".")).join(c);
                Config::from_file(&file)?
            }
            (None, None) => Config::preset("tiny")?,
        };
        if let Some(d) = get_str("data")? {
            base.data.source = d;
        }
        let table = |k: &str| -> Result<Vec<(String, toml::Value)>> {
            match doc.get(k) {
                None => Ok(Vec::new()),
                Some(toml::Value::Table(t)) => Ok(t.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
                Some(other) => Err(bad(format!("`{k}` must be a table, not {other}"))),
            }
        };
        let sets: Vec<String> = table("set")?.iter().map(|(k, v)| format!("{k}={}", value_str(v))).collect();
        base = base.apply_overrides(&sets).map_err(|e| bad(format!("[set]: {e}")))?;
        base = base.apply_overrides(extra_sets)?;
        if let Some(d) = data {
            base.data.source = d.to_string();
        }
        if scale != 1.0 {
            if !(scale > 0.0 && scale.is_finite()) {
                return Err(Error::Config(format!("--scale {scale}: must be a positive number (2 = twice the steps)")));
            }
            let t = &mut base.train;
            // Steps are counted in u64 and stored in TOML (i64): keep well inside both.
            const MAX_STEPS: f64 = 1e15;
            let s = |key: &str, x: usize| -> Result<usize> {
                let y = (x as f64 * scale).round();
                if y > MAX_STEPS {
                    return Err(Error::Config(format!(
                        "--scale {scale:?} makes {key} = {x} x {scale:?} = {y:e}, more steps than any run can take; use a \
                         smaller --scale"
                    )));
                }
                Ok((y as usize).max(if x == 0 { 0 } else { 1 }))
            };
            t.steps = s("train.steps", t.steps)?;
            t.eval_every = s("train.eval_every", t.eval_every)?;
            t.checkpoint_every = s("train.checkpoint_every", t.checkpoint_every)?;
            t.warmup_steps = s("train.warmup_steps", t.warmup_steps)?;
        }
        base.data.resolve_paths();

        // Axes: key -> non-empty list of values; explicit points: tables.
        let mut axes: Vec<(String, Vec<toml::Value>)> = Vec::new();
        for (k, v) in table("axes")? {
            match v {
                toml::Value::Array(a) if a.is_empty() => {
                    return Err(bad(format!("axis `{k}` is empty; give at least one value")))
                }
                toml::Value::Array(a) => axes.push((k, a)),
                other => return Err(bad(format!("axis `{k}` must be a list of values, not {other}"))),
            }
        }
        let explicit: Vec<Vec<(String, toml::Value)>> = match doc.get("points") {
            None => vec![Vec::new()],
            Some(toml::Value::Array(a)) if a.is_empty() => return Err(bad("`points` is empty".into())),
            Some(toml::Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, p)| match p {
                    toml::Value::Table(t) => Ok(t.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
                    other => Err(bad(format!("points[{i}] must be a table of key = value, not {other}"))),
                })
                .collect::<Result<_>>()?,
            Some(other) => Err(bad(format!("`points` must be an array of tables ([[points]]), not {other}")))?,
        };
        let mut combos: Vec<Vec<(String, toml::Value)>> = vec![Vec::new()];
        for (k, values) in &axes {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push((k.clone(), v.clone()));
                        c
                    })
                })
                .collect();
        }
        let mut points = Vec::new();
        for p in &explicit {
            for c in &combos {
                let overrides: Vec<(String, toml::Value)> = p.iter().chain(c).cloned().collect();
                let label = if overrides.is_empty() {
                    "base".to_string()
                } else {
                    overrides
                        .iter()
                        .map(|(k, v)| format!("{}={}", short(k), value_str(v)))
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let sets: Vec<String> = overrides.iter().map(|(k, v)| format!("{k}={}", value_str(v))).collect();
                let cfg = base.apply_overrides(&sets).map_err(|e| bad(format!("point {label}: {e}")))?;
                cfg.validate().map_err(|e| bad(format!("point {label}: {e}")))?;
                points.push(Point { index: points.len(), label, overrides, cfg });
            }
        }
        Ok(Sweep { name, description, points })
    }
}

/// One row of `results.jsonl` / `results.csv`: a finished point.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResultRow {
    /// `"done"` (a failed point has a [`Failure`] row instead).
    pub status: &'static str,
    /// Point index.
    pub index: usize,
    /// Point label.
    pub label: String,
    /// The point's overrides (full keys).
    pub overrides: BTreeMap<String, serde_json::Value>,
    /// Its run directory.
    pub run_dir: String,
    /// Optimizer steps.
    pub steps: u64,
    /// Training loss (CE + aux + z) of the last step.
    pub final_loss: f64,
    /// Validation CE at the end.
    pub val_loss: Option<f64>,
    /// Exact loss floor (synthetic data).
    pub loss_floor: Option<f64>,
    /// `val_loss - loss_floor`.
    pub gap: Option<f64>,
    /// Fraction of assignments dropped in training (train capacity factor),
    /// mean over MoE layers and the last 10% of steps; `None` for dense models.
    pub dropped_frac: Option<f64>,
    /// Same at the final evaluation (eval capacity factor).
    pub eval_dropped_frac: Option<f64>,
    /// Coefficient of variation of the tokens per expert at the final
    /// evaluation, mean over MoE layers (0 = perfectly balanced).
    pub load_cv: Option<f64>,
    /// Mean router entropy per token at the final evaluation (nats).
    pub router_entropy: Option<f64>,
    /// Training tokens per second.
    pub tokens_per_s: f64,
    /// Wall time of the run's last invocation (seconds).
    pub wall_s: f64,
    /// Parameters.
    pub params: usize,
    /// Parameters active per token.
    pub active_params: usize,
}

/// A point whose run failed: recorded in the results, the other points go on,
/// and the next run of the sweep retries it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Failure {
    /// `"failed"`.
    pub status: &'static str,
    /// Point index.
    pub index: usize,
    /// Point label.
    pub label: String,
    /// The point's overrides (full keys).
    pub overrides: BTreeMap<String, serde_json::Value>,
    /// Its run directory.
    pub run_dir: String,
    /// The error, one line.
    pub error: String,
}

/// What a sweep run did.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepOutcome {
    /// Finished points, in point order.
    pub rows: Vec<ResultRow>,
    /// Failed points, in point order.
    pub failures: Vec<Failure>,
    /// Stopped by Ctrl-C (the later points did not run).
    pub interrupted: bool,
}

const CSV_COLUMNS: [&str; 18] = [
    "index",
    "label",
    "run_dir",
    "steps",
    "final_loss",
    "val_loss",
    "loss_floor",
    "gap",
    "dropped_frac",
    "eval_dropped_frac",
    "load_cv",
    "router_entropy",
    "tokens_per_s",
    "wall_s",
    "params",
    "active_params",
    "status",
    "error",
];

fn read_metrics(run_dir: &Path) -> Result<(Vec<TrainRecord>, Vec<EvalRecord>)> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let (mut tr, mut ev) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::Data(format!("{}: a line is not JSON ({e})", path.display())))?;
        match v.get("kind").and_then(|k| k.as_str()) {
            Some("train") => tr.push(serde_json::from_value(v).map_err(|e| Error::Data(e.to_string()))?),
            Some("eval") => ev.push(serde_json::from_value(v).map_err(|e| Error::Data(e.to_string()))?),
            _ => {}
        }
    }
    Ok((tr, ev))
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

/// The results row of a finished point, from its run directory.
pub fn result_row(p: &Point, run_dir: &Path, s: &TrainSummary) -> Result<ResultRow> {
    let (train, evals) = read_metrics(run_dir)?;
    let tail = (train.len() / 10).max(1);
    let recent = &train[train.len().saturating_sub(tail)..];
    let dropped = mean(recent.iter().filter_map(|r| mean(r.moe.iter().map(|m| f64::from(m.dropped_frac)))));
    let last_eval = evals.last();
    let eval_dropped = last_eval.and_then(|e| mean(e.moe.iter().map(|m| f64::from(m.dropped_frac))));
    let load_cv = last_eval.and_then(|e| {
        mean(e.moe.iter().map(|m| {
            let n = m.tokens_per_expert.len().max(1) as f64;
            let mu = m.tokens_per_expert.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
            let var = m.tokens_per_expert.iter().map(|&x| (f64::from(x) - mu).powi(2)).sum::<f64>() / n;
            if mu > 0.0 {
                var.sqrt() / mu
            } else {
                0.0
            }
        }))
    });
    let entropy = last_eval.and_then(|e| mean(e.moe.iter().map(|m| f64::from(m.router_entropy))));
    let table = crate::model::ParamTable::new(&p.cfg);
    let m = &p.cfg.model;
    Ok(ResultRow {
        status: "done",
        index: p.index,
        label: p.label.clone(),
        overrides: overrides_json(p),
        run_dir: run_dir.display().to_string(),
        steps: s.steps,
        final_loss: s.final_loss,
        val_loss: s.val_loss,
        loss_floor: s.loss_floor,
        gap: s.val_loss.zip(s.loss_floor).map(|(v, f)| v - f),
        dropped_frac: dropped,
        eval_dropped_frac: eval_dropped,
        load_cv,
        router_entropy: entropy,
        tokens_per_s: s.tokens_per_s,
        wall_s: s.wall_s,
        params: table.numel(),
        active_params: table.active_numel(if m.moe_every == 0 { 1 } else { m.top_k }),
    })
}

fn overrides_json(p: &Point) -> BTreeMap<String, serde_json::Value> {
    p.overrides.iter().map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or(serde_json::Value::Null))).collect()
}

/// Write `results.jsonl` and `results.csv` (atomically: temp file + rename):
/// finished and failed points, in point order (failed rows carry `status =
/// "failed"` and the `error`).
pub fn write_results(out: &Path, rows: &[ResultRow], failures: &[Failure]) -> Result<()> {
    let json = |v: std::result::Result<serde_json::Value, serde_json::Error>| v.unwrap_or_default();
    let mut all: Vec<(usize, serde_json::Value)> =
        rows.iter().map(|r| (r.index, json(serde_json::to_value(r)))).collect();
    all.extend(failures.iter().map(|f| (f.index, json(serde_json::to_value(f)))));
    all.sort_by_key(|(i, _)| *i);
    let mut jsonl = String::new();
    for (_, v) in &all {
        jsonl.push_str(&v.to_string());
        jsonl.push('\n');
    }
    let mut csv = CSV_COLUMNS.join(",");
    csv.push('\n');
    for (_, v) in &all {
        let cells: Vec<String> = CSV_COLUMNS
            .iter()
            .map(|c| match v.get(*c).unwrap_or(&serde_json::Value::Null) {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => format!("\"{}\"", s.replace('"', "\"\"")),
                other => other.to_string(),
            })
            .collect();
        csv.push_str(&cells.join(","));
        csv.push('\n');
    }
    crate::files::write_atomic(&out.join("results.jsonl"), jsonl.as_bytes())?;
    crate::files::write_atomic(&out.join("results.csv"), csv.as_bytes())
}

/// How a point stands in its run directory.
#[derive(Clone, Debug, PartialEq)]
pub enum PointState {
    /// Nothing there yet.
    New,
    /// A checkpoint to resume from.
    Partial(PathBuf),
    /// Finished: its summary.
    Done(Box<TrainSummary>),
}

/// Where point `p` stands in `dir`: done (a summary of a finished run of
/// all its steps), partial (a run directory to resume: from its checkpoint,
/// or from step 0 if it stopped before its first one) or new.
pub fn point_state(p: &Point, dir: &Path) -> PointState {
    let summary = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<TrainSummary>(&t).ok());
    match summary {
        Some(s) if s.is_complete() && s.steps >= p.cfg.train.steps as u64 => PointState::Done(Box::new(s)),
        _ if crate::train::checkpoint::resolve_resume(dir).is_ok() => PointState::Partial(dir.to_path_buf()),
        _ => PointState::New,
    }
}

/// Progress callbacks of [`run`].
pub trait Progress {
    /// Point `p` starts (`skipped`: already finished).
    fn point(&mut self, p: &Point, skipped: bool);
    /// Point `p` finished with `row`.
    fn done(&mut self, p: &Point, row: &ResultRow);
    /// Point `p` failed with `error`; the sweep goes on with the next point.
    fn failed(&mut self, _p: &Point, _error: &str) {}
}

/// A run directory of an earlier sweep that holds another config than point
/// `p` (the sweep file was edited): it must not pass as this point.
fn foreign_run(p: &Point, dir: &Path) -> Result<()> {
    let Ok(mut old) = Config::from_file(&dir.join("config.toml")) else {
        return Ok(());
    };
    old.data.resolve_paths();
    if old != p.cfg {
        return Err(Error::Config(format!(
            "{} holds a run of a different config than point {} of this sweep (was the sweep file edited?); move \
             it away, or give the sweep another --out",
            dir.display(),
            p.label
        )));
    }
    Ok(())
}

/// Train point `p` into `dir` (or take its finished run): `Ok(None)` if it
/// was interrupted (Ctrl-C).
fn run_point<B: Backend>(be: &B, p: &Point, dir: &Path, progress: &mut dyn Progress) -> Result<Option<ResultRow>> {
    foreign_run(p, dir)?;
    let summary = match point_state(p, dir) {
        PointState::Done(s) => {
            progress.point(p, true);
            *s
        }
        state => {
            progress.point(p, false);
            let resume = match state {
                PointState::Partial(d) => Some(d),
                _ => None,
            };
            let opts = TrainOptions { out: dir.to_path_buf(), resume, progress: false, max_steps_this_run: None };
            let s = train::train(be, &p.cfg, &opts)?;
            if s.interrupted {
                return Ok(None);
            }
            s
        }
    };
    result_row(p, dir, &summary).map(Some)
}

/// Run every point of `sweep` into `out` (skipping finished ones, resuming
/// interrupted ones, retrying failed ones) and keep `results.jsonl`/`.csv`
/// current. A point that fails is recorded (point, error) and the sweep goes
/// on; Ctrl-C stops it after the running point's checkpoint. The sweep
/// directory is locked for the run's life.
pub fn run<B: Backend>(be: &B, sweep: &Sweep, out: &Path, progress: &mut dyn Progress) -> Result<SweepOutcome> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let _lock = crate::files::DirLock::acquire(out, "sweep directory", "give this sweep another --out")?;
    crate::files::remove_partial_writes(out)?;
    let manifest = serde_json::json!({
        "name": sweep.name,
        "description": sweep.description,
        "commit": crate::GIT_COMMIT,
        "device": be.name(),
        "points": sweep.points.iter().map(|p| serde_json::json!({
            "index": p.index, "label": p.label, "dir": p.dir_name(), "overrides": overrides_json(p),
        })).collect::<Vec<_>>(),
    });
    let text =
        serde_json::to_string_pretty(&manifest).map_err(|e| Error::Data(format!("cannot encode sweep.json: {e}")))?;
    crate::files::write_atomic(&out.join("sweep.json"), text.as_bytes())?;
    let mut outcome = SweepOutcome { rows: Vec::new(), failures: Vec::new(), interrupted: false };
    for p in &sweep.points {
        let dir = out.join(p.dir_name());
        match run_point(be, p, &dir, progress) {
            Ok(Some(row)) => {
                progress.done(p, &row);
                outcome.rows.push(row);
            }
            Ok(None) => {
                outcome.interrupted = true;
                break;
            }
            Err(e) => {
                let error = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
                progress.failed(p, &error);
                outcome.failures.push(Failure {
                    status: "failed",
                    index: p.index,
                    label: p.label.clone(),
                    overrides: overrides_json(p),
                    run_dir: dir.display().to_string(),
                    error,
                });
            }
        }
        write_results(out, &outcome.rows, &outcome.failures)?;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep(text: &str) -> Result<Sweep> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, text).unwrap();
        Sweep::load(&path, &[], None, 1.0)
    }

    #[test]
    fn axes_expand_to_their_product_and_points_combine() {
        let s = sweep(
            "name = \"x\"\npreset = \"tiny\"\n[set]\n\"train.steps\" = 7\n\
             [axes]\n\"model.n_experts\" = [2, 4]\n\"model.top_k\" = [1, 2]\n",
        )
        .unwrap();
        let labels: Vec<&str> = s.points.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(
            labels,
            ["n_experts=2,top_k=1", "n_experts=2,top_k=2", "n_experts=4,top_k=1", "n_experts=4,top_k=2"]
        );
        assert!(s.points.iter().all(|p| p.cfg.train.steps == 7));
        assert_eq!((s.points[3].cfg.model.n_experts, s.points[3].cfg.model.top_k), (4, 2));
        assert_eq!(s.points[1].dir_name(), "01-n_experts=2,top_k=2");
        let s = sweep("[[points]]\n\"model.moe_every\" = 0\n[[points]]\n\"model.n_experts\" = 4\n[axes]\n\"train.lr\" = [1e-3, 2e-3]\n")
            .unwrap();
        assert_eq!(s.points.len(), 4);
        assert_eq!(s.points[0].label, "moe_every=0,lr=0.001");
        assert_eq!(s.points[0].cfg.model.moe_every, 0);
    }

    #[test]
    fn bad_sweep_files_name_the_problem() {
        let e = sweep("nme = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("unknown key `nme`"), "{e}");
        let e = sweep("[axes]\n\"model.n_experts\" = []\n").unwrap_err().to_string();
        assert!(e.contains("axis `model.n_experts` is empty"), "{e}");
        let e = sweep("[axes]\n\"model.n_expert\" = [2]\n").unwrap_err().to_string();
        assert!(e.contains("unknown key `n_expert`"), "{e}");
        let e = sweep("[axes]\n\"model.top_k\" = [9]\n").unwrap_err().to_string();
        assert!(e.contains("point top_k=9") && e.contains("top_k"), "{e}");
        let e = sweep("[axes]\n\"model.top_k\" = 2\n").unwrap_err().to_string();
        assert!(e.contains("must be a list"), "{e}");
    }
}
