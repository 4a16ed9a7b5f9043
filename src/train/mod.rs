//! Training and evaluation: the loop over optimizer steps, gradient
//! accumulation, periodic evaluation, metrics, checkpoints, resume and
//! interruption.
//!
//! Reproducibility: every random stream is a pure function of `train.seed`
//! and counters (data: step and micro-batch; router jitter: step, micro-batch
//! and layer; initialization: tensor index), and every reduction has a fixed
//! order, so the same seed, config and data give the same losses bit for bit,
//! and a resumed run continues exactly as the uninterrupted one.

pub mod bench;
pub mod checkpoint;
pub mod metrics;
pub mod optimizer;
pub mod routing;
pub mod schedule;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::config::Config;
use crate::data::Dataset;
use crate::model::{mix, Model, Pass};
use crate::{Error, Result};
use metrics::{Accum, EvalRecord, TrainRecord};
use optimizer::Optimizer;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Ask a running training loop to save a checkpoint and stop after the
/// current step (the CLI calls this from its Ctrl-C handler).
pub fn request_stop() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn stop_requested() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Options of a training run besides the config.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Run directory (created; must not already hold a run unless resuming).
    pub out: PathBuf,
    /// Checkpoint (or run directory) to resume from.
    pub resume: Option<PathBuf>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Stop after this many steps of this invocation (tests use it to
    /// simulate an interruption); `None` = run to `train.steps`.
    pub max_steps_this_run: Option<u64>,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Optimizer steps completed (in total, across resumes).
    pub steps: u64,
    /// `true` if stopped early (Ctrl-C or `max_steps_this_run`).
    pub interrupted: bool,
    /// Loss of the last step.
    pub final_loss: f64,
    /// CE of the last step.
    pub final_ce: f64,
    /// Last validation loss, if any evaluation ran.
    pub val_loss: Option<f64>,
    /// Exact loss floor of the data (synthetic corpus only).
    pub loss_floor: Option<f64>,
    /// Unigram entropy of the data.
    pub unigram_entropy: Option<f64>,
    /// Mean training tokens per second over this invocation.
    pub tokens_per_s: f64,
    /// Wall time of this invocation.
    pub wall_s: f64,
    /// Last checkpoint written.
    pub checkpoint: Option<PathBuf>,
    /// Per-step losses of this invocation (CE + aux + z), in order.
    pub losses: Vec<f64>,
}

impl TrainSummary {
    /// The summary of a run that trained to its end: not interrupted, with a
    /// final loss (a summary written over a NaN run holds nulls).
    pub fn is_complete(&self) -> bool {
        !self.interrupted && self.final_loss.is_finite()
    }
}

/// Token ids for the backend (i32); `Config::validate` keeps `vocab_size`
/// within `i32`, and the data checks every id against it.
fn to_i32(v: &[u32]) -> Vec<i32> {
    v.iter().map(|&x| i32::try_from(x).expect("token ids are below model.vocab_size <= 2^31 - 1")).collect()
}

/// Evaluate `model` on `eval_batches` validation batches with the eval
/// capacity factor.
pub fn evaluate<B: Backend>(be: &B, model: &mut Model<B>, data: &Dataset, batches: usize) -> Result<EvalRecord> {
    be.session(|| evaluate_in_session(be, model, data, batches))
}

fn evaluate_in_session<B: Backend>(be: &B, model: &mut Model<B>, data: &Dataset, batches: usize) -> Result<EvalRecord> {
    let (b, t) = (model.cfg.train.batch_size, model.cfg.train.seq_len);
    let mut x = vec![0u32; b * t];
    let mut y = vec![0u32; b * t];
    let mut acc = Accum::default();
    for i in 0..batches {
        data.val_batch(i as u64, b, t, &mut x, &mut y);
        let s = model.forward_only(be, &to_i32(&x), &to_i32(&y), b, t, Pass::Eval)?;
        acc.add(&s);
    }
    let (ce, _, _) = acc.means();
    Ok(EvalRecord {
        kind: "eval".into(),
        step: 0,
        val_loss: ce,
        val_ppl: ce.exp(),
        tokens: (batches * b * t) as u64,
        moe: acc.layers(),
    })
}

