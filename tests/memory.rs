//! The memory estimate against what the engine really allocates: for every
//! purpose (training, evaluation, generation) and model kind (dense, MoE,
//! top-2 with jitter), `memory::estimate` equals the bytes the CPU backend
//! hands out, byte for byte, so a config refused for memory would really not
//! fit and one accepted really does.

mod common;

use switchyard::backend::cpu::Cpu;
use switchyard::infer::{Engine, Routing};
use switchyard::memory::{estimate, Estimate, Purpose, CHECKPOINT_IO};
use switchyard::model::{Model, Pass};
use switchyard::train::optimizer::Optimizer;
use switchyard::Config;

fn configs() -> Vec<(&'static str, Config)> {
    let dense = common::micro_config(0, 4, 1);
    let moe = common::micro_config(2, 4, 1);
    let mut moe2 = common::micro_config(1, 8, 2);
    moe2.model.router_jitter = 0.01;
    moe2.train.batch_size = 3;
    let mut mixed = common::micro_config(2, 4, 1);
    mixed.model.n_layer = 3;
    mixed.model.router_jitter = 0.0;
    vec![("dense", dense), ("moe top-1", moe), ("moe top-2 jitter", moe2), ("mixed", mixed)]
}

/// The backend buffers of an estimate (without the host's checkpoint I/O).
fn buffers(e: &Estimate) -> u64 {
    e.total - e.parts.iter().filter(|p| p.what == CHECKPOINT_IO).map(|p| p.bytes).sum::<u64>()
}

fn tokens(cfg: &Config, n: usize) -> Vec<i32> {
    common::tokens(&mut common::rng(n as u64), n, cfg.model.vocab_size)
}

#[test]
fn training_and_evaluation_estimates_equal_the_allocated_bytes() {
    for (name, cfg) in configs() {
        let (b, t) = (cfg.train.batch_size, cfg.train.seq_len);
        let (x, y) = (tokens(&cfg, b * t), tokens(&cfg, b * t + 1)[1..].to_vec());
        let be = Cpu::new(1).unwrap();
        let mut model = Model::new(&be, &cfg).unwrap();
        let _opt = Optimizer::new(&be, &model).unwrap();
        model.step(&be, &x, &y, b, t, Pass::Train { jitter_seed: 1, loss_weight: 1.0 }).unwrap();
        let want = estimate(&cfg, Purpose::Train).unwrap();
        assert_eq!(be.allocated_bytes(), buffers(&want), "{name}: training, estimate {}", want.describe());
        // Checkpoint writes stream one tensor at a time: twice the largest one.
        let largest = model.table.specs.iter().map(|s| s.numel() as u64 * 4).max().unwrap();
        assert_eq!(want.total - buffers(&want), 2 * largest, "{name}: checkpoint I/O");

        let be = Cpu::new(1).unwrap();
        let mut model = Model::new(&be, &cfg).unwrap();
        model.forward_only(&be, &x, &y, b, t, Pass::Eval).unwrap();
        let want = estimate(&cfg, Purpose::Eval).unwrap();
        assert_eq!(be.allocated_bytes(), buffers(&want), "{name}: evaluation, estimate {}", want.describe());
    }
}

#[test]
fn generation_estimate_equals_the_allocated_bytes() {
    for (name, cfg) in configs() {
        let (sequences, prompt) = (3, 5);
        let be = Cpu::new(1).unwrap();
        let model = Model::new(&be, &cfg).unwrap();
        let mut eng = Engine::new(&be, &model, sequences, Routing::Dropless).unwrap();
        let ids: Vec<u32> = tokens(&cfg, prompt).iter().map(|&t| t as u32).collect();
        for s in 0..sequences {
            eng.prefill(&be, s, &ids).unwrap();
        }
        eng.decode(&be, &vec![1; sequences]).unwrap();
        let want = estimate(&cfg, Purpose::Generate { sequences, max_prompt: prompt }).unwrap();
        assert_eq!(be.allocated_bytes(), buffers(&want), "{name}: generation, estimate {}", want.describe());
    }
}

#[test]
fn refusals_come_before_any_allocation() {
    // The model's own check: a model that cannot fit is refused by Model::new
    // with nothing allocated.
    let mut cfg = Config::preset("tiny").unwrap();
    cfg.model.n_layer = 1_000_000;
    let be = Cpu::new(1).unwrap();
    let e = Model::new(&be, &cfg).err().expect("a million layers cannot fit").to_string();
    assert!(e.contains("needs about") && e.contains("model.n_layer"), "{e}");
    assert_eq!(be.allocated_bytes(), 0);
}
