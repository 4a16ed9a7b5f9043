//! Training end to end on the CPU: convergence to the synthetic corpus's
//! exact floor, bitwise determinism, resume equality, checkpoint round trip,
//! and the failure paths (divergence, corrupted or mismatched checkpoints,
//! unwritable run directories).

// Index loops read like the math in these numeric checks.
#![allow(clippy::needless_range_loop)]

use std::path::{Path, PathBuf};

use switchyard::backend::cpu::Cpu;
use switchyard::backend::Backend;
use switchyard::data::Dataset;
use switchyard::model::Model;
use switchyard::train::{self, checkpoint, TrainOptions, TrainSummary};
use switchyard::{Config, Error};

/// A fast config on an easy corpus: 4 domains x 16 tokens, order 1,
/// branching 2, so its floor is reachable in ~300 small steps.
fn easy(moe: bool) -> Config {
    let mut c = Config::preset("tiny").unwrap();
    let m = &mut c.model;
    m.vocab_size = 64;
    m.max_seq_len = 32;
    m.n_layer = 2;
    m.n_head = 2;
    m.d_model = 64;
    m.d_ff = 128;
    m.moe_every = if moe { 1 } else { 0 };
    m.n_experts = 4;
    let t = &mut c.train;
    t.seq_len = 32;
    t.batch_size = 16;
    t.steps = 300;
    t.lr = 3e-3;
    t.min_lr = 3e-4;
    t.warmup_steps = 20;
    t.eval_every = 0;
    t.eval_batches = 8;
    t.checkpoint_every = 0;
    let s = &mut c.data.synthetic;
    s.domains = 4;
    s.domain_vocab = 16;
    s.order = 1;
    s.branching = 2;
    s.teleport = 0.02;
    c
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn run(cfg: &Config, out: &Path, resume: Option<PathBuf>, max: Option<u64>) -> switchyard::Result<TrainSummary> {
    let be = Cpu::new(2).unwrap();
    train::train(&be, cfg, &TrainOptions { out: out.to_path_buf(), resume, progress: false, max_steps_this_run: max })
}

/// Margin over the floor: 0.15 nats. The easy corpus has floor ~0.5 and
/// unigram entropy ln 64 ≈ 4.16 and bigram entropy = floor (order 1), so the
/// margin is small against what the model must learn (~3.6 nats) while
/// leaving room for 300 steps of finite training.
const MARGIN: f64 = 0.15;

fn assert_learns(moe: bool) {
    let cfg = easy(moe);
    let dir = tmp();
    let s = run(&cfg, dir.path(), None, None).unwrap();
    let floor = s.loss_floor.unwrap();
    let val = s.val_loss.unwrap();
    eprintln!("moe={moe}: val {val:.4}, floor {floor:.4}, unigram {:.4}", s.unigram_entropy.unwrap());
    assert!(val < floor + MARGIN, "val loss {val} is not within {MARGIN} of the floor {floor}");
    assert!(val > floor - 0.05, "val loss {val} is below the exact floor {floor}: the floor or the loss is wrong");
}

#[test]
fn dense_model_reaches_the_floor() {
    assert_learns(false);
}

#[test]
fn moe_model_reaches_the_floor() {
    assert_learns(true);
}

fn short_moe() -> Config {
    let mut c = easy(true);
    c.model.top_k = 2;
    c.model.capacity_factor = 1.0;
    c.model.router_jitter = 0.01;
    c.train.steps = 12;
    c.train.grad_accum = 2;
    c.train.warmup_steps = 3;
    c.train.eval_every = 4;
    c.train.eval_batches = 2;
    c.train.checkpoint_every = 4;
    c
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn params_of(dir: &Path, cfg: &Config) -> Vec<Vec<u32>> {
    let ck = checkpoint::load(&checkpoint::resolve(dir).unwrap(), cfg, true).unwrap();
    let (m, v) = ck.moments.unwrap();
    ck.params.iter().chain(&m).chain(&v).map(|t| t.iter().map(|x| x.to_bits()).collect()).collect()
}

#[test]
fn same_seed_same_losses_bit_for_bit() {
    let cfg = short_moe();
    let (a, b) = (tmp(), tmp());
    let sa = run(&cfg, a.path(), None, None).unwrap();
    let sb = run(&cfg, b.path(), None, None).unwrap();
    assert_eq!(sa.losses.len(), 12);
    assert_eq!(bits(&sa.losses), bits(&sb.losses));
    assert_eq!(params_of(a.path(), &cfg), params_of(b.path(), &cfg));
    // A different seed gives different losses (the check can fail).
    let mut other = cfg.clone();
    other.train.seed += 1;
    let c = tmp();
    let sc = run(&other, c.path(), None, None).unwrap();
    assert_ne!(bits(&sa.losses), bits(&sc.losses));
}

#[test]
fn resume_continues_bit_for_bit() {
    let cfg = short_moe();
    let full = tmp();
    let s_full = run(&cfg, full.path(), None, None).unwrap();
    let part = tmp();
    // Stop after 5 steps (not a checkpoint multiple: the stop itself saves).
    let s1 = run(&cfg, part.path(), None, Some(5)).unwrap();
    assert!(s1.interrupted);
    assert_eq!(s1.steps, 5);
    assert_eq!(bits(&s1.losses), bits(&s_full.losses[..5]));
    let s2 = run(&cfg, part.path(), Some(part.path().to_path_buf()), None).unwrap();
    assert_eq!(s2.steps, 12);
    assert_eq!(bits(&s2.losses), bits(&s_full.losses[5..]), "losses after resuming differ from the uninterrupted run");
    assert_eq!(params_of(part.path(), &cfg), params_of(full.path(), &cfg));
    // metrics.jsonl reads as one run: steps 1..=12 once each.
    let text = std::fs::read_to_string(part.path().join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=12).collect::<Vec<_>>());
}

#[test]
fn checkpoint_round_trip_and_eval() {
    let cfg = short_moe();
    let dir = tmp();
    run(&cfg, dir.path(), None, None).unwrap();
    let ck_dir = checkpoint::resolve(dir.path()).unwrap();
    assert!(ck_dir.ends_with("ckpt-000012"));
    // keep_checkpoints = 2: only the two newest remain.
    let names: Vec<String> =
        checkpoint::list(dir.path()).iter().map(|p| p.file_name().unwrap().to_string_lossy().into()).collect();
    assert_eq!(names, vec!["ckpt-000008", "ckpt-000012"]);
    let stored = checkpoint::read_config(&ck_dir).unwrap();
    assert_eq!(stored, cfg);
    let ck = checkpoint::load(&ck_dir, &cfg, false).unwrap();
    let be = Cpu::new(2).unwrap();
    let mut model = Model::<Cpu>::new(&be, &cfg).unwrap();
    checkpoint::restore(&be, &ck, &mut model, None);
    for (i, p) in model.params.iter().enumerate() {
        assert_eq!(be.download(p), ck.params[i]);
    }
    // The evaluation at the last step is reproduced from the checkpoint.
    let data = Dataset::open(&cfg).unwrap();
    let ev = train::evaluate(&be, &mut model, &data, cfg.train.eval_batches).unwrap();
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let last_eval: serde_json::Value = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|v| v["kind"] == "eval")
        .unwrap();
    assert_eq!(last_eval["val_loss"].as_f64().unwrap(), ev.val_loss);
    // Tensor names follow DESIGN.md §7.
    let bytes = std::fs::read(ck_dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    for want in
        ["wte", "wpe", "ln_f.weight", "h.0.attn.qkv.weight", "h.1.moe.router.weight", "h.1.moe.experts.fc.weight"]
    {
        assert!(names.contains(&want), "missing tensor {want}");
    }
    assert_eq!(st.tensor("h.0.moe.experts.fc.weight").unwrap().shape(), &[4, 64, 128]);
    assert_eq!(st.tensor("h.0.moe.router.weight").unwrap().shape(), &[64, 4]);
}

fn ckpt_err(r: switchyard::Result<impl Sized>) -> String {
    match r {
        Err(e @ Error::Checkpoint(_)) => e.to_string(),
        Err(e) => panic!("expected a checkpoint error, got {e}"),
        Ok(_) => panic!("expected a checkpoint error"),
    }
}

#[test]
fn loading_into_a_different_config_names_the_keys() {
    let cfg = short_moe();
    let dir = tmp();
    run(&cfg, dir.path(), None, Some(1)).unwrap();
    let ck = checkpoint::resolve(dir.path()).unwrap();
    let mut other = cfg.clone();
    other.model.n_experts = 8;
    other.model.d_ff = 96;
    let msg = ckpt_err(checkpoint::load(&ck, &other, true));
    assert!(msg.contains("model.n_experts is 4 in the checkpoint but 8"), "{msg}");
    assert!(msg.contains("model.d_ff"), "{msg}");
    // Resuming a run with a different model config fails the same way, before training.
    let msg = ckpt_err(run(&other, dir.path(), Some(dir.path().to_path_buf()), None));
    assert!(msg.contains("different model config"), "{msg}");
}

#[test]
fn truncated_and_corrupted_checkpoints_are_refused() {
    let cfg = short_moe();
    let dir = tmp();
    run(&cfg, dir.path(), None, Some(1)).unwrap();
    let ck = checkpoint::resolve(dir.path()).unwrap();
    let model = ck.join("model.safetensors");
    let good = std::fs::read(&model).unwrap();
    // Flip one byte inside the tensor data: the header still parses.
    let mut bad = good.clone();
    let last = bad.len() - 3;
    bad[last] ^= 0x40;
    std::fs::write(&model, &bad).unwrap();
    let msg = ckpt_err(checkpoint::load(&ck, &cfg, false));
    assert!(msg.contains("truncated or corrupted") && msg.contains("checksum"), "{msg}");
    // Truncate.
    std::fs::write(&model, &good[..good.len() / 2]).unwrap();
    let msg = ckpt_err(checkpoint::load(&ck, &cfg, false));
    assert!(msg.contains("truncated or corrupted"), "{msg}");
    // Missing optimizer file on resume.
    std::fs::write(&model, &good).unwrap();
    std::fs::remove_file(ck.join("optimizer.safetensors")).unwrap();
    let msg = ckpt_err(checkpoint::load(&ck, &cfg, true));
    assert!(msg.contains("optimizer.safetensors"), "{msg}");
    // A directory that is neither.
    let empty = tmp();
    let msg = ckpt_err(checkpoint::resolve(empty.path()));
    assert!(msg.contains("neither a checkpoint"), "{msg}");
}

#[test]
fn divergence_stops_with_the_step_and_last_checkpoint() {
    let mut cfg = short_moe();
    cfg.train.lr = 1e6;
    cfg.train.min_lr = 1e5;
    cfg.train.warmup_steps = 0;
    cfg.train.grad_clip = 0.0;
    cfg.train.checkpoint_every = 1;
    cfg.train.steps = 50;
    let dir = tmp();
    let err = run(&cfg, dir.path(), None, None).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Diverged(_)), "{msg}");
    assert!(msg.contains("at step") && msg.contains("last good checkpoint is"), "{msg}");
    // The named checkpoint exists and loads (nothing saved was lost).
    let named = msg.split("last good checkpoint is ").nth(1).unwrap().split(". ").next().unwrap();
    checkpoint::load(Path::new(named), &cfg, true).unwrap();
}

#[test]
fn unwritable_or_occupied_run_directory() {
    let cfg = short_moe();
    let dir = tmp();
    // A regular file where the run directory should be.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let msg = run(&cfg, &file.join("run"), None, None).unwrap_err().to_string();
    assert!(msg.contains("choose a writable --out"), "{msg}");
    // A directory that already holds a run is not overwritten.
    run(&cfg, dir.path(), None, Some(1)).unwrap();
    let before = std::fs::read(dir.path().join("metrics.jsonl")).unwrap();
    let msg = run(&cfg, dir.path(), None, None).unwrap_err().to_string();
    assert!(msg.contains("already holds a run") && msg.contains("--resume"), "{msg}");
    assert_eq!(std::fs::read(dir.path().join("metrics.jsonl")).unwrap(), before);
}
