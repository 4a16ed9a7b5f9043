//! Inference: KV-cached generation against full recomputation, batching,
//! seeding, the decode attention against the training attention, and bad
//! requests.

mod common;

use switchyard::backend::cpu::Cpu;
use switchyard::backend::Backend;
use switchyard::infer::generate::{generate, greedy_by_recompute, GenOptions};
use switchyard::infer::sample::Sampler;
use switchyard::infer::{Engine, Routing};
use switchyard::model::Model;
use switchyard::Config;

/// A small model: 2 layers (the second MoE when `moe`), 4 heads of 8, context 24.
fn config(moe: bool, top_k: usize) -> Config {
    let mut c = common::micro_config(if moe { 2 } else { 0 }, 4, top_k);
    c.model.max_seq_len = 24;
    c.model.n_head = 2;
    c.model.d_model = 32;
    c.model.d_ff = 64;
    c
}

/// A model with weights scaled up from the init, so its logits are far from
/// uniform and greedy choices are not near-ties.
fn model(be: &Cpu, cfg: &Config, seed: u64) -> Model<Cpu> {
    let mut m = Model::new(be, cfg).unwrap();
    let mut r = common::rng(seed);
    for p in &mut m.params {
        let v: Vec<f32> =
            be.download(p).iter().zip(common::normal(&mut r, p.len())).map(|(a, b)| a * 8.0 + 0.05 * b).collect();
        be.upload(p, &v);
    }
    m
}

fn greedy() -> GenOptions {
    GenOptions {
        max_new_tokens: 12,
        sampler: Sampler { temperature: 0.0, ..Sampler::default() },
        ..GenOptions::default()
    }
}

#[test]
fn kv_cached_greedy_equals_full_recomputation() {
    let be = Cpu::new(2).unwrap();
    for (moe, k) in [(false, 1), (true, 1), (true, 2)] {
        let cfg = config(moe, k);
        let m = model(&be, &cfg, 11);
        let prompt = vec![3, 17, 5, 9, 30];
        let cached = generate(&be, &m, std::slice::from_ref(&prompt), &greedy(), &mut |_, _| {}).unwrap();
        let full = greedy_by_recompute(&be, &m, &prompt, 12, Routing::Dropless).unwrap();
        assert_eq!(cached.tokens[0], full, "moe={moe} k={k}");
        // Not a degenerate model: it does not repeat one token.
        assert!(full.iter().any(|&t| t != full[0]), "moe={moe}: {full:?}");
    }
}

#[test]
fn decode_logits_match_a_prefill_of_the_whole_sequence() {
    let be = Cpu::new(2).unwrap();
    let cfg = config(true, 2);
    let m = model(&be, &cfg, 12);
    let v = cfg.model.vocab_size;
    let seq: Vec<u32> = vec![1, 20, 7, 7, 14, 2, 31, 8];
    let mut eng = Engine::new(&be, &m, 1, Routing::Dropless).unwrap();
    let full = eng.prefill(&be, 0, &seq).unwrap();
    eng.reset(0);
    eng.prefill(&be, 0, &seq[..3]).unwrap();
    for (i, &tok) in seq.iter().enumerate().skip(3) {
        let step = eng.decode(&be, &[tok]).unwrap();
        let want = &full[i * v..(i + 1) * v];
        let err = step.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let scale = want.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
        // fp32, different summation orders (cache attention vs full causal): 1e-4 of the range.
        assert!(err <= 1e-4 * scale.max(1.0), "position {i}: max |diff| {err} (logit range {scale})");
    }
    assert_eq!(eng.cache().lens, vec![seq.len()]);
}