/// Create (or check) the run directory, lock it for this process, clean
/// what an interrupted write left there, and check it takes writes. Unless
/// the run continues here (`resuming_here`), the directory must not already
/// hold a run.
fn prepare_run_dir(out: &Path, resuming_here: bool) -> Result<crate::files::DirLock> {
    std::fs::create_dir_all(out).map_err(|e| {
        Error::io(
            out,
            std::io::Error::new(e.kind(), format!("cannot create the run directory ({e}); choose a writable --out")),
        )
    })?;
    let lock = crate::files::DirLock::acquire(out, "run directory", "give this run another --out")?;
    crate::files::remove_partial_writes(out)?;
    crate::files::check_writable(out).map_err(|e| {
        let why = if crate::files::io_hint(&e).is_empty() {
            format!("the run directory is not writable ({e}); choose a writable --out")
        } else {
            format!("cannot write into the run directory ({e}{})", crate::files::io_hint(&e))
        };
        Error::io(out, std::io::Error::new(e.kind(), why))
    })?;
    if !resuming_here && out.join("metrics.jsonl").exists() {
        return Err(Error::Config(format!(
            "{} already holds a run (metrics.jsonl exists); continue it with --resume {} or pick another --out",
            out.display(),
            out.display()
        )));
    }
    Ok(lock)
}

