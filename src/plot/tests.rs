//! Charts drawn into temporary directories, and run / sweep directories
//! faked from the records the engine writes.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::*;
use crate::train::metrics::{EvalRecord, MoeRecord, TrainRecord};
use crate::train::routing::LayerRouting;
use crate::Error;

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// `files` is exactly `<stem>.svg`, `<stem>.png`, both non-empty, the PNG a
/// PNG and the SVG an SVG holding `text`.
fn assert_chart(files: &[PathBuf], stem: &Path, text: &str) {
    let ext = |e: &str| PathBuf::from(format!("{}.{e}", stem.display()));
    assert_eq!(files, [ext("svg"), ext("png")]);
    let png = std::fs::read(ext("png")).unwrap();
    assert!(png.len() > PNG_SIGNATURE.len() && png.starts_with(&PNG_SIGNATURE), "{} is not a PNG", stem.display());
    let svg = std::fs::read_to_string(ext("svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{} is not an SVG", stem.display());
    assert!(svg.contains(text), "{}.svg does not mention {text:?}", stem.display());
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// `.svg` and `.png` of each stem, sorted like `file_names`.
fn both(stems: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = stems.iter().flat_map(|s| [format!("{s}.png"), format!("{s}.svg")]).collect();
    names.sort();
    names
}

fn data_error(r: crate::Result<Vec<PathBuf>>) -> String {
    match r {
        Err(Error::Data(msg)) => msg,
        other => panic!("expected Error::Data, got {other:?}"),
    }
}

#[test]
fn line_chart_writes_svg_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let noisy: Vec<(f64, f64)> =
        (1..=300).map(|s| (s as f64, 1.0 + 4.0 / (s as f64).sqrt() + rng.random_range(-0.05..0.05))).collect();
    let val: Vec<(f64, f64)> = (1..=6).map(|i| (50.0 * i as f64, 1.0 + 3.5 / (50.0 * i as f64).sqrt())).collect();
    let series = [Series { name: "train loss".into(), points: noisy }, Series { name: "val loss".into(), points: val }];
    for (name, opts) in [
        ("linear", LineOpts { hlines: vec![(0.9877, "loss floor".into())], ..Default::default() }),
        ("loglog", LineOpts { log_x: true, log_y: true, markers: true, hlines: vec![(0.9877, "loss floor".into())] }),
    ] {
        let stem = dir.path().join(name);
        let files = line_chart(&stem, "loss vs step", "step", "loss", &series, &opts).unwrap();
        assert_chart(&files, &stem, "loss floor");
    }
}

#[test]
fn line_chart_skips_bad_points_and_refuses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("partly");
    let mixed =
        Series { name: "mixed".into(), points: vec![(1.0, f64::NAN), (2.0, 1.5), (f64::INFINITY, 1.0), (3.0, 1.2)] };
    assert_chart(&line_chart(&stem, "t", "x", "y", &[mixed], &LineOpts::default()).unwrap(), &stem, "mixed");

    let empty =
        [Series { name: "a".into(), points: vec![] }, Series { name: "b".into(), points: vec![(1.0, f64::NAN)] }];
    let msg = data_error(line_chart(&dir.path().join("none"), "t", "x", "y", &empty, &LineOpts::default()));
    assert!(msg.starts_with("nothing to plot"), "{msg}");
    // Zero and negative values cannot sit on a log axis.
    let nonpositive = [Series { name: "gap".into(), points: vec![(1.0, 0.0), (2.0, -0.1)] }];
    let opts = LineOpts { log_y: true, ..Default::default() };
    let msg = data_error(line_chart(&dir.path().join("nonpositive"), "t", "x", "y", &nonpositive, &opts));
    assert!(msg.starts_with("nothing to plot"), "{msg}");
    assert!(!dir.path().join("none.svg").exists());
}

#[test]
fn heatmap_small_long_and_ragged() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut grid = |rows: usize, cols: usize| -> Vec<Vec<f64>> {
        (0..rows).map(|_| (0..cols).map(|_| rng.random_range(0.0..0.3)).collect()).collect()
    };
    let labels = |p: &str, n: usize| -> Vec<String> { (0..n).map(|i| format!("{p}{i}")).collect() };

    let stem = dir.path().join("small");
    let files = heatmap(&stem, "routing", "expert", "domain", &labels("e", 8), &labels("domain ", 8), &grid(8, 8));
    assert_chart(&files.unwrap(), &stem, "domain 7");

    let stem = dir.path().join("long");
    let mut values = grid(200, 8);
    values[3][2] = f64::NAN;
    let files = heatmap(&stem, "load", "expert", "step", &labels("e", 8), &labels("step ", 200), &values).unwrap();
    assert_chart(&files, &stem, "step 0");
    let svg = std::fs::read_to_string(&files[0]).unwrap();
    assert!(!svg.contains(">step 1<"), "200 row labels cannot all fit; they must be thinned");

    let mut ragged = grid(3, 4);
    ragged[1].pop();
    let msg = data_error(heatmap(&dir.path().join("r"), "t", "x", "y", &labels("e", 4), &labels("r", 3), &ragged));
    assert!(msg.contains("row 1 has 3 values"), "{msg}");
    let msg = data_error(heatmap(&dir.path().join("r"), "t", "x", "y", &labels("e", 4), &labels("r", 2), &grid(3, 4)));
    assert!(msg.contains("3 rows of values but 2 row labels"), "{msg}");
}

