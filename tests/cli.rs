//! The `switchyard` binary: config, train, eval, resume, Ctrl-C, and the
//! error messages a user sees for bad flags.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cli::{args, run, sets, stderr, wait_for_lines, BIN};
use switchyard::Config;

#[test]
fn config_command_prints_a_parsable_commented_preset() {
    let o = run(&args(&["config", "--preset", "small"]));
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("# Markov order"));
    assert_eq!(Config::from_toml_str(&text, "stdout").unwrap(), Config::preset("small").unwrap());
    let o = run(&args(&["config", "--preset", "nope"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("unknown preset `nope`"));
}

#[test]
fn train_then_eval() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut a = args(&["train", "--quiet", "--out", out.to_str().unwrap()]);
    a.extend(sets(&["train.steps=6", "train.eval_every=3"]));
    let o = run(&a);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("loss floor (exact, seq 32)") && err.contains("step 6: train loss"), "{err}");
    for f in ["config.toml", "metrics.jsonl", "summary.json", "latest", "ckpt-000006/model.safetensors"] {
        assert!(out.join(f).exists(), "missing {f}");
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let recs: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recs.iter().filter(|r| r["kind"] == "train").count(), 6);
    assert_eq!(recs.iter().filter(|r| r["kind"] == "eval").count(), 2);
    let first = &recs[0];
    for key in ["loss", "ce", "aux", "z", "lr", "grad_norm", "tokens_per_s", "moe"] {
        assert!(!first[key].is_null(), "train record lacks {key}");
    }
    let moe = &first["moe"][0];
    assert_eq!(moe["tokens_per_expert"].as_array().unwrap().len(), 8);
    for key in ["dropped_frac", "router_entropy", "aux", "z", "assigned_per_expert"] {
        assert!(!moe[key].is_null(), "moe record lacks {key}");
    }
    // The run's config.toml is a valid config.
    Config::from_file(&out.join("config.toml")).unwrap().validate().unwrap();

    let o = run(&args(&["eval", "--checkpoint", out.to_str().unwrap()]));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        text.contains("val loss")
            && text.contains("perplexity")
            && text.contains("loss floor")
            && text.contains("layer  1"),
        "{text}"
    );
    let o = run(&args(&["eval", "--json", "--checkpoint", out.join("ckpt-000006").to_str().unwrap()]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["step"], 6);
    assert!(v["val_loss"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_flags_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let o = out.to_str().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (args(&["train", "--out", o, "--set", "model.top_k=99"]), "model.top_k = 99"),
        (args(&["train", "--out", o, "--set", "model.d_modle=64"]), "unknown key `d_modle`"),
        (args(&["train", "--out", o, "--preset", "tiny", "--config", "x.toml"]), "either --config or --preset"),
        (args(&["train", "--out", o, "--config", "/nonexistent.toml"]), "cannot read config file /nonexistent.toml"),
        (args(&["train", "--out", o, "--data", "/nonexistent/corpus.txt"]), "/nonexistent/corpus.txt"),
        (args(&["train", "--out", o, "--device", "tpu"]), "unknown device"),
        (args(&["eval", "--checkpoint", "/nonexistent/run"]), "does not exist"),
        (args(&["train", "--resume", "/nonexistent/run"]), "does not exist"),
    ];
    for (a, want) in cases {
        let r = run(&a);
        assert_eq!(r.status.code(), Some(1), "{a:?}");
        let err = stderr(&r);
        assert!(err.starts_with("error: ") && err.contains(want), "{a:?}: {err}");
        assert!(!err.contains("panicked"), "{a:?} panicked: {err}");
    }
    let r = run(&args(&["train", "--no-such-flag"]));
    assert_eq!(r.status.code(), Some(2));
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_resume_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut a = args(&["train", "--quiet", "--out", out.to_str().unwrap()]);
    a.extend(sets(&["train.steps=100000", "train.checkpoint_every=0", "train.eval_every=0"]));
    let child = Command::new(BIN).args(&a).stdin(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    assert!(wait_for_lines(&out.join("metrics.jsonl"), 3, Duration::from_secs(60)), "training did not start");
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupt: saving a checkpoint") && err.contains("continue with: switchyard train --resume"),
        "{err}"
    );
    let ck = switchyard::train::checkpoint::resolve(&out).unwrap();
    let step: u64 = ck.file_name().unwrap().to_str().unwrap()[5..].parse().unwrap();
    assert!(step >= 3);
    // Resume (the checkpoint's config is used; --set extends the run).
    let target = step + 2;
    let o =
        run(&args(&["train", "--quiet", "--resume", out.to_str().unwrap(), "--set", &format!("train.steps={target}")]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join(format!("ckpt-{target:06}")).exists());
}

#[test]
fn bench_prints_and_writes_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let mut a = args(&["bench", "--steps", "2", "--warmup", "1", "--json", json.to_str().unwrap()]);
    a.extend(sets(&[]));
    let o = run(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("median step") && text.contains("tokens/s"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["steps"], 2);
    assert_eq!(v["step_ms"].as_array().unwrap().len(), 2);
    assert_eq!(v["tokens_per_step"], 4 * 32);
    for key in ["median_ms", "min_ms", "max_ms", "tokens_per_s", "gflops"] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key}");
    }
    let o = run(&args(&["bench", "--steps", "0"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--steps 0"));
}

#[test]
fn device_flag_errors_name_the_problem() {
    // Top-9 routing on `cuda`: refused on every machine, either because there
    // is no GPU (this machine, CI) or because the CUDA router stops at top-8.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run").to_str().unwrap().to_string();
    let topk9 = ["--set", "model.n_experts=16", "--set", "model.top_k=9"];
    let o = run(&args(&[&["train", "--quiet", "--device", "cuda", "--out", &out][..], &topk9[..]].concat()));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("--device cuda"), "{err}");
    assert!(
        err.contains("no CUDA") || err.contains("no embedded CUDA kernels") || err.contains("model.top_k = 9"),
        "{err}"
    );
    let o = run(&args(&["train", "--quiet", "--device", "cuda:x", "--out", &out]));
    assert!(stderr(&o).contains("expected cuda or cuda:N"), "{}", stderr(&o));
    let o = run(&args(&["train", "--quiet", "--device", "tpu", "--out", &out]));
    assert!(stderr(&o).contains("unknown device; use auto, cpu, cuda or cuda:N"), "{}", stderr(&o));
    assert!(!Path::new(&out).join("metrics.jsonl").exists(), "nothing was trained");
}

#[test]
fn kernels_command_reports_ptxas_resources() {
    let o = run(&args(&["kernels"]));
    if switchyard::backend::cuda::kernels::NVCC_VERSION.is_some() {
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(text.contains("attention_fwd_hd64") && text.contains("sm_90a"), "{text}");
        let o = run(&args(&["kernels", "--json"]));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
        assert!(v.as_array().is_some_and(|a| a.iter().any(|r| r["registers"].as_u64().unwrap_or(0) > 0)));
    } else {
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("no embedded CUDA kernels"), "{}", stderr(&o));
    }
}

#[test]
fn generate_streams_batches_and_refuses_bad_requests() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap().to_string();
    let mut a = args(&["train", "--quiet", "--out", &o]);
    a.extend(sets(&["train.steps=4", "train.eval_every=0"]));
    let r = run(&a);
    assert!(r.status.success(), "{}", stderr(&r));
    // One prompt, greedy: five ids on stdout, the same twice.
    let gen = |extra: &[&str]| {
        let mut a = args(&["generate", "--checkpoint", &o]);
        a.extend(args(extra));
        run(&a)
    };
    let r = gen(&["--prompt", "1 2 3", "--max-new-tokens", "5", "--temperature", "0"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let text = String::from_utf8_lossy(&r.stdout).trim().to_string();
    let ids: Vec<u32> = text.split_whitespace().map(|w| w.parse().expect("ids")).collect();
    assert_eq!(ids.len(), 5, "{text}");
    assert!(stderr(&r).contains("decode 4 tokens") && stderr(&r).contains("KV cache"), "{}", stderr(&r));
    let again = gen(&["--prompt", "1 2 3", "--max-new-tokens", "5", "--temperature", "0"]);
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), text);
    // Many prompts: one JSON line each, batched.
    let pf = dir.path().join("prompts.txt");
    std::fs::write(&pf, "1 2 3\n40\n100 101 102 103\n").unwrap();
    let r = gen(&["--prompts", pf.to_str().unwrap(), "--max-new-tokens", "4", "--seed", "3", "--stats"]);
    assert!(r.status.success(), "{}", stderr(&r));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&r.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 4, "3 completions + the decode expert load");
    for (i, l) in lines[..3].iter().enumerate() {
        assert_eq!(l["index"], i);
        assert_eq!(l["tokens"].as_array().unwrap().len(), 4);
    }
    assert_eq!(lines[3]["decode_expert_load"].as_array().unwrap().len(), 3, "3 decode steps");
    // Bad requests.
    let pf_empty = dir.path().join("empty-line.txt");
    std::fs::write(&pf_empty, "1 2\n\n3\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--prompt", "1 2", "--top-p", "0"], "--top-p 0"),
        (vec!["--prompt", "1 2", "--top-p", "1.5"], "(0, 1]"),
        (vec!["--prompt", "1 2", "--temperature", "-1"], "--temperature -1"),
        (vec!["--prompt", "1 x"], "\"x\" is not a token id below 256"),
        (vec!["--prompt", "1 2", "--max-new-tokens", "100"], "at most 30 new tokens fit"),
        (vec!["--prompts", pf_empty.to_str().unwrap()], "line 2 is empty"),
        (vec!["--prompt", "1", "--routing", "fast"], "--routing fast"),
    ];
    for (extra, want) in cases {
        let r = gen(&extra);
        assert_eq!(r.status.code(), Some(1), "{extra:?}");
        assert!(stderr(&r).contains(want), "{extra:?}: {}", stderr(&r));
    }
    let r = run(&args(&["generate", "--checkpoint", "/nonexistent/run", "--prompt", "1"]));
    assert!(stderr(&r).contains("does not exist"), "{}", stderr(&r));
    // eval --stats: the domain x expert table.
    let r = run(&args(&["eval", "--checkpoint", &o, "--batches", "1", "--stats"]));
    assert!(r.status.success(), "{}", stderr(&r));
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(text.contains("share of each domain's kept assignments per expert") && text.contains("top"), "{text}");
}