/// Train `cfg` on backend `be`, writing the run into `opts.out`.
///
/// With `opts.resume`, continues from a checkpoint (or restarts a run that
/// stopped before its first checkpoint, see
/// [`checkpoint::ResumeFrom::Restart`]). A run whose checkpoint is already at
/// `train.steps` and whose `summary.json` says so is not touched:
/// [`Error::Complete`]. One whose summary is missing (killed between its last
/// checkpoint and the summary) gets its summary, routing statistics and
/// plots written, without training.
pub fn train<B: Backend>(be: &B, cfg: &Config, opts: &TrainOptions) -> Result<TrainSummary> {
    // Inside the backend's session, every op runs inline on its workers.
    be.session(|| train_in_session(be, cfg, opts))
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The summary of a run directory if it records a finished run at `step`.
fn finished_summary(out: &Path, step: u64) -> Option<TrainSummary> {
    let text = std::fs::read_to_string(out.join("summary.json")).ok()?;
    let s: TrainSummary = serde_json::from_str(&text).ok()?;
    (s.is_complete() && s.steps == step).then_some(s)
}

/// Where a training invocation starts from.
struct ResumePlan {
    resume: Option<checkpoint::ResumeFrom>,
    /// The checkpoint to load, if any.
    checkpoint: Option<PathBuf>,
    /// The run continues in its own directory (`opts.out`).
    here: bool,
}

/// Resolve `opts.resume` and refuse what leaves nothing to train: a
/// checkpoint past `train.steps` ([`Error::Config`]), or at it with a
/// finished summary or into another directory ([`Error::Complete`]). Reads
/// only, so every file stays as it was. The command line calls it before
/// printing anything.
pub fn check_resume(cfg: &Config, opts: &TrainOptions) -> Result<()> {
    plan_resume(cfg, opts).map(|_| ())
}

fn plan_resume(cfg: &Config, opts: &TrainOptions) -> Result<ResumePlan> {
    let steps = cfg.train.steps as u64;
    let resume = opts.resume.as_deref().map(checkpoint::resolve_resume).transpose()?;
    let (resume_dir, resuming_here) = match &resume {
        Some(checkpoint::ResumeFrom::Checkpoint(d)) => {
            (Some(d.clone()), d.parent().is_some_and(|p| same_path(p, &opts.out)))
        }
        Some(checkpoint::ResumeFrom::Restart(d)) => (None, same_path(d, &opts.out)),
        None => (None, false),
    };
    let ck_step = resume_dir.as_deref().map(checkpoint::read_step).transpose()?;
    if let (Some(dir), Some(step)) = (&resume_dir, ck_step) {
        let extend = format!(
            "to train further, raise train.steps (e.g. switchyard train --resume {} --set train.steps={})",
            opts.resume.as_deref().unwrap_or(dir).display(),
            step.saturating_mul(2).max(1)
        );
        if step > steps {
            return Err(Error::Config(format!(
                "{} is at step {step}, past train.steps = {steps}: there is nothing to train; {extend}",
                dir.display()
            )));
        }
        if step == steps {
            if !resuming_here {
                return Err(Error::Complete(format!(
                    "{} is already at train.steps = {steps}: there is nothing to train into {}; {extend}",
                    dir.display(),
                    opts.out.display()
                )));
            }
            if finished_summary(&opts.out, step).is_some() {
                return Err(Error::Complete(format!(
                    "the run in {} is already complete (step {step} of {steps}); nothing was changed; {extend}",
                    opts.out.display(),
                )));
            }
        }
    }
    Ok(ResumePlan { resume, checkpoint: resume_dir, here: resuming_here })
}

fn train_in_session<B: Backend>(be: &B, cfg: &Config, opts: &TrainOptions) -> Result<TrainSummary> {
    cfg.validate()?;
    // The stored config names its data by absolute path, so eval and
    // generate find it from any directory.
    let mut cfg = cfg.clone();
    cfg.data.resolve_paths();
    let cfg = &cfg;
    let steps = cfg.train.steps as u64;
    let plan = plan_resume(cfg, opts)?;
    let (resume, resume_dir, resuming_here) = (plan.resume, plan.checkpoint, plan.here);
    let _lock = prepare_run_dir(&opts.out, resuming_here)?;
    let data = Dataset::open(cfg)?;
    crate::memory::require(be, cfg, crate::memory::Purpose::Train, "training")?;
    let mut model = Model::new(be, cfg)?;
    let mut opt = Optimizer::new(be, &model)?;
    let mut start = 0u64;
    let mut last_ckpt = None;
    if let Some(dir) = &resume_dir {
        let ck = checkpoint::restore_from(be, dir, cfg, &mut model, Some(&mut opt))?;
        if let Some(rng) = &ck.rng {
            if rng.seed != cfg.train.seed {
                return Err(Error::Checkpoint(format!(
                    "{} was trained with train.seed = {} but the config says {}; resume with the same seed",
                    dir.display(),
                    rng.seed,
                    cfg.train.seed
                )));
            }
        }
        start = ck.step;
        last_ckpt = Some(dir.clone());
    }
    let metrics_path = opts.out.join("metrics.jsonl");
    if start == steps && resume_dir.is_some() {
        // Trained to the end, but the bookkeeping after the last checkpoint
        // did not happen: do it now.
        let summary = summary_from_metrics(be, &mut model, &data, &metrics_path, start, last_ckpt)?;
        finish_run_dir(be, &mut model, &data, &opts.out)?;
        write_summary(&opts.out, &summary)?;
        return Ok(summary);
    }
    crate::files::write_atomic(&opts.out.join("config.toml"), cfg.to_commented_toml().as_bytes())?;
    write_run_info(&opts.out, be, cfg, start)?;
    if resume.is_some() && metrics_path.exists() {
        truncate_metrics_after(&metrics_path, start)?;
    }
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;

    let tc = &cfg.train;
    let info = data.info().clone();
    let (b, t, accum) = (tc.batch_size, tc.seq_len, tc.grad_accum);
    let end = opts.max_steps_this_run.map_or(steps, |m| start.saturating_add(m).min(steps));
    let bar = progress_bar(opts.progress, start, steps);
    let mut x = vec![0u32; b * t];
    let mut y = vec![0u32; b * t];
    let t0 = Instant::now();
    let mut tokens = 0u64;
    let mut losses = Vec::new();
    let mut last = (f64::NAN, f64::NAN);
    let mut val_loss = None;
    let mut interrupted = false;
    let mut step = start;
    while step < end {
        let ts = Instant::now();
        model.zero_grads(be);
        let mut acc = Accum::default();
        for micro in 0..accum as u64 {
            data.train_batch(step, micro, b, t, &mut x, &mut y);
            let pass = Pass::Train { jitter_seed: mix(mix(tc.seed, step), micro), loss_weight: 1.0 / accum as f32 };
            let s = model.step(be, &to_i32(&x), &to_i32(&y), b, t, pass)?;
            if !s.loss().is_finite() {
                bar.abandon();
                return Err(diverged(step + 1, micro, s.loss(), last_ckpt.as_deref(), &opts.out));
            }
            acc.add(&s);
        }
        let lr = schedule::learning_rate(tc, step as usize);
        let grad_norm = opt.step(be, &mut model, tc, lr, step + 1);
        step += 1;
        let dt = ts.elapsed().as_secs_f64();
        tokens += (b * t * accum) as u64;
        let (ce, aux, z) = acc.means();
        last = (ce + aux + z, ce);
        losses.push(last.0);
        let rec = TrainRecord {
            kind: "train".into(),
            step,
            loss: last.0,
            ce,
            aux,
            z,
            lr,
            grad_norm,
            tokens_per_s: (b * t * accum) as f64 / dt,
            elapsed_s: t0.elapsed().as_secs_f64(),
            moe: acc.layers(),
        };
        write_line(&mut metrics, &metrics_path, &rec)?;
        bar.set_position(step);
        let is_last = step == steps;
        if (tc.eval_every > 0 && step.is_multiple_of(tc.eval_every as u64)) || is_last {
            let mut ev = evaluate(be, &mut model, &data, tc.eval_batches)?;
            ev.step = step;
            val_loss = Some(ev.val_loss);
            write_line(&mut metrics, &metrics_path, &ev)?;
        }
        bar.set_message(status_line(last.1, val_loss, &info, rec.tokens_per_s));
        let stop = stop_requested() || step == end && !is_last;
        if (tc.checkpoint_every > 0 && step.is_multiple_of(tc.checkpoint_every as u64)) || is_last || stop {
            last_ckpt = Some(checkpoint::save(be, &opts.out, &model, &opt, step, tc.keep_checkpoints)?);
        }
        if stop {
            interrupted = true;
            break;
        }
    }
    bar.finish();
    // Stopped before the last step (Ctrl-C, `max_steps_this_run`, or no step to run).
    interrupted |= step < steps;
    let wall = t0.elapsed().as_secs_f64();
    let summary = TrainSummary {
        steps: step,
        interrupted,
        final_loss: last.0,
        final_ce: last.1,
        val_loss,
        loss_floor: info.loss_floor,
        unigram_entropy: info.unigram_entropy,
        tokens_per_s: tokens as f64 / wall.max(1e-9),
        wall_s: wall,
        checkpoint: last_ckpt,
        losses,
    };
    // The summary last: a run killed before it is recognised as unfinished
    // (and its routing statistics and plots are redone on resume).
    if !summary.interrupted {
        finish_run_dir(be, &mut model, &data, &opts.out)?;
    }
    write_summary(&opts.out, &summary)?;
    Ok(summary)
}

fn write_summary(out: &Path, s: &TrainSummary) -> Result<()> {
    let path = out.join("summary.json");
    let text = serde_json::to_string_pretty(s).map_err(|e| Error::Data(format!("cannot encode the summary: {e}")))?;
    crate::files::write_atomic(&path, text.as_bytes())
}

/// The summary of a run trained to its last step `step` whose summary was
/// never written: the last step's losses from `metrics.jsonl`, and its
/// validation loss (evaluated now, and recorded, if the record is missing).
fn summary_from_metrics<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    data: &Dataset,
    path: &Path,
    step: u64,
    checkpoint: Option<PathBuf>,
) -> Result<TrainSummary> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let recs: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let at = |kind: &str| recs.iter().rev().find(|r| r["kind"] == kind && r["step"].as_u64() == Some(step));
    let train: TrainRecord = at("train").and_then(|r| serde_json::from_value(r.clone()).ok()).ok_or_else(|| {
        Error::Data(format!(
            "{} has no record of step {step}, the run's last; the file was edited or lost: remove the run's \
                 summary.json and checkpoints past the last recorded step, or start the run again",
            path.display()
        ))
    })?;
    let val_loss = match at("eval").and_then(|r| r["val_loss"].as_f64()) {
        Some(v) => v,
        None => {
            let mut ev = evaluate(be, model, data, model.cfg.train.eval_batches)?;
            ev.step = step;
            let mut f = std::fs::OpenOptions::new().append(true).open(path).map_err(|e| Error::io(path, e))?;
            write_line(&mut f, path, &ev)?;
            ev.val_loss
        }
    };
    let info = data.info();
    Ok(TrainSummary {
        steps: step,
        interrupted: false,
        final_loss: train.loss,
        final_ce: train.ce,
        val_loss: Some(val_loss),
        loss_floor: info.loss_floor,
        unigram_entropy: info.unigram_entropy,
        tokens_per_s: train.tokens_per_s,
        wall_s: train.elapsed_s,
        checkpoint,
        losses: Vec::new(),
    })
}