#[test]
fn roofline_writes_svg_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("roofline");
    let points = [
        RooflinePoint { name: "matmul".into(), intensity: 120.0, achieved: 4.1e11 },
        RooflinePoint { name: "layernorm".into(), intensity: 0.6, achieved: 3.2e9 },
        RooflinePoint { name: "broken".into(), intensity: f64::NAN, achieved: 1.0 },
    ];
    let files = roofline(&stem, "cpu ops", 1.0e12, 2.0e10, &points).unwrap();
    assert_chart(&files, &stem, "layernorm");
    let msg = data_error(roofline(&dir.path().join("bad"), "t", 0.0, 2.0e10, &points));
    assert!(msg.contains("must both be finite and positive"), "{msg}");
}

fn moe_record(layer: usize, rng: &mut ChaCha8Rng) -> MoeRecord {
    let tokens: Vec<f32> = (0..8).map(|_| rng.random_range(100.0..400.0)).collect();
    MoeRecord {
        layer,
        assigned_per_expert: tokens.clone(),
        tokens_per_expert: tokens,
        dropped_frac: 0.03,
        router_entropy: 1.9,
        aux: 0.011,
        z: 0.001,
    }
}

/// A run directory with `steps` train records (MoE layers 1 and 3), an
/// evaluation every 10 steps, a resume at step 20 (elapsed time restarts)
/// and, with `routing`, a `routing.json`.
fn fake_run(dir: &Path, steps: u64, seed: u64, routing: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut lines = Vec::new();
    for step in 1..=steps {
        let ce = 1.0 + 4.0 / (step as f64).sqrt() + rng.random_range(-0.05..0.05);
        let elapsed_s = if step <= 20 { 0.5 * step as f64 } else { 0.5 * (step - 20) as f64 };
        let rec = TrainRecord {
            kind: "train".into(),
            step,
            loss: ce + 0.012,
            ce,
            aux: 0.011,
            z: 0.001,
            lr: 1e-3,
            grad_norm: 0.8,
            tokens_per_s: 20000.0,
            elapsed_s,
            moe: vec![moe_record(1, &mut rng), moe_record(3, &mut rng)],
        };
        lines.push(serde_json::to_string(&rec).unwrap());
        if step % 10 == 0 {
            let val_loss = 1.0 + 3.5 / (step as f64).sqrt();
            let ev = EvalRecord {
                kind: "eval".into(),
                step,
                val_loss,
                val_ppl: val_loss.exp(),
                tokens: 2048,
                moe: vec![moe_record(1, &mut rng)],
            };
            lines.push(serde_json::to_string(&ev).unwrap());
        }
    }
    lines.push(json!({"kind": "note", "text": "ignored"}).to_string());
    std::fs::write(dir.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("summary.json"), json!({"steps": steps, "loss_floor": 0.9877}).to_string()).unwrap();
    if routing {
        let layers: Vec<LayerRouting> = [1, 3]
            .into_iter()
            .map(|layer| LayerRouting {
                layer,
                per_expert: vec![10; 8],
                by_domain: (0..8)
                    .map(|d| (0..8).map(|e| if e == d { 70 } else { rng.random_range(0..10) }).collect())
                    .collect(),
                top_tokens: vec![vec![(3, 5)]; 8],
            })
            .collect();
        std::fs::write(dir.join("routing.json"), serde_json::to_string_pretty(&layers).unwrap()).unwrap();
    }
}

#[test]
fn plot_run_writes_every_plot() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("tiny-run");
    fake_run(&run, 60, 13, true);
    let files = plot_run(&run).unwrap();
    let expected = both(&[
        "loss_vs_step",
        "loss_vs_time",
        "gap_to_floor",
        "expert_load_layer1",
        "expert_load_layer3",
        "routing_layer1",
        "routing_layer3",
    ]);
    assert_eq!(file_names(&run.join("plots")), expected);
    assert_eq!(files.len(), expected.len());
    assert!(files.iter().all(|f| std::fs::metadata(f).unwrap().len() > 0));
    let svg = std::fs::read_to_string(run.join("plots/loss_vs_step.svg")).unwrap();
    for text in ["train CE", "val loss", "loss floor 0.9877"] {
        assert!(svg.contains(text), "loss_vs_step.svg lacks {text:?}");
    }
}

#[test]
fn plot_run_reads_a_live_run() {
    let dir = tempfile::tempdir().unwrap();
    fake_run(dir.path(), 12, 14, false);
    // A record still being written: no newline yet, and not yet JSON.
    let path = dir.path().join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"kind\": \"train\", \"st");
    std::fs::write(&path, text).unwrap();
    plot_run(dir.path()).unwrap();
    assert!(dir.path().join("plots/loss_vs_time.png").exists());
    assert!(!dir.path().join("plots/routing_layer1.png").exists());

    let mut lines: Vec<String> = std::fs::read_to_string(&path).unwrap().lines().map(str::to_string).collect();
    lines[2] = "{oops".into();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let msg = data_error(plot_run(dir.path()));
    assert!(msg.contains("metrics.jsonl line 3: not JSON"), "{msg}");
}