#[test]
fn sweep_plot_and_bench_ops_commands() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // A run directory describes itself: run.json, plots.
    let run_dir = d("run");
    let mut a = args(&["train", "--quiet", "--out", &run_dir]);
    a.extend(sets(&["train.steps=4", "train.eval_every=2"]));
    let r = run(&a);
    assert!(r.status.success(), "{}", stderr(&r));
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&run_dir).join("run.json")).unwrap()).unwrap();
    for key in ["commit", "device", "switchyard_version", "seed", "command"] {
        assert!(info.get(key).is_some(), "run.json lacks {key}");
    }
    for plot in ["loss_vs_step.png", "loss_vs_step.svg", "loss_vs_time.png", "expert_load_layer1.png"] {
        let p = Path::new(&run_dir).join("plots").join(plot);
        assert!(std::fs::metadata(&p).map(|m| m.len() > 100).unwrap_or(false), "{} missing or empty", p.display());
    }
    assert!(Path::new(&run_dir).join("routing.json").is_file());
    // `plot` redraws them; a directory without metrics is refused.
    let r = run(&args(&["plot", &run_dir]));
    assert!(r.status.success() && String::from_utf8_lossy(&r.stdout).contains("loss_vs_step.png"), "{}", stderr(&r));
    std::fs::create_dir_all(d("empty")).unwrap();
    let r = run(&args(&["plot", &d("empty")]));
    assert_eq!(r.status.code(), Some(1));
    assert!(stderr(&r).contains("no metrics"), "{}", stderr(&r));
    // Sweep files: a dry run lists the points; bad files name the problem.
    let good = d("s.toml");
    std::fs::write(&good, "name = \"s\"\n[axes]\n\"model.top_k\" = [1, 2]\n\"model.n_experts\" = [4]\n").unwrap();
    let r = run(&args(&["sweep", &good, "--dry-run"]));
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success() && text.contains("(2 points)") && text.contains("n_experts=4,top_k=2"), "{text}");
    for (body, want) in [
        ("name = \"s\"\nstep = 3\n", "unknown key `step`"),
        ("[axes]\n\"model.top_k\" = []\n", "axis `model.top_k` is empty"),
        ("[axes]\n\"model.topk\" = [1]\n", "unknown key `topk`"),
    ] {
        std::fs::write(&good, body).unwrap();
        let r = run(&args(&["sweep", &good, "--dry-run"]));
        assert_eq!(r.status.code(), Some(1), "{body}");
        assert!(stderr(&r).contains(want), "{body}: {}", stderr(&r));
    }
    // bench --ops: the table, its JSON and the roofline; bad shapes are refused.
    let shapes = ["tokens=64", "seq=16", "d_model=32", "d_ff=64", "n_head=2", "vocab=50", "n_experts=4", "top_k=2"];
    let mut a = args(&["bench", "--ops", "--repeats", "1", "--plot-dir", &d("ops"), "--device", "cpu"]);
    for s in shapes {
        a.extend(args(&["--shape", s]));
    }
    let r = run(&a);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(String::from_utf8_lossy(&r.stdout).contains("ceilings:"));
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&d("ops")).join("bench-ops.json")).unwrap()).unwrap();
    for key in ["device", "commit", "shapes", "ceilings", "results"] {
        assert!(rep.get(key).is_some(), "bench JSON lacks {key}");
    }
    let row = &rep["results"][0];
    for key in ["op", "shape", "median_ms", "rate", "unit", "fraction_of_ceiling"] {
        assert!(row.get(key).is_some(), "bench row lacks {key}");
    }
    assert!(Path::new(&d("ops")).join("roofline.png").is_file());
    for (shape, want) in [("d_modle=3", "d_modle"), ("n_head=3", "n_head")] {
        let r = run(&args(&["bench", "--ops", "--shape", shape, "--device", "cpu"]));
        assert_eq!(r.status.code(), Some(1));
        assert!(stderr(&r).contains(want), "{shape}: {}", stderr(&r));
    }
}
