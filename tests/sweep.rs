//! Sweeps end to end on a tiny model: points run into their own
//! directories, the results table has its schema, a re-run skips finished
//! points and an interrupted point resumes from its checkpoint.

mod common;

use std::path::Path;

use switchyard::backend::cpu::Cpu;
use switchyard::sweep::{self, Point, Progress, ResultRow, Sweep};
use switchyard::train::{self, TrainOptions};

#[derive(Default)]
struct Log {
    started: Vec<(usize, bool)>,
    done: usize,
}

impl Progress for Log {
    fn point(&mut self, p: &Point, skipped: bool) {
        self.started.push((p.index, skipped));
    }
    fn done(&mut self, _: &Point, _: &ResultRow) {
        self.done += 1;
    }
}

const SWEEP: &str = r#"
name = "t"
preset = "tiny"
[set]
"model.n_layer" = 2
"model.d_model" = 32
"model.n_head" = 2
"model.d_ff" = 64
"model.max_seq_len" = 16
"train.seq_len" = 16
"train.batch_size" = 4
"train.steps" = 6
"train.eval_every" = 3
"train.eval_batches" = 1
"train.checkpoint_every" = 2
[axes]
"model.n_experts" = [2, 4]
"#;

fn load(dir: &Path) -> Sweep {
    let path = dir.join("t.toml");
    std::fs::write(&path, SWEEP).unwrap();
    Sweep::load(&path, &[], None, 1.0).unwrap()
}

#[test]
fn sweep_runs_resumes_and_writes_its_table() {
    let be = Cpu::new(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = load(dir.path());
    let out = dir.path().join("out");
    // Point 1 was interrupted after 2 of its 6 steps (a checkpoint exists).
    let p1 = out.join(s.points[1].dir_name());
    let opts = TrainOptions { out: p1.clone(), resume: None, progress: false, max_steps_this_run: Some(2) };
    assert!(train::train(&be, &s.points[1].cfg, &opts).unwrap().interrupted);
    assert!(matches!(sweep::point_state(&s.points[1], &p1), sweep::PointState::Partial(_)));

    let mut log = Log::default();
    let outcome = sweep::run(&be, &s, &out, &mut log).unwrap();
    assert!(!outcome.interrupted && outcome.failures.is_empty());
    let rows = outcome.rows;
    assert_eq!(log.started, vec![(0, false), (1, false)]);
    assert_eq!(rows.len(), 2);
    for (r, p) in rows.iter().zip(&s.points) {
        assert_eq!(r.steps, 6, "{}: resumed to the end", r.label);
        assert!(r.val_loss.is_some_and(|v| v.is_finite()) && r.loss_floor.is_some());
        assert!(r.dropped_frac.is_some() && r.load_cv.is_some(), "MoE statistics present");
        assert!(Path::new(&r.run_dir).join("plots").is_dir(), "every run plots itself");
        assert_eq!(r.overrides["model.n_experts"], serde_json::json!(p.cfg.model.n_experts));
    }
    // The table: one JSON line per point, and a CSV with a header.
    let jsonl = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for key in ["index", "label", "overrides", "run_dir", "val_loss", "loss_floor", "gap", "dropped_frac", "wall_s"] {
        assert!(lines[0].get(key).is_some(), "results.jsonl lacks {key}");
    }
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(csv.starts_with("index,label,run_dir,steps,final_loss,val_loss"), "{csv}");
    assert_eq!(csv.lines().count(), 3);
    assert!(out.join("sweep.json").is_file());

    // Re-running skips both finished points and rewrites the same table.
    let mut again = Log::default();
    let rows2 = sweep::run(&be, &s, &out, &mut again).unwrap().rows;
    assert_eq!(again.started, vec![(0, true), (1, true)]);
    assert_eq!(rows2, rows);

    // Plots of the whole sweep.
    let files = switchyard::plot::plot_sweep(&out).unwrap();
    assert!(!files.is_empty());
    for f in &files {
        assert!(std::fs::metadata(f).unwrap().len() > 100, "{} is empty", f.display());
    }
}