#[test]
fn batched_prompts_of_different_lengths_equal_each_alone() {
    let be = Cpu::new(2).unwrap();
    for moe in [false, true] {
        let cfg = config(moe, 1);
        let m = model(&be, &cfg, 13);
        let prompts: Vec<Vec<u32>> = vec![vec![4], vec![9, 2, 11, 30, 5, 6, 1], vec![17, 17, 3]];
        let batch = generate(&be, &m, &prompts, &greedy(), &mut |_, _| {}).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let alone = generate(&be, &m, std::slice::from_ref(p), &greedy(), &mut |_, _| {}).unwrap();
            assert_eq!(batch.tokens[i], alone.tokens[0], "moe={moe}, prompt {i}");
        }
        assert_eq!(batch.decode_tokens, 3 * 11);
        assert!(batch.kv_cache_bytes == 2 * 2 * 3 * 24 * 32 * 4, "{}", batch.kv_cache_bytes);
    }
}

#[test]
fn same_seed_same_text_and_streamed_tokens_match() {
    let be = Cpu::new(2).unwrap();
    let cfg = config(true, 1);
    let m = model(&be, &cfg, 14);
    let opts = GenOptions {
        max_new_tokens: 16,
        sampler: Sampler { temperature: 1.0, top_k: 0, top_p: 0.95 },
        seed: 7,
        ..GenOptions::default()
    };
    let prompts = vec![vec![1, 2, 3], vec![5]];
    let mut streamed = vec![Vec::new(); 2];
    let a = generate(&be, &m, &prompts, &opts, &mut |i, t| streamed[i].push(t)).unwrap();
    let b = generate(&be, &m, &prompts, &opts, &mut |_, _| {}).unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.tokens, streamed, "on_token sees every token in order");
    let c = generate(&be, &m, &prompts, &GenOptions { seed: 8, ..opts }, &mut |_, _| {}).unwrap();
    assert_ne!(a.tokens, c.tokens, "another seed samples another text");
}

#[test]
fn expert_load_is_reported_per_step() {
    let be = Cpu::new(2).unwrap();
    let cfg = config(true, 2);
    let m = model(&be, &cfg, 15);
    let opts = GenOptions { stats: true, ..greedy() };
    let g = generate(&be, &m, &[vec![1, 2], vec![3]], &opts, &mut |_, _| {}).unwrap();
    assert_eq!(g.step_load.len(), 11);
    for step in &g.step_load {
        assert_eq!(step.len(), 1, "one MoE layer");
        // Dropless: 2 sequences x top-2, all kept.
        assert_eq!(step[0].kept.iter().sum::<f32>(), 4.0);
        assert_eq!(step[0].dropped, 0.0);
    }
    assert_eq!(g.prefill_load[0][0].kept.iter().sum::<f32>(), 4.0, "prompt of 2 tokens, top-2");
}

#[test]
fn bad_requests_get_clear_errors() {
    let be = Cpu::new(1).unwrap();
    let cfg = config(false, 1);
    let m = model(&be, &cfg, 16);
    let err = |prompts: &[Vec<u32>], opts: GenOptions| {
        generate(&be, &m, prompts, &opts, &mut |_, _| {}).expect_err("refused").to_string()
    };
    let e = err(&[vec![1; 20]], GenOptions { max_new_tokens: 10, ..greedy() });
    assert!(e.contains("20 tokens") && e.contains("is 24") && e.contains("at most 4 new tokens"), "{e}");
    let e = err(&[vec![1; 24]], GenOptions { max_new_tokens: 1, ..greedy() });
    assert!(e.contains("at most 0 new tokens") && e.contains("shorten the prompt"), "{e}");
    let e = err(&[vec![]], greedy());
    assert!(e.contains("prompt 0 is empty"), "{e}");
    let e = err(&[vec![1, 99]], greedy());
    assert!(e.contains("token id 99") && e.contains("vocab_size = 32"), "{e}");
    let e = err(&[vec![1]], GenOptions { sampler: Sampler { top_p: 0.0, ..Sampler::default() }, ..greedy() });
    assert!(e.contains("--top-p 0"), "{e}");
    let e = err(&[vec![1]], GenOptions { sampler: Sampler { temperature: -0.5, ..Sampler::default() }, ..greedy() });
    assert!(e.contains("--temperature -0.5"), "{e}");
}