/// `run.json`: what is needed to reproduce the run besides `config.toml`
/// (commit, device, versions, seed, command line). Rewritten on resume.
fn write_run_info<B: Backend>(out: &Path, be: &B, cfg: &Config, start: u64) -> Result<()> {
    let info = serde_json::json!({
        "switchyard_version": env!("CARGO_PKG_VERSION"),
        "commit": crate::GIT_COMMIT,
        "device": be.name(),
        "seed": cfg.train.seed,
        "data_seed": cfg.data.synthetic.seed,
        "command": std::env::args().collect::<Vec<_>>(),
        "started_at_step": start,
        "started_unix_s": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    });
    let text = serde_json::to_string_pretty(&info).map_err(|e| Error::Data(format!("cannot encode run.json: {e}")))?;
    crate::files::write_atomic(&out.join("run.json"), text.as_bytes())
}

/// After a completed run: the routing statistics of MoE models on the
/// validation batches (`routing.json`) and the run's plots (`plots/`).
/// Plotting problems are reported, not fatal: the run itself is done.
fn finish_run_dir<B: Backend>(be: &B, model: &mut Model<B>, data: &Dataset, out: &Path) -> Result<()> {
    let moe = model.table.blocks.iter().any(|b| matches!(b.ffn, crate::model::FfnIdx::Moe { .. }));
    if moe {
        let batches = model.cfg.train.eval_batches.max(1);
        let stats = routing::routing_stats(be, model, data, batches)?;
        let text = serde_json::to_string_pretty(&stats)
            .map_err(|e| Error::Data(format!("cannot encode routing.json: {e}")))?;
        crate::files::write_atomic(&out.join("routing.json"), text.as_bytes())?;
    }
    if let Err(e) = crate::plot::plot_run(out) {
        eprintln!("warning: could not plot {}: {e}", out.display());
    }
    Ok(())
}