#[test]
fn plot_run_on_an_empty_dir_says_no_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let msg = data_error(plot_run(dir.path()));
    assert!(msg.starts_with(&format!("no metrics in {}", dir.path().display())), "{msg}");
    assert!(!dir.path().join("plots").exists());

    std::fs::write(dir.path().join("metrics.jsonl"), "").unwrap();
    let msg = data_error(plot_run(dir.path()));
    assert!(msg.contains("has not logged a step yet"), "{msg}");
}

/// A results.jsonl row for a point with `overrides`, its run in `sweep/<label>`.
fn result_row(sweep: &Path, label: &str, overrides: serde_json::Value, val_loss: f64, dropped: Option<f64>) -> String {
    json!({
        "index": 0,
        "label": label,
        "overrides": overrides,
        "run_dir": sweep.join(label).display().to_string(),
        "steps": 30,
        "final_loss": val_loss + 0.05,
        "val_loss": val_loss,
        "loss_floor": 0.9877,
        "gap": val_loss - 0.9877,
        "dropped_frac": dropped,
        "eval_dropped_frac": dropped.map(|d| d / 4.0),
        "tokens_per_s": 20000.0,
        "wall_s": 15.0,
        "params": 1000,
        "active_params": 500,
    })
    .to_string()
}

#[test]
fn plot_sweep_over_experts_and_top_k() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = dir.path().join("experts");
    let mut rows = Vec::new();
    for (i, (e, k)) in [(2, 1), (4, 1), (8, 1), (2, 2), (4, 2), (8, 2)].into_iter().enumerate() {
        let label = format!("n_experts={e},top_k={k}");
        fake_run(&sweep.join(&label), 30, 20 + i as u64, false);
        let overrides = json!({"model.n_experts": e, "model.top_k": k});
        rows.push(result_row(&sweep, &label, overrides, 1.3 - 0.02 * e as f64 - 0.01 * k as f64, Some(0.02)));
    }
    // The dense baseline's run has no metrics: it is left out of the curves.
    rows.push(result_row(&sweep, "moe_every=0", json!({"model.moe_every": 0}), 1.35, None));
    std::fs::write(sweep.join("results.jsonl"), rows.join("\n") + "\n").unwrap();

    plot_sweep(&sweep).unwrap();
    let plots = sweep.join("plots");
    // top_k is swept too: it gets its own chart, one series per expert count.
    let expected = both(&["loss_vs_step", "loss_vs_time", "final_loss_vs_experts", "loss_vs_model.top_k"]);
    assert_eq!(file_names(&plots), expected);
    let svg = std::fs::read_to_string(plots.join("final_loss_vs_experts.svg")).unwrap();
    for text in ["top_k=1", "top_k=2", "dense"] {
        assert!(svg.contains(text), "final_loss_vs_experts.svg lacks {text:?}");
    }
}

#[test]
fn plot_sweep_over_capacity_and_aux_coef() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = dir.path().join("capacity");
    std::fs::create_dir_all(&sweep).unwrap();
    let mut rows = Vec::new();
    for cf in [0.5, 1.0, 2.0, 0.0] {
        for aux in [0.0, 0.001, 0.01, 0.1] {
            let overrides = json!({"model.capacity_factor": cf, "model.aux_loss_coef": aux});
            let dropped = if cf > 0.0 { 0.2 / cf } else { 0.0 };
            rows.push(result_row(&sweep, &format!("cf={cf},aux={aux}"), overrides, 1.2 + aux, Some(dropped)));
        }
    }
    std::fs::write(sweep.join("results.jsonl"), rows.join("\n") + "\n").unwrap();

    plot_sweep(&sweep).unwrap();
    let plots = sweep.join("plots");
    let expected = both(&["dropped_vs_capacity", "loss_vs_capacity", "loss_vs_model.aux_loss_coef"]);
    assert_eq!(file_names(&plots), expected);
    let svg = std::fs::read_to_string(plots.join("dropped_vs_capacity.svg")).unwrap();
    assert!(svg.contains("dropless at x = 3"), "the dropless points must be explained");
    let svg = std::fs::read_to_string(plots.join("loss_vs_model.aux_loss_coef.svg")).unwrap();
    assert!(svg.contains("0 at x = 1e-4"), "zero coefficients on a log axis must be explained");
}

#[test]
fn plot_sweep_without_results_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let msg = data_error(plot_sweep(dir.path()));
    assert_eq!(msg, format!("no results in {}: run `switchyard sweep` first", dir.path().display()));
    std::fs::write(dir.path().join("results.jsonl"), "\n").unwrap();
    assert!(data_error(plot_sweep(dir.path())).starts_with("no results in"));
}