fn diverged(step: u64, micro: u64, loss: f64, last: Option<&Path>, out: &Path) -> Error {
    let ck = match last {
        Some(p) => format!(
            "the last good checkpoint is {}. Lower train.lr, raise train.warmup_steps or set train.grad_clip, then \
             resume from the checkpoint (--resume)",
            p.display()
        ),
        None => format!(
            "no checkpoint was written before it. Lower train.lr, raise train.warmup_steps or set train.grad_clip, \
             then start the run over with switchyard train --resume {} --set ... (with no checkpoint it restarts \
             from step 0)",
            out.display()
        ),
    };
    Error::Diverged(format!("training diverged: the loss is {loss} at step {step} (micro-batch {micro}); {ck}"))
}

/// On resume, drop metric lines past the checkpoint's step so the file reads
/// as one uninterrupted run.
fn truncate_metrics_after(path: &Path, step: u64) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    crate::files::write_atomic(path, body.as_bytes())
}

fn write_line<T: Serialize>(f: &mut std::fs::File, path: &Path, rec: &T) -> Result<()> {
    let line = serde_json::to_string(rec).expect("record serializes");
    writeln!(f, "{line}").map_err(|e| Error::io(path, e))
}

fn status_line(ce: f64, val: Option<f64>, info: &crate::data::DataInfo, tps: f64) -> String {
    let mut s = format!("loss {ce:.4}");
    if let Some(v) = val {
        s.push_str(&format!(" | val {v:.4}"));
    }
    if let Some(f) = info.loss_floor {
        s.push_str(&format!(" | floor {f:.4}"));
    }
    s.push_str(&format!(" | {:.0} tok/s", tps));
    s
}

fn progress_bar(show: bool, start: u64, steps: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30.cyan/blue} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    bar.set_position(start);
    bar
}
